//! `BlobClient`: blob operations over any [`Transport`].

mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vmblob_protocol::config::DeviceConfig;
use vmblob_protocol::names::{BlobName, BlockId, ContainerName};
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobWritten, BlockInfo, BlockListType, ByteRange, Conditions,
    ContainerEntry, ContainerProperties, GetBlob, ListBlobs, ListContainers, Metadata, OpRequest, OpResponse, PutBlob,
    PutBlock, PutBlockList, ResponseMessage,
};
use vmblob_protocol::transport::OperationType;
use vmblob_protocol::{OpCode, VspRequest};

use crate::error::ClientError;
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
    /// The VSP completes a request by its `timeout_ms`; past this backstop
    /// the caller stops waiting (the buffers stay owned by the table).
    backstop: Option<Duration>,
}

/// Grace beyond a request's own timeout before the caller gives up.
const BACKSTOP_GRACE: Duration = Duration::from_secs(10);

/// A finished operation: the decoded answer and, for GetBlob, the data buffer.
pub struct OpResult {
    pub response: OpResponse,
    pub data: Option<DmaBuf>,
}

impl PendingOp {
    pub fn wait(self) -> Result<OpResult, ClientError> {
        let completion = match self.backstop {
            None => self.ticket.wait()?,
            Some(limit) => self.ticket.wait_timeout(limit).ok_or_else(|| {
                ClientError::Transport(format!("no completion within {limit:?}; the device is not responding"))
            })??,
        };
        decode(completion, self.op)
    }
}

fn decode(c: Completion, op: OpCode) -> Result<OpResult, ClientError> {
    let len = c.response.response_len.get() as usize;
    let status = c.response.error.get();
    if len == 0 {
        // The VSP could not even write a response body: the status says why.
        vmblob_protocol::status::check(status)?;
        return Err(ClientError::Protocol("success without a response".into()));
    }
    let mut raw = vec![0u8; len];
    c.buffers.response.read_at(0, &mut raw).map_err(|e| ClientError::Transport(e.to_string()))?;
    let msg = ResponseMessage::decode(&raw, op).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let response = msg.result.map_err(|r| ClientError::Blob { error: r.error, message: r.message })?;
    if status != 0 {
        return Err(ClientError::Protocol(format!("status {status:#x} with a success body")));
    }
    if !response.answers(op) {
        return Err(ClientError::Protocol(format!("response does not answer {op:?}")));
    }
    Ok(OpResult { response, data: c.buffers.data })
}

pub struct BlobClient {
    transport: Arc<dyn Transport>,
    config: DeviceConfig,
    options: ClientOptions,
    txn_prefix: [u8; 8],
    txn_counter: AtomicU64,
}

fn container(name: &str) -> Result<ContainerName, ClientError> {
    ContainerName::new(name).map_err(|_| ClientError::Invalid(format!("invalid container name {name:?}")))
}

pub(crate) fn target(c: &str, b: &str) -> Result<BlobRef, ClientError> {
    Ok(BlobRef {
        container: container(c)?,
        blob: BlobName::new(b).map_err(|_| ClientError::Invalid(format!("invalid blob name {b:?}")))?,
    })
}

impl BlobClient {
    pub fn new(transport: Arc<dyn Transport>, config: DeviceConfig, options: ClientOptions) -> Self {
        let mut txn_prefix = [0u8; 8];
        // Uniqueness across clients; a failure only weakens replay detection.
        let _ = getrandom::fill(&mut txn_prefix);
        Self { transport, config, options, txn_prefix, txn_counter: AtomicU64::new(1) }
    }

    pub fn device_config(&self) -> &DeviceConfig {
        &self.config
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    fn next_txn(&self) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&self.txn_prefix);
        t[8..].copy_from_slice(&self.txn_counter.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        t
    }

    fn alloc(&self, len: usize) -> Result<DmaBuf, ClientError> {
        self.transport
            .pool()
            .alloc_wait(len.max(1), DMA_WAIT)
            .ok_or_else(|| ClientError::Invalid(format!("no {len}-byte DMA buffer available")))
    }

    /// A DMA buffer for data to send (fill it, then use `Data::OutBuf`).
    pub fn alloc_data(&self, len: usize) -> Result<DmaBuf, ClientError> {
        self.alloc(len)
    }

