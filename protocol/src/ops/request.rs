//! Operation requests: what the guest puts in the request buffer.

use super::{
    BlockListType, ByteRange, Conditions, ContentHeaders, DecodeError, LeaseBlob, LeaseId, MAX_BLOCKS,
    MAX_LIST_RESULTS, MAX_MARKER, MIN_OP_VERSION, Metadata, OP_HEADER_SIZE, OP_VERSION, OpCode, REQUEST_MAGIC,
};
use crate::names::{self, BLOB_NAME_MAX, BLOCK_ID_MAX, BlobName, BlockId, ContainerName};
use crate::wire::{Reader, Writer};

/// Longest ListBlobs delimiter.
pub const MAX_DELIMITER: usize = 16;

/// A container and a blob in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobRef {
    pub container: ContainerName,
    pub blob: BlobName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListContainers {
    pub prefix: String,
    /// Continuation marker from the previous page; empty for the first.
    pub marker: String,
    /// 1..=5000; 0 means 5000.
    pub max_results: u32,
    pub include_metadata: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutBlob {
    pub target: BlobRef,
    pub content_type: String,
    pub headers: ContentHeaders,
    pub metadata: Metadata,
    pub conditions: Conditions,
    /// If given, the VSP checks the data against it and stores it.
    pub content_md5: Option<[u8; 16]>,
    /// If given, the VSP checks the data's CRC-64/NVME against it.
    pub content_crc64: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetBlob {
    pub target: BlobRef,
    /// `None`: from offset 0. The VSP returns at most the data buffer's length.
    pub range: Option<ByteRange>,
    pub conditions: Conditions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListBlobs {
    pub container: ContainerName,
    pub prefix: String,
    /// Empty: flat listing. Otherwise names are rolled up to the first
    /// delimiter after the prefix and returned once as a prefix entry.
    pub delimiter: String,
    pub marker: String,
    pub max_results: u32,
    pub include_metadata: bool,
    /// Also names with staged blocks and no committed blob (Azure's
    /// `include=uncommittedblobs`; op version 2), as `BlobListItem::Uncommitted`.
    pub include_uncommitted: bool,
}

/// ListBlobs' include flags (op version 2; version 1 has the metadata bool).
const INCLUDE_METADATA: u8 = 1;
const INCLUDE_UNCOMMITTED: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutBlock {
    pub target: BlobRef,
    pub block_id: BlockId,
    pub content_crc64: Option<u64>,
    /// The blob's lease, required while it is leased (op version 3).
    pub lease_id: Option<LeaseId>,
}

/// One entry of a PutBlockList.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListedBlock {
    pub id: BlockId,
    /// The CRC-64/NVME of the block the committer staged under `id`. If
    /// given, the VSP commits nothing unless the block it holds has it: a
    /// block another writer staged under the same id is not this commit's.
    pub crc64: Option<u64>,
}

impl ListedBlock {
    /// An entry without a CRC (what op-version-1 clients before the
    /// `BLOCK_LIST_CRC64` capability send).
    pub fn unproven(id: BlockId) -> Self {
        Self { id, crc64: None }
    }
    pub fn proven(id: BlockId, crc64: u64) -> Self {
        Self { id, crc64: Some(crc64) }
    }
}

impl From<BlockId> for ListedBlock {
    fn from(id: BlockId) -> Self {
        Self::unproven(id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutBlockList {
    pub target: BlobRef,
    /// The blob's content, in order. An id may repeat.
    pub blocks: Vec<ListedBlock>,
    pub content_type: String,
    pub headers: ContentHeaders,
    pub metadata: Metadata,
    pub conditions: Conditions,
}

/// What a SetBlobMetadata or SetBlobProperties replaces, leaving the data
/// and the other properties as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobUpdate {
    /// All user metadata (SetBlobMetadata; an empty set removes it all).
    Metadata(Metadata),
    /// The HTTP headers (SetBlobProperties). `Some`: all of them, as Azure's
    /// Set Blob Properties sets them (one left empty is cleared, not kept;
    /// op version 2). `None`: the content type alone, the other headers stay
    /// (what an op-version-1 request says, which has no place for them).
    Properties { content_type: String, headers: Option<ContentHeaders> },
}

impl BlobUpdate {
    /// A SetBlobProperties of the content type alone: the other headers stay.
    pub fn content_type(content_type: impl Into<String>) -> Self {
        Self::Properties { content_type: content_type.into(), headers: None }
    }
}

/// SetBlobMetadata / SetBlobProperties: a committed blob gets a new ETag and
/// last-modified time, keeps its bytes and its uncommitted blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetBlobProperties {
    pub target: BlobRef,
    pub update: BlobUpdate,
    pub conditions: Conditions,
}

/// CopyBlob (Azure's synchronous Copy Blob within the account): the
/// source's committed content, content type, MD5 and blocks become the
/// target's, without crossing the guest. The target's uncommitted blocks go,
/// as with any write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyBlob {
    pub source: BlobRef,
    pub target: BlobRef,
    /// Checked on the source (failing: `PreconditionFailed`).
    pub source_conditions: Conditions,
    /// Checked on the target, as a write's.
    pub conditions: Conditions,
    /// `None`: the source's metadata is copied (Azure's rule when none is given).
    pub metadata: Option<Metadata>,
}

/// One blob operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRequest {
    GetDeviceConfig,
    CreateContainer { container: ContainerName, metadata: Metadata },
    DeleteContainer { container: ContainerName },
    ListContainers(ListContainers),
    GetContainerProperties { container: ContainerName },
    PutBlob(PutBlob),
    GetBlob(GetBlob),
    GetBlobProperties { target: BlobRef, conditions: Conditions },
    DeleteBlob { target: BlobRef, conditions: Conditions },
    ListBlobs(ListBlobs),
    PutBlock(PutBlock),
    PutBlockList(PutBlockList),
    GetBlockList { target: BlobRef, list_type: BlockListType },
    SetBlobProperties(SetBlobProperties),
    CopyBlob(CopyBlob),
    LeaseBlob(LeaseBlob),
}

impl OpRequest {
    pub fn op(&self) -> OpCode {
        match self {
            OpRequest::GetDeviceConfig => OpCode::GetDeviceConfig,
            OpRequest::CreateContainer { .. } => OpCode::CreateContainer,
            OpRequest::DeleteContainer { .. } => OpCode::DeleteContainer,
            OpRequest::ListContainers(_) => OpCode::ListContainers,
            OpRequest::GetContainerProperties { .. } => OpCode::GetContainerProperties,
            OpRequest::PutBlob(_) => OpCode::PutBlob,
            OpRequest::GetBlob(_) => OpCode::GetBlob,
            OpRequest::GetBlobProperties { .. } => OpCode::GetBlobProperties,
            OpRequest::DeleteBlob { .. } => OpCode::DeleteBlob,
            OpRequest::ListBlobs(_) => OpCode::ListBlobs,
            OpRequest::PutBlock(_) => OpCode::PutBlock,
            OpRequest::PutBlockList(_) => OpCode::PutBlockList,
            OpRequest::GetBlockList { .. } => OpCode::GetBlockList,
            OpRequest::SetBlobProperties(s) => match s.update {
                BlobUpdate::Metadata(_) => OpCode::SetBlobMetadata,
                BlobUpdate::Properties { .. } => OpCode::SetBlobProperties,
            },
            OpRequest::CopyBlob(_) => OpCode::CopyBlob,
            OpRequest::LeaseBlob(_) => OpCode::LeaseBlob,
        }
    }

    /// The lowest op version that can carry this request: 3 for leases, 2
    /// for time conditions, the HTTP headers besides Content-Type and
    /// uncommitted listings, else 1.
    pub fn min_version(&self) -> u16 {
        let fields = match self {
            OpRequest::LeaseBlob(_) => 3,
            OpRequest::PutBlock(p) if p.lease_id.is_some() => 3,
            OpRequest::PutBlob(p) if !p.headers.is_empty() => 2,
            OpRequest::PutBlockList(p) if !p.headers.is_empty() => 2,
            OpRequest::SetBlobProperties(SetBlobProperties {
                update: BlobUpdate::Properties { headers: Some(_), .. },
                ..
            }) => 2,
            OpRequest::ListBlobs(l) if l.include_uncommitted => 2,
            _ => MIN_OP_VERSION,
        };
        let conditions: &[&Conditions] = match self {
            OpRequest::PutBlob(p) => &[&p.conditions],
            OpRequest::PutBlockList(p) => &[&p.conditions],
            OpRequest::GetBlob(g) => &[&g.conditions],
            OpRequest::GetBlobProperties { conditions, .. } | OpRequest::DeleteBlob { conditions, .. } => &[conditions],
            OpRequest::SetBlobProperties(s) => &[&s.conditions],
            OpRequest::CopyBlob(c) => &[&c.source_conditions, &c.conditions],
            _ => &[],
        };
        conditions.iter().map(|c| c.min_version()).fold(fields, u16::max)
    }

    /// The whole request buffer in the newest op version: header then body.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_body_at(OP_VERSION)
    }

    /// The request buffer in op `version` (the one the VSC agreed with the
    /// device), or `NeedsVersion` if that version cannot carry the request.
    pub fn encode_at(&self, version: u16) -> Result<Vec<u8>, NeedsVersion> {
        let needed = self.min_version();
        if !(MIN_OP_VERSION..=OP_VERSION).contains(&version) || version < needed {
            return Err(NeedsVersion { op: self.op(), needed, version });
        }
        Ok(self.encode_body_at(version))
    }

    fn encode_body_at(&self, version: u16) -> Vec<u8> {
        let mut body = Writer::at(version);
        self.encode_body(&mut body);
        let mut w = Writer::at(version);
        w.u32(REQUEST_MAGIC);
        w.u16(version);
        w.u16(self.op() as u16);
        w.u32(0);
        w.u32(body.buf.len() as u32);
        w.raw(&body.buf);
        w.buf
    }

    fn encode_body(&self, w: &mut Writer) {
        match self {
            OpRequest::GetDeviceConfig => {}
            OpRequest::CreateContainer { container, metadata } => {
                w.str16(container.as_str());
                metadata.encode(w);
            }
            OpRequest::DeleteContainer { container } | OpRequest::GetContainerProperties { container } => {
                w.str16(container.as_str())
            }
            OpRequest::ListContainers(l) => {
                w.str16(&l.prefix);
                w.str16(&l.marker);
                w.u32(l.max_results);
                w.bool(l.include_metadata);
            }
            OpRequest::PutBlob(p) => {
                encode_ref(w, &p.target);
                w.str16(&p.content_type);
                p.headers.encode(w);
                p.metadata.encode(w);
                p.conditions.encode(w);
                w.option(p.content_md5, |w, m| w.raw(&m));
                w.option(p.content_crc64, Writer::u64);
            }
            OpRequest::GetBlob(g) => {
                encode_ref(w, &g.target);
                w.option(g.range, |w, r| {
                    w.u64(r.offset);
                    w.u64(r.length);
                });
                g.conditions.encode(w);
            }
            OpRequest::GetBlobProperties { target, conditions } | OpRequest::DeleteBlob { target, conditions } => {
                encode_ref(w, target);
                conditions.encode(w);
            }
            OpRequest::ListBlobs(l) => {
                w.str16(l.container.as_str());
                w.str16(&l.prefix);
                w.str16(&l.delimiter);
                w.str16(&l.marker);
                w.u32(l.max_results);
                if w.version >= 2 {
                    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
                    w.u8(flag(l.include_metadata, INCLUDE_METADATA) | flag(l.include_uncommitted, INCLUDE_UNCOMMITTED));
                } else {
                    w.bool(l.include_metadata);
                }
            }
            OpRequest::PutBlock(p) => {
                encode_ref(w, &p.target);
                w.bytes8(p.block_id.as_bytes());
                w.option(p.content_crc64, Writer::u64);
                if w.version >= 3 {
                    w.option(p.lease_id.as_ref(), |w, id| id.encode(w));
                }
            }
            OpRequest::PutBlockList(p) => {
                encode_ref(w, &p.target);
                w.u32(p.blocks.len() as u32);
                for b in &p.blocks {
                    w.bytes8(b.id.as_bytes());
                }
                w.str16(&p.content_type);
                p.headers.encode(w);
                p.metadata.encode(w);
                p.conditions.encode(w);
                // The CRC section is left out when empty, so a list without
                // CRCs has the bytes it had before the section existed.
                if p.blocks.iter().any(|b| b.crc64.is_some()) {
                    for b in &p.blocks {
                        w.option(b.crc64, Writer::u64);
                    }
                }
            }
            OpRequest::GetBlockList { target, list_type } => {
                encode_ref(w, target);
                w.u8(*list_type as u8);
            }
            OpRequest::SetBlobProperties(s) => {
                encode_ref(w, &s.target);
                match &s.update {
                    BlobUpdate::Metadata(m) => m.encode(w),
                    BlobUpdate::Properties { content_type, headers } => {
                        w.str16(content_type);
                        // Version 1 has no such field (`min_version` keeps `Some` out of it).
                        if w.version >= 2 {
                            w.option(headers.as_ref(), |w, h| h.encode(w));
                        }
                    }
                }
                s.conditions.encode(w);
            }
            OpRequest::CopyBlob(c) => {
                encode_ref(w, &c.source);
                encode_ref(w, &c.target);
                c.source_conditions.encode(w);
                c.conditions.encode(w);
                w.option(c.metadata.as_ref(), |w, m| m.encode(w));
            }
            OpRequest::LeaseBlob(l) => {
                encode_ref(w, &l.target);
                l.encode_body(w);
            }
        }
    }

    /// Decode a whole request buffer. Total: any input gives a value or an error.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_versioned(buf).map(|(_, req)| req)
    }

    /// Decode a whole request buffer, with the op version it is in (the
    /// answer must be in the same one).
    pub fn decode_versioned(buf: &[u8]) -> Result<(u16, Self), DecodeError> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let version = r.u16()?;
        if !(MIN_OP_VERSION..=OP_VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        r.version = version;
        let code = r.u16()?;
        let op = OpCode::from_u16(code).ok_or(DecodeError::UnknownOp(code))?;
        let flags = r.u32()?;
        if flags != 0 {
            return Err(DecodeError::ReservedFlags(flags));
        }
        let body_len = r.u32()?;
        if body_len as usize != buf.len() - OP_HEADER_SIZE {
            return Err(DecodeError::BodyLength { body: body_len, buffer: buf.len() });
        }
        let req = Self::decode_body(op, &mut r)?;
        r.finish()?;
        Ok((version, req))
    }

    fn decode_body(op: OpCode, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match op {
            OpCode::GetDeviceConfig => OpRequest::GetDeviceConfig,
            OpCode::CreateContainer => {
                OpRequest::CreateContainer { container: container(r)?, metadata: Metadata::decode(r)? }
            }
            OpCode::DeleteContainer => OpRequest::DeleteContainer { container: container(r)? },
            OpCode::GetContainerProperties => OpRequest::GetContainerProperties { container: container(r)? },
            OpCode::ListContainers => OpRequest::ListContainers(ListContainers {
                prefix: text(r, names::CONTAINER_NAME_MAX)?,
                marker: text(r, MAX_MARKER)?,
                max_results: max_results(r)?,
                include_metadata: r.bool()?,
            }),
            OpCode::PutBlob => OpRequest::PutBlob(PutBlob {
                target: blob_ref(r)?,
                content_type: text(r, names::CONTENT_TYPE_MAX)?,
                headers: ContentHeaders::decode(r)?,
                metadata: Metadata::decode(r)?,
                conditions: Conditions::decode(r)?,
                content_md5: r.option(|r| r.md5())?,
                content_crc64: r.option(Reader::u64)?,
            }),
            OpCode::GetBlob => OpRequest::GetBlob(GetBlob {
                target: blob_ref(r)?,
                range: r.option(|r| {
                    let (offset, length) = (r.u64()?, r.u64()?);
                    offset.checked_add(length).ok_or(DecodeError::InvalidValue)?;
                    Ok(ByteRange { offset, length })
                })?,
                conditions: Conditions::decode(r)?,
            }),
            OpCode::GetBlobProperties => {
                OpRequest::GetBlobProperties { target: blob_ref(r)?, conditions: Conditions::decode(r)? }
            }
            OpCode::DeleteBlob => OpRequest::DeleteBlob { target: blob_ref(r)?, conditions: Conditions::decode(r)? },
            OpCode::ListBlobs => {
                let (container, prefix) = (container(r)?, text(r, BLOB_NAME_MAX)?);
                let (delimiter, marker, max_results) = (text(r, MAX_DELIMITER)?, text(r, MAX_MARKER)?, max_results(r)?);
                let (include_metadata, include_uncommitted) = if r.version >= 2 {
                    match r.u8()? {
                        f if f & !(INCLUDE_METADATA | INCLUDE_UNCOMMITTED) != 0 => return Err(DecodeError::BadTag(f)),
                        f => (f & INCLUDE_METADATA != 0, f & INCLUDE_UNCOMMITTED != 0),
                    }
                } else {
                    (r.bool()?, false)
                };
                OpRequest::ListBlobs(ListBlobs {
                    container,
                    prefix,
                    delimiter,
                    marker,
                    max_results,
                    include_metadata,
                    include_uncommitted,
                })
            }
            OpCode::PutBlock => OpRequest::PutBlock(PutBlock {
                target: blob_ref(r)?,
                block_id: BlockId::new(r.bytes8(BLOCK_ID_MAX)?)?,
                content_crc64: r.option(Reader::u64)?,
                lease_id: if r.version >= 3 { r.option(LeaseId::decode)? } else { None },
            }),
            OpCode::PutBlockList => {
                let target = blob_ref(r)?;
                let n = r.count(MAX_BLOCKS, 2)?;
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    blocks.push(ListedBlock::unproven(BlockId::new(r.bytes8(BLOCK_ID_MAX)?)?));
                }
                let content_type = text(r, names::CONTENT_TYPE_MAX)?;
                let headers = ContentHeaders::decode(r)?;
                let metadata = Metadata::decode(r)?;
                let conditions = Conditions::decode(r)?;
                block_crcs(r, &mut blocks)?;
                OpRequest::PutBlockList(PutBlockList { target, blocks, content_type, headers, metadata, conditions })
            }
            OpCode::GetBlockList => {
                OpRequest::GetBlockList { target: blob_ref(r)?, list_type: BlockListType::from_u8(r.u8()?)? }
            }
            OpCode::SetBlobMetadata => OpRequest::SetBlobProperties(SetBlobProperties {
                target: blob_ref(r)?,
                update: BlobUpdate::Metadata(Metadata::decode(r)?),
                conditions: Conditions::decode(r)?,
            }),
            OpCode::SetBlobProperties => OpRequest::SetBlobProperties(SetBlobProperties {
                target: blob_ref(r)?,
                update: BlobUpdate::Properties {
                    content_type: text(r, names::CONTENT_TYPE_MAX)?,
                    headers: if r.version >= 2 { r.option(ContentHeaders::decode)? } else { None },
                },
                conditions: Conditions::decode(r)?,
            }),
            OpCode::CopyBlob => OpRequest::CopyBlob(CopyBlob {
                source: blob_ref(r)?,
                target: blob_ref(r)?,
                source_conditions: Conditions::decode(r)?,
                conditions: Conditions::decode(r)?,
                metadata: r.option(Metadata::decode)?,
            }),
            OpCode::LeaseBlob if r.version >= 3 => OpRequest::LeaseBlob(LeaseBlob::decode_body(blob_ref(r)?, r)?),
            OpCode::LeaseBlob => return Err(DecodeError::UnknownOp(op as u16)),
        })
    }
}

