//! The one place a queue's accepted requests are tracked, from acceptance to
//! the posting of their completion. Rescind, reset, disconnect and exit all go
//! through [`InflightTable::rescind_all`] + [`InflightTable::wait_empty`].
//!
//! Keys are transport ids (a virtio head index, a VMBus transaction id). On
//! vhost-user the inflight region (`vhost/inflight/`) is this table's durable
//! copy, updated at the same two points (admit, completion), so a restarted
//! VSP knows which heads the dead one had taken.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::cancel::{CancelReason, CancelToken};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("per-queue in-flight limit reached")]
    Full,
    /// The id is already in flight: a guest reusing a head or transaction id
    /// before its completion (the first keeps its single completion).
    #[error("id already in flight")]
    Duplicate,
    /// The queue is closing or was reset: the request is not accepted (the
    /// transport leaves it in the ring).
    #[error("queue closed")]
    Closed,
}

struct Entry {
    cancel: CancelToken,
}

struct State<K> {
    entries: HashMap<K, Entry>,
    /// Set by `close`: nothing more is admitted, so a drain that found the
    /// table empty stays true.
    closed: bool,
}

/// Accepted, not yet completed requests of one queue.
pub struct InflightTable<K> {
    state: Mutex<State<K>>,
    drained: Condvar,
    max: usize,
}

impl<K: Eq + Hash + Copy> InflightTable<K> {
    pub fn new(max: usize) -> Self {
        Self {
            state: Mutex::new(State { entries: HashMap::new(), closed: false }),
            drained: Condvar::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accept a request; `timeout_ms` 0 means no deadline.
    pub fn admit(&self, key: K, timeout_ms: u32) -> Result<CancelToken, AdmitError> {
        let mut s = self.lock();
        if s.closed {
            return Err(AdmitError::Closed);
        }
        if s.entries.contains_key(&key) {
            return Err(AdmitError::Duplicate);
        }
        if s.entries.len() >= self.max {
            return Err(AdmitError::Full);
        }
        let deadline = (timeout_ms != 0).then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)));
        let cancel = CancelToken::new(deadline);
        s.entries.insert(key, Entry { cancel: cancel.clone() });
        Ok(cancel)
    }

    /// Remove a request whose completion is being posted. `false` if it was
    /// not in flight: the caller must then not post anything (no double
    /// completion).
    pub fn complete(&self, key: K) -> bool {
        let mut s = self.lock();
        let found = s.entries.remove(&key).is_some();
        if s.entries.is_empty() {
            self.drained.notify_all();
        }
        found
    }

    /// Cancel every request in flight as rescinded; each still completes
    /// exactly once, through its owner, with the rescinded status.
    pub fn rescind_all(&self) -> usize {
        let s = self.lock();
        for entry in s.entries.values() {
            entry.cancel.cancel(CancelReason::Rescinded);
        }
        s.entries.len()
    }

    /// Admit nothing more, then rescind what is in flight.
    pub fn close(&self) -> usize {
        self.seal();
        self.rescind_all()
    }

    /// Admit nothing more; what is in flight runs on (a stop that leaves
    /// the requests to a successor, `BlobBackend::shut_down`).
    pub fn seal(&self) {
        self.lock().closed = true;
    }

    /// Whether `close` shut the table (until `reopen`).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Accept requests again (the frontend set the device up anew).
    pub fn reopen(&self) {
        self.lock().closed = false;
    }

    /// Wait until nothing is in flight; `false` on timeout.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while !s.entries.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self.drained.wait_timeout(s, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn admit_complete_once() {
        let t = InflightTable::new(2);
        t.admit(1u16, 0).unwrap();
        assert_eq!(t.admit(1, 0).unwrap_err(), AdmitError::Duplicate);
        t.admit(2, 0).unwrap();
        assert_eq!(t.admit(3, 0).unwrap_err(), AdmitError::Full);
        assert!(t.complete(1));
        assert!(!t.complete(1), "second completion refused");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn closed_table_admits_nothing_until_reopened() {
        let t = InflightTable::new(4);
        let c = t.admit(1u16, 0).unwrap();
        assert_eq!(t.close(), 1);
        assert_eq!(c.reason(), Some(CancelReason::Rescinded));
        assert_eq!(t.admit(2, 0).unwrap_err(), AdmitError::Closed);
        assert!(t.is_closed());
        assert!(t.complete(1));
        t.reopen();
        assert!(!t.is_closed());
        assert!(t.admit(2, 0).is_ok());
    }

    #[test]
    fn rescind_cancels_and_drain_waits_for_owners() {
        let t = Arc::new(InflightTable::new(64));
        let tokens: Vec<_> = (0..32u16).map(|k| (k, t.admit(k, 0).unwrap())).collect();
        assert_eq!(t.rescind_all(), 32);
        assert!(tokens.iter().all(|(_, c)| c.reason() == Some(CancelReason::Rescinded)));
        assert!(!t.wait_empty(Duration::from_millis(10)));
        let t2 = t.clone();
        let owner = std::thread::spawn(move || {
            for (k, _) in tokens {
                assert!(t2.complete(k));
            }
        });
        assert!(t.wait_empty(Duration::from_secs(5)));
        owner.join().unwrap();
    }
}
