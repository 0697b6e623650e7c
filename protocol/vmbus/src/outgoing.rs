//! The writing end of a ring (`../shared/notes/vmbus.md` §1.5, §1.7 B).

use std::sync::atomic::{Ordering, fence};

use super::control::{
    ControlWord, CorruptError, DESCRIPTOR_SIZE, Descriptor, FEATURE_PENDING_SEND_SIZE, RingError, TRAILER_SIZE,
    WriteError, advance, avail_to_write, data_size, load_index,
};
use super::ring_mem::RingMem;

/// The writer of one ring. Owns `write_index`, `pending_send_sz` and `feature_bits`.
///
/// Writes are private until [`commit_write`](Self::commit_write) publishes them, so a batch of
/// packets costs one index store and at most one signal.
#[derive(Debug)]
pub struct OutgoingRing<M> {
    mem: M,
    dsize: usize,
    /// `write_index` as last published.
    committed: usize,
    /// Where the next packet goes (ahead of `committed` by the uncommitted batch).
    next: usize,
    /// Whether `pending_send_sz` is non-zero (we are its only writer).
    pending: bool,
}

impl<M: RingMem> OutgoingRing<M> {
    /// Attaches to a ring at its current `write_index` (0 in a freshly initialised ring), announces
    /// the `pending_send_sz` feature and clears any pending send size.
    pub fn new(mem: M) -> Result<Self, RingError> {
        let dsize = data_size(&mem)?;
        let start = load_index(&mem, ControlWord::WriteIndex, dsize)?;
        mem.store(ControlWord::PendingSendSize, 0, Ordering::Relaxed);
        let features = mem.load(ControlWord::FeatureBits, Ordering::Relaxed);
        // Release, and the SeqCst fence of the first commit, order these before any packet.
        mem.store(ControlWord::FeatureBits, features | FEATURE_PENDING_SEND_SIZE, Ordering::Release);
        Ok(OutgoingRing { mem, dsize, committed: start, next: start, pending: false })
    }

    /// The ring's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Size of the data area.
    pub fn data_size(&self) -> usize {
        self.dsize
    }

    /// The largest packet (descriptor to padding, without trailer) this ring accepts:
    /// `data_size - 24`, i.e. at most `data_size - 16` ring bytes with the trailer. That is
    /// OpenVMM's limit, one step stricter than Linux's, so any reader takes it.
    pub fn max_packet_len(&self) -> usize {
        self.dsize - 16 - TRAILER_SIZE
    }

    /// `write_index` as last published by [`commit_write`](Self::commit_write).
    pub fn committed_index(&self) -> usize {
        self.committed
    }

    /// Whether packets were written and not yet committed.
    pub fn has_uncommitted(&self) -> bool {
        self.next != self.committed
    }

    /// Ring bytes (packet + trailer) that fit now, after the uncommitted batch. A packet of `len`
    /// bytes fits iff `len + 8 <= free_space()`: one 8-byte slot always stays free, so a full
    /// ring never looks empty.
    pub fn free_space(&self) -> Result<usize, CorruptError> {
        let read = load_index(&self.mem, ControlWord::ReadIndex, self.dsize)?;
        Ok(avail_to_write(read, self.next, self.dsize) - TRAILER_SIZE)
    }

    /// Copies one packet and its trailer into the ring, unpublished. `packet` is a whole packet
    /// as the `crate::packet` encoders build it: its descriptor's `len8 * 8`
    /// is `packet.len()`. Withdraws a `pending_send_sz` request: the writer got its space, and a
    /// stale request would make the reader signal needlessly.
    pub fn write(&mut self, packet: &[u8]) -> Result<(), WriteError> {
        check_packet(packet)?;
        let max = self.max_packet_len();
        if packet.len() > max {
            return Err(WriteError::TooLarge { len: packet.len(), max });
        }
        let needed = packet.len() + TRAILER_SIZE;
        if self.free_space()? < needed {
            return Err(WriteError::Full { needed });
        }
        self.clear_pending_send_size();
        let start = self.next;
        self.mem.write_at(start, packet);
        let trailer = ((start as u64) << 32).to_le_bytes();
        self.mem.write_at(advance(start, packet.len(), self.dsize), &trailer);
        self.next = advance(start, needed, self.dsize);
        Ok(())
    }

