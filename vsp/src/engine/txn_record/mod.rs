//! The transaction record: a bounded, persistent memory of write outcomes,
//! so a write re-sent under the same transaction id (a VSC whose answer was
//! lost, a VMM replaying its rings) is answered with its first result instead
//! of running again, across deletes, overwrites and VSP restarts
//! (PROTOCOL.md §11.2).
//!
//! The engine consults it before running a write and records the outcome
//! after the store committed and before the answer leaves. It holds the last
//! `capacity` outcomes younger than `max_age`; on disk it is an append-only
//! log ([`log`]) compacted when it holds twice the capacity.

mod log;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::log::LogFile;
use crate::store::TxnId;

/// A completed request's status and op-response bytes, and a digest of the
/// request it answered: only the same request under the same transaction id
/// is a replay (a guest reusing an id for another op gets that op run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub request_digest: u64,
    pub status: u32,
    pub response: Vec<u8>,
}

/// An outcome and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    at_ms: u64,
    outcome: Outcome,
}

/// How much the record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnRecordLimits {
    /// Most outcomes kept (0: none, replays fall back to the store's check).
    pub capacity: usize,
    /// Outcomes older than this are forgotten.
    pub max_age: Duration,
}

impl Default for TxnRecordLimits {
    fn default() -> Self {
        Self { capacity: 100_000, max_age: Duration::from_secs(24 * 3600) }
    }
}

struct Inner {
    map: HashMap<TxnId, Recorded>,
    /// Insertion order, oldest first (so also age order).
    order: VecDeque<TxnId>,
    log: Option<LogFile>,
}

pub struct TxnRecord {
    inner: Mutex<Inner>,
    limits: TxnRecordLimits,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl TxnRecord {
    /// A record that lives as long as the process (tests, in-process rigs).
    pub fn in_memory(limits: TxnRecordLimits) -> Self {
        let inner = Inner { map: HashMap::new(), order: VecDeque::new(), log: None };
        Self { inner: Mutex::new(inner), limits }
    }

    /// The record persisted in `dir` (created with permission bits `mode`),
    /// loading what an earlier daemon recorded there.
    pub fn open(dir: &Path, mode: u32, limits: TxnRecordLimits) -> io::Result<Self> {
        let (log, frames) = LogFile::open(dir, mode)?;
        let record = Self::in_memory(limits);
        {
            let mut g = record.lock();
            for (txn, r) in frames {
                g.remember(txn, r, limits);
            }
            g.log = Some(log);
        }
        Ok(record)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The recorded outcome of `txn`, if it is still remembered.
    pub fn get(&self, txn: &TxnId) -> Option<Outcome> {
        let g = self.lock();
        let r = g.map.get(txn)?;
        let young = Duration::from_millis(now_ms().saturating_sub(r.at_ms)) <= self.limits.max_age;
        young.then(|| r.outcome.clone())
    }

    /// Record `outcome` for `txn` (persisted before this returns, when the
    /// record has a directory). A failure to persist is logged; the outcome
    /// is still remembered in memory.
    pub fn insert(&self, txn: TxnId, outcome: Outcome) {
        if self.limits.capacity == 0 || outcome.response.len() > log::MAX_RESPONSE {
            return;
        }
        let r = Recorded { at_ms: now_ms(), outcome };
        let mut g = self.lock();
        let limits = self.limits;
        if let Some(l) = g.log.as_mut()
            && let Err(e) = l.append(&log::encode(&txn, &r))
        {
            ::log::warn!("transaction record: append failed ({e}); this outcome is kept in memory only");
        }
        g.remember(txn, r, limits);
        g.compact_if_due(limits.capacity);
    }

    /// Outcomes remembered now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn remember(&mut self, txn: TxnId, r: Recorded, limits: TxnRecordLimits) {
        if self.map.insert(txn, r).is_none() {
            self.order.push_back(txn);
        }
        let horizon = now_ms().saturating_sub(limits.max_age.as_millis() as u64);
        while let Some(old) = self.order.front().copied() {
            let expired = self.map.get(&old).is_none_or(|r| r.at_ms < horizon);
            if self.order.len() <= limits.capacity && !expired {
                break;
            }
            self.order.pop_front();
            self.map.remove(&old);
        }
    }

    /// Rewrite the log to the live outcomes once it holds twice as many frames.
    fn compact_if_due(&mut self, capacity: usize) {
        let Some(log) = self.log.as_mut() else { return };
        if log.frames < capacity.saturating_mul(2).max(16) {
            return;
        }
        let frames: Vec<Vec<u8>> =
            self.order.iter().filter_map(|t| self.map.get(t).map(|r| log::encode(t, r))).collect();
        if let Err(e) = log.compact(frames.iter().map(Vec::as_slice)) {
            ::log::warn!("transaction record: compaction failed ({e}); the log keeps growing until it succeeds");
        }
    }
}

#[cfg(test)]
mod tests;
