//! In-memory store for engine tests: the same observable behaviour as the
//! filesystem store (both run the `conformance` suite), nothing persisted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use vmblob_protocol::BlockId;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::CopyBlob;
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobWritten, BlockInfo, BlockListType, Conditions, ContainerEntry,
    ContainerProperties, GetBlob, ListBlobs, ListContainers, Metadata, PutBlob, PutBlockList, SetBlobProperties,
};

use super::listing::{self, NameKey};
use super::semantics::{
    self, BufPool, Checksums, CommittedBlock, DEFAULT_MAX_BLOB_SIZE, MAX_COMMITTED_BLOCKS, NameLocks, PartSource,
    check_conditions, check_read_conditions, check_size, check_stage_room, check_write, clip_range, copied_props,
    deletes_uncommitted, ingest, lock, new_props, next_etag, now_ms, read, resolve_block_list, update_condition,
    updated_props, verify, write, written,
};
use super::{BlobStore, DataSink, DataSource, Page, StoreError, TxnId};

pub struct MemoryStore {
    max_blob_size: u64,
    containers: RwLock<BTreeMap<String, Arc<MemContainer>>>,
    bufs: BufPool,
}

struct MemContainer {
    props: ContainerProperties,
    txn: TxnId,
    /// Set (under the `blobs` write lock) when deleted, so a write racing the
    /// delete fails instead of landing in a container nobody can see.
    dead: AtomicBool,
    /// Blobs are immutable once stored; a write swaps in a new `Arc`, so a
    /// reader holding the old one never sees a mix.
    blobs: RwLock<BTreeMap<NameKey, Arc<MemBlob>>>,
    staged: Mutex<HashMap<String, StagedBlocks>>,
    /// Held by every write to a blob name, check through commit.
    locks: NameLocks,
}

/// A blob's uncommitted blocks: id to bytes.
type StagedBlocks = BTreeMap<Vec<u8>, Arc<Vec<u8>>>;

struct MemBlob {
    props: BlobProperties,
    txn: TxnId,
    /// Shared with the next version when only its properties change.
    data: Arc<Vec<u8>>,
    blocks: Vec<CommittedBlock>,
}

/// Largest up-front allocation for a PUT's bytes: the claimed length is
/// the guest's word, so grow past this only as bytes actually arrive.
const MAX_PREALLOC: u64 = 16 << 20;

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_max_blob_size(DEFAULT_MAX_BLOB_SIZE)
    }

    /// A store refusing blobs (and blocks) over `max_blob_size` bytes.
    pub fn with_max_blob_size(max_blob_size: u64) -> Self {
        Self { max_blob_size, containers: RwLock::new(BTreeMap::new()), bufs: BufPool::new() }
    }

    fn container(&self, name: &ContainerName) -> Result<Arc<MemContainer>, StoreError> {
        read(&self.containers).get(name.as_str()).cloned().ok_or(StoreError::ContainerNotFound)
    }

    fn read_all(&self, data: &mut dyn DataSource, with_md5: bool) -> Result<(Vec<u8>, semantics::Digests), StoreError> {
        let mut bytes = Vec::with_capacity(usize::try_from(data.len().min(MAX_PREALLOC)).unwrap_or(0));
        let mut buf = self.bufs.take();
        let digests = ingest(data, &mut buf, with_md5, |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok((bytes, digests))
    }
}

impl MemContainer {
    fn blob(&self, name: &str) -> Option<Arc<MemBlob>> {
        read(&self.blobs).get(&NameKey::of(name)).cloned()
    }

    /// Stores a blob unless the container was deleted meanwhile and drops
    /// its uncommitted blocks; the caller holds the name lock and has checked
    /// conditions.
    fn commit(&self, name: &str, blob: MemBlob) -> Result<(), StoreError> {
        self.replace(name, blob)?;
        lock(&self.staged).remove(name);
        Ok(())
    }

    /// [`MemContainer::commit`] keeping the uncommitted blocks.
    fn replace(&self, name: &str, blob: MemBlob) -> Result<(), StoreError> {
        let mut blobs = write(&self.blobs);
        if self.dead.load(Ordering::SeqCst) {
            return Err(StoreError::ContainerNotFound);
        }
        blobs.insert(NameKey::of(name), Arc::new(blob));
        Ok(())
    }
}

fn current(blob: &Option<Arc<MemBlob>>) -> Option<(&BlobProperties, &TxnId)> {
    blob.as_ref().map(|b| (&b.props, &b.txn))
}

impl BlobStore for MemoryStore {
    fn reads_are_quick(&self) -> bool {
        true
    }

