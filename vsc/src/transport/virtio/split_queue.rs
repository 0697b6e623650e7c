//! Driver side of a virtio 1.x split virtqueue living in guest memory.
//!
//! Layout for a queue of size N starting at `base` (see `ring_bytes`):
//! - descriptor table at `base` (16-byte aligned): N x {le64 addr, le32 len, le16 flags, le16 next};
//! - avail ring right after it: le16 flags, le16 idx, le16 ring[N], le16 used_event;
//! - used ring at the next 4-byte boundary: le16 flags, le16 idx, {le32 id, le32 len}[N], le16 avail_event.
//!
//! Ring and buffer addresses are pool addresses (those of `mem`); what the
//! device is told (descriptor `addr` fields, [`SplitQueue::device_rings`])
//! goes through the queue's [`DeviceAddr`] (identity unless
//! [`SplitQueue::with_device_addr`] is used).
//!
//! Chain bookkeeping (free list, chain lengths) is kept in driver-private
//! memory and never read back from the ring, so a device scribbling on the
//! descriptor table cannot corrupt it.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    DeviceAddr, Identity, QueueError, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VRING_AVAIL_F_NO_INTERRUPT,
    VRING_USED_F_NO_NOTIFY,
};

/// Largest queue size the virtio spec allows for split rings.
pub const MAX_QUEUE_SIZE: u16 = 32768;

const DESC_SIZE: u64 = 16;
const RING_HEADER: u64 = 4; // flags + idx, same for avail and used
const AVAIL_ELEM: u64 = 2;
const USED_ELEM: u64 = 8;
const EVENT_FIELD: u64 = 2; // used_event / avail_event trailer

/// Offsets of the avail and used rings from the base, and the total size.
fn layout(size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    let avail = DESC_SIZE * n;
    let used = (avail + RING_HEADER + AVAIL_ELEM * n + EVENT_FIELD).next_multiple_of(4);
    (avail, used, used + RING_HEADER + USED_ELEM * n + EVENT_FIELD)
}

/// The driver half of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    mem: GuestMemoryMmap,
    dev: Arc<dyn DeviceAddr>,
    size: u16,
    event_idx: bool,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    /// Link of each descriptor: its free-list successor while free, its chain
    /// successor while outstanding (chains are carved off the free list's
    /// head in link order; recycling appends a chain at its tail).
    next: Vec<u16>,
    /// Per descriptor: length of the chain it heads while outstanding, else 0.
    chain_len: Vec<u16>,
    /// Per head: device-writable bytes of its chain (upper bound for used.len).
    writable_len: Vec<u32>,
    /// The free list is FIFO: a completed chain is reused last, so a head a
    /// restarted backend re-pops (see `recycle`) is still free, not carrying
    /// a newer request, for as long as possible.
    free_head: u16,
    free_tail: u16,
    num_free: u16,
    outstanding: usize,
    /// Next avail index to publish (== the avail.idx last stored).
    next_avail: u16,
    /// Avail index at the last kick decision, and how many chains since then.
    kick_idx: u16,
    added_since_kick: u32,
    /// Next used index to consume.
    last_used: u16,
    avail_flags: u16,
    interrupts_enabled: bool,
}

impl SplitQueue {
    /// Bytes of guest memory a queue of `size` needs (descriptor table, avail
    /// ring, padding, used ring).
    pub fn ring_bytes(size: u16) -> u64 {
        layout(size).2
    }

