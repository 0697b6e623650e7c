//! The transport-agnostic engine: one accepted request in, one completion out.
//!
//! A transport hands over a [`Frame`] (the header it copied once and where the
//! buffers lie in guest memory). [`Engine::serve`] validates it, decodes the
//! operation, runs it on the store reading and writing guest memory directly,
//! writes the op response, and returns the 12-byte transport response for the
//! transport to post. Every path returns exactly one response; none panics on
//! guest input.

mod cancel;
mod execute;
pub mod fault;
mod frame;
pub mod guest_io;
mod inflight;
mod txn_record;

pub use cancel::{CancelReason, CancelToken};
pub use frame::Frame;
pub use inflight::{AdmitError, InflightTable};
pub use txn_record::{Outcome, TxnRecord, TxnRecordLimits};

use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;
use vmblob_protocol::config::{DeviceConfig, caps};
use vmblob_protocol::ops::{self, MIN_OP_VERSION, OP_VERSION, OpCode, OpRequest};
use vmblob_protocol::transport::{MAX_BUFFER_LEN, OperationType, PAGE_SIZE, TransportError};
use vmblob_protocol::{BlobError, Segment, VspResponse};

use crate::lease::LeaseTable;
use crate::store::BlobStore;

/// Limits against a hostile or runaway guest; each has a daemon flag.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest op request buffer read into host memory.
    pub max_request_len: u32,
    /// Most descriptors in one virtio chain.
    pub max_descriptors: usize,
    /// Most accepted requests per queue.
    pub max_inflight: usize,
    /// How long a rescind waits for in-flight work to finish.
    pub drain_timeout: Duration,
    /// Write outcomes remembered to answer replays (the transaction record).
    pub txn_record: TxnRecordLimits,
    pub max_blob_size: u64,
    /// How long the embedded store keeps a blob's uncommitted blocks after
    /// its last PutBlock.
    pub staged_block_ttl: Duration,
    /// Block size the guest should use for PutBlock.
    pub block_size_hint: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_len: 4 << 20,
            max_descriptors: 1024,
            max_inflight: 256,
            drain_timeout: Duration::from_secs(5),
            txn_record: TxnRecordLimits::default(),
            max_blob_size: 1 << 40,
            staged_block_ttl: crate::store::fs::DEFAULT_STAGED_BLOCK_TTL,
            block_size_hint: 8 << 20,
        }
    }
}

/// The largest GET [`Engine::is_quick`] lets a transport run inline: a
/// few microseconds of copying from the page cache.
pub const QUICK_READ_MAX: u32 = 64 << 10;

pub struct Engine {
    store: Arc<dyn BlobStore>,
    leases: LeaseTable,
    limits: Limits,
    record: TxnRecord,
    crash: Option<fault::CrashHook>,
    num_queues: u16,
}

/// The status for a transport header the seed's rules refuse.
fn transport_status(e: &TransportError) -> BlobError {
    match e {
        TransportError::UnsupportedVersion(_) | TransportError::UnknownOperation(_) => BlobError::Unsupported,
        TransportError::BufferTooLong { .. } | TransportError::TotalTooLong(_) => BlobError::TooLarge,
        _ => BlobError::InvalidRequest,
    }
}

/// Writes whose outcome goes into the transaction record: replayed, they
/// must answer their first result ([`OpCode::has_outcome`]).
fn is_recorded_write(op: &OpRequest) -> bool {
    op.op().has_outcome()
}

/// Whether a write's status is its outcome. Not so for those that say the
/// write did not run to a decision (rescinded, timed out, busy, the store
/// failing): a replay of those must run again.
fn is_definite(status: u32) -> bool {
    !matches!(
        BlobError::from_code(status),
        Some(BlobError::Rescinded | BlobError::Timeout | BlobError::Busy | BlobError::Io | BlobError::Internal)
            | Some(BlobError::Unknown(_))
    )
}

fn status_only(e: BlobError) -> VspResponse {
    VspResponse::new(e.code(), 0)
}

