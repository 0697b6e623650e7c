//! Blob stores: what the engine runs operations on. The engine knows requests
//! and guest memory; a store knows blobs.

#[cfg(test)]
pub mod conformance;
pub mod context;
pub mod fs;
mod listing;
pub mod memory;
pub mod object;
mod semantics;

use vmblob_protocol::BlockId;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::CopyBlob;
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobWritten, BlockInfo, BlockListType, Conditions, ContainerEntry,
    ContainerProperties, GetBlob, ListBlobs, ListContainers, Metadata, PutBlob, PutBlockList, SetBlobProperties,
};
use vmblob_protocol::status::BlobError;

/// The 16-byte transaction id of the request that asked for a change.
pub type TxnId = [u8; 16];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("container not found")]
    ContainerNotFound,
    #[error("blob not found")]
    BlobNotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("precondition failed")]
    PreconditionFailed,
    /// A read's If-None-Match matched: the caller's copy is current.
    #[error("not modified")]
    NotModified,
    #[error("range starts past the end of the blob")]
    InvalidRange,
    #[error("invalid block list: {0}")]
    InvalidBlockList(String),
    #[error("checksum mismatch")]
    ChecksumMismatch,
    #[error("too large: {0}")]
    TooLarge(String),
    /// The data source or sink said the request was cancelled (rescind or
    /// timeout); the store rolled back whatever it had started.
    #[error("cancelled")]
    Cancelled,
    /// Guest memory could not be read or written (bad address).
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// A name the backing service cannot hold (too long for its keys, or a
    /// metadata key it reserves).
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// A remote store refused our credentials or permissions.
    #[error("remote store denied access: {0}")]
    Denied(String),
    /// A remote store failed or could not be reached (after its retries).
    #[error("remote store: {0}")]
    Remote(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// The status returned to the guest. `Cancelled` is mapped by the engine,
    /// which knows whether it was a timeout or a rescind.
    pub fn status(&self) -> BlobError {
        match self {
            StoreError::ContainerNotFound => BlobError::ContainerNotFound,
            StoreError::BlobNotFound => BlobError::BlobNotFound,
            StoreError::AlreadyExists => BlobError::AlreadyExists,
            StoreError::PreconditionFailed => BlobError::PreconditionFailed,
            StoreError::NotModified => BlobError::NotModified,
            StoreError::InvalidRange => BlobError::InvalidRange,
            StoreError::InvalidBlockList(_) => BlobError::InvalidBlockList,
            StoreError::ChecksumMismatch => BlobError::ChecksumMismatch,
            StoreError::TooLarge(_) => BlobError::TooLarge,
            StoreError::Cancelled => BlobError::Rescinded,
            StoreError::GuestMemory(_) => BlobError::InvalidRequest,
            StoreError::InvalidName(_) => BlobError::InvalidName,
            StoreError::Denied(_) | StoreError::Remote(_) => BlobError::Io,
            StoreError::Io(_) => BlobError::Io,
        }
    }
}

/// The bytes of a PUT as they lie in guest memory, read chunk by chunk.
pub trait DataSource {
    /// Total bytes this source yields.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy the next bytes into `buf`; `Ok(0)` at the end. Fails with
    /// `Cancelled` once the request is cancelled: the store then rolls back.
    fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, StoreError>;
}

/// Where a GET's bytes go: the guest's data buffer, filled from its start.
pub trait DataSink {
    /// Bytes the buffer can take in all.
    fn capacity(&self) -> u64;
    /// Copy `len` bytes of `file` from `offset` straight into the buffer at
    /// the current position (read(2) into guest memory, no bounce buffer).
    fn fill_from_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> Result<(), StoreError>;
    /// Copy bytes into the buffer at the current position.
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), StoreError>;
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty when the listing is complete.
    pub next_marker: String,
}

/// A blob store. Called concurrently from every queue worker.
///
/// Contract (shared by every implementation and checked by `conformance`):
/// - Writes are all-or-nothing: a reader, or a restart after a crash, sees
///   the old blob or the new one, never a mix.
/// - Conditions are checked atomically with the write they guard.
/// - A write whose `txn` equals the txn that produced the current blob (or
///   container) is a replay: it succeeds with the current state, unchanged.
/// - Listings are in byte order of names; `marker` is exclusive.
pub trait BlobStore: Send + Sync {
    fn create_container(
        &self,
        name: &ContainerName,
        metadata: &Metadata,
        txn: &TxnId,
    ) -> Result<ContainerProperties, StoreError>;
    /// Deletes the container and every blob in it.
    fn delete_container(&self, name: &ContainerName) -> Result<(), StoreError>;
    fn container_properties(&self, name: &ContainerName) -> Result<ContainerProperties, StoreError>;
    fn list_containers(&self, req: &ListContainers) -> Result<Page<ContainerEntry>, StoreError>;