    /// Forgets the uncommitted packets.
    pub fn revert(&mut self) {
        self.next = self.committed;
    }

    /// Publishes the packets written since the last commit. Returns whether to signal the reader:
    /// its interrupts are unmasked and the ring was empty before this batch (the reader may be
    /// asleep). Signalling otherwise risks host throttling.
    pub fn commit_write(&mut self) -> bool {
        if self.next == self.committed {
            return false;
        }
        // Full barrier: every packet byte is visible before the index that exposes it.
        fence(Ordering::SeqCst);
        self.mem.store(ControlWord::WriteIndex, self.next as u32, Ordering::Release);
        let before = self.committed;
        self.committed = self.next;
        // Full barrier (StoreLoad): the reader unmasks, fences, then re-checks write_index. One of
        // us sees the other's store, so a sleeping reader always gets either data or a signal.
        fence(Ordering::SeqCst);
        if self.mem.load(ControlWord::InterruptMask, Ordering::Acquire) != 0 {
            return false;
        }
        // A corrupt read_index cannot equal a valid index: no signal, which is harmless.
        self.mem.load(ControlWord::ReadIndex, Ordering::Acquire) as usize == before
    }

    /// Stores `pending_send_sz`: ask the reader to signal once more than `bytes` are free.
    /// Followed by a full barrier so a later re-check of `read_index` cannot miss a read that
    /// did not see this store.
    pub fn set_pending_send_size(&mut self, bytes: u32) {
        self.mem.store(ControlWord::PendingSendSize, bytes, Ordering::Release);
        self.pending = bytes != 0;
        fence(Ordering::SeqCst);
    }

    /// Withdraws a `pending_send_sz` request, if one is outstanding. Ordered before the packets
    /// that follow by the fence and Release store of the next commit.
    fn clear_pending_send_size(&mut self) {
        if self.pending {
            self.mem.store(ControlWord::PendingSendSize, 0, Ordering::Relaxed);
            self.pending = false;
        }
    }

    /// Whether a `packet_len`-byte packet fits now. If not, sets `pending_send_sz`, then
    /// re-checks (the reader may have freed space meanwhile without seeing the request):
    /// `false` means the reader promised a signal once it fits; wait for it, then call again.
    /// Clears `pending_send_sz` when returning `true` (and so does a successful write).
    pub fn poll_ready(&mut self, packet_len: usize) -> Result<bool, WriteError> {
        let max = self.max_packet_len();
        if packet_len > max {
            return Err(WriteError::TooLarge { len: packet_len, max });
        }
        let needed = packet_len.next_multiple_of(8) + TRAILER_SIZE;
        if self.free_space()? < needed {
            // The reader signals when `avail_to_write` becomes > pending, i.e. free >= needed.
            self.set_pending_send_size(needed as u32);
            if self.free_space()? < needed {
                return Ok(false);
            }
        }
        self.clear_pending_send_size();
        Ok(true)
    }
}

/// Checks that `packet` is a complete packet whose descriptor the reader will accept.
fn check_packet(packet: &[u8]) -> Result<(), WriteError> {
    let Some(head) = packet.first_chunk::<DESCRIPTOR_SIZE>() else {
        return Err(WriteError::NotAPacket("shorter than a descriptor"));
    };
    let d = Descriptor::parse(head);
    if d.len() != packet.len() {
        return Err(WriteError::NotAPacket("descriptor length differs from the packet's"));
    }
    if d.offset8 < 2 || d.offset8 > d.len8 {
        return Err(WriteError::NotAPacket("data offset outside the packet"));
    }
    Ok(())
}
