//! A bounded memory of recently completed writes, so a transaction the
//! frontend replays (Cloud Hypervisor re-sends in-flight requests after a
//! reconnect) is answered with its first outcome instead of running twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

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

pub struct DedupCache {
    inner: Mutex<(HashMap<TxnId, Outcome>, VecDeque<TxnId>)>,
    capacity: usize,
}

impl DedupCache {
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::new((HashMap::new(), VecDeque::new())), capacity }
    }

    pub fn get(&self, txn: &TxnId) -> Option<Outcome> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.get(txn).cloned()
    }

    /// Remember an outcome, evicting the oldest beyond capacity.
    pub fn insert(&self, txn: TxnId, outcome: Outcome) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.insert(txn, outcome).is_none() {
            order.push_back(txn);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_replays() {
        let c = DedupCache::new(2);
        let o = |s| Outcome { request_digest: 0, status: s, response: vec![s as u8] };
        c.insert([1; 16], o(1));
        c.insert([2; 16], o(2));
        assert_eq!(c.get(&[1; 16]), Some(o(1)));
        c.insert([3; 16], o(3));
        assert_eq!(c.get(&[1; 16]), None, "oldest evicted");
        assert_eq!(c.get(&[3; 16]), Some(o(3)));
    }
}
