//! The one interface between the blob client and a transport (virtio split
//! queues over vhost-user, or VMBus rings), and what every transport shares:
//! the request table ([`table`]), DMA memory ([`dma`], and [`pinned`] memory
//! with guest-physical addresses from [`pagemap`]), bounds-checked mappings
//! ([`region`]) and the virtio split-queue driver ([`virtio`]).

pub mod dma;
pub mod pagemap;
pub mod pinned;
pub mod region;
pub mod table;
mod uio_sysfs;
pub mod virtio;
pub mod virtio_pci;
#[cfg(feature = "vhost-user")]
pub mod virtio_vhost_user;
pub mod vmbus;

use std::sync::Arc;

use vmblob_protocol::{DataDirection, VspRequest, VspResponse};

use crate::error::{ClientError, ProtocolError};
use crate::transport::dma::{DmaBuf, DmaPool};
use crate::transport::table::Waiter;

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
    /// After the device went away: wait up to `timeout` for it to be back
    /// (requests submitted from then on reach a live device). `false` when it
    /// is not back in time, or when this transport never comes back on its
    /// own; then a request whose answer was lost cannot be asked again.
    fn wait_connected(&self, timeout: std::time::Duration) -> bool {
        let _ = timeout;
        false
    }
}

/// How long past a request's own timeout a submitter waits for ring space
/// before giving up: a device that stops taking requests must not hang the
/// caller before it even has a ticket to time out on.
pub const SUBMIT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// When a submission stops waiting for ring space.
#[derive(Debug, Clone, Copy)]
pub struct SubmitDeadline {
    at: std::time::Instant,
    after: std::time::Duration,
}

impl SubmitDeadline {
    pub fn passed(&self) -> bool {
        std::time::Instant::now() >= self.at
    }

    /// The error of a submission whose deadline passed while the rings stayed full.
    pub fn error(&self) -> ClientError {
        ClientError::Timeout { waiting_for: "ring space (the device is not taking requests)", after: self.after }
    }
}

/// When a submission of `header` stops waiting for ring space (`None`: the
/// request has no timeout, so neither does its submission).
pub fn submit_deadline(header: &VspRequest) -> Option<SubmitDeadline> {
    let ms = header.timeout_ms.get();
    let after = std::time::Duration::from_millis(u64::from(ms)) + SUBMIT_GRACE;
    (ms != 0).then(|| SubmitDeadline { at: std::time::Instant::now() + after, after })
}

/// Check a completion's response against the request it answers.
pub fn check_response(resp: &VspResponse, buffers: &OpBuffers) -> Result<(), ClientError> {
    let cap = buffers.header.response_buffer_length.get();
    if resp.response_len.get() > cap {
        return Err(ProtocolError::ResponseTooLong { len: resp.response_len.get(), cap }.into());
    }
    Ok(())
}

/// Asks the device for its whole config with GetDeviceConfig, as the transports whose config
/// space is missing or partial do (VMBus has none; QEMU's blk carrier overwrites bytes of it).
/// `response_len` bytes of op response, `suffix` spare bytes after them (the virtio status).
pub(crate) fn fetch_device_config(
    t: &dyn Transport,
    pool: &dma::DmaPool,
    response_len: usize,
    suffix: usize,
    timeout: std::time::Duration,
) -> Result<vmblob_protocol::config::DeviceConfig, ClientError> {
    use vmblob_protocol::OpCode;
    use vmblob_protocol::ops::{MIN_OP_VERSION, OpRequest, OpResponse, ResponseMessage};
    use vmblob_protocol::transport::OperationType;

    // In the oldest op version, which every VSP answers it in (§11.1).
    let body = OpRequest::GetDeviceConfig.encode_at(MIN_OP_VERSION)?;
    let no_buffer = |len| ClientError::ResourceExhausted { len, waited: std::time::Duration::ZERO };
    let mut request = pool.alloc(REQUEST_PREFIX + body.len()).ok_or_else(|| no_buffer(REQUEST_PREFIX + body.len()))?;
    request.write_at(REQUEST_PREFIX, &body)?;
    let response = pool.alloc(response_len + suffix).ok_or_else(|| no_buffer(response_len + suffix))?;
    let mut transaction_id = [0u8; 16];
    let _ = getrandom::fill(&mut transaction_id);
    let header = VspRequest {
        timeout_ms: (timeout.as_millis().min(u128::from(u32::MAX)) as u32).into(),
        operation_type: (OperationType::UserRequest as u32).into(),
        request_buffer_length: (body.len() as u32).into(),
        response_buffer_length: (response_len as u32).into(),
        transaction_id,
        ..Default::default()
    };
    let ticket = t.submit(OpBuffers { header, request, response, data: None, dir: DataDirection::None })?;
    let c = ticket
        .wait_timeout(timeout)
        .ok_or(ClientError::Timeout { waiting_for: "the device config", after: timeout })??;
    let mut raw = vec![0u8; c.response.response_len.get() as usize];
    c.buffers.response.read_at(0, &mut raw)?;
    let msg =
        ResponseMessage::decode(&raw, OpCode::GetDeviceConfig).map_err(crate::error::ProtocolError::DeviceConfig)?;
    match msg.result {
        Ok(OpResponse::DeviceConfig(config)) if c.response.error.get() == 0 => Ok(config),
        Ok(r) => Err(ClientError::unexpected(r)),
        Err(r) => Err(ClientError::Status { error: r.error, message: r.message }),
    }
}
