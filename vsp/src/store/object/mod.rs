//! A store over any `object_store::ObjectStore`: Azure Blob Storage and S3
//! (see `backend`), or object_store's in-memory store in tests.
//!
//! Each blob is one native object named after it (`keys` has the layout), its
//! properties in the object's attributes (`attrs`); guest containers are key
//! prefixes with a marker object each. Every call blocks the calling worker
//! thread on a runtime the store owns (`bridge`) and stops when the request
//! is cancelled.
//!
//! Writes up to `single_put_max` bytes are one PUT whose condition the
//! service checks (If-Match the ETag just read, or If-None-Match `*`), so
//! conditions and replays hold against any writer. Larger writes are
//! multipart uploads, which object stores cannot make conditional: their
//! conditions are checked under this process's per-name lock right before
//! the upload starts, so only a writer outside this process could slip in.
//! Either way a write is all-or-nothing (a multipart upload is visible only
//! once completed and is aborted on failure).
//!
//! Known costs: a PutBlockList over 16 MiB copies its blocks (download and
//! re-upload; object_store offers no server-side compose), a large PutBlob
//! without a CRC-64 goes through a temp object for the same reason (its
//! attributes are sent before its bytes), each PutBlock lists the blob's
//! staged blocks to enforce the staging limit, and Azure listings scan from
//! the start of the container (Azurite lacks `startFrom`).

mod attrs;
#[cfg(any(test, feature = "test-util"))]
pub mod azurite;
pub mod backend;
mod bridge;
mod child_server;
mod crc;
mod gate;
pub mod janitor;
mod keys;
pub mod leases;
mod list;
pub mod s3s;
#[cfg(test)]
mod tests;
mod write;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions};
use vmblob_protocol::BlockId;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobWritten, BlockInfo, BlockListType, Conditions, ContainerEntry,
    ContainerProperties, ContentHeaders, GetBlob, ListBlobs, ListContainers, Metadata, PutBlob, PutBlockList,
    SetBlobProperties,
};

use self::attrs::{Decoded, Stored};
use self::bridge::{Bridge, is_not_found, store_err};
use self::gate::{Closed, Gate, Pass};
use self::keys::Keys;
use super::semantics::{
    BufPool, DEFAULT_MAX_BLOB_SIZE, NameGuard, NameLocks, check_conditions, check_read_conditions, check_write,
    check_write_conditions, clip_range, deletes_uncommitted, now_ms,
};
use super::{BlobStore, DataSink, DataSource, Page, StoreError, TxnId};

pub use self::keys::MAX_KEY_LEN;

/// Tuning of an object-store-backed store.
#[derive(Debug, Clone)]
pub struct ObjectOptions {
    pub max_blob_size: u64,
    /// Writes up to this many bytes are buffered and sent as one conditional PUT.
    pub single_put_max: u64,
    /// Multipart part size (S3 wants at least 5 MiB but for the last part).
    pub part_size: usize,
    /// Parts of one upload in flight at once.
    pub parallel_parts: usize,
    /// The backend lists efficiently from an offset (S3's start-after).
    /// Without it listings scan from the start of the container.
    pub offset_listing: bool,
    /// The backend lists keys by UTF-16 code units (Azure), not by bytes
    /// (S3, object_store's in-memory store); markers compare in that order.
    pub utf16_order: bool,
    /// How long a cancelled request still waits for a commit already sent.
    pub commit_grace: Duration,
    /// Threads of the store's runtime.
    pub worker_threads: usize,
    /// A blob's uncommitted blocks go once none was staged for this long.
    pub staged_block_ttl: Duration,
    /// How often the janitor runs (see `janitor`).
    pub janitor_interval: Duration,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        Self {
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            single_put_max: 16 << 20,
            part_size: 8 << 20,
            parallel_parts: 4,
            offset_listing: false,
            utf16_order: false,
            commit_grace: Duration::from_secs(2),
            worker_threads: 2,
            staged_block_ttl: crate::store::fs::DEFAULT_STAGED_BLOCK_TTL,
            janitor_interval: Duration::from_secs(600),
        }
    }
}

/// Writes hold a read lock of their container's stripe and a container delete
/// the write lock, so no write of this process lands in a deleted container.
/// Striped so that guest-chosen names cannot grow the table.
const GATE_STRIPES: usize = 64;

pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    bridge: Bridge,
    keys: Keys,
    opts: ObjectOptions,
    names: NameLocks,
    gates: Vec<Gate>,
    bufs: BufPool,
    janitor: OnceLock<janitor::Janitor>,
}

/// A blob as read by a HEAD.
type Current = Option<Decoded>;

/// `check_write` against what a HEAD saw. An object written by another tool
/// has no transaction id: it is never a replay, but its conditions apply.
fn decide_write(cur: &Current, conditions: &Conditions, txn: &TxnId) -> Result<Option<BlobWritten>, StoreError> {
    match cur {
        Some(Decoded { txn: None, blob }) => check_write_conditions(Some(blob), conditions).map(|()| None),
        Some(Decoded { txn: Some(t), blob }) => check_write(Some((blob, t)), conditions, txn),
        None => check_write(None, conditions, txn),
    }
}

/// The service-side condition that makes a checked write atomic: the object
/// must still be what was just read (whatever the condition was, an ETag or a
/// time, it was judged on that version). Unconditional writes simply overwrite.
fn put_mode(conditions: &Conditions, cur: &Current) -> PutMode {
    // The lease id is the VSP's to judge, not the service's condition.
    if conditions.is_unconditional() {
        return PutMode::Overwrite;
    }
    match cur {
        Some(d) => PutMode::Update(object_store::UpdateVersion { e_tag: Some(d.blob.etag.clone()), version: None }),
        None => PutMode::Create,
    }
}

impl ObjectBlobStore {
    /// A store keeping everything under `root` (a `/`-separated prefix, may be empty).
    pub fn new(store: Arc<dyn ObjectStore>, root: &str, opts: ObjectOptions) -> Result<Self, StoreError> {
        let bridge = Bridge::new(opts.worker_threads, opts.commit_grace)?;
        Ok(Self {
            store,
            bridge,
            keys: Keys::new(root)?,
            opts,
            names: NameLocks::new(),
            gates: (0..GATE_STRIPES).map(|_| Gate::default()).collect(),
            bufs: BufPool::new(),
            janitor: OnceLock::new(),
        })
    }

    fn gate(&self, c: &ContainerName) -> &Gate {
        let mut h = DefaultHasher::new();
        c.as_str().hash(&mut h);
        &self.gates[(h.finish() % GATE_STRIPES as u64) as usize]
    }