    fn create_container(
        &self,
        name: &ContainerName,
        metadata: &Metadata,
        txn: &TxnId,
    ) -> Result<ContainerProperties, StoreError> {
        let mut map = write(&self.containers);
        if let Some(c) = map.get(name.as_str()) {
            return if c.txn == *txn { Ok(c.props.clone()) } else { Err(StoreError::AlreadyExists) };
        }
        let props = ContainerProperties { etag: next_etag(), last_modified_ms: now_ms(), metadata: metadata.clone() };
        map.insert(
            name.as_str().to_owned(),
            Arc::new(MemContainer {
                props: props.clone(),
                txn: *txn,
                dead: AtomicBool::new(false),
                blobs: RwLock::new(BTreeMap::new()),
                staged: Mutex::new(HashMap::new()),
                locks: NameLocks::new(),
            }),
        );
        Ok(props)
    }

    fn delete_container(&self, name: &ContainerName) -> Result<(), StoreError> {
        let c = write(&self.containers).remove(name.as_str()).ok_or(StoreError::ContainerNotFound)?;
        let mut blobs = write(&c.blobs);
        c.dead.store(true, Ordering::SeqCst);
        blobs.clear();
        lock(&c.staged).clear();
        Ok(())
    }

    fn container_properties(&self, name: &ContainerName) -> Result<ContainerProperties, StoreError> {
        Ok(self.container(name)?.props.clone())
    }

    fn list_containers(&self, req: &ListContainers) -> Result<Page<ContainerEntry>, StoreError> {
        Ok(listing::list_containers_page(&read(&self.containers), req, |c| c.props.clone()))
    }

    fn put_blob(&self, req: &PutBlob, data: &mut dyn DataSource, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        let c = self.container(&req.target.container)?;
        let name = req.target.blob.as_str();
        let len = data.len();
        check_size(len, self.max_blob_size)?;
        // Early answer before reading data; checked again at commit.
        if let Some(w) = check_write(current(&c.blob(name)), &req.conditions, txn)? {
            return Ok(w);
        }
        let (bytes, digests) = self.read_all(data, req.content_md5.is_some())?;
        verify(&digests, req.content_crc64, req.content_md5)?;
        let props = new_props(req.into(), len, &digests, 0);

        let _g = c.locks.lock(name);
        if let Some(w) = check_write(current(&c.blob(name)), &req.conditions, txn)? {
            return Ok(w);
        }
        let out = written(&props);
        c.commit(name, MemBlob { props, txn: *txn, data: Arc::new(bytes), blocks: Vec::new() })?;
        Ok(out)
    }

