//! Field groups shared by several operations.

use crate::names::{self, ETAG_MAX, METADATA_KEY_MAX, METADATA_MAX_BYTES};
use crate::ops::DecodeError;
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

/// If-Match / If-None-Match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditions {
    pub if_match: Option<ETag>,
    pub if_none_match: Option<ETag>,
}

impl Conditions {
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether an entity with `current` ETag (None = absent) satisfies these.
    pub fn check(&self, current: Option<&ETag>) -> bool {
        let m = match (&self.if_match, current) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(cur)) => want.is_any() || want.matches(cur),
        };
        let n = match (&self.if_none_match, current) {
            (None, _) | (Some(_), None) => true,
            (Some(not), Some(cur)) => !(not.is_any() || not.matches(cur)),
        };
        m && n
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.option(self.if_match.as_ref(), |w, e| w.str16(e.as_str()));
        w.option(self.if_none_match.as_ref(), |w, e| w.str16(e.as_str()));
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { if_match: r.option(ETag::decode)?, if_none_match: r.option(ETag::decode)? })
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
    pub content_length: u64,
    pub content_type: String,
    pub content_md5: Option<[u8; 16]>,
    /// CRC-64/NVME of the whole content (Azure's `x-ms-content-crc64` polynomial).
    pub content_crc64: u64,
    /// Committed blocks; 0 for a blob written whole with PutBlob.
    pub committed_blocks: u32,
    pub metadata: Metadata,
}

impl BlobProperties {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.str16(&self.etag);
        w.u64(self.last_modified_ms);
        w.u64(self.content_length);
        w.str16(&self.content_type);
        w.option(self.content_md5, |w, m| w.raw(&m));
        w.u64(self.content_crc64);
        w.u32(self.committed_blocks);
        self.metadata.encode(w);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            etag: r.str16(ETAG_MAX)?.to_owned(),
            last_modified_ms: r.u64()?,
            content_length: r.u64()?,
            content_type: r.str16(names::CONTENT_TYPE_MAX)?.to_owned(),
            content_md5: r.option(|r| r.md5())?,
            content_crc64: r.u64()?,
            committed_blocks: r.u32()?,
            metadata: Metadata::decode(r)?,
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
