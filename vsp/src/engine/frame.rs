//! What the engine needs from a transport: the header (copied out of guest
//! memory once, by the transport) and where the buffers lie.

use vmblob_protocol::framing::vmbus::GpaDirectFrame;
use vmblob_protocol::framing::{BufferLayout, FramingError};
use vmblob_protocol::{DataDirection, Segment, VspRequest};

pub trait Frame {
    fn header(&self) -> &VspRequest;
    /// Where the op request lies (needed before the op is known).
    fn request(&self) -> Result<Vec<Segment>, FramingError>;
    /// All buffers, once the op's data direction is known.
    fn layout(&self, dir: DataDirection) -> Result<BufferLayout, FramingError>;
}

impl Frame for GpaDirectFrame {
    fn header(&self) -> &VspRequest {
        &self.header
    }
    fn request(&self) -> Result<Vec<Segment>, FramingError> {
        GpaDirectFrame::layout(self).map(|l| l.request)
    }
    fn layout(&self, _dir: DataDirection) -> Result<BufferLayout, FramingError> {
        GpaDirectFrame::layout(self)
    }
}
