//! Field groups shared by several operations.

use crate::names::{self, ETAG_MAX, METADATA_KEY_MAX, METADATA_MAX_BYTES};
use crate::ops::{DecodeError, LeaseId, LeaseProperties};
use crate::wire::{Reader, Writer};

/// User metadata: ordered `(key, value)` pairs, keys unique ignoring ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata(pub Vec<(String, String)>);

impl Metadata {
    pub fn new(pairs: Vec<(String, String)>) -> Result<Self, DecodeError> {
        let m = Self(pairs);
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), DecodeError> {
        let mut total = 0usize;
        for (i, (k, v)) in self.0.iter().enumerate() {
            names::validate_metadata_key(k)?;
            names::validate_text(v)?;
            total += k.len() + v.len();
            if self.0[..i].iter().any(|(k2, _)| k2.eq_ignore_ascii_case(k)) {
                return Err(DecodeError::DuplicateMetadataKey);
            }
        }
        if total > METADATA_MAX_BYTES {
            return Err(DecodeError::MetadataTooLarge);
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u16(self.0.len().min(usize::from(u16::MAX)) as u16);
        for (k, v) in &self.0 {
            w.str16(k);
            w.str16(v);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = usize::from(r.u16()?);
        // Each pair takes at least 4 bytes of length prefixes.
        if n * 4 > r.remaining() {
            return Err(DecodeError::Truncated);
        }
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = r.str16(METADATA_KEY_MAX)?.to_owned();
            let v = r.str16(METADATA_MAX_BYTES)?.to_owned();
            pairs.push((k, v));
        }
        Self::new(pairs)
    }
}

/// An entity tag, as the store produced it (quoted or not, opaque to the guest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(String);

impl ETag {
    pub fn new(s: &str) -> Result<Self, DecodeError> {
        if s.is_empty() || s.len() > ETAG_MAX {
            return Err(DecodeError::InvalidValue);
        }
        names::validate_text(s)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `*`: matches any existing entity (If-Match) or any at all (If-None-Match).
    pub fn any() -> Self {
        Self("*".to_owned())
    }
    pub fn is_any(&self) -> bool {
        self.0 == "*"
    }
    /// The same entity tag, as Azure compares them: with or without the
    /// surrounding double quotes (`"0x8D..."` and `0x8D...` are one tag).
    pub fn matches(&self, other: &ETag) -> bool {
        fn bare(s: &str) -> &str {
            s.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(s)
        }
        bare(&self.0) == bare(&other.0)
    }
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::new(r.str16(ETAG_MAX)?)
    }
}

/// The entity a condition set is judged against: its ETag and last-modified
/// time (ms since the Unix epoch).
#[derive(Debug, Clone, Copy)]
pub struct Entity<'a> {
    pub etag: &'a ETag,
    pub last_modified_ms: u64,
}

/// What a read's conditions decide (Azure's rules for reads, version
/// 2013-08-15 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVerdict {
    Holds,
    /// 412: If-Match or If-Unmodified-Since failed.
    PreconditionFailed,
    /// 304: If-None-Match or If-Modified-Since says the reader has this one.
    NotModified,
}

/// If-Match / If-None-Match, (op version 2) If-Modified-Since /
/// If-Unmodified-Since, and (op version 3) the lease id the caller holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditions {
    pub if_match: Option<ETag>,
    pub if_none_match: Option<ETag>,
    /// ms since the Unix epoch. Times compare in whole seconds, as the HTTP
    /// dates these stand for carry them.
    pub if_modified_since_ms: Option<u64>,
    pub if_unmodified_since_ms: Option<u64>,
    /// Azure's `x-ms-lease-id`: required by a write while the blob is
    /// leased, and if given must be the blob's lease. The VSP judges it
    /// (its lease table), not [`Conditions::check`].
    pub lease_id: Option<LeaseId>,
}

/// Whole seconds: the precision of an HTTP date, at which Azure compares.
fn secs(ms: u64) -> u64 {
    ms / 1000
}

