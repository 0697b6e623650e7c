//! What one queue keeps across its starts and stops: the epoch its requests
//! are admitted in, and its part of the connection's inflight region.
//!
//! The epoch moves on whenever the queue is stopped or reset after a drain,
//! whether or not the drain finished in time. A request admitted before that
//! and completing after it would post into a ring the VMM may have re-based
//! since: its completion is dropped and counted instead.
//!
//! The region is the durable copy of the queue's `InflightTable`, updated at
//! the table's two points: a head marked where the table admits it, and the
//! spec's batch protocol around every used entry the queue writes (refusals
//! included, or a restart would misread the used index).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost_user_backend::VringState;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::inflight::{InflightSlot, QueueRegion};

pub struct QueueSession {
    index: u16,
    slot: Arc<InflightSlot>,
    /// The region in use, with the slot generation it was recovered from.
    region: Mutex<Option<(u64, Option<Arc<QueueRegion>>)>>,
    epoch: AtomicU64,
    stale: AtomicU64,
}

impl QueueSession {
    pub fn new(index: usize, slot: Arc<InflightSlot>) -> Self {
        Self {
            index: u16::try_from(index).unwrap_or(u16::MAX),
            slot,
            region: Mutex::new(None),
            epoch: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<(u64, Option<Arc<QueueRegion>>)>> {
        self.region.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The queue was stopped or reset: whatever is still running belongs to
    /// the past.
    pub fn next_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// A completion from an older epoch: dropped. Counted; the first one is
    /// logged (`true`).
    pub fn drop_stale(&self, head: u16) -> bool {
        let first = self.stale.fetch_add(1, Ordering::SeqCst) == 0;
        if first {
            log::warn!(
                "queue {}: the completion of head {head} came after the queue was stopped and was dropped \
                 (later ones are only counted)",
                self.index
            );
        }
        // Its region flag stays: the guest never saw it complete, so a VSP
        // that recovers from this region resubmits it.
        first
    }

    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::SeqCst)
    }

    pub fn region(&self) -> Option<Arc<QueueRegion>> {
        self.lock().as_ref().and_then(|(_, r)| r.clone())
    }

    /// At a pop on a running ring, under its lock: if the frontend set a
    /// region this queue has not recovered from yet, recover from it, move
    /// the ring's next avail index past the heads still in flight, and return
    /// them (oldest first) to be resubmitted before anything new is popped.
    pub fn attach(&self, state: &mut VringState, mem: &GuestMemoryMmap) -> Vec<u16> {
        let Some((generation, region)) = self.slot.get() else { return Vec::new() };
        let mut cur = self.lock();
        if cur.as_ref().is_some_and(|(g, _)| *g == generation) {
            return Vec::new();
        }
        let queue = state.get_queue_mut();
        let recovered = region.queue(self.index).and_then(|q| {
            let used = queue.used_idx(mem, Ordering::Acquire).map_or(queue.next_used(), |w| w.0);
            let r = q.recover(used, queue.size())?;
            Ok((q, r, used))
        });
        match recovered {
            Ok((q, r, used)) => {
                if let Some(next) = r.next_avail {
                    queue.set_next_avail(next);
                }
                if !r.heads.is_empty() || r.repaired > 0 {
                    log::info!(
                        "queue {}: inflight region: {} requests in flight at the restart, resubmitted in their \
                         order ({:?}); {} repaired from a torn batch; used index {used}, next avail {}",
                        self.index,
                        r.heads.len(),
                        r.heads,
                        r.repaired,
                        queue.next_avail()
                    );
                }
                *cur = Some((generation, Some(Arc::new(q))));
                r.heads
            }
            Err(e) => {
                log::error!("queue {}: inflight region unusable ({e}); this queue is not tracked", self.index);
                *cur = Some((generation, None));
                Vec::new()
            }
        }
    }

    /// Recover again at the next pop (a resubmission could not be admitted).
    pub fn forget(&self) {
        *self.lock() = None;
    }

    /// `head` was admitted into the queue's table.
    pub fn mark(&self, head: u16) {
        if let Some(r) = self.region()
            && let Err(e) = r.mark(head)
        {
            log::warn!("queue {}: head {head} not recorded in the inflight region: {e}", self.index);
        }
    }

    /// Write used entries, bracketed by the region's batch protocol.
    pub fn add_used(&self, state: &mut VringState, entries: &[(u16, u32)]) {
        let region = self.region();
        let heads: Vec<u16> = entries.iter().map(|e| e.0).collect();
        if let Some(r) = &region
            && let Err(e) = r.begin_batch(&heads)
        {
            log::warn!("queue {}: inflight region batch: {e}", self.index);
        }
        for &(head, len) in entries {
            if let Err(e) = state.add_used(head, len) {
                log::debug!("cannot post completion of head {head}: {e}");
            }
        }
        if let Some(r) = &region
            && let Err(e) = r.end_batch(&heads, state.get_queue().next_used())
        {
            log::warn!("queue {}: inflight region batch: {e}", self.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_completions_are_counted_and_logged_once() {
        let s = QueueSession::new(0, Default::default());
        assert_eq!(s.epoch(), 0);
        s.next_epoch();
        assert_eq!(s.epoch(), 1);
        assert!(s.drop_stale(3), "the first is logged");
        assert!(!s.drop_stale(4), "later ones only counted");
        assert_eq!(s.stale(), 2);
    }
}