impl Engine {
    /// An engine whose transaction record lives in memory only.
    pub fn new(store: Arc<dyn BlobStore>, limits: Limits, num_queues: u16) -> Self {
        let record = TxnRecord::in_memory(limits.txn_record);
        Self::with_record(store, limits, num_queues, record)
    }

    /// An engine answering replays from `record` (persistent: [`TxnRecord::open`]).
    pub fn with_record(store: Arc<dyn BlobStore>, limits: Limits, num_queues: u16, record: TxnRecord) -> Self {
        Self { store, leases: LeaseTable::in_memory(), limits, record, crash: None, num_queues }
    }

    /// Keep blob leases in `leases` (persistent: [`LeaseTable::open`]).
    pub fn with_leases(mut self, leases: LeaseTable) -> Self {
        self.leases = leases;
        self
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Abort the process at `hook`'s point (end-to-end crash tests).
    pub fn with_crash_hook(mut self, hook: Option<fault::CrashHook>) -> Self {
        self.crash = hook;
        self
    }

    pub fn txn_record(&self) -> &TxnRecord {
        &self.record
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// What this VSP advertises (virtio config space, GetDeviceConfig).
    pub fn device_config(&self) -> DeviceConfig {
        DeviceConfig {
            min_op_version: MIN_OP_VERSION,
            max_op_version: OP_VERSION,
            max_buffer_len: MAX_BUFFER_LEN,
            // Room for one request page and one response page beside the data.
            max_data_len: MAX_BUFFER_LEN - 2 * PAGE_SIZE,
            max_request_len: self.limits.max_request_len,
            max_segments: self.limits.max_descriptors as u32,
            max_inflight: self.limits.max_inflight as u32,
            num_queues: self.num_queues,
            capabilities: caps::ALL,
            max_blob_size: self.limits.max_blob_size,
            block_size_hint: self.limits.block_size_hint,
        }
    }

    /// The completion of a request that cannot be served at all (cancelled
    /// before it ran, or refused at admission).
    pub fn refused(reason: BlobError) -> VspResponse {
        status_only(reason)
    }

    /// Whether `frame` is a read cheap enough to run on the thread that popped
    /// it: a GET of at most [`QUICK_READ_MAX`] bytes, a properties read or a
    /// block list, on a store whose reads are quick. Only the op code (bytes
    /// 6..8 of the request) is looked at; [`Engine::serve`] checks the rest.
    pub fn is_quick(&self, mem: &GuestMemoryMmap, frame: &dyn Frame) -> bool {
        if !self.store.reads_are_quick() || frame.header().data_buffer_length.get() > QUICK_READ_MAX {
            return false;
        }
        let Ok(segs) = frame.request() else { return false };
        let Ok(code_at) = vmblob_protocol::sg::sub_range(&segs, 6, 2) else { return false };
        let mut code = [0u8; 2];
        if guest_io::read_exact(mem, &code_at, &mut code).is_err() {
            return false;
        }
        matches!(
            OpCode::from_u16(u16::from_le_bytes(code)),
            Some(OpCode::GetBlob | OpCode::GetBlobProperties | OpCode::GetContainerProperties | OpCode::GetBlockList)
        )
    }

    /// Serve one accepted request. Always returns its single response.
    pub fn serve(&self, mem: &GuestMemoryMmap, frame: &dyn Frame, cancel: &CancelToken) -> VspResponse {
        if let Some(r) = cancel.reason() {
            return status_only(match r {
                CancelReason::Rescinded => BlobError::Rescinded,
                CancelReason::TimedOut => BlobError::Timeout,
            });
        }
        let hdr = *frame.header();
        match hdr.validate() {
            Err(e) => {
                log::debug!("refused header: {e}");
                return status_only(transport_status(&e));
            }
            Ok(OperationType::UserRequest) => {}
            Ok(_) => return status_only(BlobError::Unsupported),
        }
        if hdr.request_buffer_length.get() > self.limits.max_request_len {
            return status_only(BlobError::TooLarge);
        }
        let Ok(req_segs) = frame.request() else { return status_only(BlobError::InvalidRequest) };
        let Ok(req_bytes) = guest_io::read_all(mem, &req_segs) else {
            return status_only(BlobError::InvalidRequest);
        };
        let (version, op) = match OpRequest::decode_versioned(&req_bytes) {
            Ok(v) => v,
            Err(e) => {
                log::debug!("undecodable op: {e}");
                // Answer in the response buffer when the op code is known, in
                // the request's op version if it is one we speak.
                let field = |at: usize| req_bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
                let version = field(4).filter(|v| (MIN_OP_VERSION..=OP_VERSION).contains(v)).unwrap_or(MIN_OP_VERSION);
                let layout = frame.layout(vmblob_protocol::DataDirection::None).ok();
                return match (field(6).and_then(OpCode::from_u16), layout) {
                    (Some(op), Some(l)) => {
                        self.reply_bytes(mem, &l.response, (version, op), Err((e.status(), e.to_string()))).0
                    }
                    _ => status_only(e.status()),
                };
            }
        };
        let layout = match frame.layout(op.op().data_direction()) {
            Ok(l) => l,
            Err(e) => {
                log::debug!("bad buffer layout: {e}");
                return status_only(BlobError::InvalidRequest);
            }
        };
        let txn = hdr.transaction_id;
        // Only recorded writes are looked up, so only they pay for a digest.
        let digest =
            is_recorded_write(&op).then(|| crate::store::crc64(&req_bytes) ^ (req_bytes.len() as u64).rotate_left(32));
        if let Some(digest) = digest
            && let Some(prev) = self.record.get(&txn).filter(|p| p.request_digest == digest)
        {
            log::debug!("replayed transaction answered from its first run");
            return match guest_io::write_all(mem, &layout.response, &prev.response) {
                Ok(()) => VspResponse::new(prev.status, prev.response.len() as u32),
                Err(_) => status_only(BlobError::BufferTooSmall),
            };
        }
        let resp_cap = hdr.response_buffer_length.get() as usize;
        let result = self.execute(mem, &op, &layout, &txn, cancel, resp_cap);
        let (resp, written) = self.reply_bytes(mem, &layout.response, (version, op.op()), result);
        // Recorded after the store committed, before the answer leaves (it
        // leaves when this returns). A crash in between falls back to the
        // store's current-txn check.
        if let Some(digest) = digest
            && is_definite(resp.error.get())
        {
            let committed = resp.error.get() == 0;
            let crash = |at| {
                if let Some(hook) = self.crash.as_ref().filter(|_| committed) {
                    hook.reached(at);
                }
            };
            crash(fault::CrashPoint::BeforeRecord);
            self.record.insert(txn, Outcome { request_digest: digest, status: resp.error.get(), response: written });
            crash(fault::CrashPoint::AfterRecord);
        }
        resp
    }

    /// Encode the op response in the request's op version and write it; its
    /// status becomes the transport status. A success too big for the
    /// buffer becomes BufferTooSmall. Also returns the bytes written.
    fn reply_bytes(
        &self,
        mem: &GuestMemoryMmap,
        response: &[Segment],
        (version, op): (u16, OpCode),
        result: Result<ops::OpResponse, execute::OpFailure>,
    ) -> (VspResponse, Vec<u8>) {
        let cap = vmblob_protocol::sg::total_len(response) as usize;
        let (status, bytes) = match result {
            Ok(r) => {
                let bytes = ops::encode_success_at(version, op, &r);
                if bytes.len() <= cap {
                    (0, bytes)
                } else {
                    let e = BlobError::BufferTooSmall;
                    (e.code(), ops::encode_error_at(version, op, e, "response buffer too small", cap))
                }
            }
            Err((e, msg)) => (e.code(), ops::encode_error_at(version, op, e, &msg, cap)),
        };
        if bytes.len() > cap || guest_io::write_all(mem, response, &bytes).is_err() {
            // Not even the header fits, or the buffer is not in guest memory.
            return (VspResponse::new(status, 0), Vec::new());
        }
        (VspResponse::new(status, bytes.len() as u32), bytes)
    }
}
#[cfg(test)]
mod tests;