impl Conditions {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn if_match(etag: ETag) -> Self {
        Self { if_match: Some(etag), ..Self::default() }
    }
    pub fn if_none_match(etag: ETag) -> Self {
        Self { if_none_match: Some(etag), ..Self::default() }
    }
    /// Whether nothing is asked of the entity itself (ETag or time): a
    /// lease id alone is the VSP's to judge, not the store's.
    pub fn is_unconditional(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none() && !self.has_times()
    }
    /// The same conditions held under `lease_id`.
    pub fn with_lease(self, lease_id: Option<LeaseId>) -> Self {
        Self { lease_id, ..self }
    }
    /// Whether a time condition is set (op version 2 only).
    pub fn has_times(&self) -> bool {
        self.if_modified_since_ms.is_some() || self.if_unmodified_since_ms.is_some()
    }

    fn match_holds(&self, e: Entity<'_>) -> Option<bool> {
        self.if_match.as_ref().map(|want| want.is_any() || want.matches(e.etag))
    }
    fn none_match_holds(&self, e: Entity<'_>) -> Option<bool> {
        self.if_none_match.as_ref().map(|not| !(not.is_any() || not.matches(e.etag)))
    }
    fn modified_since_holds(&self, e: Entity<'_>) -> Option<bool> {
        self.if_modified_since_ms.map(|t| secs(e.last_modified_ms) > secs(t))
    }
    fn unmodified_since_holds(&self, e: Entity<'_>) -> Option<bool> {
        self.if_unmodified_since_ms.map(|t| secs(e.last_modified_ms) <= secs(t))
    }

    /// Whether a write (or delete) may go ahead over `current` (None: the
    /// name has no committed blob). Azure's rules for writes: an absent
    /// entity fails only If-Match; an ETag condition decides over its time
    /// counterpart (If-Match over If-Unmodified-Since, If-None-Match over
    /// If-Modified-Since); every condition left must hold.
    pub fn check(&self, current: Option<Entity<'_>>) -> bool {
        let Some(e) = current else { return self.if_match.is_none() };
        let unmodified = self.match_holds(e).or(self.unmodified_since_holds(e));
        let modified = self.none_match_holds(e).or(self.modified_since_holds(e));
        unmodified.unwrap_or(true) && modified.unwrap_or(true)
    }

    /// A read (GET, HEAD) of an existing entity, as Azure answers it: a
    /// failed If-Match or If-Unmodified-Since is 412; otherwise the reader
    /// already has it (304) when If-None-Match or If-Modified-Since fails
    /// and the other of the two does not hold.
    pub fn check_read(&self, e: Entity<'_>) -> ReadVerdict {
        if self.match_holds(e) == Some(false) || self.unmodified_since_holds(e) == Some(false) {
            return ReadVerdict::PreconditionFailed;
        }
        let (none_match, since) = (self.none_match_holds(e), self.modified_since_holds(e));
        if (none_match == Some(false) && since != Some(true)) || (since == Some(false) && none_match != Some(true)) {
            return ReadVerdict::NotModified;
        }
        ReadVerdict::Holds
    }

    /// The lowest op version that carries these conditions.
    pub fn min_version(&self) -> u16 {
        match () {
            _ if self.lease_id.is_some() => 3,
            _ if self.has_times() => 2,
            _ => 1,
        }
    }

    /// Op version 1 carries the ETag conditions only, 2 adds the times, 3
    /// the lease id; the encoder of a request refuses what its version
    /// lacks before it gets here.
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.option(self.if_match.as_ref(), |w, e| w.str16(e.as_str()));
        w.option(self.if_none_match.as_ref(), |w, e| w.str16(e.as_str()));
        if w.version >= 2 {
            w.option(self.if_modified_since_ms, Writer::u64);
            w.option(self.if_unmodified_since_ms, Writer::u64);
        }
        if w.version >= 3 {
            w.option(self.lease_id.as_ref(), |w, id| id.encode(w));
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut c = Self { if_match: r.option(ETag::decode)?, if_none_match: r.option(ETag::decode)?, ..Self::none() };
        if r.version >= 2 {
            c.if_modified_since_ms = r.option(Reader::u64)?;
            c.if_unmodified_since_ms = r.option(Reader::u64)?;
        }
        if r.version >= 3 {
            c.lease_id = r.option(LeaseId::decode)?;
        }
        Ok(c)
    }
}

/// Azure's HTTP headers of a blob besides Content-Type and Content-MD5 (op
/// version 2): stored as given and returned as stored. Empty is "none".
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct ContentHeaders {
    pub content_encoding: String,
    pub content_language: String,
    pub content_disposition: String,
    pub cache_control: String,
}

