//! Client errors: what a caller of `BlobClient` sees, one variant per kind of
//! failure so a caller (the CLI's exit codes, a retry loop) can branch on it.
//! Every Display is one line; lower errors stay reachable through `source`.

use std::time::Duration;

use vmblob_protocol::BlobError;
use vmblob_protocol::framing::FramingError;
use vmblob_protocol::ops::{DecodeError, OpCode, OpResponse};
use vmblob_protocol::transport::TransportError;
use vmblob_vmbus::WriteError;

use crate::transport::dma::DmaError;
use crate::transport::virtio::QueueError;
use crate::transport::vmbus::ChannelError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The VSP answered with a non-success status.
    #[error("{error}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status { error: BlobError, message: String },
    /// An upload's commit lost to another writer of the same name: that
    /// writer's commit discarded this upload's staged blocks (or staged one
    /// of its ids anew), so this upload committed nothing. The blob is the
    /// other writer's; upload again to replace it.
    #[error("upload superseded by a concurrent write of the blob; nothing committed{}", if .message.is_empty() { String::new() } else { format!(" ({})", .message) })]
    Superseded { message: String },
    /// The device went away (rescind, backend exit, disconnect) before the
    /// request completed, or is not connected now.
    #[error("device rescinded")]
    Rescinded,
    /// The device went away after this write was sent and did not come back
    /// within the request's timeout (or the transport cannot send it again),
    /// so whether it was applied is not known: read the blob or container to
    /// find out, or repeat the write if it is idempotent for the caller.
    #[error(
        "outcome unknown: the device went away with the {op:?} in flight and did not come back in time; it may or may not have been applied"
    )]
    OutcomeUnknown { op: vmblob_protocol::OpCode },
    /// Nothing came back within a bound: the device is not responding.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout { waiting_for: &'static str, after: Duration },
    /// The DMA pool had no buffer of this size free in time (every buffer is
    /// held by requests in flight): retry later or with less in flight.
    #[error("no {len}-byte DMA buffer free within {waited:?}")]
    ResourceExhausted { len: usize, waited: Duration },
    /// A container or blob name the naming rules refuse; nothing was sent.
    #[error("invalid {kind} name {}", shown(name))]
    InvalidName { kind: &'static str, name: String },
    /// The request cannot be expressed within the device's limits.
    #[error("{what} of {len} over the device limit of {max}")]
    TooLarge { what: &'static str, len: u64, max: u64 },
    /// A source ended before the length it was said to have.
    #[error("source ended after {got} of its stated {expected} bytes")]
    ShortSource { got: u64, expected: u64 },
    /// The transport options cannot work (a caller's mistake).
    #[error("invalid transport options: {0}")]
    InvalidOptions(&'static str),
    /// Buffers handed to `Transport::submit` that do not match their header.
    #[error("invalid request buffers: {0}")]
    InvalidBuffers(&'static str),
    /// The VSP's answer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// A response body that does not decode.
    #[error("undecodable response: {0}")]
    Decode(#[from] DecodeError),
    /// The request needs a newer op version than the device speaks (a time
    /// condition or an HTTP header on a VSP of an older build): refused
    /// here rather than sent without it.
    #[error(transparent)]
    NeedsVersion(#[from] vmblob_protocol::ops::NeedsVersion),
    /// A 12-byte transport response that does not parse.
    #[error("bad transport response: {0}")]
    Response(#[from] TransportError),
    /// Reading or writing a DMA buffer failed.
    #[error("DMA buffer: {0}")]
    Dma(#[from] DmaError),
    /// The virtio split queue refused a chain or saw the device misbehave.
    #[error("virtqueue: {0}")]
    Queue(#[from] QueueError),
    /// Opening or driving the VMBus channel failed.
    #[error("VMBus channel: {0}")]
    Channel(#[from] ChannelError),
    /// Writing the guest-to-host VMBus ring failed.
    #[error("VMBus ring: {0}")]
    Ring(#[from] WriteError),
    /// The in-process VMM could not set up or drive the vhost-user device.
    #[cfg(feature = "vhost-user")]
    #[error("vhost-user: {0}")]
    Frontend(#[from] vmblob_vhost_frontend::Error),
    /// The transport could not be set up for a reason of its own.
    #[error("virtio-pci: {0}")]
    Pci(#[from] crate::transport::virtio_pci::PciError),
    #[error("transport setup: {0}")]
    Setup(&'static str),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Ways the device's answer broke the protocol (`docs/PROTOCOL.md`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("success without a response body")]
    EmptySuccess,
    #[error("status {0:#x} with a success body")]
    StatusWithSuccessBody(u32),
    #[error("response does not answer {0:?}")]
    WrongOp(OpCode),
    #[error("unexpected response {0:?}")]
    Unexpected(Box<OpResponse>),
    #[error("device returned {length} bytes into a {cap}-byte buffer")]
    DataOverrun { length: u64, cap: u64 },
    #[error("read returned {got} of {want} bytes")]
    ShortRead { got: u64, want: u64 },
    #[error("listing marker {0:?} does not advance")]
    StuckMarker(String),
    #[error("bad ETag {0:?}")]
    BadETag(String),
    #[error("device completed with used length {0}")]
    UsedLength(u32),
    #[error("response_len {len} exceeds buffer {cap}")]
    ResponseTooLong { len: u32, cap: u32 },
    #[error("completion of {len} bytes: {source}")]
    BadCompletion { len: usize, source: FramingError },
    #[error("device config: {0}")]
    DeviceConfig(DecodeError),
    #[error("answer in op version {got} to a request in version {sent}")]
    WrongVersion { got: u16, sent: u16 },
}

impl ClientError {
    /// The VSP status, if this error is one.
    pub fn blob_error(&self) -> Option<BlobError> {
        match self {
            ClientError::Status { error, .. } => Some(*error),
            ClientError::Superseded { .. } => Some(BlobError::InvalidBlockList),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.blob_error(), Some(BlobError::BlobNotFound | BlobError::ContainerNotFound))
    }

    pub(crate) fn unexpected(r: OpResponse) -> Self {
        ProtocolError::Unexpected(Box::new(r)).into()
    }

    pub(crate) fn checksum_mismatch(what: &str) -> Self {
        ClientError::Status { error: BlobError::ChecksumMismatch, message: what.into() }
    }
}

impl From<BlobError> for ClientError {
    fn from(error: BlobError) -> Self {
        ClientError::Status { error, message: String::new() }
    }
}

/// A name for an error message: quoted, and cut when long, so one bad argument cannot flood a log.
pub fn shown(name: &str) -> String {
    const MAX: usize = 64;
    if name.chars().count() <= MAX {
        return format!("{name:?}");
    }
    let cut: String = name.chars().take(MAX).collect();
    format!("{cut:?}… ({} bytes)", name.len())
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn lower_errors_stay_reachable_and_display_is_one_line() {
        let e = ClientError::from(DmaError::BadLength(3));
        assert!(e.source().is_some_and(|s| s.downcast_ref::<DmaError>().is_some()));
        let e = ClientError::from(ProtocolError::ShortRead { got: 1, want: 2 });
        assert_eq!(e.to_string(), "protocol violation: read returned 1 of 2 bytes");
        let e = ClientError::ResourceExhausted { len: 4096, waited: Duration::from_secs(60) };
        assert_eq!(e.to_string(), "no 4096-byte DMA buffer free within 60s");
        let e = ClientError::Status { error: BlobError::BlobNotFound, message: "a\nb".replace('\n', " ") };
        assert_eq!(e.to_string().lines().count(), 1);
    }
}
