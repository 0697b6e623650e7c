//! `BlobClient`: blob operations over any [`Transport`].
//!
//! The client is cheap to clone (one `Arc`); [`BlobClient::container`] and
//! [`ContainerClient::blob`] hand out handles that carry their names, as the
//! Azure SDK's container and blob clients do. Every operation has a plain
//! form and an `_opts` form taking an option struct with `Default`.
//! [`BlobClient::submit`] stays for pipelining raw operations.

mod handles;
mod lease;
mod list;
mod options;
mod stream;
pub(crate) mod upload;

pub use handles::{BlobHandle, ContainerClient, Pending};
pub use list::{Items, Page, Pages};
pub use options::{
    BlobBytes, BlobContent, CopyOptions, CreateContainerOptions, GetOptions, ListBlobsOptions, ListContainersOptions,
    PutOptions,
};
pub use upload::{BlockUploader, StagedBlocks};
pub(crate) use upload::{superseded, upload_tag};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmblob_protocol::config::DeviceConfig;
use vmblob_protocol::ops::{ContainerEntry, ListContainers, OpRequest, OpResponse, ResponseMessage};
use vmblob_protocol::transport::OperationType;
use vmblob_protocol::{OpCode, VspRequest};

use crate::error::{ClientError, ProtocolError};
use crate::transport::dma::DmaBuf;
use crate::transport::{Completion, OpBuffers, REQUEST_PREFIX, RESPONSE_SUFFIX, Ticket, Transport};

/// Response buffer for ordinary ops: properties with 8 KiB of metadata fit.
const SMALL_RESPONSE: usize = 16 << 10;
/// Response buffer for listings and block lists.
const LIST_RESPONSE: usize = 1 << 20;
/// How long to wait for DMA memory before giving up.
const DMA_WAIT: Duration = Duration::from_secs(60);

/// Client-side knobs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `timeout_ms` sent with every request (0: none).
    pub timeout_ms: u32,
    /// Blocks larger uploads are cut into (0: the device's hint).
    pub block_size: u32,
    /// Requests in flight for one large transfer.
    pub parallel: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { timeout_ms: 60_000, block_size: 0, parallel: 8 }
    }
}

/// Data handed to or expected from one operation.
pub enum Data<'a> {
    None,
    Out(&'a [u8]),
    /// A DMA buffer already filled with `usize` valid bytes.
    OutBuf(DmaBuf, usize),
    In(usize),
}

/// A submitted operation.
pub struct PendingOp {
    ticket: Ticket,
    op: OpCode,
    /// The op version the request is in; its answer must be in it too.
    version: u16,
    /// The VSP completes a request by its `timeout_ms`; past this backstop
    /// the caller stops waiting (the buffers stay owned by the table).
    backstop: Option<Duration>,
    resend: Resend,
}

/// Grace beyond a request's own timeout before the caller gives up.
const BACKSTOP_GRACE: Duration = Duration::from_secs(10);
/// How long a request without a timeout waits for the device to come back
/// before its lost answer is given up on.
const RESEND_WINDOW: Duration = Duration::from_secs(60);

/// What it takes to ask again, with the same transaction id, when the answer
/// was lost with the channel (PROTOCOL.md §11.3).
struct Resend {
    /// Weak: a pending request must not keep the transport alive (dropping
    /// the last client stops the rings, and the device completes what it holds).
    client: std::sync::Weak<Inner>,
    body: Vec<u8>,
    txn: [u8; 16],
    data: ResendData,
    /// The request's own deadline: past it, nothing is re-sent.
    until: Instant,
}

#[derive(Debug, Clone, Copy)]
enum ResendData {
    None,
    In(usize),
    /// Data the caller must hand over again ([`PendingOp::wait_with_data`]):
    /// the DMA buffer sent the first time may still be the old device's.
    Out(usize),
}

/// A finished operation: the decoded answer and, for GetBlob, the data buffer.
pub struct OpResult {
    pub response: OpResponse,
    pub data: Option<DmaBuf>,
}