    /// Stores all of `data` as the blob, checking `content_md5` / `content_crc64`
    /// if given (nothing is stored on mismatch).
    fn put_blob(&self, req: &PutBlob, data: &mut dyn DataSource, txn: &TxnId) -> Result<BlobWritten, StoreError>;
    /// Reads from `range.offset` (0 if no range) for `range.length` bytes (to
    /// the end if no range), clipped to the blob's end and to the sink's
    /// capacity. An offset past the end is `InvalidRange`. Returns the
    /// properties, the offset and the bytes written to the sink.
    fn get_blob(&self, req: &GetBlob, sink: &mut dyn DataSink) -> Result<(BlobProperties, u64, u64), StoreError>;
    fn blob_properties(&self, target: &BlobRef, conditions: &Conditions) -> Result<BlobProperties, StoreError>;
    fn delete_blob(&self, target: &BlobRef, conditions: &Conditions) -> Result<(), StoreError>;
    fn list_blobs(&self, req: &ListBlobs) -> Result<Page<BlobListItem>, StoreError>;

    /// Stages a block; returns its CRC-64/NVME.
    fn put_block(
        &self,
        target: &BlobRef,
        id: &BlockId,
        data: &mut dyn DataSource,
        expected_crc64: Option<u64>,
    ) -> Result<u64, StoreError>;
    /// Commits the listed blocks (staged or already committed) as the blob.
    fn put_block_list(&self, req: &PutBlockList, txn: &TxnId) -> Result<BlobWritten, StoreError>;
    fn get_block_list(&self, target: &BlobRef, list_type: BlockListType) -> Result<Vec<BlockInfo>, StoreError>;
    /// Replaces a committed blob's metadata or content type ("" clears it) under its write
    /// conditions: a new ETag and last-modified time, the same bytes, CRC,
    /// MD5 and committed blocks, its uncommitted blocks kept (Azure's Set Blob
    /// Metadata / Set Blob Properties). A name with only staged blocks is
    /// `BlobNotFound`.
    fn set_blob_properties(&self, req: &SetBlobProperties, txn: &TxnId) -> Result<BlobWritten, StoreError>;
    /// Copies the source's committed blob (checked against
    /// `source_conditions`: `PreconditionFailed`) over the target as one write
    /// under the target's conditions: all-or-nothing, the target's staged
    /// blocks discarded, its committed blocks the source's.
    fn copy_blob(&self, req: &CopyBlob, txn: &TxnId) -> Result<BlobWritten, StoreError>;
    /// Whether a small read is answered from this process's memory or the
    /// page cache, in microseconds: a transport may then run it on the thread
    /// that popped it instead of handing it to a pool thread.
    fn reads_are_quick(&self) -> bool {
        false
    }
    /// Names in `container` starting with `prefix` that have staged blocks
    /// and no committed blob, in any order: what a listing with
    /// `include_uncommitted` adds ([`list_blobs`]). Staged blocks are kept
    /// by a hash of the blob's name, so this looks at every blob with staged
    /// blocks: more than [`MAX_STAGED_BLOBS`] of them is `TooLarge`.
    fn uncommitted_names(&self, container: &ContainerName, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// The order of names in this store's listings: Azure's (UTF-16 code
    /// units, `listing::azure_cmp`) unless its backend pages in its own.
    fn name_order(&self) -> fn(&str, &str) -> std::cmp::Ordering;
}

/// Most blobs with staged blocks a container may have for a listing of
/// uncommitted blobs, which looks at each of them on every page (a bound on
/// that work, and on what one request holds in memory). Uncommitted blocks
/// expire (`--staged-block-ttl-secs`), so only a container with this many
/// uploads in progress at once meets it.
pub const MAX_STAGED_BLOBS: usize = 10_000;

pub(crate) fn too_many_staged() -> StoreError {
    StoreError::TooLarge(format!(
        "more than {MAX_STAGED_BLOBS} blobs with staged blocks: too many to list as uncommitted blobs"
    ))
}

/// A ListBlobs page as the engine answers it: the store's committed page,
/// with the uncommitted names merged in when the request asks for them.
pub fn list_blobs(store: &dyn BlobStore, req: &ListBlobs) -> Result<Page<BlobListItem>, StoreError> {
    if !req.include_uncommitted {
        return store.list_blobs(req);
    }
    // Uncommitted names first: a blob committed between the two lookups is
    // then in the committed page (and listed once), never in neither.
    let names = store.uncommitted_names(&req.container, &req.prefix)?;
    let page = store.list_blobs(req)?;
    Ok(listing::with_uncommitted(page, names, req, store.name_order()))
}

/// CRC-64/NVME, the polynomial of Azure's `x-ms-content-crc64`.
pub use vmblob_protocol::checksum::crc64;
