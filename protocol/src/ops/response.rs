//! Operation responses: what the VSP writes into the response buffer.

use super::{
    BlobProperties, ContainerProperties, DecodeError, LeaseResult, MAX_BLOCKS, MAX_LIST_RESULTS, MAX_MARKER,
    MAX_MESSAGE, MIN_OP_VERSION, OP_HEADER_SIZE, OP_VERSION, OpCode, RESPONSE_MAGIC,
};
use crate::config::DeviceConfig;
use crate::names::{self, BLOB_NAME_MAX, BLOCK_ID_MAX, BlockId, ETAG_MAX};
use crate::status::{BlobError, SUCCESS, check};
use crate::wire::{Reader, Writer};

/// Result of a write (PutBlob, PutBlockList).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobWritten {
    pub etag: String,
    pub last_modified_ms: u64,
    pub content_crc64: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEntry {
    pub name: String,
    pub properties: ContainerProperties,
}

/// One entry of a blob listing.
// Blobs are the common item: boxing them would cost an allocation per listed
// blob to save space on the rare prefixes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobListItem {
    Blob {
        name: String,
        properties: BlobProperties,
    },
    /// A rolled-up name prefix (ends with the delimiter).
    Prefix(String),
    /// A name with staged blocks and no committed blob (asked for with
    /// `include_uncommitted`; op version 2): there is nothing to read yet.
    Uncommitted(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub id: Vec<u8>,
    pub size: u64,
    pub committed: bool,
}

/// A successful operation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    DeviceConfig(DeviceConfig),
    ContainerCreated(ContainerProperties),
    /// DeleteContainer, DeleteBlob.
    Deleted,
    ContainerList {
        containers: Vec<ContainerEntry>,
        next_marker: String,
    },
    ContainerProperties(ContainerProperties),
    BlobWritten(BlobWritten),
    /// GetBlob: `length` bytes from `offset` are at the start of the data buffer.
    BlobData {
        properties: BlobProperties,
        offset: u64,
        length: u64,
    },
    BlobProperties(BlobProperties),
    BlobList {
        items: Vec<BlobListItem>,
        next_marker: String,
    },
    BlockStaged {
        content_crc64: u64,
    },
    BlockList {
        blocks: Vec<BlockInfo>,
    },
    /// LeaseBlob (op version 3).
    Lease(LeaseResult),
}

/// A failed operation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub error: BlobError,
    pub message: String,
}

/// A decoded response buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseMessage {
    /// The op version it is in: the request's (§11.1).
    pub version: u16,
    pub op: OpCode,
    pub result: Result<OpResponse, ErrorReply>,
}

impl OpResponse {
    /// Which op this answers (PutBlob and PutBlockList share `BlobWritten`).
    pub fn answers(&self, op: OpCode) -> bool {
        matches!(
            (self, op),
            (OpResponse::DeviceConfig(_), OpCode::GetDeviceConfig)
                | (OpResponse::ContainerCreated(_), OpCode::CreateContainer)
                | (OpResponse::Deleted, OpCode::DeleteContainer | OpCode::DeleteBlob)
                | (OpResponse::ContainerList { .. }, OpCode::ListContainers)
                | (OpResponse::ContainerProperties(_), OpCode::GetContainerProperties)
                | (
                    OpResponse::BlobWritten(_),
                    OpCode::PutBlob
                        | OpCode::PutBlockList
                        | OpCode::SetBlobMetadata
                        | OpCode::SetBlobProperties
                        | OpCode::CopyBlob
                )
                | (OpResponse::BlobData { .. }, OpCode::GetBlob)
                | (OpResponse::BlobProperties(_), OpCode::GetBlobProperties)
                | (OpResponse::BlobList { .. }, OpCode::ListBlobs)
                | (OpResponse::BlockStaged { .. }, OpCode::PutBlock)
                | (OpResponse::BlockList { .. }, OpCode::GetBlockList)
                | (OpResponse::Lease(_), OpCode::LeaseBlob)
        )
    }

