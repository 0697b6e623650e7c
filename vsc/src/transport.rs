//! The one interface between the blob client and a transport (virtio split
//! queues over vhost-user, or VMBus rings).

use std::sync::Arc;

use vmblob_protocol::{DataDirection, VspRequest, VspResponse};

use crate::dma::{DmaBuf, DmaPool};
use crate::error::ClientError;
use crate::table::Waiter;

/// Bytes reserved at the start of the request buffer for the 56-byte header
/// (virtio sends it in guest memory; VMBus in band).
pub const REQUEST_PREFIX: usize = vmblob_protocol::transport::REQUEST_SIZE;
/// Bytes reserved after the op response for the 12-byte status (virtio).
pub const RESPONSE_SUFFIX: usize = vmblob_protocol::transport::RESPONSE_SIZE;

/// One request's buffers, owned by the transport from submission until the
/// device completed it.
pub struct OpBuffers {
    /// Transaction id, timeout, operation type, buffer lengths and
    /// `data_buffer_valid`; the transport fills in the offsets.
    pub header: VspRequest,
    /// `REQUEST_PREFIX` spare bytes, then the op request.
    pub request: DmaBuf,
    /// The op response area, then `RESPONSE_SUFFIX` spare bytes.
    pub response: DmaBuf,
    pub data: Option<DmaBuf>,
    pub dir: DataDirection,
}

/// A completed request: the VSP's response and the buffers back.
pub struct Completion {
    pub response: VspResponse,
    pub buffers: OpBuffers,
}

/// What a caller waits on.
pub type Ticket = Arc<Waiter<Completion>>;

pub trait Transport: Send + Sync {
    /// Guest-physical memory for request buffers.
    fn pool(&self) -> &DmaPool;
    /// Hand a request to the device. Fails fast with `Rescinded` while the
    /// device is gone; blocks while the rings are full.
    fn submit(&self, buffers: OpBuffers) -> Result<Ticket, ClientError>;
    fn num_queues(&self) -> usize;
    /// Whether the device is there now.
    fn is_connected(&self) -> bool;
}

/// Check a completion's response against the request it answers.
pub fn check_response(resp: &VspResponse, buffers: &OpBuffers) -> Result<(), ClientError> {
    let cap = buffers.header.response_buffer_length.get();
    if resp.response_len.get() > cap {
        return Err(ClientError::Protocol(format!("response_len {} exceeds buffer {cap}", resp.response_len.get())));
    }
    Ok(())
}
