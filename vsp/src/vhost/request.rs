//! A virtio chain as the engine sees it: the header the queue copied out of
//! guest memory once, and the chain's buffers.

use vmblob_protocol::framing::virtio::VirtioFrame;
use vmblob_protocol::framing::{BufferLayout, FramingError};
use vmblob_protocol::{DataDirection, Segment, VspRequest};

use crate::engine::Frame;

/// A virtio chain and its header.
pub struct VirtioRequest {
    pub frame: VirtioFrame,
    pub header: VspRequest,
}

impl Frame for VirtioRequest {
    fn header(&self) -> &VspRequest {
        &self.header
    }
    fn request(&self) -> Result<Vec<Segment>, FramingError> {
        self.frame.request(&self.header)
    }
    fn layout(&self, dir: DataDirection) -> Result<BufferLayout, FramingError> {
        self.frame.layout(&self.header, dir)
    }
}