    fn encode_body(&self, w: &mut Writer) {
        match self {
            OpResponse::DeviceConfig(c) => w.raw(&c.to_bytes()),
            OpResponse::ContainerCreated(p) | OpResponse::ContainerProperties(p) => p.encode(w),
            OpResponse::Deleted => {}
            OpResponse::ContainerList { containers, next_marker } => {
                w.u32(containers.len() as u32);
                for c in containers {
                    c.encode(w);
                }
                w.str16(next_marker);
            }
            OpResponse::BlobWritten(b) => {
                w.str16(&b.etag);
                w.u64(b.last_modified_ms);
                w.u64(b.content_crc64);
            }
            OpResponse::BlobData { properties, offset, length } => {
                properties.encode(w);
                w.u64(*offset);
                w.u64(*length);
            }
            OpResponse::BlobProperties(p) => p.encode(w),
            OpResponse::BlobList { items, next_marker } => {
                // Version 1 has no uncommitted items (nor a way to ask for them).
                let v2 = w.version >= 2;
                let shown = move |i: &&BlobListItem| v2 || !matches!(i, BlobListItem::Uncommitted(_));
                w.u32(items.iter().filter(shown).count() as u32);
                for i in items.iter().filter(shown) {
                    i.encode(w);
                }
                w.str16(next_marker);
            }
            OpResponse::BlockStaged { content_crc64 } => w.u64(*content_crc64),
            OpResponse::BlockList { blocks } => {
                w.u32(blocks.len() as u32);
                for b in blocks {
                    w.bytes8(&b.id);
                    w.u64(b.size);
                    w.bool(b.committed);
                }
            }
            OpResponse::Lease(l) => l.encode(w),
        }
    }

    fn decode_body(op: OpCode, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match op {
            OpCode::GetDeviceConfig => {
                OpResponse::DeviceConfig(DeviceConfig::from_bytes(r.bytes(DeviceConfig::SIZE)?)?)
            }
            OpCode::CreateContainer => OpResponse::ContainerCreated(ContainerProperties::decode(r)?),
            OpCode::DeleteContainer | OpCode::DeleteBlob => OpResponse::Deleted,
            OpCode::GetContainerProperties => OpResponse::ContainerProperties(ContainerProperties::decode(r)?),
            OpCode::ListContainers => {
                let n = r.count(MAX_LIST_RESULTS as usize, 12)?;
                let mut containers = Vec::with_capacity(n);
                for _ in 0..n {
                    containers.push(ContainerEntry::decode(r)?);
                }
                OpResponse::ContainerList { containers, next_marker: r.str16(MAX_MARKER)?.to_owned() }
            }
            OpCode::PutBlob
            | OpCode::PutBlockList
            | OpCode::SetBlobMetadata
            | OpCode::SetBlobProperties
            | OpCode::CopyBlob => OpResponse::BlobWritten(BlobWritten {
                etag: r.str16(ETAG_MAX)?.to_owned(),
                last_modified_ms: r.u64()?,
                content_crc64: r.u64()?,
            }),
            OpCode::GetBlob => {
                OpResponse::BlobData { properties: BlobProperties::decode(r)?, offset: r.u64()?, length: r.u64()? }
            }
            OpCode::GetBlobProperties => OpResponse::BlobProperties(BlobProperties::decode(r)?),
            OpCode::ListBlobs => {
                let n = r.count(MAX_LIST_RESULTS as usize, 3)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(BlobListItem::decode(r)?);
                }
                OpResponse::BlobList { items, next_marker: r.str16(MAX_MARKER)?.to_owned() }
            }
            OpCode::PutBlock => OpResponse::BlockStaged { content_crc64: r.u64()? },
            OpCode::GetBlockList => {
                // Committed and uncommitted blocks together; each is at least
                // 11 bytes because ids follow the 1–64-byte block id rule.
                let n = r.count(3 * MAX_BLOCKS, 11)?;
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    blocks.push(BlockInfo {
                        id: BlockId::new(r.bytes8(BLOCK_ID_MAX)?)?.as_bytes().to_vec(),
                        size: r.u64()?,
                        committed: r.bool()?,
                    });
                }
                OpResponse::BlockList { blocks }
            }
            OpCode::LeaseBlob => OpResponse::Lease(LeaseResult::decode(r)?),
        })
    }
}

impl ContainerEntry {
    fn encode(&self, w: &mut Writer) {
        w.str16(&self.name);
        self.properties.encode(w);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { name: r.str16(names::CONTAINER_NAME_MAX)?.to_owned(), properties: ContainerProperties::decode(r)? })
    }
    /// Bytes this entry adds to a ContainerList body.
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.buf.len()
    }
}