/// Writes whose lost answer leaves the caller not knowing whether they
/// happened; a lost PutBlock is simply `Rescinded` (stage it again).
fn has_outcome(op: OpCode) -> bool {
    op.has_outcome()
}

impl PendingOp {
    /// Wait for the answer. If the channel goes away with the request in
    /// flight, it is asked again with the same transaction id once the device
    /// is back (within the request's timeout); a PutBlob or PutBlock submitted
    /// with data can be re-sent only through [`PendingOp::wait_with_data`].
    pub fn wait(self) -> Result<OpResult, ClientError> {
        self.wait_resending(None)
    }

    /// [`PendingOp::wait`] for a request submitted with outgoing data: `parts`
    /// are those bytes again, copied into a fresh DMA buffer if the request
    /// must be re-sent.
    pub fn wait_with_data(self, parts: &[&[u8]]) -> Result<OpResult, ClientError> {
        self.wait_resending(Some(parts))
    }

    fn wait_resending(mut self, parts: Option<&[&[u8]]>) -> Result<OpResult, ClientError> {
        loop {
            match self.wait_once() {
                Err(ClientError::Rescinded) => {}
                r => return r.and_then(|c| decode(c, self.op, self.version)),
            }
            // The answer was lost: the request may or may not have run.
            self.ticket = self.ask_again(parts)?;
        }
    }

    fn wait_once(&self) -> Result<Completion, ClientError> {
        match self.backstop {
            None => self.ticket.wait(),
            Some(after) => {
                self.ticket.wait_timeout(after).ok_or(ClientError::Timeout { waiting_for: "a completion", after })?
            }
        }
    }

