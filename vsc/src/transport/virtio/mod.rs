//! Guest-side virtio transport: the driver half of a split virtqueue.
//!
//! [`SplitQueue`] owns a virtio 1.x split ring placed in guest memory and
//! plays the driver role: it posts descriptor chains, decides when the device
//! needs a kick, harvests completions and controls interrupt suppression.
//! Everything it reads back from the used ring is device-controlled and is
//! validated before use; a misbehaving device yields a [`QueueError`], never a
//! panic or a corrupted free list.

pub mod device_addr;
pub mod split_queue;
pub(crate) mod submit;

pub use device_addr::{DeviceAddr, Identity};
pub use split_queue::{MAX_QUEUE_SIZE, SplitQueue};

use vm_memory::GuestAddress;

/// Descriptor flag: the chain continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise device-readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Avail ring flag: the driver does not want interrupts (only without EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want kicks (only without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// The EVENT_IDX notification rule (virtio spec 2.7.7.2, Linux `vring_need_event`).
///
/// True when `event_idx` lies in the window `[old_idx, new_idx)` of the
/// wrapping u16 index space, i.e. the peer asked to be notified when the
/// index moved past `event_idx` and that happened since the last decision.
pub fn vring_need_event(event_idx: u16, new_idx: u16, old_idx: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old_idx)
}

/// Errors of the split-queue driver.
///
/// `Full` is ordinary back-pressure; the chain-shape variants are driver bugs
/// the caller can fix; the `Used*` variants mean the device broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue size {0} is not a power of two in 1..={MAX_QUEUE_SIZE}")]
    InvalidSize(u16),
    #[error("ring base {:#x} is not 16-byte aligned", .0.0)]
    Misaligned(GuestAddress),
    #[error("ring [{:#x}, +{len:#x}) is not inside guest memory", base.0)]
    RingOutsideMemory { base: GuestAddress, len: u64 },
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("not enough free descriptors: need {needed}, {free} free")]
    Full { needed: usize, free: usize },
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error("chain of {len} descriptors exceeds the queue size {max}")]
    ChainTooLong { len: usize, max: u16 },
    #[error("descriptor {index} has length 0")]
    EmptyBuffer { index: usize },
    #[error("descriptor {index} is device-readable but follows a device-writable one")]
    ReadableAfterWritable { index: usize },
    #[error("descriptor {index} [{:#x}, +{len:#x}) is not inside guest memory", addr.0)]
    BufferOutsideMemory { index: usize, addr: GuestAddress, len: u32 },
    #[error("[{:#x}, +{len:#x}) is not one contiguous range for the device", addr.0)]
    NotDeviceContiguous { addr: GuestAddress, len: u64 },
    #[error("chain totals {total} bytes, more than 2^32 - 1")]
    ChainTooLarge { total: u64 },
    #[error("device returned used id {id}, outside the queue of size {size}")]
    UsedIdOutOfRange { id: u32, size: u16 },
    #[error("device returned used id {id}, which is not an outstanding chain head")]
    UsedIdNotOutstanding { id: u16 },
    #[error("device used.idx {used_idx} is {} entries past {last_used}, more than the queue size {size}",
        used_idx.wrapping_sub(*last_used))]
    UsedIdxAhead { used_idx: u16, last_used: u16, size: u16 },
    #[error("device reported {len} bytes written to chain {head}, which has only {max} writable bytes")]
    UsedLenTooLarge { head: u16, len: u32, max: u32 },
}