    /// A blob write's pass through its container's gate; a cancelled request stops waiting.
    fn write_gate(&self, c: &ContainerName) -> Result<Pass<'_>, StoreError> {
        self.gate(c).pass(crate::store::context::current_cancel().as_ref())
    }

    /// Keeps every blob write of the container out; a cancelled request stops waiting.
    fn close_gate(&self, c: &ContainerName) -> Result<Closed<'_>, StoreError> {
        self.gate(c).close(crate::store::context::current_cancel().as_ref())
    }

    /// Locks a blob name for a check-then-write; a cancelled request stops waiting.
    fn lock_name(&self, key: &str) -> Result<NameGuard<'_>, StoreError> {
        self.names.lock_unless_cancelled(key, crate::store::context::current_cancel().as_ref())
    }

    async fn head_async(store: &dyn ObjectStore, key: &Path) -> Result<Current, StoreError> {
        match store.get_opts(key, GetOptions { head: true, ..Default::default() }).await {
            Ok(r) => Ok(Some(attrs::decode(&r.meta, &r.attributes)?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    fn head(&self, key: &Path) -> Result<Current, StoreError> {
        self.bridge.run(Self::head_async(&*self.store, key))
    }

    fn ensure_container(&self, c: &ContainerName) -> Result<(), StoreError> {
        match self.head(&self.keys.marker(c)?)? {
            Some(_) => Ok(()),
            None => Err(StoreError::ContainerNotFound),
        }
    }

    /// The blob, or which of blob and container is missing.
    fn existing_blob(&self, target: &BlobRef, key: &Path) -> Result<Decoded, StoreError> {
        match self.head(key)? {
            Some(d) => Ok(d),
            None => {
                self.ensure_container(&target.container)?;
                Err(StoreError::BlobNotFound)
            }
        }
    }

    /// Starts the background janitor (once; later calls do nothing).
    pub fn start_janitor(self: &Arc<Self>) -> std::io::Result<()> {
        if self.janitor.get().is_none() {
            let j = janitor::Janitor::start(self, self.opts.janitor_interval)?;
            // A racing second start loses here and its janitor stops on drop.
            let _ = self.janitor.set(j);
        }
        Ok(())
    }

    /// Removes a container's blobs, staged blocks and block lists (not its marker).
    fn clear_container_objects(&self, name: &ContainerName) -> Result<(), StoreError> {
        self.delete_under(&self.keys.container_dir(name)?, None)?;
        for dir in self.keys.hidden_dirs(name)? {
            self.delete_under(&dir, None)?;
        }
        Ok(())
    }

    /// Deletes every object under `dir` (except `keep`); awaited like a commit
    /// since it completes a write that already happened.
    fn delete_under(&self, dir: &Path, keep: Option<&Path>) -> Result<(), StoreError> {
        let store = Arc::clone(&self.store);
        let keep = keep.cloned();
        let listed = store
            .list(Some(dir))
            .map_ok(|m| m.location)
            .try_filter(move |p| futures::future::ready(keep.as_ref() != Some(p)))
            .boxed();
        self.bridge.commit(async move {
            store
                .delete_stream(listed)
                .try_for_each(|_| futures::future::ready(Ok(())))
                .await
                .or_else(|e| if is_not_found(&e) { Ok(()) } else { Err(store_err(e)) })
        })
    }
}

impl BlobStore for ObjectBlobStore {
    fn create_container(
        &self,
        name: &ContainerName,
        metadata: &Metadata,
        txn: &TxnId,
    ) -> Result<ContainerProperties, StoreError> {
        let key = self.keys.marker(name)?;
        let _gate = self.close_gate(name)?;
        // A DeleteContainer that crashed after removing the marker left the
        // old container's objects: a new container starts empty.
        if self.head(&key)?.is_none() {
            self.clear_container_objects(name)?;
        }
        let mtime_ms = now_ms();
        let none = ContentHeaders::default();
        let stored = Stored {
            content_type: "",
            headers: &none,
            metadata,
            txn,
            mtime_ms,
            created_ms: mtime_ms,
            crc64: None,
            md5: None,
            committed_blocks: 0,
        };
        let opts = PutOptions { mode: PutMode::Create, attributes: attrs::encode(&stored)?, ..Default::default() };
        let store = &*self.store;
        let put = self.bridge.commit(async { store.put_opts(&key, Vec::new().into(), opts).await.map_err(store_err) });
        match put {
            Ok(r) => Ok(ContainerProperties {
                etag: r.e_tag.ok_or_else(|| StoreError::Remote("the store returned no ETag".into()))?,
                last_modified_ms: mtime_ms,
                metadata: metadata.clone(),
            }),
            Err(StoreError::PreconditionFailed) => match self.head(&key)? {
                Some(d) if d.txn == Some(*txn) => Ok(attrs::container_props(d)),
                _ => Err(StoreError::AlreadyExists),
            },
            Err(e) => Err(e),
        }
    }

    fn delete_container(&self, name: &ContainerName) -> Result<(), StoreError> {
        let _gate = self.close_gate(name)?;
        let marker = self.keys.marker(name)?;
        self.ensure_container(name)?;
        // The marker goes first: from then on the container is gone for every
        // reader and writer, and what follows only reclaims space.
        let store = &*self.store;
        self.bridge.commit(async { store.delete(&marker).await.map_err(store_err) })?;
        self.clear_container_objects(name)
    }

    fn container_properties(&self, name: &ContainerName) -> Result<ContainerProperties, StoreError> {
        self.head(&self.keys.marker(name)?)?.map(attrs::container_props).ok_or(StoreError::ContainerNotFound)
    }

    fn list_containers(&self, req: &ListContainers) -> Result<Page<ContainerEntry>, StoreError> {
        self.list_containers_page(req)
    }

    fn put_blob(&self, req: &PutBlob, data: &mut dyn DataSource, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        self.write_blob(req, data, txn)
    }

    fn get_blob(&self, req: &GetBlob, sink: &mut dyn DataSink) -> Result<(BlobProperties, u64, u64), StoreError> {
        let key = self.keys.blob(&req.target)?;
        // The read is pinned to the ETag the HEAD saw; if the blob is replaced
        // in between, start over with the new one.
        for _ in 0..3 {
            let blob = self.existing_blob(&req.target, &key)?.blob;
            check_read_conditions(&blob, &req.conditions)?;
            let (offset, len) = clip_range(req.range, blob.content_length, sink.capacity())?;
            if len == 0 {
                return Ok((blob, offset, 0));
            }
            let opts = GetOptions {
                if_match: Some(blob.etag.clone()),
                range: Some(GetRange::Bounded(offset..offset + len)),
                ..Default::default()
            };
            let store = &*self.store;
            let got = self.bridge.run(async { store.get_opts(&key, opts).await.map_err(store_err) });
            let mut stream = match got {
                // A server that ignores If-Match on GET (s3s-fs, some S3 look-alikes) still
                // names the version it sent: another one is a replacement in between.
                Ok(r) if r.meta.e_tag.as_ref().is_some_and(|t| *t != blob.etag) => continue,
                Ok(r) => r.into_stream(),
                Err(StoreError::PreconditionFailed) => continue,
                Err(e) => return Err(e),
            };
            let mut copied = 0u64;
            while let Some(chunk) = self.bridge.run(async { stream.next().await.transpose().map_err(store_err) })? {
                let chunk = usize::try_from(len - copied).map_or(&chunk[..], |room| &chunk[..chunk.len().min(room)]);
                sink.write_bytes(chunk)?;
                copied += chunk.len() as u64;
            }
            if copied != len {
                return Err(StoreError::Remote(format!("read {copied} of {len} bytes")));
            }
            return Ok((blob, offset, len));
        }
        Err(StoreError::Remote("blob kept changing while being read".into()))
    }

    fn blob_properties(&self, target: &BlobRef, conditions: &Conditions) -> Result<BlobProperties, StoreError> {
        let blob = self.existing_blob(target, &self.keys.blob(target)?)?.blob;
        check_read_conditions(&blob, conditions)?;
        Ok(blob)
    }

    fn delete_blob(&self, target: &BlobRef, conditions: &Conditions) -> Result<(), StoreError> {
        let key = self.keys.blob(target)?;
        let _gate = self.write_gate(&target.container)?;
        let _name = self.lock_name(key.as_ref())?;
        let blob = match self.existing_blob(target, &key) {
            Ok(d) => d.blob,
            // A name with only uncommitted blocks is deleted too, as in Azure.
            Err(StoreError::BlobNotFound) if deletes_uncommitted(conditions) && !self.staged(target)?.is_empty() => {
                return self.discard_blocks(target, None);
            }
            Err(e) => return Err(e),
        };
        check_conditions(&blob, conditions)?;
        let store = &*self.store;
        self.bridge.commit(async { store.delete(&key).await.map_err(store_err) })?;
        self.discard_blocks(target, None)
    }

    fn uncommitted_names(&self, container: &ContainerName, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.uncommitted(container, prefix)
    }

    fn name_order(&self) -> fn(&str, &str) -> std::cmp::Ordering {
        if self.opts.utf16_order { crate::store::listing::azure_cmp } else { str::cmp }
    }

    fn list_blobs(&self, req: &ListBlobs) -> Result<Page<BlobListItem>, StoreError> {
        self.list_blobs_page(req)
    }

    fn put_block(
        &self,
        target: &BlobRef,
        id: &BlockId,
        data: &mut dyn DataSource,
        expected_crc64: Option<u64>,
    ) -> Result<u64, StoreError> {
        self.stage_block(target, id, data, expected_crc64)
    }

    fn put_block_list(&self, req: &PutBlockList, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        self.commit_block_list(req, txn)
    }

    fn set_blob_properties(&self, req: &SetBlobProperties, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        self.set_properties(req, txn)
    }

    fn copy_blob(&self, req: &vmblob_protocol::ops::CopyBlob, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        self.copy(req, txn)
    }

    fn get_block_list(&self, target: &BlobRef, list_type: BlockListType) -> Result<Vec<BlockInfo>, StoreError> {
        self.block_list(target, list_type)
    }
}