    /// Re-send the request once the device is back; the error when it cannot be.
    fn ask_again(&self, parts: Option<&[&[u8]]>) -> Result<Ticket, ClientError> {
        let r = &self.resend;
        let lost = || {
            if has_outcome(self.op) { ClientError::OutcomeUnknown { op: self.op } } else { ClientError::Rescinded }
        };
        let Some(inner) = r.client.upgrade() else { return Err(lost()) };
        let client = BlobClient { inner };
        let transport = client.transport();
        loop {
            let left = r.until.saturating_duration_since(Instant::now());
            if left.is_zero() || !transport.wait_connected(left) {
                return Err(lost());
            }
            let data = match (r.data, parts) {
                (ResendData::None, _) => Data::None,
                (ResendData::In(cap), _) => Data::In(cap),
                (ResendData::Out(len), Some(parts)) if parts.iter().map(|p| p.len()).sum::<usize>() == len => {
                    let buf = client.alloc_data(len)?;
                    Data::OutBuf(handles::fill(buf, parts)?, len)
                }
                (ResendData::Out(_), _) => return Err(lost()),
            };
            match client.send(self.op, &r.body, r.txn, data) {
                Ok(ticket) => {
                    log::info!("re-sent {:?} with its transaction id after the device came back", self.op);
                    return Ok(ticket.0);
                }
                // Refused because the device left again: nothing was sent; wait for it again.
                Err(ClientError::Rescinded) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn decode(c: Completion, op: OpCode, version: u16) -> Result<OpResult, ClientError> {
    let len = c.response.response_len.get() as usize;
    let status = c.response.error.get();
    if len == 0 {
        // The VSP could not even write a response body: the status says why.
        vmblob_protocol::status::check(status)?;
        return Err(ProtocolError::EmptySuccess.into());
    }
    let mut raw = vec![0u8; len];
    c.buffers.response.read_at(0, &mut raw)?;
    let msg = ResponseMessage::decode(&raw, op)?;
    if msg.version != version {
        // A device that cannot read our version says so in its own (say a VSP
        // of an older build came back under a resend): that status is the answer.
        return Err(match msg.result {
            Err(r) => ClientError::Status { error: r.error, message: r.message },
            Ok(_) => ProtocolError::WrongVersion { got: msg.version, sent: version }.into(),
        });
    }
    let response = msg.result.map_err(|r| ClientError::Status { error: r.error, message: r.message })?;
    if status != 0 {
        return Err(ProtocolError::StatusWithSuccessBody(status).into());
    }
    if !response.answers(op) {
        return Err(ProtocolError::WrongOp(op).into());
    }
    Ok(OpResult { response, data: c.buffers.data })
}

/// Blob operations over one transport. Clones share the transport.
#[derive(Clone)]
pub struct BlobClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    config: DeviceConfig,
    options: ClientOptions,
    txn_prefix: [u8; 8],
    txn_counter: AtomicU64,
}

impl std::fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobClient").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

impl BlobClient {
    pub fn new(transport: Arc<dyn Transport>, config: DeviceConfig, options: ClientOptions) -> Self {
        let mut txn_prefix = [0u8; 8];
        // Uniqueness across clients; a failure only weakens replay detection.
        let _ = getrandom::fill(&mut txn_prefix);
        let inner = Inner { transport, config, options, txn_prefix, txn_counter: AtomicU64::new(1) };
        Self { inner: Arc::new(inner) }
    }

    /// A handle on container `name` (checked when an operation runs).
    pub fn container(&self, name: &str) -> ContainerClient {
        ContainerClient::new(self.clone(), name)
    }

    pub fn device_config(&self) -> &DeviceConfig {
        &self.inner.config
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    fn next_txn(&self) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&self.inner.txn_prefix);
        t[8..].copy_from_slice(&self.inner.txn_counter.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        t
    }

    /// A DMA buffer for data to send (fill it, then use `Data::OutBuf`):
    /// waits while every buffer is in flight, up to a bound.
    pub fn alloc_data(&self, len: usize) -> Result<DmaBuf, ClientError> {
        self.inner
            .transport
            .pool()
            .alloc_wait(len.max(1), DMA_WAIT)
            .ok_or(ClientError::ResourceExhausted { len, waited: DMA_WAIT })
    }

    /// Submit one raw operation without waiting (the handles cover the
    /// common ones; this is for pipelining and for fields they do not expose).
    pub fn submit(&self, op: &OpRequest, data: Data<'_>) -> Result<PendingOp, ClientError> {
        let code = op.op();
        let config = &self.inner.config;
        let version = config.op_version();
        let body = op.encode_at(version)?;
        if body.len() > config.max_request_len as usize {
            let (len, max) = (body.len() as u64, u64::from(config.max_request_len));
            return Err(ClientError::TooLarge { what: "request body bytes", len, max });
        }
        let txn = self.next_txn();
        let timeout_ms = self.inner.options.timeout_ms;
        let window = if timeout_ms == 0 { RESEND_WINDOW } else { Duration::from_millis(u64::from(timeout_ms)) };
        let until = Instant::now() + window;
        let (ticket, data) = self.send(code, &body, txn, data)?;
        let backstop = (timeout_ms != 0).then(|| Duration::from_millis(u64::from(timeout_ms)) + BACKSTOP_GRACE);
        let resend = Resend { client: Arc::downgrade(&self.inner), body, txn, data, until };
        Ok(PendingOp { ticket, op: code, version, backstop, resend })
    }

    /// Hand one request to the transport under transaction id `txn`.
    fn send(
        &self,
        code: OpCode,
        body: &[u8],
        txn: [u8; 16],
        data: Data<'_>,
    ) -> Result<(Ticket, ResendData), ClientError> {
        let config = &self.inner.config;
        let resp_len = match code {
            OpCode::ListBlobs | OpCode::ListContainers | OpCode::GetBlockList => LIST_RESPONSE,
            _ => SMALL_RESPONSE,
        };
        let mut request = self.alloc_data(REQUEST_PREFIX + body.len())?;
        request.write_at(REQUEST_PREFIX, body)?;
        let response = self.alloc_data(resp_len + RESPONSE_SUFFIX)?;
        let (data, data_len, valid, resend) = match data {
            Data::None => (None, 0, 0, ResendData::None),
            Data::Out(bytes) => {
                let mut b = self.alloc_data(bytes.len())?;
                b.write_at(0, bytes)?;
                (Some(b), bytes.len(), bytes.len(), ResendData::Out(bytes.len()))
            }
            Data::OutBuf(b, valid) => {
                let len = b.len();
                (Some(b), len, valid, ResendData::Out(valid))
            }
            Data::In(cap) => (Some(self.alloc_data(cap)?), cap, 0, ResendData::In(cap)),
        };
        if data_len > config.max_data_len as usize {
            let (len, max) = (data_len as u64, u64::from(config.max_data_len));
            return Err(ClientError::TooLarge { what: "data buffer bytes", len, max });
        }
        let timeout_ms = self.inner.options.timeout_ms;
        let header = VspRequest {
            timeout_ms: timeout_ms.into(),
            data_buffer_length: (data_len as u32).into(),
            data_buffer_valid: (valid as u32).into(),
            operation_type: (OperationType::UserRequest as u32).into(),
            request_buffer_length: (body.len() as u32).into(),
            response_buffer_length: (resp_len as u32).into(),
            transaction_id: txn,
            ..Default::default()
        };
        let dir = code.data_direction();
        let ticket = self.inner.transport.submit(OpBuffers { header, request, response, data, dir })?;
        Ok((ticket, resend))
    }

    /// Run one raw operation and wait for it (asking again with the same
    /// transaction id if the answer is lost with the channel).
    pub fn call(&self, op: &OpRequest, data: Data<'_>) -> Result<OpResult, ClientError> {
        match data {
            Data::Out(bytes) => self.submit(op, Data::Out(bytes))?.wait_with_data(&[bytes]),
            data => self.submit(op, data)?.wait(),
        }
    }

    /// Containers whose names start with `options.prefix`, page by page.
    pub fn list_containers(&self, options: ListContainersOptions) -> Pages<ContainerEntry> {
        let client = self.clone();
        let ListContainersOptions { prefix, marker, max_results, include_metadata } = options;
        Pages::new(marker, move |marker| {
            let op = OpRequest::ListContainers(ListContainers {
                prefix: prefix.clone(),
                marker: marker.to_owned(),
                max_results,
                include_metadata,
            });
            match client.call(&op, Data::None)?.response {
                OpResponse::ContainerList { containers, next_marker } => Ok(Page::new(containers, next_marker)),
                r => Err(ClientError::unexpected(r)),
            }
        })
    }

    /// Block size for streamed uploads and windowed downloads.
    pub fn block_size(&self) -> usize {
        let (options, config) = (&self.inner.options, &self.inner.config);
        let hint = if options.block_size == 0 { config.block_size_hint } else { options.block_size };
        streamed_block_size(hint, config.max_data_len)
    }
}

/// At least 64 KiB unless the device takes less, never above what it takes, never 0 (the
/// device's limits come from the device and must not panic the client or stall a stream).
fn streamed_block_size(hint: u32, max_data_len: u32) -> usize {
    let max = max_data_len.max(1);
    hint.clamp((64 << 10).min(max), max) as usize
}

#[cfg(test)]
mod block_size_tests {
    use super::streamed_block_size;

    #[test]
    fn block_size_respects_any_device_limit() {
        assert_eq!(streamed_block_size(8 << 20, 32 << 20), 8 << 20);
        assert_eq!(streamed_block_size(1, 32 << 20), 64 << 10);
        assert_eq!(streamed_block_size(64 << 20, 32 << 20), 32 << 20);
        // A device that takes less than 64 KiB, or claims to take nothing.
        assert_eq!(streamed_block_size(8 << 20, 4096), 4096);
        assert_eq!(streamed_block_size(0, 0), 1);
    }
}
