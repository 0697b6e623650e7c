//! The control page's words, index arithmetic, and the errors both ends share
//! (`../shared/notes/vmbus.md` §1.1, §1.3, §1.8).

use std::sync::atomic::Ordering;

use crate::packet::PacketError;

use super::ring_mem::RingMem;

/// Size of the control page in front of every ring's data area (Hyper-V's `HV_HYP_PAGE_SIZE`).
pub const CONTROL_PAGE_SIZE: usize = 4096;
/// Granularity of data-area sizes.
pub const RING_PAGE_SIZE: usize = 4096;
/// The `u64` written after every packet: `(start offset of the packet) << 32`.
pub const TRAILER_SIZE: usize = 8;
/// `struct vmpacket_descriptor`.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Bit 0 of `feature_bits`: the writer of this ring honours `pending_send_sz`.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;

/// One 32-bit word of the control page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlWord {
    /// 0x00, stored by the writer: where the next packet goes.
    WriteIndex,
    /// 0x04, stored by the reader: where the next unread packet starts.
    ReadIndex,
    /// 0x08, stored by the reader: non-zero = "don't signal me".
    InterruptMask,
    /// 0x0C, stored by the writer: "signal me when more than this many bytes are free".
    PendingSendSize,
    /// 0x40, stored by the writer: [`FEATURE_PENDING_SEND_SIZE`].
    FeatureBits,
}

impl ControlWord {
    /// Byte offset in the control page.
    pub const fn offset(self) -> usize {
        match self {
            ControlWord::WriteIndex => 0x00,
            ControlWord::ReadIndex => 0x04,
            ControlWord::InterruptMask => 0x08,
            ControlWord::PendingSendSize => 0x0c,
            ControlWord::FeatureBits => 0x40,
        }
    }
}

/// Bytes the writer may still use, Linux `hv_get_bytes_to_write`. Never 0: the ring is never full.
pub(crate) fn avail_to_write(read: usize, write: usize, dsize: usize) -> usize {
    if write >= read { dsize - (write - read) } else { read - write }
}

/// Bytes written and not yet read.
pub(crate) fn avail_to_read(read: usize, write: usize, dsize: usize) -> usize {
    dsize - avail_to_write(read, write, dsize)
}

/// `idx + n` modulo the data size, for `idx < dsize` and `n <= dsize`.
pub(crate) fn advance(idx: usize, n: usize, dsize: usize) -> usize {
    let i = idx + n;
    if i >= dsize { i - dsize } else { i }
}

/// The data size of `mem`, if the ring code can work with it.
pub(crate) fn data_size(mem: &impl RingMem) -> Result<usize, LayoutError> {
    let dsize = mem.len();
    if dsize == 0 || !dsize.is_multiple_of(RING_PAGE_SIZE) || u32::try_from(dsize).is_err() {
        return Err(LayoutError::DataSize(dsize));
    }
    Ok(dsize)
}

/// Loads an index (Acquire: whatever the peer wrote before publishing it is visible after) and
/// checks that it can be one: inside the data area and 8-aligned.
pub(crate) fn load_index(mem: &impl RingMem, word: ControlWord, dsize: usize) -> Result<usize, CorruptError> {
    let value = mem.load(word, Ordering::Acquire);
    let idx = value as usize;
    if idx >= dsize || !idx.is_multiple_of(8) {
        return Err(CorruptError::BadIndex { word, value });
    }
    Ok(idx)
}

/// The 16-byte descriptor's fields the ring needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Descriptor {
    pub packet_type: u16,
    pub offset8: u16,
    pub len8: u16,
    pub flags: u16,
}

impl Descriptor {
    pub(crate) fn parse(b: &[u8; DESCRIPTOR_SIZE]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Descriptor { packet_type: u16_at(0), offset8: u16_at(2), len8: u16_at(4), flags: u16_at(6) }
    }

    /// Packet length without the trailer.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.len8) * 8
    }
}

/// A ring's memory cannot hold a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("data area of {0} bytes is not a non-zero multiple of 4096 below 4 GiB")]
    DataSize(usize),
    #[error("ring of {0} bytes is not a multiple of 4096 of at least 8192 (control page + data)")]
    RingSize(usize),
    #[error("ring base {0:#x} is not 4096-aligned")]
    Misaligned(u64),
    #[error("ring [{base:#x}, +{size:#x}) is outside the shared memory")]
    OutOfBounds { base: u64, size: usize },
}

/// The peer wrote something no correct peer writes. The ring's state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptError {
    #[error("{word:?} {value:#x} is outside the data area or not 8-byte aligned")]
    BadIndex { word: ControlWord, value: u32 },
    #[error("{available} bytes in the ring, less than a descriptor and its trailer")]
    Truncated { available: usize },
    #[error("descriptor data offset {offset8}*8 / length {len8}*8 inconsistent")]
    BadLengths { offset8: u16, len8: u16 },
    #[error("packet of {len} bytes plus trailer exceeds the {available} bytes in the ring")]
    Overrun { len: usize, available: usize },
    #[error("unknown packet flags {0:#x}")]
    BadFlags(u16),
    #[error("unknown packet type {0:#x}")]
    BadType(u16),
    #[error("malformed packet: {0}")]
    Packet(#[from] PacketError),
}

/// Why a ring could not be attached to its memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// Why a packet was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Back-pressure: `needed` ring bytes (packet + trailer) do not fit now; see
    /// [`OutgoingRing::poll_ready`](super::OutgoingRing::poll_ready).
    #[error("ring full: {needed} bytes needed")]
    Full { needed: usize },
    /// The packet can never fit this ring.
    #[error("packet of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    /// The caller's bytes are not a packet (our bug, not the peer's).
    #[error("not a packet: {0}")]
    NotAPacket(&'static str),
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}

/// Why no packet was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Back-pressure: nothing to read.
    #[error("ring empty")]
    Empty,
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
}