/// A request the agreed op version cannot carry (a VSC must not drop a
/// condition or header its caller asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{op:?} with these fields needs op version {needed}; the device speaks {version}")]
pub struct NeedsVersion {
    pub op: OpCode,
    pub needed: u16,
    pub version: u16,
}

/// The optional CRC section that ends a PutBlockList body: absent (the body
/// ends), or one `option<u64>` per block with at least one present (an
/// all-absent section would be a second encoding of "no CRCs").
fn block_crcs(r: &mut Reader<'_>, blocks: &mut [ListedBlock]) -> Result<(), DecodeError> {
    if r.remaining() == 0 {
        return Ok(());
    }
    for b in blocks.iter_mut() {
        b.crc64 = r.option(Reader::u64)?;
    }
    if blocks.iter().all(|b| b.crc64.is_none()) {
        return Err(DecodeError::InvalidValue);
    }
    Ok(())
}

fn encode_ref(w: &mut Writer, t: &BlobRef) {
    w.str16(t.container.as_str());
    w.str16(t.blob.as_str());
}

fn container(r: &mut Reader<'_>) -> Result<ContainerName, DecodeError> {
    ContainerName::new(r.str16(names::CONTAINER_NAME_MAX)?)
}

fn blob_ref(r: &mut Reader<'_>) -> Result<BlobRef, DecodeError> {
    Ok(BlobRef { container: container(r)?, blob: BlobName::new(r.str16(BLOB_NAME_MAX)?)? })
}

fn text(r: &mut Reader<'_>, max: usize) -> Result<String, DecodeError> {
    let s = r.str16(max)?;
    names::validate_text(s)?;
    Ok(s.to_owned())
}

fn max_results(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    match r.u32()? {
        0 => Ok(MAX_LIST_RESULTS),
        n if n <= MAX_LIST_RESULTS => Ok(n),
        n => Err(DecodeError::TooMany { count: n as usize, max: MAX_LIST_RESULTS as usize }),
    }
}