    fn get_blob(&self, req: &GetBlob, sink: &mut dyn DataSink) -> Result<(BlobProperties, u64, u64), StoreError> {
        let blob =
            self.container(&req.target.container)?.blob(req.target.blob.as_str()).ok_or(StoreError::BlobNotFound)?;
        check_read_conditions(&blob.props, &req.conditions)?;
        let (offset, len) = clip_range(req.range, blob.props.content_length, sink.capacity())?;
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(offset + len).ok())
            .and_then(|(a, b)| blob.data.get(a..b))
            .ok_or(StoreError::InvalidRange)?;
        if len > 0 {
            sink.write_bytes(bytes)?;
        }
        Ok((blob.props.clone(), offset, len))
    }

    fn blob_properties(&self, target: &BlobRef, conditions: &Conditions) -> Result<BlobProperties, StoreError> {
        let blob = self.container(&target.container)?.blob(target.blob.as_str()).ok_or(StoreError::BlobNotFound)?;
        check_read_conditions(&blob.props, conditions)?;
        Ok(blob.props.clone())
    }

    fn delete_blob(&self, target: &BlobRef, conditions: &Conditions) -> Result<(), StoreError> {
        let c = self.container(&target.container)?;
        let name = target.blob.as_str();
        let _g = c.locks.lock(name);
        let Some(blob) = c.blob(name) else {
            // A name with only uncommitted blocks is deleted too, as in Azure.
            let mut staged = lock(&c.staged);
            return if deletes_uncommitted(conditions) && staged.remove(name).is_some_and(|s| !s.is_empty()) {
                Ok(())
            } else {
                Err(StoreError::BlobNotFound)
            };
        };
        check_conditions(&blob.props, conditions)?;
        write(&c.blobs).remove(&NameKey::of(name));
        lock(&c.staged).remove(name);
        Ok(())
    }

    fn list_blobs(&self, req: &ListBlobs) -> Result<Page<BlobListItem>, StoreError> {
        let c = self.container(&req.container)?;
        let blobs = read(&c.blobs);
        Ok(listing::list_blobs_page(&blobs, req, |b| b.props.clone()))
    }

    fn name_order(&self) -> fn(&str, &str) -> std::cmp::Ordering {
        listing::azure_cmp
    }

    fn uncommitted_names(&self, container: &ContainerName, prefix: &str) -> Result<Vec<String>, StoreError> {
        let c = self.container(container)?;
        // One lock at a time: writers take these two in their own order.
        if lock(&c.staged).len() > super::MAX_STAGED_BLOBS {
            return Err(super::too_many_staged());
        }
        let staged: Vec<String> = lock(&c.staged)
            .iter()
            .filter(|(n, s)| n.starts_with(prefix) && !s.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        let blobs = read(&c.blobs);
        Ok(staged.into_iter().filter(|n| !blobs.contains_key(&NameKey::of(n))).collect())
    }

    fn put_block(
        &self,
        target: &BlobRef,
        id: &BlockId,
        data: &mut dyn DataSource,
        expected_crc64: Option<u64>,
    ) -> Result<u64, StoreError> {
        let c = self.container(&target.container)?;
        let (name, id) = (target.blob.as_str(), id.as_bytes());
        check_size(data.len(), self.max_blob_size)?;
        let room = || {
            let staged = lock(&c.staged);
            let set = staged.get(name);
            let other = set.and_then(|s| s.keys().next()).map(Vec::as_slice);
            check_stage_room(set.map_or(0, BTreeMap::len), set.is_some_and(|s| s.contains_key(id)), other, id)
        };
        room()?;
        let (bytes, digests) = self.read_all(data, false)?;
        verify(&digests, expected_crc64, None)?;

        let _g = c.locks.lock(name);
        room()?;
        if c.dead.load(Ordering::SeqCst) {
            return Err(StoreError::ContainerNotFound);
        }
        lock(&c.staged).entry(name.to_owned()).or_default().insert(id.to_vec(), Arc::new(bytes));
        Ok(digests.crc64)
    }

    fn put_block_list(&self, req: &PutBlockList, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        let c = self.container(&req.target.container)?;
        let name = req.target.blob.as_str();
        if req.blocks.len() > MAX_COMMITTED_BLOCKS {
            return Err(StoreError::TooLarge(format!("{} blocks exceed {MAX_COMMITTED_BLOCKS}", req.blocks.len())));
        }
        let _g = c.locks.lock(name);
        let old = c.blob(name);
        if let Some(w) = check_write(current(&old), &req.conditions, txn)? {
            return Ok(w);
        }
        let staged = lock(&c.staged).get(name).cloned().unwrap_or_default();
        let committed = old.as_ref().map_or(&[][..], |b| &b.blocks[..]);
        let (parts, total) = resolve_block_list(
            &req.blocks,
            |id| staged.get(id).map(|b| b.len() as u64),
            committed,
            self.max_blob_size,
        )?;
        let mut data = Vec::with_capacity(usize::try_from(total.min(MAX_PREALLOC)).unwrap_or(0));
        let mut sums = Checksums::new(false);
        for p in &parts {
            let bytes = match p.source {
                PartSource::Staged => staged.get(&p.id).map(|b| &b[..]),
                PartSource::Committed { offset } => old.as_ref().and_then(|b| {
                    let start = usize::try_from(offset).ok()?;
                    b.data.get(start..start.checked_add(usize::try_from(p.size).ok()?)?)
                }),
            }
            .ok_or_else(|| StoreError::InvalidBlockList("block data missing".into()))?;
            if p.listed_crc.is_some() {
                p.check_crc(super::crc64(bytes))?;
            }
            sums.update(bytes);
            data.extend_from_slice(bytes);
        }
        let blocks: Vec<CommittedBlock> =
            parts.into_iter().map(|p| CommittedBlock { id: p.id, size: p.size }).collect();
        let count = u32::try_from(blocks.len()).map_err(|_| StoreError::TooLarge("block count".into()))?;
        let props = new_props(req.into(), total, &sums.finish(), count);
        let out = written(&props);
        c.commit(name, MemBlob { props, txn: *txn, data: Arc::new(data), blocks })?;
        Ok(out)
    }

    fn copy_blob(&self, req: &CopyBlob, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        let to = self.container(&req.target.container)?;
        let name = req.target.blob.as_str();
        let _g = to.locks.lock(name);
        // A replay first (its source may be gone by now); the source read under the
        // target's lock, so a copy onto itself reads the version it replaces.
        if let Some(w) = check_write(current(&to.blob(name)), &req.conditions, txn)? {
            return Ok(w);
        }
        let from = self.container(&req.source.container)?;
        let src = from.blob(req.source.blob.as_str()).ok_or(StoreError::BlobNotFound)?;
        check_conditions(&src.props, &req.source_conditions)?;
        let props = copied_props(&src.props, req.metadata.as_ref());
        let out = written(&props);
        to.commit(name, MemBlob { props, txn: *txn, data: Arc::clone(&src.data), blocks: src.blocks.clone() })?;
        Ok(out)
    }

    fn set_blob_properties(&self, req: &SetBlobProperties, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        let c = self.container(&req.target.container)?;
        let name = req.target.blob.as_str();
        let _g = c.locks.lock(name);
        let old = c.blob(name);
        if let Some(w) = check_write(current(&old), &req.conditions, txn).map_err(update_condition)? {
            return Ok(w);
        }
        let old = old.ok_or(StoreError::BlobNotFound)?;
        let props = updated_props(&old.props, &req.update);
        let out = written(&props);
        let blob = MemBlob { props, txn: *txn, data: Arc::clone(&old.data), blocks: old.blocks.clone() };
        c.replace(name, blob)?;
        Ok(out)
    }

    fn get_block_list(&self, target: &BlobRef, list_type: BlockListType) -> Result<Vec<BlockInfo>, StoreError> {
        let c = self.container(&target.container)?;
        let name = target.blob.as_str();
        let _g = c.locks.lock(name);
        let blob = c.blob(name);
        let uncommitted: Vec<BlockInfo> = lock(&c.staged)
            .get(name)
            .map(|set| {
                set.iter().map(|(id, b)| BlockInfo { id: id.clone(), size: b.len() as u64, committed: false }).collect()
            })
            .unwrap_or_default();
        let Some(blob) = blob else {
            return if uncommitted.is_empty() {
                Err(StoreError::BlobNotFound)
            } else if list_type == BlockListType::Committed {
                Ok(Vec::new())
            } else {
                Ok(uncommitted)
            };
        };
        let mut out = Vec::new();
        if list_type != BlockListType::Uncommitted {
            out.extend(blob.blocks.iter().map(|b| BlockInfo { id: b.id.clone(), size: b.size, committed: true }));
        }
        if list_type != BlockListType::Committed {
            out.extend(uncommitted);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;
    use crate::store::conformance::{VecSource, bid, bref, list_req, new_container, stage};
    use crate::store::semantics::MAX_STAGED_BLOCKS;
    use crate::store::{BlobStore, StoreError};
    use vmblob_protocol::ops::{Conditions, ListBlobs};

    /// The staged-block limit (too slow to reach with fsyncs in the fs store,
    /// which shares the same check).
    #[test]
    fn staged_block_limit() {
        let s = MemoryStore::new();
        new_container(&s, "box");
        for i in 0..MAX_STAGED_BLOCKS as u32 {
            stage(&s, "box", "b", &i.to_le_bytes(), b"");
        }
        let r = s.put_block(&bref("box", "b"), &bid(b"one more"), &mut VecSource::new(b"x"), None);
        assert!(matches!(r, Err(StoreError::TooLarge(_))), "{r:?}");
        // Replacing a staged block is still fine, and other blobs are unaffected.
        stage(&s, "box", "b", &7u32.to_le_bytes(), b"new");
        stage(&s, "box", "c", b"1", b"x");
    }

    /// A listing of uncommitted blobs looks at every blob with staged blocks:
    /// past the bound it is refused, not slowed without end (too slow to
    /// reach with fsyncs in the fs store, which has the same bound).
    #[test]
    fn uncommitted_listing_is_bounded() {
        let s = MemoryStore::new();
        new_container(&s, "box");
        for i in 0..=crate::store::MAX_STAGED_BLOBS {
            stage(&s, "box", &format!("u{i}"), b"id", b"");
        }
        let req = ListBlobs { include_uncommitted: true, ..list_req("box", "", "", "", 10) };
        let r = crate::store::list_blobs(&s, &req);
        assert!(matches!(r, Err(StoreError::TooLarge(_))), "{:?}", r.map(|p| p.items.len()));
        assert!(crate::store::list_blobs(&s, &list_req("box", "", "", "", 10)).is_ok(), "committed listings are not");
        s.delete_blob(&bref("box", "u0"), &Conditions::none()).unwrap();
        assert_eq!(crate::store::list_blobs(&s, &req).unwrap().items.len(), 10);
    }

    crate::store::conformance::conformance_tests!(|| (MemoryStore::new(), ()), |max| (
        MemoryStore::with_max_blob_size(max),
        ()
    ));
}