    /// Submit one operation without waiting.
    pub fn submit(&self, op: &OpRequest, data: Data<'_>) -> Result<PendingOp, ClientError> {
        let code = op.op();
        let body = op.encode();
        if body.len() > self.config.max_request_len as usize {
            return Err(ClientError::Invalid(format!("request of {} bytes over the device limit", body.len())));
        }
        let resp_len = match code {
            OpCode::ListBlobs | OpCode::ListContainers | OpCode::GetBlockList => LIST_RESPONSE,
            _ => SMALL_RESPONSE,
        };
        let mut request = self.alloc(REQUEST_PREFIX + body.len())?;
        request.write_at(REQUEST_PREFIX, &body).map_err(|e| ClientError::Transport(e.to_string()))?;
        let response = self.alloc(resp_len + RESPONSE_SUFFIX)?;
        let (data, data_len, valid) = match data {
            Data::None => (None, 0, 0),
            Data::Out(bytes) => {
                let mut b = self.alloc(bytes.len())?;
                b.write_at(0, bytes).map_err(|e| ClientError::Transport(e.to_string()))?;
                (Some(b), bytes.len(), bytes.len())
            }
            Data::OutBuf(b, valid) => {
                let len = b.len();
                (Some(b), len, valid)
            }
            Data::In(cap) => (Some(self.alloc(cap)?), cap, 0),
        };
        if data_len > self.config.max_data_len as usize {
            return Err(ClientError::Invalid(format!("{data_len}-byte data buffer over the device limit")));
        }
        let header = VspRequest {
            timeout_ms: self.options.timeout_ms.into(),
            data_buffer_length: (data_len as u32).into(),
            data_buffer_valid: (valid as u32).into(),
            operation_type: (OperationType::UserRequest as u32).into(),
            request_buffer_length: (body.len() as u32).into(),
            response_buffer_length: (resp_len as u32).into(),
            transaction_id: self.next_txn(),
            ..Default::default()
        };
        let dir = code.data_direction();
        let ticket = self.transport.submit(OpBuffers { header, request, response, data, dir })?;
        let backstop = (self.options.timeout_ms != 0)
            .then(|| Duration::from_millis(u64::from(self.options.timeout_ms)) + BACKSTOP_GRACE);
        Ok(PendingOp { ticket, op: code, backstop })
    }

    /// Run one operation and wait for it.
    pub fn call(&self, op: &OpRequest, data: Data<'_>) -> Result<OpResult, ClientError> {
        self.submit(op, data)?.wait()
    }

    fn unexpected(r: OpResponse) -> ClientError {
        ClientError::Protocol(format!("unexpected response {r:?}"))
    }

    pub fn create_container(&self, name: &str) -> Result<ContainerProperties, ClientError> {
        let op = OpRequest::CreateContainer { container: container(name)?, metadata: Metadata::default() };
        match self.call(&op, Data::None)?.response {
            OpResponse::ContainerCreated(p) => Ok(p),
            r => Err(Self::unexpected(r)),
        }
    }

    pub fn delete_container(&self, name: &str) -> Result<(), ClientError> {
        self.call(&OpRequest::DeleteContainer { container: container(name)? }, Data::None).map(|_| ())
    }

