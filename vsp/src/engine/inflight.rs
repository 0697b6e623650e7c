//! The one place a queue's accepted requests are tracked, from acceptance to
//! the posting of their completion. Rescind, reset, disconnect and exit all go
//! through [`InflightTable::rescind_all`] + [`InflightTable::wait_empty`].
//!
//! Keys are transport ids (a virtio head index, a VMBus transaction id). The
//! table is the natural thing to move into the vhost-user inflight shared
//! memory later: it already records exactly which heads are outstanding.

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
}

struct Entry {
    cancel: CancelToken,
}

/// Accepted, not yet completed requests of one queue.
pub struct InflightTable<K> {
    entries: Mutex<HashMap<K, Entry>>,
    drained: Condvar,
    max: usize,
}

impl<K: Eq + Hash + Copy> InflightTable<K> {
    pub fn new(max: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), drained: Condvar::new(), max: max.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accept a request; `timeout_ms` 0 means no deadline.
    pub fn admit(&self, key: K, timeout_ms: u32) -> Result<CancelToken, AdmitError> {
        let mut e = self.lock();
        if e.contains_key(&key) {
            return Err(AdmitError::Duplicate);
        }
        if e.len() >= self.max {
            return Err(AdmitError::Full);
        }
        let deadline = (timeout_ms != 0).then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)));
        let cancel = CancelToken::new(deadline);
        e.insert(key, Entry { cancel: cancel.clone() });
        Ok(cancel)
    }

    /// Remove a request whose completion is being posted. `false` if it was
    /// not in flight: the caller must then not post anything (no double
    /// completion).
    pub fn complete(&self, key: K) -> bool {
        let mut e = self.lock();
        let found = e.remove(&key).is_some();
        if e.is_empty() {
            self.drained.notify_all();
        }
        found
    }

    /// Cancel every request in flight as rescinded; each still completes
    /// exactly once, through its owner, with the rescinded status.
    pub fn rescind_all(&self) -> usize {
        let e = self.lock();
        for entry in e.values() {
            entry.cancel.cancel(CancelReason::Rescinded);
        }
        e.len()
    }

    /// Wait until nothing is in flight; `false` on timeout.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut e = self.lock();
        while !e.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            e = self.drained.wait_timeout(e, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.lock().len()
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