impl BlobListItem {
    fn encode(&self, w: &mut Writer) {
        match self {
            BlobListItem::Blob { name, properties } => {
                w.u8(0);
                w.str16(name);
                properties.encode(w);
            }
            BlobListItem::Prefix(p) => {
                w.u8(1);
                w.str16(p);
            }
            BlobListItem::Uncommitted(n) => {
                w.u8(2);
                w.str16(n);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(BlobListItem::Blob {
                name: r.str16(BLOB_NAME_MAX)?.to_owned(),
                properties: BlobProperties::decode(r)?,
            }),
            1 => Ok(BlobListItem::Prefix(r.str16(BLOB_NAME_MAX)?.to_owned())),
            2 if r.version >= 2 => Ok(BlobListItem::Uncommitted(r.str16(BLOB_NAME_MAX)?.to_owned())),
            t => Err(DecodeError::BadTag(t)),
        }
    }

    /// What the item is listed as: the name, or the rolled-up prefix (the
    /// order a listing keeps and a marker resumes from).
    pub fn key(&self) -> &str {
        match self {
            BlobListItem::Blob { name, .. } | BlobListItem::Prefix(name) | BlobListItem::Uncommitted(name) => name,
        }
    }
    /// Bytes this item adds to a BlobList body in the newest op version, the
    /// widest: a page filled by it fits in every version.
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.buf.len()
    }
}

/// Bytes a list body needs besides its entries: the count and a marker of
/// `marker_len` bytes, plus the op header.
pub fn list_overhead(marker_len: usize) -> usize {
    OP_HEADER_SIZE + 4 + 2 + marker_len
}

fn header(w: &mut Writer, op: OpCode, status: u32, body_len: usize) {
    w.u32(RESPONSE_MAGIC);
    w.u16(w.version);
    w.u16(op as u16);
    w.u32(status);
    w.u32(body_len as u32);
}

/// Encode a success response buffer in the newest op version.
pub fn encode_success(op: OpCode, resp: &OpResponse) -> Vec<u8> {
    encode_success_at(OP_VERSION, op, resp)
}

/// Encode a success response buffer in op `version`, the request's. Fields
/// that version lacks (a v1 answer's creation time and HTTP headers) are
/// left out: the peer asking in it cannot know them.
pub fn encode_success_at(version: u16, op: OpCode, resp: &OpResponse) -> Vec<u8> {
    let mut body = Writer::at(version);
    resp.encode_body(&mut body);
    let mut w = Writer::at(version);
    w.buf.reserve(OP_HEADER_SIZE + body.buf.len());
    header(&mut w, op, SUCCESS, body.buf.len());
    w.raw(&body.buf);
    w.buf
}

/// Encode an error response buffer in the newest op version.
pub fn encode_error(op: OpCode, error: BlobError, message: &str, limit: usize) -> Vec<u8> {
    encode_error_at(OP_VERSION, op, error, message, limit)
}

/// Encode an error response buffer in op `version`; the message is cut to
/// fit `limit` bytes (the response buffer's size) and to [`MAX_MESSAGE`].
pub fn encode_error_at(version: u16, op: OpCode, error: BlobError, message: &str, limit: usize) -> Vec<u8> {
    let room = limit.saturating_sub(OP_HEADER_SIZE + 2).min(MAX_MESSAGE);
    let mut cut = message.len().min(room);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut w = Writer::at(version);
    header(&mut w, op, error.code(), 2 + cut);
    w.str16(&message[..cut]);
    w.buf
}

impl ResponseMessage {
    /// Decode a response buffer of `len` valid bytes, for a request of `expected` op.
    pub fn decode(buf: &[u8], expected: OpCode) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        if magic != RESPONSE_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let version = r.u16()?;
        if !(MIN_OP_VERSION..=OP_VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        r.version = version;
        let code = r.u16()?;
        if code != expected as u16 {
            return Err(DecodeError::WrongOp { got: code, expected: expected as u16 });
        }
        let status = r.u32()?;
        let body_len = r.u32()?;
        if body_len as usize != buf.len() - OP_HEADER_SIZE {
            return Err(DecodeError::BodyLength { body: body_len, buffer: buf.len() });
        }
        let result = match check(status) {
            Ok(()) => Ok(OpResponse::decode_body(expected, &mut r)?),
            Err(error) => Err(ErrorReply { error, message: r.str16(MAX_MESSAGE)?.to_owned() }),
        };
        r.finish()?;
        Ok(Self { version, op: expected, result })
    }
}