impl ContentHeaders {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
    /// Each field, named as the HTTP header is.
    pub fn fields(&self) -> [(&'static str, &str); 4] {
        [
            ("Content-Encoding", &self.content_encoding),
            ("Content-Language", &self.content_language),
            ("Content-Disposition", &self.content_disposition),
            ("Cache-Control", &self.cache_control),
        ]
    }
    pub fn validate(&self) -> Result<(), DecodeError> {
        self.fields().into_iter().try_for_each(|(_, v)| names::validate_header_value(v))
    }
    /// Nothing at op version 1, which has no such fields.
    pub(crate) fn encode(&self, w: &mut Writer) {
        if w.version >= 2 {
            for (_, v) in self.fields() {
                w.str16(v);
            }
        }
    }
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.version < 2 {
            return Ok(Self::default());
        }
        let mut field = || -> Result<String, DecodeError> {
            let s = r.str16(names::CONTENT_HEADER_MAX)?;
            names::validate_header_value(s)?;
            Ok(s.to_owned())
        };
        Ok(Self {
            content_encoding: field()?,
            content_language: field()?,
            content_disposition: field()?,
            cache_control: field()?,
        })
    }
}

/// A byte range `[offset, offset + length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

/// Properties of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobProperties {
    pub etag: String,
    /// Milliseconds since the Unix epoch.
    pub last_modified_ms: u64,
    /// When the blob was created (its last PutBlob, PutBlockList or CopyBlob
    /// onto the name; metadata and property changes keep it), as Azure's
    /// `x-ms-creation-time`. Op version 2; 0 where a store never recorded it.
    pub created_ms: u64,
    pub content_length: u64,
    pub content_type: String,
    pub headers: ContentHeaders,
    pub content_md5: Option<[u8; 16]>,
    /// CRC-64/NVME of the whole content (Azure's `x-ms-content-crc64` polynomial).
    pub content_crc64: u64,
    /// Committed blocks; 0 for a blob written whole with PutBlob.
    pub committed_blocks: u32,
    pub metadata: Metadata,
    /// The blob's lease (op version 3; the VSP's lease table fills it in).
    pub lease: LeaseProperties,
}

impl BlobProperties {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.str16(&self.etag);
        w.u64(self.last_modified_ms);
        if w.version >= 2 {
            w.u64(self.created_ms);
        }
        w.u64(self.content_length);
        w.str16(&self.content_type);
        self.headers.encode(w);
        w.option(self.content_md5, |w, m| w.raw(&m));
        w.u64(self.content_crc64);
        w.u32(self.committed_blocks);
        self.metadata.encode(w);
        if w.version >= 3 {
            self.lease.encode(w);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            etag: r.str16(ETAG_MAX)?.to_owned(),
            last_modified_ms: r.u64()?,
            created_ms: if r.version >= 2 { r.u64()? } else { 0 },
            content_length: r.u64()?,
            content_type: r.str16(names::CONTENT_TYPE_MAX)?.to_owned(),
            headers: ContentHeaders::decode(r)?,
            content_md5: r.option(|r| r.md5())?,
            content_crc64: r.u64()?,
            committed_blocks: r.u32()?,
            metadata: Metadata::decode(r)?,
            lease: if r.version >= 3 { LeaseProperties::decode(r)? } else { LeaseProperties::default() },
        })
    }
}

/// Properties of a container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerProperties {
    pub etag: String,
    pub last_modified_ms: u64,
    pub metadata: Metadata,
}

impl ContainerProperties {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.str16(&self.etag);
        w.u64(self.last_modified_ms);
        self.metadata.encode(w);
    }
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { etag: r.str16(ETAG_MAX)?.to_owned(), last_modified_ms: r.u64()?, metadata: Metadata::decode(r)? })
    }
}

/// Which blocks GetBlockList returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockListType {
    Committed = 0,
    Uncommitted = 1,
    All = 2,
}

impl BlockListType {
    pub(crate) fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Self::Committed),
            1 => Ok(Self::Uncommitted),
            2 => Ok(Self::All),
            v => Err(DecodeError::BadTag(v)),
        }
    }
}
