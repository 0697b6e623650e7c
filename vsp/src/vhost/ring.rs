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
/// A stopped ring is left alone (the device is suspended).
pub fn suppress_kicks(state: &mut VringState, mem: &GuestMemoryMmap, event_idx: bool) {
    let queue = state.get_queue_mut();
    if !queue.ready() {
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u16 = 16;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const AVAIL_EVENT: u64 = USED + 4 + 8 * SIZE as u64;

    fn ring(event_idx: bool) -> Ring {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        let vring = VringRwLock::new(mem.clone(), SIZE).unwrap();
        vring.set_queue_size(SIZE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_event_idx(event_idx);
        vring.set_queue_ready(true);
        Ring { vring, mem }
    }

    /// The guest publishes one more avail entry (the entries' contents do
    /// not matter to notification decisions).
    fn publish(r: &Ring, idx: u16) {
        r.mem.memory().store(idx.to_le(), GuestAddress(AVAIL + 2), Ordering::Release).unwrap();
    }

    fn load(r: &Ring, addr: u64) -> u16 {
        u16::from_le(r.mem.memory().load(GuestAddress(addr), Ordering::Acquire).unwrap())
    }

    #[test]
    fn event_idx_suppression_moves_avail_event_behind_next_avail_and_rearm_restores_it() {
        let r = ring(true);
        r.vring.set_queue_next_avail(5);
        publish(&r, 5);
        suppress_kicks(&mut r.vring.get_mut(), &r.mem.memory(), true);
        assert_eq!(load(&r, AVAIL_EVENT), 4, "no index the guest publishes from 5 on crosses 4");
        assert!(!r.has_avail());
        assert!(!rearm_kicks(&mut r.vring.get_mut()), "nothing waiting");
        assert_eq!(load(&r, AVAIL_EVENT), 5, "kick on the next chain");
        publish(&r, 6);
        assert!(r.has_avail());
        assert!(rearm_kicks(&mut r.vring.get_mut()), "a chain slipped in: the caller must pop it");
    }

    #[test]
    fn flag_mode_suppression_sets_no_notify() {
        let r = ring(false);
        suppress_kicks(&mut r.vring.get_mut(), &r.mem.memory(), false);
        assert_eq!(load(&r, USED), 1, "VRING_USED_F_NO_NOTIFY");
        assert!(!rearm_kicks(&mut r.vring.get_mut()));
        assert_eq!(load(&r, USED), 0);
    }

    #[test]
    fn a_stopped_ring_reports_no_work_and_is_not_written() {
        let r = ring(true);
        publish(&r, 1);
        assert!(r.has_avail());
        r.vring.set_queue_ready(false);
        assert!(!r.has_avail(), "pollers leave a stopped ring alone");
        suppress_kicks(&mut r.vring.get_mut(), &r.mem.memory(), true);
        assert_eq!(load(&r, AVAIL_EVENT), 0, "avail_event untouched");
    }
}
