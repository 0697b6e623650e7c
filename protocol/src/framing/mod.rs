//! How one request's buffers are laid out on each transport.

pub mod virtio;
pub mod vmbus;

use crate::sg::Segment;

/// Where a request's buffers lie in guest memory, whatever the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferLayout {
    pub request: Vec<Segment>,
    pub response: Vec<Segment>,
    pub data: DataBuffer,
    /// Bytes of the data buffer the guest filled (PUT).
    pub data_valid: u32,
}

/// The data buffer and what the VSP may do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataBuffer {
    None,
    /// Device-readable only (virtio, PUT).
    Readable(Vec<Segment>),
    /// Device-writable (virtio, GET).
    Writable(Vec<Segment>),
    /// Both (VMBus GPA-direct pages).
    ReadWrite(Vec<Segment>),
}

impl DataBuffer {
    /// Segments the VSP may read from.
    pub fn readable(&self) -> Option<&[Segment]> {
        match self {
            DataBuffer::Readable(s) | DataBuffer::ReadWrite(s) => Some(s),
            _ => None,
        }
    }
    /// Segments the VSP may write to.
    pub fn writable(&self) -> Option<&[Segment]> {
        match self {
            DataBuffer::Writable(s) | DataBuffer::ReadWrite(s) => Some(s),
            _ => None,
        }
    }
}

/// Why a chain or packet does not frame a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("chain has {count} descriptors, limit {max}")]
    TooManyDescriptors { count: usize, max: usize },
    #[error("zero-length descriptor")]
    EmptyDescriptor,
    #[error("device-readable descriptor after a writable one")]
    ReadableAfterWritable,
    #[error("descriptor address range overflows")]
    AddressOverflow,
    #[error("readable part shorter than the 56-byte header")]
    NoHeader,
    #[error("writable part shorter than the 12-byte response")]
    NoResponseRoom,
    #[error("a buffer lies outside its area")]
    OutOfRange,
    #[error("{0} and {1} buffers overlap")]
    Overlap(&'static str, &'static str),
    #[error("request buffer overlaps the header")]
    OverlapsHeader,
    #[error("{count} pages, limit {max}")]
    TooManyPages { count: usize, max: usize },
}

/// Whether `[a, a+alen)` and `[b, b+blen)` overlap (empty ranges never do).
pub(crate) fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    alen > 0 && blen > 0 && a < b.saturating_add(blen) && b < a.saturating_add(alen)
}
