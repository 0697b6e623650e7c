//! One queue's vring and the guest memory behind it, as every thread that
//! pops, completes or polls sees them; and the device side of notification
//! suppression.

use std::sync::atomic::Ordering;

use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

/// A queue's vring and the connection's guest memory (both cheap clones).
#[derive(Clone)]
pub struct Ring {
    pub vring: VringRwLock,
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
}

impl Ring {
    /// Whether the guest has posted chains not yet popped (a cheap check for
    /// pollers: read lock only).
    pub fn has_avail(&self) -> bool {
        let state = self.vring.get_ref();
        let queue = state.get_queue();
        queue.ready()
            && queue.avail_idx(&*self.mem.memory(), Ordering::Acquire).is_ok_and(|idx| idx.0 != queue.next_avail())
    }
}

/// Ask the guest not to kick while someone polls the ring. With EVENT_IDX,
/// virtio-queue leaves `avail_event` armed; pointing it just behind
/// `next_avail` means no index the guest publishes crosses it.
pub fn suppress_kicks(state: &mut VringState, mem: &GuestMemoryMmap, event_idx: bool) {
    let queue = state.get_queue_mut();
    if event_idx {
        let avail_event = queue.used_ring() + 4 + 8 * u64::from(queue.size());
        let behind = queue.next_avail().wrapping_sub(1);
        if let Err(e) = mem.store(behind.to_le(), GuestAddress(avail_event), Ordering::Relaxed) {
            log::debug!("cannot write avail_event: {e}");
        }
    } else if let Err(e) = queue.disable_notification(mem) {
        log::debug!("cannot disable notifications: {e}");
    }
}

/// Ask the guest to kick for its next chain; `true` if chains arrived
/// meanwhile (the caller must pop them, nobody else will be told).
pub fn rearm_kicks(state: &mut VringState) -> bool {
    // An error means the ring is unusable; report work so the caller pops
    // and meets the same error there rather than sleeping on it.
    state.enable_notification().unwrap_or(true)
}
