//! Posting completions from many executors to one used ring. Each finished
//! request is queued; one thread at a time takes the vring lock and posts
//! every queued entry, then decides on one notification for the batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost_user_backend::VringT;

use super::queue::DeviceState;
use super::ring::Ring;
use super::session::QueueSession;
use crate::engine::InflightTable;

/// A request whose status is written: only its used entry is missing.
pub struct Done {
    pub head: u16,
    pub used_len: u32,
    /// The queue's epoch when the request was admitted.
    pub epoch: u64,
}

pub struct Completions {
    inflight: Arc<InflightTable<u16>>,
    device: Arc<DeviceState>,
    session: Arc<QueueSession>,
    queued: Mutex<Vec<Done>>,
    /// One thread posts at a time; others leave their entry to it.
    posting: AtomicBool,
}

impl Completions {
    pub fn new(inflight: Arc<InflightTable<u16>>, device: Arc<DeviceState>, session: Arc<QueueSession>) -> Self {
        Self { inflight, device, session, queued: Mutex::new(Vec::new()), posting: AtomicBool::new(false) }
    }

    fn queued(&self) -> MutexGuard<'_, Vec<Done>> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Post `done`, now or by the thread posting already. Either way it is
    /// in the used ring before the in-flight table lets a drain finish.
    pub fn post(&self, ring: &Ring, done: Done) {
        self.queued().push(done);
        // A poster re-checks the queue after it stops posting, and a mutex
        // orders that check against our push: one of us posts it.
        while !self.posting.swap(true, Ordering::AcqRel) {
            let batch = std::mem::take(&mut *self.queued());
            if !batch.is_empty() {
                self.post_batch(ring, batch);
            }
            self.posting.store(false, Ordering::Release);
            if self.queued().is_empty() {
                return;
            }
        }
    }

    fn post_batch(&self, ring: &Ring, batch: Vec<Done>) {
        let notify = {
            let mut state = ring.vring.get_mut();
            let detached = self.device.detached.load(Ordering::SeqCst);
            let epoch = self.session.epoch();
            let live = |d: &&Done| d.epoch == epoch;
            // Detached: the connection is gone; nothing is written, the
            // region included (a VSP recovering from it resubmits these).
            let mut any_live = false;
            if !detached {
                let entries: Vec<(u16, u32)> = batch.iter().filter(live).map(|d| (d.head, d.used_len)).collect();
                any_live = !entries.is_empty();
                self.session.add_used(&mut state, &entries);
                for d in batch.iter().filter(|d| !live(d)) {
                    let _logged = self.session.drop_stale(d.head);
                }
            }
            for d in &batch {
                // Retired under the vring lock: the guest may reuse the head
                // as soon as it sees the used entry, and the next pop of it
                // must find it gone from the table.
                if !self.inflight.complete(d.head) {
                    log::error!("completion for head {} not in flight", d.head);
                }
            }
            any_live && (!self.device.event_idx.load(Ordering::Acquire) || state.needs_notification().unwrap_or(true))
        };
        if notify {
            signal(ring);
        }
    }

    /// Notify after chains were answered outside `post` (refused at pop).
    pub fn notify(&self, ring: &Ring) {
        let event_idx = self.device.event_idx.load(Ordering::Acquire);
        if !event_idx || ring.vring.needs_notification().unwrap_or(true) {
            signal(ring);
        }
    }
}

fn signal(ring: &Ring) {
    // A vanished frontend closes the call fd; the completion is in the used
    // ring regardless.
    if let Err(e) = ring.vring.signal_used_queue() {
        log::debug!("signal failed: {e}");
    }
}
