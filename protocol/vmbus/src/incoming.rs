//! The reading end of a ring (`../shared/notes/vmbus.md` §1.6, §1.7, §1.8).

use std::sync::atomic::{Ordering, fence};

use crate::packet::{
    FLAG_COMPLETION_REQUESTED, Packet, VM_PKT_COMP, VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT,
    VM_PKT_DATA_USING_XFER_PAGES, parse_packet,
};

use super::control::{
    ControlWord, CorruptError, DESCRIPTOR_SIZE, Descriptor, FEATURE_PENDING_SEND_SIZE, ReadError, RingError,
    TRAILER_SIZE, advance, avail_to_read, avail_to_write, data_size, load_index,
};
use super::ring_mem::RingMem;

/// The reader of one ring. Owns `read_index` and `interrupt_mask`; trusts nothing the writer
/// stored.
///
/// Reads are private until [`commit_read`](Self::commit_read) releases their space, so a batch
/// costs one index store and at most one signal.
#[derive(Debug)]
pub struct IncomingRing<M> {
    mem: M,
    dsize: usize,
    /// `read_index` as last published.
    committed: usize,
    /// Start of the next unread packet.
    next: usize,
}

impl<M: RingMem> IncomingRing<M> {
    /// Attaches to a ring at its current `read_index`. Leaves `interrupt_mask` as it is: a reader
    /// that wants signals calls [`unmask_and_check`](Self::unmask_and_check) before sleeping.
    pub fn new(mem: M) -> Result<Self, RingError> {
        let dsize = data_size(&mem)?;
        let start = load_index(&mem, ControlWord::ReadIndex, dsize)?;
        Ok(IncomingRing { mem, dsize, committed: start, next: start })
    }

    /// The ring's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Size of the data area.
    pub fn data_size(&self) -> usize {
        self.dsize
    }

    /// `read_index` as last published by [`commit_read`](Self::commit_read).
    pub fn committed_index(&self) -> usize {
        self.committed
    }

    /// Whether the writer announced that it honours `pending_send_sz`.
    pub fn supports_pending_send_size(&self) -> bool {
        self.mem.load(ControlWord::FeatureBits, Ordering::Acquire) & FEATURE_PENDING_SEND_SIZE != 0
    }

    /// Whether a packet (or garbage) waits past the private read position.
    pub fn can_read(&self) -> Result<bool, CorruptError> {
        Ok(load_index(&self.mem, ControlWord::WriteIndex, self.dsize)? != self.next)
    }

    /// Copies the next packet (descriptor to padding, without trailer) out of the ring and
    /// checks its descriptor. The copy is what the caller parses: the writer may change the
    /// shared bytes at any time. On an error nothing moves.
    pub fn read(&mut self) -> Result<Vec<u8>, ReadError> {
        // Acquire: the packet bytes the writer wrote before publishing are visible below.
        let write = load_index(&self.mem, ControlWord::WriteIndex, self.dsize)?;
        let available = avail_to_read(self.next, write, self.dsize);
        if available == 0 {
            return Err(ReadError::Empty);
        }
        if available < DESCRIPTOR_SIZE + TRAILER_SIZE {
            return Err(CorruptError::Truncated { available }.into());
        }
        let mut head = [0u8; DESCRIPTOR_SIZE];
        self.mem.read_at(self.next, &mut head);
        let d = Descriptor::parse(&head);
        check_descriptor(&d, available)?;
        // The descriptor is copied once: the packet carries the bytes that were checked, even if
        // the writer rewrites them now.
        let mut packet = vec![0u8; d.len()];
        packet[..DESCRIPTOR_SIZE].copy_from_slice(&head);
        self.mem.read_at(advance(self.next, DESCRIPTOR_SIZE, self.dsize), &mut packet[DESCRIPTOR_SIZE..]);
        self.next = advance(self.next, d.len() + TRAILER_SIZE, self.dsize);
        Ok(packet)
    }