impl QueueError {
    /// True when the device violated the ring protocol (the caller should
    /// treat the device as broken, e.g. reset the queue).
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            Self::UsedIdOutOfRange { .. }
                | Self::UsedIdNotOutstanding { .. }
                | Self::UsedIdxAhead { .. }
                | Self::UsedLenTooLarge { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    use std::thread;

    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::split_queue::tests::{DATA, RING, Rng, device_for, device_pop, memory, pair, read_u16};
    use super::*;
    use crate::transport::dma::DmaPool;

    #[test]
    fn need_event_window_is_wrapping() {
        // Device asked for a notification at index 5.
        assert!(vring_need_event(5, 6, 5));
        assert!(vring_need_event(5, 10, 3));
        assert!(!vring_need_event(5, 5, 3)); // not reached yet
        assert!(!vring_need_event(5, 9, 6)); // already passed before `old`
        assert!(!vring_need_event(5, 7, 7)); // empty window
        // Across the 65535 -> 0 wrap.
        assert!(vring_need_event(65535, 1, 65534));
        assert!(vring_need_event(0, 2, 65535));
        assert!(!vring_need_event(3, 2, 65535));
    }

    fn one(q: &mut SplitQueue, page: u64) -> u16 {
        q.add_chain(&[(GuestAddress(DATA + page * 0x1000), 8, false)]).unwrap()
    }

    #[test]
    fn event_idx_kicks_follow_the_devices_avail_event() {
        let (mem, mut q, mut dev) = pair(8, true);
        let avail_event = q.used_ring().0 + 4 + 8 * 8;
        assert!(!q.needs_kick(), "nothing added");
        one(&mut q, 0);
        assert!(q.needs_kick(), "fresh ring: avail_event 0 is crossed");
        assert!(!q.needs_kick(), "no new chains since the last decision");

        device_pop(&mut dev, &mem).unwrap();
        one(&mut q, 1);
        assert!(!q.needs_kick(), "device is awake and has not re-armed");

        // Device re-arms at its next_avail (1) but sees chain 1 pending, so it keeps polling.
        assert!(dev.enable_notification(&mem).unwrap());
        assert_eq!(read_u16(&mem, avail_event), 1);
        one(&mut q, 2);
        assert!(!q.needs_kick(), "avail_event 1 lies before this batch");

        while device_pop(&mut dev, &mem).is_some() {}
        assert!(!dev.enable_notification(&mem).unwrap(), "device goes to sleep");
        assert_eq!(read_u16(&mem, avail_event), 3);
        for page in 3..6 {
            one(&mut q, page);
        }
        assert!(q.needs_kick(), "a batch crossing avail_event needs one kick");
        one(&mut q, 6);
        assert!(!q.needs_kick(), "already kicked for this avail_event");
    }

    #[test]
    fn flag_mode_kicks_follow_no_notify() {
        let (mem, mut q, mut dev) = pair(8, false);
        one(&mut q, 0);
        assert!(q.needs_kick());
        dev.disable_notification(&mem).unwrap();
        assert_eq!(read_u16(&mem, q.used_ring().0) & VRING_USED_F_NO_NOTIFY, VRING_USED_F_NO_NOTIFY);
        one(&mut q, 1);
        assert!(!q.needs_kick(), "device set NO_NOTIFY");
        while device_pop(&mut dev, &mem).is_some() {}
        assert!(!dev.enable_notification(&mem).unwrap());
        one(&mut q, 2);
        assert!(q.needs_kick());
    }

    /// Random interleavings of a driver and a device that sleeps when idle.
    /// No lost wakeup: after every driver step, a sleeping device has no
    /// unseen chains. No unrequested kick: a kick needs a device re-arm since
    /// the last one (EVENT_IDX) or notifications currently on (flag mode).
    #[test]
    fn kick_decisions_never_lose_a_wakeup_and_suppress_otherwise() {
        for event_idx in [false, true] {
            let (mem, mut q, mut dev) = pair(8, event_idx);
            let mut rng = Rng(0x1234_5678_9abc_def1 ^ u64::from(event_idx));
            let (mut asleep, mut armed) = (true, true); // fresh ring: notifications on
            let (mut kicks, mut suppressed) = (0, 0);
            for step in 0..20_000 {
                if asleep || rng.below(2) == 0 {
                    let mut added = 0;
                    for page in 0..=rng.below(3) {
                        if q.free_descriptors() > 0 {
                            one(&mut q, page);
                            added += 1;
                        }
                    }
                    if q.needs_kick() {
                        assert!(armed, "step {step}: kick the device did not ask for");
                        kicks += 1;
                        armed &= !event_idx; // the avail_event has been crossed
                        asleep = false;
                    } else if added > 0 {
                        suppressed += 1;
                    }
                    let pending = dev.avail_idx(&mem, Ordering::Acquire).unwrap().0 != dev.next_avail();
                    assert!(!(asleep && pending), "step {step}: lost wakeup");
                    while q.pop_used().unwrap().is_some() {}
                } else {
                    // Awake device: suppress kicks, drain, and sometimes try to go back to sleep.
                    dev.disable_notification(&mem).unwrap();
                    armed &= event_idx; // flag mode: NO_NOTIFY is now set
                    while let Some((head, _)) = device_pop(&mut dev, &mem) {
                        dev.add_used(&mem, head, 0).unwrap();
                    }
                    if rng.below(2) == 0 {
                        armed = true;
                        asleep = !dev.enable_notification(&mem).unwrap();
                    }
                }
            }
            assert!(kicks > 100 && suppressed > 100, "event_idx={event_idx}: {kicks} kicks, {suppressed} suppressed");
        }
    }

    #[test]
    fn event_idx_interrupts_follow_used_event() {
        let (mem, mut q, mut dev) = pair(8, true);
        let heads: Vec<u16> = (0..4).map(|p| one(&mut q, p)).collect();
        while device_pop(&mut dev, &mem).is_some() {}

        q.disable_interrupts();
        dev.add_used(&mem, heads[0], 0).unwrap();
        assert!(!dev.needs_notification(&mem).unwrap(), "interrupts disabled");
        assert_eq!(q.pop_used().unwrap(), Some((heads[0], 0)));

        assert!(!q.enable_interrupts(), "nothing pending: safe to sleep");
        assert_eq!(read_u16(&mem, q.avail_ring().0 + 4 + 2 * 8), 1, "used_event = last seen used idx");
        dev.add_used(&mem, heads[1], 0).unwrap();
        assert!(dev.needs_notification(&mem).unwrap(), "the awaited completion interrupts");
        dev.add_used(&mem, heads[2], 0).unwrap();
        assert!(!dev.needs_notification(&mem).unwrap(), "one interrupt per enable");

        // The classic race: a completion lands after the last poll, before re-enabling.
        q.disable_interrupts();
        while q.pop_used().unwrap().is_some() {}
        dev.add_used(&mem, heads[3], 0).unwrap();
        assert!(!dev.needs_notification(&mem).unwrap());
        assert!(q.enable_interrupts(), "the slipped-in completion must be reported");
        assert_eq!(q.pop_used().unwrap(), Some((heads[3], 0)));
        assert!(!q.enable_interrupts());
        assert_eq!(read_u16(&mem, q.avail_ring().0), 0, "avail.flags stay 0 with EVENT_IDX");
    }

    #[test]
    fn flag_mode_interrupts_follow_no_interrupt() {
        let (mem, mut q, mut dev) = pair(8, false);
        let flags = |q: &SplitQueue| read_u16(&mem, q.avail_ring().0);
        q.disable_interrupts();
        assert_eq!(flags(&q), VRING_AVAIL_F_NO_INTERRUPT);
        let h = one(&mut q, 0);
        device_pop(&mut dev, &mem).unwrap();
        dev.add_used(&mem, h, 0).unwrap();
        assert!(q.enable_interrupts(), "the completion arrived while disabled");
        assert_eq!(flags(&q), 0);
        assert_eq!(q.pop_used().unwrap(), Some((h, 0)));
        assert!(!q.enable_interrupts());
    }

    /// Blocks until `fd` is readable; false on timeout (a lost wakeup).
    struct Waiter(Epoll);
    impl Waiter {
        fn new(fd: &EventFd) -> Self {
            let ep = Epoll::new().unwrap();
            ep.ctl(ControlOperation::Add, fd.as_raw_fd(), EpollEvent::new(EventSet::IN, 0)).unwrap();
            Self(ep)
        }
        fn wait(&self, fd: &EventFd) -> bool {
            let mut events = [EpollEvent::default(); 1];
            loop {
                match self.0.wait(10_000, &mut events) {
                    Ok(0) => return false,
                    Ok(_) => return fd.read().is_ok(),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("epoll: {e}"),
                }
            }
        }
    }

    #[derive(Debug, Default)]
    struct DeviceStats {
        calls: u64,
        enables: u64,
    }

    /// A driver thread and a virtio-queue device thread move `REQUESTS`
    /// requests through a 64-entry ring, kicking and interrupting only when
    /// the peer asked. Each wait has a 10 s limit, so a lost wakeup fails the
    /// test instead of hanging it.
    fn threaded_round_trips(event_idx: bool) {
        const REQUESTS: u64 = 10_000;
        let mem = memory();
        let mut q = SplitQueue::new(mem.clone(), RING, 64, event_idx).unwrap();
        let pool = DmaPool::new(mem.clone(), GuestAddress(DATA), 4 << 20).unwrap();
        let (kick, call) = (EventFd::new(EFD_NONBLOCK).unwrap(), EventFd::new(EFD_NONBLOCK).unwrap());
        let (dev_kick, dev_call) = (kick.try_clone().unwrap(), call.try_clone().unwrap());
        let mut dev = device_for(&q, &mem, event_idx);
        let avail_flags = q.avail_ring();
        let dev_mem = mem.clone();

        let device = thread::spawn(move || {
            let mem = dev_mem;
            let waiter = Waiter::new(&dev_kick);
            let mut stats = DeviceStats::default();
            let mut done = 0;
            while done < REQUESTS {
                assert!(waiter.wait(&dev_kick), "device: lost kick after {done} requests");
                loop {
                    dev.disable_notification(&mem).unwrap();
                    while let Some(chain) = dev.pop_descriptor_chain(&mem) {
                        let head = chain.head_index();
                        let descs: Vec<_> = chain.collect();
                        assert_eq!(descs.len(), 2);
                        let seq: u64 = mem.read_obj(descs[0].addr()).unwrap();
                        mem.write_obj(seq * 3 + 1, descs[1].addr()).unwrap();
                        dev.add_used(&mem, head, 8).unwrap();
                        done += 1;
                        // needs_notification fences before reading used_event; the flag read below
                        // comes after that fence (virtio-queue ignores VRING_AVAIL_F_NO_INTERRUPT).
                        let wanted = dev.needs_notification(&mem).unwrap();
                        let flags: u16 = mem.load(avail_flags, Ordering::Relaxed).unwrap();
                        if wanted && (event_idx || flags & VRING_AVAIL_F_NO_INTERRUPT == 0) {
                            dev_call.write(1).unwrap();
                            stats.calls += 1;
                        }
                    }
                    stats.enables += 1;
                    if !dev.enable_notification(&mem).unwrap() {
                        break;
                    }
                }
            }
            stats
        });

        let waiter = Waiter::new(&call);
        let mut inflight = HashMap::new();
        let (mut sent, mut done, mut kicks, mut enables) = (0u64, 0u64, 0u64, 0u64);
        q.disable_interrupts(); // poll while busy; re-enable only before sleeping
        while done < REQUESTS {
            while sent < REQUESTS {
                let mut buf = pool.alloc(16).expect("pool holds a full ring of buffers");
                buf.write_at(0, &sent.to_le_bytes()).unwrap();
                let gpa = buf.gpa();
                match q.add_chain(&[(gpa, 8, false), (GuestAddress(gpa.0 + 8), 8, true)]) {
                    Ok(head) => assert!(inflight.insert(head, (sent, buf)).is_none()),
                    Err(QueueError::Full { .. }) => break,
                    Err(e) => panic!("add_chain: {e}"),
                }
                sent += 1;
            }
            if q.needs_kick() {
                kick.write(1).unwrap();
                kicks += 1;
            }
            let mut progressed = false;
            while let Some((head, len)) = q.pop_used().unwrap() {
                let (seq, buf) = inflight.remove(&head).expect("completion of an outstanding head");
                let mut out = [0u8; 8];
                buf.read_at(8, &mut out).unwrap();
                assert_eq!((len, u64::from_le_bytes(out)), (8, seq * 3 + 1));
                done += 1;
                progressed = true;
            }
            if !progressed && done < REQUESTS {
                enables += 1;
                if q.enable_interrupts() {
                    q.disable_interrupts();
                    continue;
                }
                assert!(waiter.wait(&call), "driver: lost interrupt after {done} requests");
                q.disable_interrupts();
            }
        }
        let stats = device.join().expect("device thread");
        assert!(inflight.is_empty());
        assert_eq!((q.free_descriptors(), q.outstanding()), (64, 0));
        assert_eq!(pool.free_bytes(), pool.capacity(), "every DmaBuf went back");
        assert!(kicks < REQUESTS, "the first batch of 64 shares one kick");
        if event_idx {
            // Each device re-arm can be crossed once; each driver enable can be signalled once.
            assert!(kicks <= stats.enables + 1, "kicks {kicks}, device re-arms {}", stats.enables);
            assert!(stats.calls <= enables, "calls {}, driver enables {enables}", stats.calls);
        }
    }

    #[test]
    fn threaded_round_trips_with_event_idx() {
        threaded_round_trips(true);
    }

    #[test]
    fn threaded_round_trips_with_flags() {
        threaded_round_trips(false);
    }
}
