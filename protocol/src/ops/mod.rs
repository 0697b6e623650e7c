//! Blob operations carried in the request and response buffers.
//!
//! Request buffer: a 16-byte [`OpHeader`] (magic `VBRQ`) then the op body.
//! Response buffer: a 16-byte [`OpHeader`] (magic `VBRS`, with the status)
//! then the op's response body, or a UTF-8 message on error.
//! `docs/PROTOCOL.md` gives every field's offset and size.

mod common;
mod lease;
mod request;
mod response;

pub use common::*;
pub use lease::*;
pub use request::*;
pub use response::*;

use crate::status::BlobError;

/// `"VBRQ"` read as a little-endian u32.
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"VBRQ");
/// `"VBRS"` read as a little-endian u32.
pub const RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"VBRS");
/// The newest blob-operation encoding version this build speaks (§11.1):
/// 2 adds time conditions, a creation time and the HTTP headers besides
/// Content-Type; 3 adds leases.
pub const OP_VERSION: u16 = 3;
/// The oldest one it still speaks, to peers of an older build.
pub const MIN_OP_VERSION: u16 = 1;
pub const OP_HEADER_SIZE: usize = 16;
/// Most entries a list response may carry (Azure's page limit).
pub const MAX_LIST_RESULTS: u32 = 5000;
/// Most blocks in one committed block list (Azure's limit).
pub const MAX_BLOCKS: usize = 50_000;
/// Longest error message carried in a response.
pub const MAX_MESSAGE: usize = 1024;
/// Longest continuation marker.
pub const MAX_MARKER: usize = 2048;

/// Operation codes (`u16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum OpCode {
    GetDeviceConfig = 0,
    CreateContainer = 1,
    DeleteContainer = 2,
    ListContainers = 3,
    GetContainerProperties = 4,
    PutBlob = 16,
    GetBlob = 17,
    GetBlobProperties = 18,
    DeleteBlob = 19,
    ListBlobs = 20,
    PutBlock = 21,
    PutBlockList = 22,
    GetBlockList = 23,
    SetBlobMetadata = 24,
    SetBlobProperties = 25,
    CopyBlob = 26,
    LeaseBlob = 27,
}

impl OpCode {
    pub const ALL: [OpCode; 17] = [
        OpCode::GetDeviceConfig,
        OpCode::CreateContainer,
        OpCode::DeleteContainer,
        OpCode::ListContainers,
        OpCode::GetContainerProperties,
        OpCode::PutBlob,
        OpCode::GetBlob,
        OpCode::GetBlobProperties,
        OpCode::DeleteBlob,
        OpCode::ListBlobs,
        OpCode::PutBlock,
        OpCode::PutBlockList,
        OpCode::GetBlockList,
        OpCode::SetBlobMetadata,
        OpCode::SetBlobProperties,
        OpCode::CopyBlob,
        OpCode::LeaseBlob,
    ];

    pub fn from_u16(v: u16) -> Option<OpCode> {
        Self::ALL.into_iter().find(|op| *op as u16 == v)
    }

    /// Whether the op changes what a reader sees, so that a lost answer leaves
    /// the caller not knowing whether it happened, and a replay (same
    /// transaction id) must be answered from the first execution. PutBlock
    /// is not one: a staged block is invisible until a block list commits
    /// it, and staging it again changes nothing.
    pub fn has_outcome(self) -> bool {
        matches!(
            self,
            OpCode::CreateContainer
                | OpCode::DeleteContainer
                | OpCode::PutBlob
                | OpCode::DeleteBlob
                | OpCode::PutBlockList
                | OpCode::SetBlobMetadata
                | OpCode::SetBlobProperties
                | OpCode::CopyBlob
                | OpCode::LeaseBlob
        )
    }

    /// Which way the data buffer moves for this op.
    pub fn data_direction(self) -> DataDirection {
        match self {
            OpCode::PutBlob | OpCode::PutBlock => DataDirection::ToHost,
            OpCode::GetBlob => DataDirection::ToGuest,
            _ => DataDirection::None,
        }
    }
}

/// Direction of the data buffer. On virtio it decides whether the data lies in
/// the device-readable or device-writable part of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Guest → host (PUT): read by the VSP.
    ToHost,
    /// Host → guest (GET): written by the VSP.
    ToGuest,
}

/// Why a request or response buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("buffer ends inside a field")]
    Truncated,
    #[error("{0} bytes follow the message")]
    TrailingBytes(usize),
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported op version {0}")]
    UnsupportedVersion(u16),
    #[error("unknown op code {0}")]
    UnknownOp(u16),
    #[error("reserved flags {0:#x} set")]
    ReservedFlags(u32),
    #[error("body length {body} does not match buffer length {buffer}")]
    BodyLength { body: u32, buffer: usize },
    #[error("bad option or enum tag {0}")]
    BadTag(u8),
    #[error("field of {len} bytes exceeds {max}")]
    FieldTooLong { len: usize, max: usize },
    #[error("{count} elements exceed {max}")]
    TooMany { count: usize, max: usize },
    #[error("invalid UTF-8")]
    BadUtf8,
    #[error("name breaks the naming rules")]
    InvalidName,
    #[error("metadata over {max} bytes", max = crate::names::METADATA_MAX_BYTES)]
    MetadataTooLarge,
    #[error("duplicate metadata key")]
    DuplicateMetadataKey,
    #[error("response is for op {got}, expected {expected}")]
    WrongOp { got: u16, expected: u16 },
    #[error("invalid field value")]
    InvalidValue,
}

impl DecodeError {
    /// The status the VSP answers a request with when its op cannot be decoded.
    pub fn status(&self) -> BlobError {
        match self {
            DecodeError::UnsupportedVersion(_) | DecodeError::UnknownOp(_) => BlobError::Unsupported,
            DecodeError::InvalidName | DecodeError::DuplicateMetadataKey => BlobError::InvalidName,
            DecodeError::MetadataTooLarge | DecodeError::TooMany { .. } => BlobError::TooLarge,
            _ => BlobError::InvalidRequest,
        }
    }
}