    /// Lay out a zeroed queue of `size` entries at `base` in `mem`.
    ///
    /// `event_idx` says whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub fn new(mem: GuestMemoryMmap, base: GuestAddress, size: u16, event_idx: bool) -> Result<Self, QueueError> {
        Self::with_device_addr(mem, base, size, event_idx, Arc::new(Identity))
    }

    /// Like `new`, with descriptor and ring addresses translated by `dev`
    /// for the device. Each ring part (descriptor table, avail ring, used
    /// ring) must be contiguous for the device.
    pub fn with_device_addr(
        mem: GuestMemoryMmap,
        base: GuestAddress,
        size: u16,
        event_idx: bool,
        dev: Arc<dyn DeviceAddr>,
    ) -> Result<Self, QueueError> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(QueueError::InvalidSize(size));
        }
        if !base.0.is_multiple_of(16) {
            return Err(QueueError::Misaligned(base));
        }
        let (avail_off, used_off, total) = layout(size);
        // After this check every ring address below is base + (offset < total): no overflow, no
        // unmapped access. GuestMemoryMmap is an immutable snapshot, so it stays true.
        let in_memory = base.0.checked_add(total).is_some() && mem.check_range(base, total as usize);
        if !in_memory {
            return Err(QueueError::RingOutsideMemory { base, len: total });
        }
        let n64 = u64::from(size);
        let parts = [
            (base.0, DESC_SIZE * n64),
            (base.0 + avail_off, RING_HEADER + AVAIL_ELEM * n64 + EVENT_FIELD),
            (base.0 + used_off, RING_HEADER + USED_ELEM * n64 + EVENT_FIELD),
        ];
        for (addr, len) in parts {
            if dev.device_addr(GuestAddress(addr), len).is_none() {
                return Err(QueueError::NotDeviceContiguous { addr: GuestAddress(addr), len });
            }
        }
        mem.write_slice(&vec![0u8; total as usize], base)?;
        let n = usize::from(size);
        Ok(Self {
            mem,
            dev,
            size,
            event_idx,
            desc_table: base,
            avail_ring: GuestAddress(base.0 + avail_off),
            used_ring: GuestAddress(base.0 + used_off),
            next: (1..=size).collect(),
            chain_len: vec![0; n],
            writable_len: vec![0; n],
            free_head: 0,
            free_tail: size - 1,
            num_free: size,
            outstanding: 0,
            next_avail: 0,
            kick_idx: 0,
            added_since_kick: 0,
            last_used: 0,
            avail_flags: 0,
            interrupts_enabled: true,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }
    /// Device addresses of the descriptor table, avail ring and used ring
    /// (checked at construction), for the device's queue registers.
    pub fn device_rings(&self) -> (u64, u64, u64) {
        let at = |a: GuestAddress| self.dev.device_addr(a, 1).expect("checked in with_device_addr");
        (at(self.desc_table), at(self.avail_ring), at(self.used_ring))
    }
    /// The next avail index the driver will publish: the base to arm a
    /// (re)connected backend with (`SET_VRING_BASE`).
    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }
    /// The next used index the driver will consume.
    pub fn last_used_idx(&self) -> u16 {
        self.last_used
    }
    /// Chains posted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
    pub fn free_descriptors(&self) -> usize {
        usize::from(self.num_free)
    }

    fn at(base: GuestAddress, off: u64) -> GuestAddress {
        GuestAddress(base.0 + off)
    }
    fn avail_idx_addr(&self) -> GuestAddress {
        Self::at(self.avail_ring, 2)
    }
    fn used_event_addr(&self) -> GuestAddress {
        Self::at(self.avail_ring, RING_HEADER + AVAIL_ELEM * u64::from(self.size))
    }
    fn used_idx_addr(&self) -> GuestAddress {
        Self::at(self.used_ring, 2)
    }
    fn avail_event_addr(&self) -> GuestAddress {
        Self::at(self.used_ring, RING_HEADER + USED_ELEM * u64::from(self.size))
    }
    fn slot(&self, idx: u16) -> u64 {
        u64::from(idx & (self.size - 1))
    }

    fn store_u16(&self, val: u16, addr: GuestAddress, order: Ordering) -> Result<(), QueueError> {
        Ok(self.mem.store(val.to_le(), addr, order)?)
    }
    fn load_u16(&self, addr: GuestAddress, order: Ordering) -> Result<u16, QueueError> {
        Ok(u16::from_le(self.mem.load(addr, order)?))
    }

    /// Post one chain of `(gpa, len, device_writable)` buffers and publish it.
    ///
    /// Device-readable buffers must come before device-writable ones. Returns
    /// the head index, which `pop_used` reports on completion. Several calls
    /// may be batched before one `needs_kick` decision.
    pub fn add_chain(&mut self, bufs: &[(GuestAddress, u32, bool)]) -> Result<u16, QueueError> {
        let (writable, device_addrs) = self.check_chain(bufs)?;
        if bufs.len() > usize::from(self.num_free) {
            return Err(QueueError::Full { needed: bufs.len(), free: usize::from(self.num_free) });
        }
        let head = self.free_head;
        let mut idx = head;
        for (i, (&(_, len, device_writable), &addr)) in bufs.iter().zip(&device_addrs).enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if device_writable { VIRTQ_DESC_F_WRITE } else { 0 };
            let mut next = 0;
            if !last {
                flags |= VIRTQ_DESC_F_NEXT;
                next = self.next[usize::from(idx)];
            }
            let mut raw = [0u8; DESC_SIZE as usize];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&raw, Self::at(self.desc_table, DESC_SIZE * u64::from(idx)))?;
            if !last {
                idx = next;
            }
        }
        let entry = Self::at(self.avail_ring, RING_HEADER + AVAIL_ELEM * self.slot(self.next_avail));
        self.store_u16(head, entry, Ordering::Relaxed)?;
        let new_avail = self.next_avail.wrapping_add(1);
        // Release: the descriptors and the ring entry written above must be visible to the device
        // before it can observe the new avail.idx (the virtio_wmb + idx store of Linux).
        fence(Ordering::Release);
        self.store_u16(new_avail, self.avail_idx_addr(), Ordering::Release)?;

        self.free_head = self.next[usize::from(idx)];
        self.num_free -= bufs.len() as u16; // <= num_free, checked above
        self.chain_len[usize::from(head)] = bufs.len() as u16; // <= size, checked in check_chain
        self.writable_len[usize::from(head)] = writable;
        self.outstanding += 1;
        self.next_avail = new_avail;
        self.added_since_kick = self.added_since_kick.saturating_add(1);
        Ok(head)
    }

    /// Validate a chain's shape; returns its device-writable byte count and
    /// the buffers' device addresses.
    fn check_chain(&self, bufs: &[(GuestAddress, u32, bool)]) -> Result<(u32, Vec<u64>), QueueError> {
        if bufs.is_empty() {
            return Err(QueueError::EmptyChain);
        }
        if bufs.len() > usize::from(self.size) {
            return Err(QueueError::ChainTooLong { len: bufs.len(), max: self.size });
        }
        let (mut total, mut writable, mut seen_writable) = (0u64, 0u64, false);
        let mut device_addrs = Vec::with_capacity(bufs.len());
        for (index, &(addr, len, device_writable)) in bufs.iter().enumerate() {
            if len == 0 {
                return Err(QueueError::EmptyBuffer { index });
            }
            if !device_writable && seen_writable {
                return Err(QueueError::ReadableAfterWritable { index });
            }
            let in_memory = addr.0.checked_add(u64::from(len)).is_some() && self.mem.check_range(addr, len as usize);
            if !in_memory {
                return Err(QueueError::BufferOutsideMemory { index, addr, len });
            }
            let dev_addr = self.dev.device_addr(addr, u64::from(len));
            device_addrs.push(dev_addr.ok_or(QueueError::NotDeviceContiguous { addr, len: u64::from(len) })?);
            seen_writable |= device_writable;
            total += u64::from(len);
            if device_writable {
                writable += u64::from(len);
            }
        }
        // Spec 2.7.5.2: a chain must not exceed 2^32 bytes; the used len is a u32 too.
        if total > u64::from(u32::MAX) {
            return Err(QueueError::ChainTooLarge { total });
        }
        Ok((writable as u32, device_addrs)) // writable <= total
    }

    /// Whether the device must be kicked for the chains added since the last
    /// call. Returns false when nothing was added since then.
    pub fn needs_kick(&mut self) -> bool {
        let (old, new, added) = (self.kick_idx, self.next_avail, self.added_since_kick);
        self.kick_idx = new;
        self.added_since_kick = 0;
        if added == 0 {
            return false;
        }
        if added > u32::from(u16::MAX) {
            return true; // the u16 window below cannot express this many
        }
        // Full fence (store -> load): our avail.idx store must be visible before we read the
        // device's suppression state; otherwise the device may read the old idx, go to sleep,
        // and we read its stale "don't kick me" and never wake it.
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            self.load_u16(self.avail_event_addr(), Ordering::Relaxed)
                .map(|event| super::vring_need_event(event, new, old))
        } else {
            self.load_u16(self.used_ring, Ordering::Relaxed).map(|flags| flags & VRING_USED_F_NO_NOTIFY == 0)
        };
        // The ring range was validated at construction; if memory fails anyway, kicking is safe.
        need.unwrap_or(true)
    }

    /// Take the next completion: `(head, bytes the device wrote)`.
    ///
    /// Everything read here is device-controlled. A bad id or length is
    /// reported as an error (the bad used entry is consumed, so later valid
    /// entries can still be harvested); a used.idx more than `size` entries
    /// ahead is reported without consuming anything.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, QueueError> {
        // Acquire pairs with the device's release store of used.idx, so the element we read
        // next is the one the device wrote before bumping the index.
        let used_idx = self.load_u16(self.used_idx_addr(), Ordering::Acquire)?;
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            // More completions than the ring holds: used.idx is garbage. Consume nothing.
            return Err(QueueError::UsedIdxAhead { used_idx, last_used: self.last_used, size: self.size });
        }
        let mut elem = [0u8; USED_ELEM as usize];
        let elem_addr = Self::at(self.used_ring, RING_HEADER + USED_ELEM * self.slot(self.last_used));
        self.mem.read_slice(&mut elem, elem_addr)?;
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        self.last_used = self.last_used.wrapping_add(1);
        if self.interrupts_enabled && self.event_idx {
            // Keep asking for an interrupt at the next new entry while interrupts are on. No fence:
            // a caller about to sleep goes through enable_interrupts, which fences and re-checks.
            let _ = self.store_u16(self.last_used, self.used_event_addr(), Ordering::Relaxed);
        }

        let head = u16::try_from(id).ok().filter(|&h| h < self.size);
        let Some(head) = head else {
            return Err(QueueError::UsedIdOutOfRange { id, size: self.size });
        };
        if self.chain_len[usize::from(head)] == 0 {
            return Err(QueueError::UsedIdNotOutstanding { id: head });
        }
        let max = self.writable_len[usize::from(head)];
        self.recycle(head);
        if len > max {
            return Err(QueueError::UsedLenTooLarge { head, len, max });
        }
        Ok(Some((head, len)))
    }

    /// Return the chain headed by `head` (outstanding) to the free list, its
    /// descriptors zeroed. A backend restarted at the used index (QEMU,
    /// protocol §11.2) can re-pop a head the guest has already completed: a
    /// zeroed descriptor makes that an empty chain the VSP refuses, not a
    /// re-run of buffers that may by now hold another request's bytes.
    fn recycle(&mut self, head: u16) {
        let n = self.chain_len[usize::from(head)];
        let mut tail = head;
        for i in 0..n {
            let at = Self::at(self.desc_table, DESC_SIZE * u64::from(tail));
            if let Err(e) = self.mem.write_slice(&[0u8; DESC_SIZE as usize], at) {
                log::warn!("cannot clear descriptor {tail}: {e}");
            }
            if i + 1 < n {
                tail = self.next[usize::from(tail)];
            }
        }
        if self.num_free == 0 {
            self.free_head = head;
        } else {
            self.next[usize::from(self.free_tail)] = head;
        }
        self.free_tail = tail;
        self.num_free += n;
        self.chain_len[usize::from(head)] = 0;
        self.writable_len[usize::from(head)] = 0;
        self.outstanding -= 1;
    }

    /// Store a used index `size + 1` past the driver's, the way a corrupt
    /// device would (tests of the recovery path).
    #[cfg(any(test, feature = "test-util"))]
    pub fn scribble_used_idx_for_test(&self) -> Result<(), QueueError> {
        let bogus = self.last_used.wrapping_add(self.size).wrapping_add(1);
        self.store_u16(bogus, self.used_idx_addr(), Ordering::Release)
    }

    /// Ask the device for an interrupt on the next completion.
    ///
    /// Returns true if completions already arrived that `pop_used` has not
    /// taken: the caller must poll again instead of sleeping, or it could
    /// wait for an interrupt the device decided not to send.
    pub fn enable_interrupts(&mut self) -> bool {
        self.interrupts_enabled = true;
        let published = if self.event_idx {
            self.store_u16(self.last_used, self.used_event_addr(), Ordering::Relaxed)
        } else {
            self.avail_flags &= !VRING_AVAIL_F_NO_INTERRUPT;
            self.store_u16(self.avail_flags, self.avail_ring, Ordering::Relaxed)
        };
        // Full fence (store -> load): the device must be able to see the request above before we
        // re-read used.idx, or an entry added in between would go unsignalled and unnoticed.
        fence(Ordering::SeqCst);
        let used = self.load_u16(self.used_idx_addr(), Ordering::Acquire);
        // If memory fails (cannot happen on the validated range), "poll again" is the safe answer.
        published.is_err() || !matches!(used, Ok(idx) if idx == self.last_used)
    }

    /// Ask the device not to interrupt (best effort: a late interrupt may
    /// still arrive and is harmless).
    pub fn disable_interrupts(&mut self) {
        self.interrupts_enabled = false;
        let res = if self.event_idx {
            // Spec: with EVENT_IDX the avail flags must stay 0. Park used_event half the index space
            // away; the device cannot cross it before the driver has consumed ~32K more entries.
            self.store_u16(self.last_used.wrapping_add(0x8000), self.used_event_addr(), Ordering::Relaxed)
        } else {
            self.avail_flags |= VRING_AVAIL_F_NO_INTERRUPT;
            self.store_u16(self.avail_flags, self.avail_ring, Ordering::Relaxed)
        };
        if let Err(e) = res {
            log::warn!("virtqueue: cannot disable interrupts: {e}");
        }
    }

    /// Forget every outstanding chain after the device went away.
    ///
    /// Returns the heads that were outstanding (sorted) so the caller can fail
    /// those requests, and puts all descriptors back on the free list.
    /// `avail_idx()` and `last_used_idx()` are kept so a new backend can be
    /// armed at `avail_idx()`. Completions the old device wrote but
    /// `pop_used` did not take are dropped (their heads are in the returned
    /// list; drain `pop_used` first to keep them): used.idx is rewound to
    /// `last_used_idx()` because a vhost-user backend reloads its used index
    /// from there. The device-owned used.flags and avail_event are reset so
    /// stale suppression from the old device cannot swallow the first kick.
    pub fn reset_after_disconnect(&mut self) -> Vec<u16> {
        let heads: Vec<u16> = (0..self.size).filter(|&h| self.chain_len[usize::from(h)] != 0).collect();
        self.next = (1..=self.size).collect();
        self.chain_len.fill(0);
        self.writable_len.fill(0);
        self.free_head = 0;
        self.free_tail = self.size - 1;
        self.num_free = self.size;
        self.outstanding = 0;
        self.kick_idx = self.next_avail;
        self.added_since_kick = 0;
        let res = self
            .store_u16(0, self.used_ring, Ordering::Relaxed)
            .and_then(|()| self.store_u16(self.next_avail, self.avail_event_addr(), Ordering::Relaxed))
            .and_then(|()| self.store_u16(self.last_used, self.used_idx_addr(), Ordering::Release));
        if let Err(e) = res {
            log::warn!("virtqueue: cannot reset the used ring: {e}");
        }
        heads
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::Ordering;

    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::SplitQueue;
    use crate::transport::virtio::{QueueError, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

    pub(crate) const RING: GuestAddress = GuestAddress(0x1_0000);
    pub(crate) const DATA: u64 = 0x10_0000;

    pub(crate) type Buf = (GuestAddress, u32, bool);

    pub(crate) fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// The virtio-queue device model, pointed at the driver's rings.
    pub(crate) fn device_for(q: &SplitQueue, mem: &GuestMemoryMmap, event_idx: bool) -> Queue {
        let mut dev = Queue::new(q.size()).unwrap();
        dev.try_set_desc_table_address(q.desc_table()).unwrap();
        dev.try_set_avail_ring_address(q.avail_ring()).unwrap();
        dev.try_set_used_ring_address(q.used_ring()).unwrap();
        dev.set_event_idx(event_idx);
        dev.set_ready(true);
        assert!(dev.is_valid(mem));
        dev
    }

    /// Driver queue plus the device model on the same memory.
    pub(crate) fn pair(size: u16, event_idx: bool) -> (GuestMemoryMmap, SplitQueue, Queue) {
        let mem = memory();
        let q = SplitQueue::new(mem.clone(), RING, size, event_idx).unwrap();
        let dev = device_for(&q, &mem, event_idx);
        (mem, q, dev)
    }

    /// The device pops one chain: its head and descriptors.
    pub(crate) fn device_pop(dev: &mut Queue, mem: &GuestMemoryMmap) -> Option<(u16, Vec<Descriptor>)> {
        let chain = dev.pop_descriptor_chain(mem)?;
        Some((chain.head_index(), chain.collect()))
    }

    /// The device saw exactly `bufs`, with NEXT on all but the last descriptor.
    pub(crate) fn assert_chain(descs: &[Descriptor], bufs: &[Buf]) {
        assert_eq!(descs.len(), bufs.len());
        for (i, (d, &(addr, len, writable))) in descs.iter().zip(bufs).enumerate() {
            let last = i + 1 == bufs.len();
            let flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            assert_eq!((d.addr(), d.len(), d.flags()), (addr, len, flags), "descriptor {i}");
        }
    }

    /// Simulate a device writing used entry `idx` = {id, len} and bumping used.idx.
    fn push_raw_used(mem: &GuestMemoryMmap, q: &SplitQueue, idx: u16, id: u32, len: u32) {
        let slot = u64::from(idx % q.size());
        let elem = GuestAddress(q.used_ring().0 + 4 + 8 * slot);
        mem.write_obj(id.to_le(), elem).unwrap();
        mem.write_obj(len.to_le(), GuestAddress(elem.0 + 4)).unwrap();
        set_used_idx(mem, q, idx.wrapping_add(1));
    }

    fn set_used_idx(mem: &GuestMemoryMmap, q: &SplitQueue, idx: u16) {
        mem.store(idx.to_le(), GuestAddress(q.used_ring().0 + 2), Ordering::Release).unwrap();
    }

    pub(crate) fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> u16 {
        u16::from_le(mem.load(GuestAddress(addr), Ordering::Acquire).unwrap())
    }

    fn buf(page: u64, len: u32, writable: bool) -> Buf {
        (GuestAddress(DATA + page * 0x1000), len, writable)
    }

    #[test]
    fn layout_sizes_alignment_and_zeroing() {
        assert_eq!(SplitQueue::ring_bytes(1), 16 + 8 + 14);
        // 4096 desc + 518 avail -> used at 4616 (4-aligned) + 2054.
        assert_eq!(SplitQueue::ring_bytes(256), 4616 + 2054);
        assert_eq!(SplitQueue::ring_bytes(32768), 589_832 + 262_150);

        let mem = memory();
        let len = SplitQueue::ring_bytes(256) as usize;
        mem.write_slice(&vec![0xa5; len], RING).unwrap();
        let q = SplitQueue::new(mem.clone(), RING, 256, false).unwrap();
        assert_eq!(
            (q.desc_table(), q.avail_ring(), q.used_ring()),
            (RING, GuestAddress(RING.0 + 4096), GuestAddress(RING.0 + 4616))
        );
        let mut back = vec![0xffu8; len];
        mem.read_slice(&mut back, RING).unwrap();
        assert!(back.iter().all(|&b| b == 0), "rings are zeroed");
        assert_eq!(
            (q.size(), q.free_descriptors(), q.outstanding(), q.avail_idx(), q.last_used_idx()),
            (256, 256, 0, 0, 0)
        );
        assert!(SplitQueue::new(mem.clone(), RING, 32768, true).is_ok());

        for size in [0, 3, 48, 65535] {
            assert!(
                matches!(SplitQueue::new(mem.clone(), RING, size, false), Err(QueueError::InvalidSize(s)) if s == size)
            );
        }
        assert!(matches!(
            SplitQueue::new(mem.clone(), GuestAddress(0x1_0008), 8, false),
            Err(QueueError::Misaligned(_))
        ));
        let end = GuestAddress((16 << 20) - 16);
        assert!(matches!(SplitQueue::new(mem.clone(), end, 8, false), Err(QueueError::RingOutsideMemory { .. })));
        let wrap = GuestAddress(u64::MAX - 15);
        assert!(matches!(SplitQueue::new(mem, wrap, 8, false), Err(QueueError::RingOutsideMemory { .. })));
    }

    #[test]
    fn chains_reach_the_device_intact_and_recycle() {
        for event_idx in [false, true] {
            let (mem, mut q, mut dev) = pair(16, event_idx);
            let chains: Vec<Vec<Buf>> = vec![
                vec![buf(0, 56, false), buf(1, 100, false), buf(2, 4096, true), buf(3, 12, true)],
                vec![buf(4, 1, true)],
                vec![buf(5, 512, false)],
                vec![buf(6, 8, false), buf(7, 9, false), buf(8, 10, false), buf(9, 11, true), buf(10, 12, true)],
            ];
            let heads: Vec<u16> = chains.iter().map(|c| q.add_chain(c).unwrap()).collect();
            assert_eq!((q.free_descriptors(), q.outstanding(), q.avail_idx()), (16 - 11, 4, 4));
            assert_eq!(read_u16(&mem, q.avail_ring().0 + 2), 4, "avail.idx published");

            for (head, chain) in heads.iter().zip(&chains) {
                let (dev_head, descs) = device_pop(&mut dev, &mem).expect("device sees the chain");
                assert_eq!(dev_head, *head);
                assert_chain(&descs, chain);
            }
            assert!(device_pop(&mut dev, &mem).is_none());

            assert_eq!(q.pop_used().unwrap(), None);
            let lens = [4108, 1, 0, 23];
            for (&head, &len) in heads.iter().zip(&lens) {
                dev.add_used(&mem, head, len).unwrap();
            }
            for (&head, &len) in heads.iter().zip(&lens) {
                assert_eq!(q.pop_used().unwrap(), Some((head, len)));
            }
            assert_eq!(q.pop_used().unwrap(), None);
            assert_eq!((q.free_descriptors(), q.outstanding(), q.last_used_idx()), (16, 0, 4));
        }
    }

    #[test]
    fn malformed_chains_are_rejected_without_side_effects() {
        let (_mem, mut q, _dev) = pair(8, false);
        let too_long: Vec<Buf> = (0..9).map(|i| buf(i, 1, false)).collect();
        let cases: Vec<(Vec<Buf>, &str)> = vec![
            (vec![], "empty"),
            (too_long, "too long"),
            (vec![buf(0, 8, false), buf(1, 0, true)], "zero length"),
            (vec![buf(0, 8, true), buf(1, 8, false)], "readable after writable"),
            (vec![(GuestAddress((16 << 20) - 8), 16, false)], "past the end of memory"),
            (vec![(GuestAddress(u64::MAX - 4), 16, true)], "address wraps"),
        ];
        for (chain, what) in cases {
            let err = q.add_chain(&chain).expect_err(what);
            let ok = match what {
                "empty" => matches!(err, QueueError::EmptyChain),
                "too long" => matches!(err, QueueError::ChainTooLong { len: 9, max: 8 }),
                "zero length" => matches!(err, QueueError::EmptyBuffer { index: 1 }),
                "readable after writable" => matches!(err, QueueError::ReadableAfterWritable { index: 1 }),
                _ => matches!(err, QueueError::BufferOutsideMemory { index: 0, .. }),
            };
            assert!(ok, "{what}: {err:?}");
            assert_eq!((q.free_descriptors(), q.outstanding(), q.avail_idx()), (8, 0, 0), "{what}");
        }
    }

    #[test]
    fn chain_over_4_gib_is_rejected() {
        // Two 2 GiB descriptors: each is valid, their sum is not (spec: chain < 2^32 bytes).
        // MAP_NORESERVE anonymous memory, so the untouched 3 GiB costs nothing.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 3 << 30)]).unwrap();
        let mut q = SplitQueue::new(mem, RING, 8, false).unwrap();
        let big = (GuestAddress(0x1000_0000), 0x8000_0000, false);
        assert!(matches!(q.add_chain(&[big, big]), Err(QueueError::ChainTooLarge { total: 0x1_0000_0000 })));
        assert_eq!(q.free_descriptors(), 8);
        assert!(q.add_chain(&[big]).is_ok());
    }

    #[test]
    fn full_queue_back_pressure_then_completion_frees_space() {
        let (mem, mut q, mut dev) = pair(8, false);
        let mut heads = Vec::new();
        for i in 0..8 {
            heads.push(q.add_chain(&[buf(i, 64, true)]).unwrap());
        }
        let mut sorted = heads.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<u16>>(), "each descriptor used once");
        assert!(matches!(q.add_chain(&[buf(9, 1, false)]), Err(QueueError::Full { needed: 1, free: 0 })));
        for _ in 0..8 {
            device_pop(&mut dev, &mem).unwrap();
        }

        dev.add_used(&mem, heads[3], 64).unwrap();
        assert_eq!(q.pop_used().unwrap(), Some((heads[3], 64)));
        assert_eq!(q.free_descriptors(), 1);
        assert!(matches!(
            q.add_chain(&[buf(9, 1, false), buf(10, 1, true)]),
            Err(QueueError::Full { needed: 2, free: 1 })
        ));
        let reused = q.add_chain(&[buf(11, 7, false)]).unwrap();
        assert_eq!(reused, heads[3], "the freed descriptor is reused");
        let (h, descs) = device_pop(&mut dev, &mem).unwrap();
        assert_eq!(h, reused);
        assert_chain(&descs, &[buf(11, 7, false)]);

        for &h in &[heads[0], heads[6]] {
            dev.add_used(&mem, h, 0).unwrap();
            assert_eq!(q.pop_used().unwrap(), Some((h, 0)));
        }
        let pair_chain = [buf(12, 3, false), buf(13, 4, true)];
        let h = q.add_chain(&pair_chain).unwrap();
        let (dh, descs) = device_pop(&mut dev, &mem).unwrap();
        assert_eq!(dh, h);
        assert_chain(&descs, &pair_chain);
        assert_eq!((q.free_descriptors(), q.outstanding()), (0, 7));
    }

    #[test]
    fn out_of_order_completion_keeps_the_free_list_intact() {
        let (mem, mut q, mut dev) = pair(16, true);
        let shapes = [3usize, 1, 4, 2, 5];
        let mut heads = Vec::new();
        for (c, &n) in shapes.iter().enumerate() {
            let chain: Vec<Buf> = (0..n).map(|i| buf((c * 8 + i) as u64, 32, i + 1 == n)).collect();
            heads.push(q.add_chain(&chain).unwrap());
        }
        assert_eq!(q.free_descriptors(), 1);
        while device_pop(&mut dev, &mem).is_some() {}
        for (k, &c) in [2usize, 0, 4, 1, 3].iter().enumerate() {
            dev.add_used(&mem, heads[c], 32).unwrap();
            assert_eq!(q.pop_used().unwrap(), Some((heads[c], 32)), "completion {k}");
        }
        assert_eq!((q.free_descriptors(), q.outstanding()), (16, 0));

        // One chain using every descriptor: the recycled links must form a proper 16-long list.
        let all: Vec<Buf> = (0..16).map(|i| buf(100 + i, 100 + i as u32, i >= 10)).collect();
        let h = q.add_chain(&all).unwrap();
        let (dh, descs) = device_pop(&mut dev, &mem).unwrap();
        assert_eq!(dh, h);
        assert_chain(&descs, &all);
        dev.add_used(&mem, h, 6 * 100).unwrap();
        assert_eq!(q.pop_used().unwrap(), Some((h, 600)));
        assert_eq!(q.free_descriptors(), 16);
    }

    #[test]
    fn a_completed_chain_is_zeroed_and_reused_last() {
        let (mem, mut q, mut dev) = pair(8, true);
        let first = q.add_chain(&[buf(1, 64, false), buf(2, 64, true)]).unwrap();
        device_pop(&mut dev, &mem).unwrap();
        dev.add_used(&mem, first, 12).unwrap();
        assert_eq!(q.pop_used().unwrap(), Some((first, 12)));
        // A backend restarted at the used index re-reads the head: it finds nothing to run.
        let d = mem.read_obj::<[u8; 16]>(q.desc_table()).unwrap();
        assert_eq!(d, [0u8; 16], "the completed head's descriptor is cleared");
        let d = mem.read_obj::<[u8; 16]>(GuestAddress(q.desc_table().0 + 16)).unwrap();
        assert_eq!(d, [0u8; 16], "and the rest of its chain");
        // Six descriptors are free before the recycled two: they go first.
        let mut heads = Vec::new();
        for i in 0..6 {
            heads.push(q.add_chain(&[buf(10 + i, 32, true)]).unwrap());
        }
        assert!(!heads.contains(&first), "a recycled head is reused after every other free one: {heads:?}");
        assert_eq!(q.add_chain(&[buf(20, 32, true)]).unwrap(), first);
    }

    /// xorshift64: deterministic randomness for the stress tests.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn two_hundred_thousand_round_trips_across_index_wraps() {
        const ROUND_TRIPS: u64 = 200_000;
        let (mem, mut q, mut dev) = pair(16, true);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut expected: Vec<Option<(Vec<Buf>, u32)>> = vec![None; 16];
        let mut in_device: Vec<u16> = Vec::new(); // popped by the device, not yet completed
        let (mut added, mut completed) = (0u64, 0u64);
        while completed < ROUND_TRIPS {
            // Driver: post a small batch of random chains while they fit.
            for _ in 0..=rng.below(4) {
                let n = 1 + rng.below(3) as usize;
                if added == ROUND_TRIPS || n > q.free_descriptors() {
                    break;
                }
                let chain: Vec<Buf> = (0..n)
                    .map(|i| buf(rng.below(2048), 1 + rng.below(8192) as u32, i + 1 == n && rng.below(2) == 0))
                    .collect();
                let head = q.add_chain(&chain).unwrap();
                let writable = chain.iter().filter(|b| b.2).map(|b| b.1).sum::<u32>();
                assert!(expected[usize::from(head)].replace((chain, writable)).is_none(), "head {head} reused early");
                added += 1;
            }
            // Device: take everything, check it, complete one random chain.
            while let Some((head, descs)) = device_pop(&mut dev, &mem) {
                assert_chain(&descs, &expected[usize::from(head)].as_ref().unwrap().0);
                in_device.push(head);
            }
            if !in_device.is_empty() {
                let head = in_device.swap_remove(rng.below(in_device.len() as u64) as usize);
                let writable = expected[usize::from(head)].as_ref().unwrap().1;
                dev.add_used(&mem, head, writable).unwrap();
                assert_eq!(q.pop_used().unwrap(), Some((head, writable)));
                expected[usize::from(head)] = None;
                completed += 1;
            }
            assert_eq!(q.outstanding(), in_device.len());
        }
        assert!(added > 3 * 65536, "the u16 indices wrapped several times");
        assert_eq!(q.avail_idx(), (added % 65536) as u16);
        assert_eq!(q.last_used_idx(), (completed % 65536) as u16);
        assert_eq!((dev.next_avail(), dev.next_used()), (q.avail_idx(), q.last_used_idx()));
        assert_eq!(q.free_descriptors(), 16);
    }

    #[test]
    fn hostile_used_ring_is_reported_not_trusted() {
        let (mem, mut q, mut dev) = pair(8, false);
        let a = q.add_chain(&[buf(0, 56, false), buf(1, 100, true)]).unwrap();
        let b = q.add_chain(&[buf(2, 8, false)]).unwrap();
        let c = q.add_chain(&[buf(3, 8, false), buf(4, 8, true), buf(5, 8, true)]).unwrap();
        assert_eq!((a, b, c), (0, 2, 3));
        while device_pop(&mut dev, &mem).is_some() {}
        let steady = |q: &SplitQueue, free, outstanding| {
            assert_eq!((q.free_descriptors(), q.outstanding()), (free, outstanding));
        };

        // Ids outside the queue; a free descriptor; a non-head member of chain `a`.
        let mut idx = 0u16;
        for (id, want_range) in [(8u32, true), (u32::MAX, true), (7, false), (1, false)] {
            push_raw_used(&mem, &q, idx, id, 0);
            idx += 1;
            match q.pop_used() {
                Err(QueueError::UsedIdOutOfRange { id: got, size: 8 }) if want_range => assert_eq!(got, id),
                Err(QueueError::UsedIdNotOutstanding { id: got }) if !want_range => assert_eq!(u32::from(got), id),
                other => panic!("id {id}: {other:?}"),
            }
            steady(&q, 2, 3);
        }
        assert_eq!(q.last_used_idx(), 4, "bad entries are consumed");

        // A real completion still works; completing it twice is refused.
        push_raw_used(&mem, &q, idx, u32::from(b), 0);
        idx += 1;
        assert_eq!(q.pop_used().unwrap(), Some((b, 0)));
        push_raw_used(&mem, &q, idx, u32::from(b), 0);
        idx += 1;
        assert!(matches!(q.pop_used(), Err(QueueError::UsedIdNotOutstanding { id }) if id == b));
        steady(&q, 3, 2);

        // A length beyond the chain's writable bytes: reported with the head, chain recycled.
        push_raw_used(&mem, &q, idx, u32::from(a), 101);
        idx += 1;
        assert!(matches!(q.pop_used(), Err(QueueError::UsedLenTooLarge { head, len: 101, max: 100 }) if head == a));
        steady(&q, 5, 1);

        // used.idx jumping more than `size` ahead (or moving backwards): nothing is consumed.
        for bogus in [idx + 9, idx.wrapping_sub(1), idx + 0x8000] {
            set_used_idx(&mem, &q, bogus);
            assert!(matches!(q.pop_used(), Err(QueueError::UsedIdxAhead { used_idx, last_used, size: 8 })
                if used_idx == bogus && last_used == idx));
            assert_eq!(q.last_used_idx(), idx);
            steady(&q, 5, 1);
        }
        set_used_idx(&mem, &q, idx);
        assert_eq!(q.pop_used().unwrap(), None);

        // The device scribbles over the whole descriptor table; our links are private.
        mem.write_slice(&[0xff; 8 * 16], q.desc_table()).unwrap();
        push_raw_used(&mem, &q, idx, u32::from(c), 16);
        assert_eq!(q.pop_used().unwrap(), Some((c, 16)));
        steady(&q, 8, 0);
        let all: Vec<Buf> = (0..8).map(|i| buf(20 + i, 1, false)).collect();
        let h = q.add_chain(&all).unwrap();
        let mut fresh = device_for(&q, &mem, false);
        fresh.set_next_avail(q.avail_idx() - 1);
        fresh.set_next_used(q.last_used_idx());
        let (dh, descs) = device_pop(&mut fresh, &mem).unwrap();
        assert_eq!(dh, h);
        assert_chain(&descs, &all);
    }

    #[test]
    fn reset_after_disconnect_returns_the_outstanding_heads() {
        let (mem, mut q, mut dev) = pair(8, true);
        let shapes = [1usize, 2, 1, 3, 1];
        let heads: Vec<u16> = shapes
            .iter()
            .enumerate()
            .map(|(c, &n)| q.add_chain(&(0..n).map(|i| buf((c * 4 + i) as u64, 16, true)).collect::<Vec<_>>()).unwrap())
            .collect();
        assert_eq!(q.free_descriptors(), 0);
        while device_pop(&mut dev, &mem).is_some() {}
        dev.add_used(&mem, heads[1], 32).unwrap();
        dev.add_used(&mem, heads[3], 48).unwrap();
        assert_eq!(q.pop_used().unwrap(), Some((heads[1], 32)));
        // heads[3] completed in the used ring but never popped: the old device is gone before we look.

        let mut failed = q.reset_after_disconnect();
        let mut want = vec![heads[0], heads[2], heads[3], heads[4]];
        want.sort_unstable();
        failed.sort_unstable();
        assert_eq!(failed, want);
        assert_eq!((q.free_descriptors(), q.outstanding(), q.avail_idx(), q.last_used_idx()), (8, 0, 5, 1));
        let used = q.used_ring().0;
        assert_eq!(read_u16(&mem, used + 2), 1, "used.idx rewound to what the driver consumed");
        assert_eq!(read_u16(&mem, used + 4 + 8 * 8), 5, "avail_event re-armed at avail_idx");
        assert_eq!(q.pop_used().unwrap(), None, "the stale completion is not delivered");
        assert!(q.reset_after_disconnect().is_empty());

        // A new backend armed like vhost-user: next_avail = avail_idx(), next_used = used.idx.
        let mut dev = device_for(&q, &mem, true);
        dev.set_next_avail(q.avail_idx());
        dev.set_next_used(read_u16(&mem, used + 2));
        let chain = [buf(30, 56, false), buf(31, 12, true)];
        let h = q.add_chain(&chain).unwrap();
        assert!(q.needs_kick(), "first kick after reconnect is not suppressed");
        let (dh, descs) = device_pop(&mut dev, &mem).unwrap();
        assert_eq!(dh, h);
        assert_chain(&descs, &chain);
        assert!(device_pop(&mut dev, &mem).is_none());
        dev.add_used(&mem, h, 12).unwrap();
        assert_eq!(q.pop_used().unwrap(), Some((h, 12)));
    }

    /// Pages seen by the device 4 GiB higher, each page on its own: a range
    /// crossing a page boundary is not contiguous.
    #[derive(Debug)]
    struct PerPage;
    impl crate::transport::virtio::DeviceAddr for PerPage {
        fn device_addr(&self, addr: GuestAddress, len: u64) -> Option<u64> {
            let end = addr.0.checked_add(len)?;
            (len > 0 && addr.0 / 0x1000 == (end - 1) / 0x1000).then_some(addr.0 + (1 << 32))
        }
    }

    #[test]
    fn device_addresses_are_translated_and_must_be_contiguous() {
        let mem = memory();
        let mut q = SplitQueue::with_device_addr(mem.clone(), RING, 8, false, std::sync::Arc::new(PerPage)).unwrap();
        let (desc, avail, used) = q.device_rings();
        assert_eq!(desc, RING.0 + (1 << 32));
        assert_eq!((avail, used), (q.avail_ring().0 + (1 << 32), q.used_ring().0 + (1 << 32)));
        let h = q.add_chain(&[buf(0, 56, false), buf(1, 4096, true)]).unwrap();
        let addr: u64 = mem.read_obj(GuestAddress(q.desc_table().0 + 16 * u64::from(h))).unwrap();
        assert_eq!(u64::from_le(addr), DATA + (1 << 32));
        let crossing = (GuestAddress(DATA + 0x2800), 0x1000, false);
        assert!(matches!(q.add_chain(&[crossing]), Err(QueueError::NotDeviceContiguous { len: 0x1000, .. })));
        assert_eq!((q.free_descriptors(), q.outstanding()), (6, 1), "a refused chain takes nothing");
        // A 1024-entry descriptor table spans four pages.
        let err = SplitQueue::with_device_addr(mem, RING, 1024, false, std::sync::Arc::new(PerPage)).unwrap_err();
        assert!(matches!(err, QueueError::NotDeviceContiguous { .. }), "{err}");
    }
}