    pub fn container_properties(&self, name: &str) -> Result<ContainerProperties, ClientError> {
        match self.call(&OpRequest::GetContainerProperties { container: container(name)? }, Data::None)?.response {
            OpResponse::ContainerProperties(p) => Ok(p),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Every container whose name starts with `prefix`, all pages.
    pub fn list_containers(&self, prefix: &str) -> Result<Vec<ContainerEntry>, ClientError> {
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let op = OpRequest::ListContainers(ListContainers {
                prefix: prefix.into(),
                marker: marker.clone(),
                max_results: 0,
                include_metadata: true,
            });
            match self.call(&op, Data::None)?.response {
                OpResponse::ContainerList { containers, next_marker } => {
                    out.extend(containers);
                    if next_marker.is_empty() {
                        return Ok(out);
                    }
                    marker = next_marker;
                }
                r => return Err(Self::unexpected(r)),
            }
        }
    }

    /// Store `data` as one blob (at most the device's single-request size;
    /// use [`BlobClient::put_stream`] for anything larger).
    pub fn put(&self, c: &str, b: &str, data: &[u8]) -> Result<BlobWritten, ClientError> {
        self.put_with(c, b, data, Conditions::none(), "")
    }

    pub fn put_with(
        &self,
        c: &str,
        b: &str,
        data: &[u8],
        conditions: Conditions,
        content_type: &str,
    ) -> Result<BlobWritten, ClientError> {
        let op = OpRequest::PutBlob(PutBlob {
            target: target(c, b)?,
            content_type: content_type.into(),
            metadata: Metadata::default(),
            conditions,
            content_md5: None,
            content_crc64: Some(crate::crc64(data)),
        });
        match self.call(&op, Data::Out(data))?.response {
            OpResponse::BlobWritten(w) => Ok(w),
            r => Err(Self::unexpected(r)),
        }
    }

    /// The whole blob (it must fit in memory; see [`BlobClient::get_to_writer`]).
    pub fn get(&self, c: &str, b: &str) -> Result<Vec<u8>, ClientError> {
        let props = self.stat(c, b)?;
        // A hint only: the length comes from the device.
        let mut out = Vec::with_capacity(props.content_length.min(64 << 20) as usize);
        self.get_to_writer_from(c, b, &props, &mut out, None)?;
        Ok(out)
    }

    /// Up to `len` bytes from `offset` (one request: `len` must fit the
    /// device's data limit).
    pub fn get_range(&self, c: &str, b: &str, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        let (_, data) = self.read_range(c, b, offset, len, Conditions::none())?;
        Ok(data)
    }

    pub(crate) fn submit_range(
        &self,
        t: &BlobRef,
        offset: u64,
        len: usize,
        conditions: Conditions,
    ) -> Result<PendingOp, ClientError> {
        let op = OpRequest::GetBlob(GetBlob {
            target: t.clone(),
            range: Some(ByteRange { offset, length: len as u64 }),
            conditions,
        });
        self.submit(&op, Data::In(len))
    }

    pub(crate) fn finish_range(r: OpResult) -> Result<(BlobProperties, Vec<u8>), ClientError> {
        let mut data = Vec::new();
        let properties = Self::finish_range_into(r, &mut data)?;
        Ok((properties, data))
    }

    /// Like `finish_range`, reusing `data` (resized to the bytes returned).
    pub(crate) fn finish_range_into(r: OpResult, data: &mut Vec<u8>) -> Result<BlobProperties, ClientError> {
        match r.response {
            OpResponse::BlobData { properties, length, .. } => {
                // The device says how much it wrote: check before allocating.
                let cap = r.data.as_ref().map_or(0, |b| b.len() as u64);
                if length > cap {
                    return Err(ClientError::Protocol(format!(
                        "device returned {length} bytes into a {cap}-byte buffer"
                    )));
                }
                data.resize(length as usize, 0);
                if let Some(buf) = r.data {
                    buf.read_at(0, data).map_err(|e| ClientError::Protocol(e.to_string()))?;
                }
                Ok(properties)
            }
            r => Err(Self::unexpected(r)),
        }
    }

    fn read_range(
        &self,
        c: &str,
        b: &str,
        offset: u64,
        len: usize,
        conditions: Conditions,
    ) -> Result<(BlobProperties, Vec<u8>), ClientError> {
        Self::finish_range(self.submit_range(&target(c, b)?, offset, len, conditions)?.wait()?)
    }

    pub fn stat(&self, c: &str, b: &str) -> Result<BlobProperties, ClientError> {
        let op = OpRequest::GetBlobProperties { target: target(c, b)?, conditions: Conditions::none() };
        match self.call(&op, Data::None)?.response {
            OpResponse::BlobProperties(p) => Ok(p),
            r => Err(Self::unexpected(r)),
        }
    }

    pub fn delete(&self, c: &str, b: &str) -> Result<(), ClientError> {
        let op = OpRequest::DeleteBlob { target: target(c, b)?, conditions: Conditions::none() };
        self.call(&op, Data::None).map(|_| ())
    }

    /// Every blob (or rolled-up prefix with a delimiter) under `prefix`.
    pub fn list(&self, c: &str, prefix: &str, delimiter: &str) -> Result<Vec<BlobListItem>, ClientError> {
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let op = OpRequest::ListBlobs(ListBlobs {
                container: container(c)?,
                prefix: prefix.into(),
                delimiter: delimiter.into(),
                marker: marker.clone(),
                max_results: 0,
                include_metadata: false,
            });
            match self.call(&op, Data::None)?.response {
                OpResponse::BlobList { items, next_marker } => {
                    out.extend(items);
                    if next_marker.is_empty() {
                        return Ok(out);
                    }
                    marker = next_marker;
                }
                r => return Err(Self::unexpected(r)),
            }
        }
    }

    pub(crate) fn submit_block(
        &self,
        t: &BlobRef,
        id: &BlockId,
        buf: DmaBuf,
        valid: usize,
        crc: u64,
    ) -> Result<PendingOp, ClientError> {
        let op = OpRequest::PutBlock(PutBlock { target: t.clone(), block_id: id.clone(), content_crc64: Some(crc) });
        self.submit(&op, Data::OutBuf(buf, valid))
    }

    pub(crate) fn commit_blocks(&self, t: &BlobRef, blocks: Vec<BlockId>) -> Result<BlobWritten, ClientError> {
        let op = OpRequest::PutBlockList(PutBlockList {
            target: t.clone(),
            blocks,
            content_type: String::new(),
            metadata: Metadata::default(),
            conditions: Conditions::none(),
        });
        match self.call(&op, Data::None)?.response {
            OpResponse::BlobWritten(w) => Ok(w),
            r => Err(Self::unexpected(r)),
        }
    }

    pub fn block_list(&self, c: &str, b: &str, list_type: BlockListType) -> Result<Vec<BlockInfo>, ClientError> {
        match self.call(&OpRequest::GetBlockList { target: target(c, b)?, list_type }, Data::None)?.response {
            OpResponse::BlockList { blocks } => Ok(blocks),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Block size for streamed uploads.
    pub fn block_size(&self) -> usize {
        let hint = if self.options.block_size == 0 { self.config.block_size_hint } else { self.options.block_size };
        streamed_block_size(hint, self.config.max_data_len)
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