    /// [`read`](Self::read), then parses the copy with the protocol crate (at most `max_pages`
    /// GPA-direct PFNs). A packet the parser refuses is `Corrupt` and stays unread.
    /// Transfer-page packets are refused this way: the protocol has none.
    pub fn read_packet(&mut self, max_pages: usize) -> Result<Packet, ReadError> {
        let at = self.next;
        let bytes = self.read()?;
        parse_packet(&bytes, max_pages).map_err(|e| {
            self.next = at;
            ReadError::Corrupt(e.into())
        })
    }

    /// Forgets the uncommitted reads: they will be read again.
    pub fn revert(&mut self) {
        self.next = self.committed;
    }

    /// Releases the space of the packets read since the last commit. Returns whether to signal
    /// the writer: it announced `pending_send_sz` support, asked for `p` bytes, and the free space
    /// went from at most `p` to more than `p` with this commit.
    pub fn commit_read(&mut self) -> bool {
        if self.next == self.committed {
            return false;
        }
        let before = self.committed;
        // Release: every copy out of the released space is complete before the writer may reuse it.
        self.mem.store(ControlWord::ReadIndex, self.next as u32, Ordering::Release);
        self.committed = self.next;
        // Full barrier (StoreLoad): the writer stores pending_send_sz, fences, then re-checks
        // read_index. One of us sees the other's store, so a blocked writer is never forgotten.
        fence(Ordering::SeqCst);
        // The kernel's order (hv_pkt_iter_close): pending_send_sz, then write_index. A signal
        // this order makes needlessly (the writer withdrew its request meanwhile) costs one
        // wake-up; a reader that disagreed with the peer's own reader could lose one.
        if !self.supports_pending_send_size() {
            return false;
        }
        let pending = self.mem.load(ControlWord::PendingSendSize, Ordering::Acquire) as usize;
        if pending == 0 {
            return false;
        }
        let Ok(write) = load_index(&self.mem, ControlWord::WriteIndex, self.dsize) else {
            return false;
        };
        let released = avail_to_read(before, self.committed, self.dsize);
        let now = avail_to_write(self.committed, write, self.dsize);
        // If the writer already refilled part of the released space, `now - released` underflows:
        // assume it was blocked rather than risk a lost wakeup.
        let was = now.saturating_sub(released);
        was <= pending && now > pending
    }

    /// Sets or clears `interrupt_mask` ("don't signal me"), then a full barrier. Masking while
    /// draining saves the writer's signals; before sleeping use
    /// [`unmask_and_check`](Self::unmask_and_check), not this.
    pub fn set_interrupt_mask(&self, masked: bool) {
        self.mem.store(ControlWord::InterruptMask, u32::from(masked), Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Whether `interrupt_mask` is set.
    pub fn interrupt_masked(&self) -> bool {
        self.mem.load(ControlWord::InterruptMask, Ordering::Relaxed) != 0
    }

    /// Call before sleeping: clears `interrupt_mask`, full barrier, then re-checks for data. `true`
    /// means data raced in before the writer could see the mask cleared (it will not signal):
    /// read again instead of sleeping. `false` means the next packet will be signalled.
    pub fn unmask_and_check(&self) -> Result<bool, CorruptError> {
        self.set_interrupt_mask(false);
        self.can_read()
    }
}

/// Checks a descriptor against the `available` unread bytes (trailer included).
fn check_descriptor(d: &Descriptor, available: usize) -> Result<(), CorruptError> {
    if d.offset8 < 2 || d.len8 < d.offset8 {
        return Err(CorruptError::BadLengths { offset8: d.offset8, len8: d.len8 });
    }
    if d.len() + TRAILER_SIZE > available {
        return Err(CorruptError::Overrun { len: d.len(), available });
    }
    if d.flags & !FLAG_COMPLETION_REQUESTED != 0 {
        return Err(CorruptError::BadFlags(d.flags));
    }
    match d.packet_type {
        VM_PKT_DATA_INBAND | VM_PKT_DATA_USING_XFER_PAGES | VM_PKT_DATA_USING_GPA_DIRECT | VM_PKT_COMP => Ok(()),
        t => Err(CorruptError::BadType(t)),
    }
}
