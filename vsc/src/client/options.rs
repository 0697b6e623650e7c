//! Option structs of the handle operations, each with a `Default` that
//! matches the plain form of the operation (as `object_store`'s
//! `PutOptions`/`GetOptions`).

use std::ops::Range;

use vmblob_protocol::ops::{BlobProperties, Conditions, ContentHeaders, Metadata};

use crate::transport::dma::DmaBytes;

/// How a blob is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Stored and returned as the blob's Content-Type ("" for none).
    pub content_type: String,
    /// Content-Encoding, -Language, -Disposition and Cache-Control, stored and
    /// returned as given (needs a device of op version 2 unless all empty).
    pub headers: ContentHeaders,
    /// User metadata stored with the blob.
    pub metadata: Metadata,
    /// Checked by the device in the step that commits the write.
    pub conditions: Conditions,
}

/// How a blob is copied inside the device ([`crate::BlobHandle::copy_from`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// Checked on the source (a failing one is `PreconditionFailed`).
    pub source_conditions: Conditions,
    /// Checked on the target as a write's.
    pub conditions: Conditions,
    /// `None`: the source's metadata goes along.
    pub metadata: Option<Metadata>,
}

/// How a blob is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Bytes to read (the end is clipped to the blob's size); `None`: all.
    /// A range is one request, so it must fit the device's data limit.
    pub range: Option<Range<u64>>,
    /// Checked by the device on the first request of the read.
    pub conditions: Conditions,
}

impl GetOptions {
    /// One ranged read of `range`.
    pub fn range(range: Range<u64>) -> Self {
        Self { range: Some(range), ..Self::default() }
    }
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobContent {
    pub properties: BlobProperties,
    pub data: Vec<u8>,
}

/// What a read returned, its bytes left where the device wrote them
/// ([`crate::BlobHandle::get_bytes`]); the DMA buffer is the caller's until
/// `data` is dropped.
#[derive(Debug)]
pub struct BlobBytes {
    pub properties: BlobProperties,
    pub data: DmaBytes,
}

/// How a container is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateContainerOptions {
    pub metadata: Metadata,
}

/// Which blobs a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListBlobsOptions {
    /// Only names starting with this.
    pub prefix: String,
    /// Roll names up to the first delimiter after the prefix ("" for a flat listing).
    pub delimiter: String,
    /// Start after this name (a page's `next_marker`); "" from the start.
    pub marker: String,
    /// Entries per page (0: the device's default).
    pub max_results: u32,
    pub include_metadata: bool,
    /// Also names with staged blocks and no committed blob, as
    /// `BlobListItem::Uncommitted` (needs a device of op version 2).
    pub include_uncommitted: bool,
}

/// Which containers a listing returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListContainersOptions {
    pub prefix: String,
    pub marker: String,
    pub max_results: u32,
    pub include_metadata: bool,
}

impl Default for ListContainersOptions {
    fn default() -> Self {
        // Metadata by default, as the flat API always asked for it.
        Self { prefix: String::new(), marker: String::new(), max_results: 0, include_metadata: true }
    }
}

impl ListBlobsOptions {
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }

    pub fn with_delimiter(mut self, delimiter: impl Into<String>) -> Self {
        self.delimiter = delimiter.into();
        self
    }
}

impl ListContainersOptions {
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }
}
