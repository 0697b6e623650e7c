//! Filesystem store, the embedded default.
//!
//! Each blob is one file (header + data, see `layout.rs`; a block-list blob's
//! file names its blocks' extent files instead, see `extents.rs`) replaced by
//! write-temp, fsync, rename, fsync-directory: after a crash a blob is the old
//! one or the new one. An in-memory index per container (see `index.rs`)
//! answers listings and property reads; file data is read from one opened
//! file (or the extents that file names, kept until its readers are done),
//! so a concurrent replace never shows a reader a mix. One store owns
//! its root (an exclusive lock on `vmblob.lock`, see `access.rs`): opening it
//! clears what an earlier run left in `tmp/` and `trash/`.

mod access;
mod blocks;
mod copy;
mod crc;
#[cfg(test)]
mod disk_use_tests;
#[cfg(test)]
mod extent_tests;
mod extents;
mod gc;
mod index;
mod layout;
mod props;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLockReadGuard};

use vmblob_protocol::BlockId;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobWritten, BlockInfo, BlockListType, Conditions, ContainerEntry,
    ContainerProperties, GetBlob, ListBlobs, ListContainers, Metadata, PutBlob, PutBlockList, SetBlobProperties,
};

use self::access::Modes;
use self::index::{Container, IndexEntry};
use self::layout::{BLOB_MAGIC, BlobHeader, ContainerMeta, Layout, Reservation, TempFile};
use super::listing;
use super::semantics::{
    BufPool, Digests, check_conditions, check_read_conditions, check_size, check_write, clip_range,
    deletes_uncommitted, ingest, lock, new_props, next_etag, now_ms, read, verify, write, written,
};
use super::{BlobStore, DataSink, DataSource, Page, StoreError, TxnId};

pub use self::gc::DEFAULT_STAGED_BLOCK_TTL;
pub use super::semantics::DEFAULT_MAX_BLOB_SIZE;

/// A step of a write at which a test can simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// The first chunk of data is in the temp file (not reached for 0 bytes,
    /// nor by a block list, which writes no data).
    DataPartlyWritten,
    /// A block list's extent files are linked (and durable); its blob file
    /// is not yet written.
    ExtentsLinked,
    /// All data and the header are in the temp file; it is not yet fsynced.
    TempWritten,
    /// The temp file is fsynced; it is not yet renamed into place.
    TempSynced,
    /// The temp file has replaced the target; its directory is not yet fsynced.
    Renamed,
    /// The directory is fsynced; the write is durable but not yet answered.
    DirSynced,
    /// A new container's directory is complete in `tmp/`, not yet renamed into place.
    ContainerPrepared,
    /// A deleted container's directory is in `trash/`, not yet removed.
    ContainerTrashed,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 8] = [
        FaultPoint::DataPartlyWritten,
        FaultPoint::ExtentsLinked,
        FaultPoint::TempWritten,
        FaultPoint::TempSynced,
        FaultPoint::Renamed,
        FaultPoint::DirSynced,
        FaultPoint::ContainerPrepared,
        FaultPoint::ContainerTrashed,
    ];
}

/// Called at each [`FaultPoint`]; an error aborts the operation there, leaving
/// the files exactly as they are (a crash).
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> io::Result<()> + Send + Sync>;

/// Options for [`FsStore::open_with`].
#[derive(Clone)]
pub struct FsOptions {
    /// Largest blob (and staged block) in bytes.
    pub max_blob_size: u64,
    /// Staged blocks of a blob expire this long after the last one was
    /// staged (see `gc.rs`).
    pub staged_block_ttl: std::time::Duration,
    /// How often the collector of expired blocks runs; `None`: an eighth of
    /// the TTL, between 100 ms and 10 minutes.
    pub gc_interval: Option<std::time::Duration>,
    pub faults: Option<FaultHook>,
    /// Members of the store root's group may read and write it (directories 0770, files
    /// 0660); otherwise only the daemon's user (0700, 0600), and a group-writable root is
    /// refused.
    pub group_access: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            staged_block_ttl: DEFAULT_STAGED_BLOCK_TTL,
            gc_interval: None,
            faults: None,
            group_access: false,
        }
    }
}

pub struct FsStore {
    layout: Layout,
    max_blob_size: u64,
    faults: Option<FaultHook>,
    /// The fault hook "crashed" a write: what it left stays, as a crash would leave it.
    crashed: AtomicBool,
    /// Containers by name; write-locked only briefly, never across I/O.
    /// Shared with the collector of expired staged blocks.
    containers: gc::Containers,
    /// Serialises container creates and deletes (their directory I/O).
    container_ops: Mutex<()>,
    bufs: BufPool,
    /// The background collector of expired staged blocks; stops when dropped.
    _gc: gc::Gc,
    /// The root's lock, held as long as the store is open: one daemon per store.
    _root_lock: File,
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        Self::open_with(root, FsOptions::default())
    }

    /// Opens a store that calls `faults` at every [`FaultPoint`] (crash tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_faults(root: &Path, faults: FaultHook) -> io::Result<FsStore> {
        Self::open_with(root, FsOptions { faults: Some(faults), ..FsOptions::default() })
    }

    pub fn open_with(root: &Path, options: FsOptions) -> io::Result<FsStore> {
        let modes = Modes::new(options.group_access);
        // Before anything else: another daemon may be writing here.
        let root_lock = access::claim_root(root, modes)?;
        let layout = Layout::new(root, modes);
        for dir in [layout.containers(), layout.tmp(), layout.trash()] {
            modes.create_dir_all(&dir)?;
        }
        // Containers are renamed into these directories: their own entries must be durable too.
        layout::sync_dir(root)?;
        // Whatever is here was being written or deleted when the last run stopped.
        let leftovers = layout::clear_dir(&layout.tmp())? + layout::clear_dir(&layout.trash())?;
        if leftovers > 0 {
            log::info!("removed {leftovers} leftovers of an interrupted run under {}", root.display());
        }
        let mut containers = BTreeMap::new();
        for e in fs::read_dir(layout.containers())? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
            match Container::load(e.path(), &name) {
                Ok(c) => {
                    containers.insert(name, Arc::new(c));
                }
                Err(err) if err.kind() == io::ErrorKind::InvalidData || err.kind() == io::ErrorKind::NotFound => {
                    log::warn!("skipping unreadable container {}: {err}", e.path().display());
                }
                Err(err) => return Err(err),
            }
        }
        // Staged blocks no upload can commit go now; expired ones also later.
        let (containers, gc) = self::gc::collect_at_start(&layout, containers, &options)?;
        Ok(FsStore {
            layout,
            max_blob_size: options.max_blob_size,
            faults: options.faults,
            crashed: AtomicBool::new(false),
            containers,
            container_ops: Mutex::new(()),
            bufs: BufPool::new(),
            _gc: gc,
            _root_lock: root_lock,
        })
    }

    fn container(&self, name: &ContainerName) -> Result<Arc<Container>, StoreError> {
        read(&self.containers).get(name.as_str()).cloned().ok_or(StoreError::ContainerNotFound)
    }

    /// Gives the fault hook a chance to "crash" here; a crash leaves `tmp` on disk.
    fn checkpoint(&self, point: FaultPoint, tmp: Option<&mut TempFile>) -> Result<(), StoreError> {
        if let Some(hook) = &self.faults
            && let Err(e) = hook(point)
        {
            self.crashed.store(true, Ordering::Relaxed);
            if let Some(t) = tmp {
                t.abandon();
            }
            return Err(StoreError::Io(e));
        }
        Ok(())
    }

    /// Streams `data` into a new temp file after room for its header.
    fn write_temp(
        &self,
        kind: &str,
        res: &Reservation,
        data: &mut dyn DataSource,
        with_md5: bool,
    ) -> Result<(TempFile, Digests), StoreError> {
        let mut tmp = self.layout.temp_file(kind)?;
        let mut buf = self.bufs.take();
        let mut at = res.data_start;
        let digests = ingest(data, &mut buf, with_md5, |chunk| {
            tmp.file.write_all_at(chunk, at)?;
            let first = at == res.data_start;
            at += chunk.len() as u64;
            if first { self.checkpoint(FaultPoint::DataPartlyWritten, Some(&mut tmp)) } else { Ok(()) }
        })?;
        Ok((tmp, digests))
    }

    /// Writes the header and makes the temp file durable.
    fn finish_temp(
        &self,
        tmp: &mut TempFile,
        magic: [u8; 8],
        res: &Reservation,
        json: &[u8],
    ) -> Result<(), StoreError> {
        layout::write_header(&tmp.file, magic, res, json)?;
        self.checkpoint(FaultPoint::TempWritten, Some(tmp))?;
        tmp.file.sync_data()?;
        self.checkpoint(FaultPoint::TempSynced, Some(tmp))
    }

    /// Renames a finished temp file over `target` (caller holds the name
    /// lock) and makes the rename durable; `make_parent` first creates the
    /// target's directory if missing. `on_renamed` updates the in-memory view
    /// as soon as the disk holds the new file. Returns the container's
    /// liveness guard: the caller finishes (discards staged blocks) before a
    /// delete can move the directory away and a namesake take its place.
    fn commit<'c>(
        &self,
        c: &'c Container,
        tmp: &mut TempFile,
        target: &Path,
        make_parent: bool,
        on_renamed: impl FnOnce(),
    ) -> Result<RwLockReadGuard<'c, bool>, StoreError> {
        let alive = read(&c.alive);
        if !*alive {
            return Err(StoreError::ContainerNotFound);
        }
        let parent = target.parent().ok_or_else(|| io::Error::other("target without a directory"))?;
        if make_parent {
            match self.layout.modes.create_dir(parent) {
                Ok(()) => layout::sync_dir(parent.parent().unwrap_or(parent))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
        }
        tmp.rename_to(target)?;
        on_renamed();
        self.checkpoint(FaultPoint::Renamed, None)?;
        layout::sync_dir(parent)?;
        self.checkpoint(FaultPoint::DirSynced, None)?;
        Ok(alive)
    }

    /// Removes the extents the blob's current file no longer names (caller
    /// holds the name lock and the liveness guard). A failure only leaves
    /// garbage for the next open: the write it follows has succeeded.
    fn sweep_extents(&self, c: &Container, name: &str) {
        if let Err(e) = extents::sweep(c, name) {
            log::warn!("removing stale extents of {name:?} in {}: {e}", c.dir.display());
        }
    }

    /// Builds a new container directory in `tmp/`: one rename then publishes it whole.
    fn prepare_container(&self, dir: &Path, meta: &ContainerMeta) -> io::Result<()> {
        let modes = self.layout.modes;
        modes.create_dir(dir)?;
        let mut f = modes.create_file(&layout::container_meta(dir))?;
        f.write_all(&layout::to_json(meta)?)?;
        f.sync_data()?;
        layout::make_container_dirs(dir, modes)
    }

    /// Opens a blob's file for reading; `None` if it does not exist.
    fn open_blob(
        &self,
        c: &Container,
        name: &str,
    ) -> Result<Option<(File, layout::RawHeader, BlobProperties)>, StoreError> {
        let file = match File::open(layout::blob_path(&c.dir, name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let raw = layout::read_blob_header(&file)?;
        let (h, props, _) = BlobHeader::parse(&raw)?;
        // Only a SHA-256 collision could put another name here.
        if h.name != name {
            return Ok(None);
        }
        Ok(Some((file, raw, props)))
    }
}

impl BlobStore for FsStore {
    fn reads_are_quick(&self) -> bool {
        true
    }

    fn create_container(
        &self,
        name: &ContainerName,
        metadata: &Metadata,
        txn: &TxnId,
    ) -> Result<ContainerProperties, StoreError> {
        let _ops = lock(&self.container_ops);
        if let Some(c) = read(&self.containers).get(name.as_str()) {
            return if c.txn == *txn { Ok(c.props.clone()) } else { Err(StoreError::AlreadyExists) };
        }
        let props = ContainerProperties { etag: next_etag(), last_modified_ms: now_ms(), metadata: metadata.clone() };
        let staging = self.layout.tmp().join(layout::unique_name("container"));
        if let Err(e) = self.prepare_container(&staging, &ContainerMeta::new(name.as_str(), &props, txn)) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e.into());
        }
        self.checkpoint(FaultPoint::ContainerPrepared, None)?;
        let dir = self.layout.container(name.as_str());
        if let Err(e) = fs::rename(&staging, &dir) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e.into());
        }
        let c = Arc::new(Container::new(dir, props.clone(), *txn));
        write(&self.containers).insert(name.as_str().to_owned(), c);
        layout::sync_dir(&self.layout.containers())?;
        Ok(props)
    }

    fn delete_container(&self, name: &ContainerName) -> Result<(), StoreError> {
        let _ops = lock(&self.container_ops);
        // New requests stop finding it at once; requests already holding it
        // may still commit until the rename below, and go with it.
        let c = write(&self.containers).remove(name.as_str()).ok_or(StoreError::ContainerNotFound)?;
        let trash = self.layout.trash().join(layout::unique_name("container"));
        {
            // Waits for commits in flight; later ones see the flag and fail.
            let mut alive = write(&c.alive);
            *alive = false;
            if let Err(e) = fs::rename(&c.dir, &trash) {
                // Still on disk: keep serving it rather than lose track of it.
                *alive = true;
                write(&self.containers).insert(name.as_str().to_owned(), c.clone());
                return Err(e.into());
            }
        }
        layout::sync_dir(&self.layout.containers())?;
        self.checkpoint(FaultPoint::ContainerTrashed, None)?;
        // Gone for good already; a failure here only leaves trash for the next open.
        if let Err(e) = fs::remove_dir_all(&trash) {
            log::warn!("removing {}: {e}", trash.display());
        }
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
        // Answer replays and failed conditions before reading any data; both
        // are checked again, under the name lock, at commit.
        let current = c.entry(name)?;
        if let Some(w) = check_write(current.as_ref().map(|e| (&e.props, &e.txn)), &req.conditions, txn)? {
            return Ok(w);
        }
        let with_md5 = req.content_md5.is_some();
        let res = layout::reserve(BlobHeader::room(name, req.into(), len, with_md5)?, &[])?;
        let (mut tmp, digests) = self.write_temp("blob", &res, data, with_md5)?;
        verify(&digests, req.content_crc64, req.content_md5)?;
        let props = new_props(req.into(), len, &digests, 0);
        let json = layout::to_json(&BlobHeader::new(name, &props, txn))?;
        self.finish_temp(&mut tmp, BLOB_MAGIC, &res, &json)?;

        let _g = c.locks.lock(name);
        let current = c.entry(name)?;
        if let Some(w) = check_write(current.as_ref().map(|e| (&e.props, &e.txn)), &req.conditions, txn)? {
            return Ok(w);
        }
        let entry = IndexEntry { props: props.clone(), txn: *txn };
        let _alive = self.commit(&c, &mut tmp, &layout::blob_path(&c.dir, name), false, || {
            c.set_entry(name, Some(entry));
        })?;
        // A whole-blob write discards uncommitted blocks, as in Azure.
        c.discard_staged(name);
        // And the extents of the block list it replaced, if it did.
        self.sweep_extents(&c, name);
        Ok(written(&props))
    }

    fn get_blob(&self, req: &GetBlob, sink: &mut dyn DataSink) -> Result<(BlobProperties, u64, u64), StoreError> {
        let c = self.container(&req.target.container)?;
        let name = req.target.blob.as_str();
        // Before the blob file opens: its extents stay until the read is done.
        let _pin = extents::Pin::new(&c, name);
        let (file, raw, props) = self.open_blob(&c, name)?.ok_or(StoreError::BlobNotFound)?;
        check_read_conditions(&props, &req.conditions)?;
        let (offset, len) = clip_range(req.range, props.content_length, sink.capacity())?;
        if raw.extents {
            let list = extents::read_list(&raw, &file)?;
            if list.iter().try_fold(0u64, |n, e| n.checked_add(e.size)) != Some(props.content_length) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "extents do not add up to the blob").into());
            }
            if len > 0 {
                extents::fill(&c, name, &list, offset, len, sink)?;
            }
        } else if len > 0 {
            // Header and data come from the same open file: a concurrent
            // replace swaps the name, not this inode.
            sink.fill_from_file(&file, raw.data_start + offset, len)?;
        }
        Ok((props, offset, len))
    }

    fn blob_properties(&self, target: &BlobRef, conditions: &Conditions) -> Result<BlobProperties, StoreError> {
        let c = self.container(&target.container)?;
        let entry = c.entry(target.blob.as_str())?.ok_or(StoreError::BlobNotFound)?;
        check_read_conditions(&entry.props, conditions)?;
        Ok(entry.props)
    }

    fn delete_blob(&self, target: &BlobRef, conditions: &Conditions) -> Result<(), StoreError> {
        let c = self.container(&target.container)?;
        let name = target.blob.as_str();
        let _g = c.locks.lock(name);
        let entry = c.entry(name)?;
        if let Some(entry) = &entry {
            check_conditions(&entry.props, conditions)?;
        } else if !deletes_uncommitted(conditions) || c.with_staged(name, |s| s.is_empty())? {
            return Err(StoreError::BlobNotFound);
        }
        let alive = read(&c.alive);
        if !*alive {
            return Err(StoreError::ContainerNotFound);
        }
        // Staged blocks go first: a crash before the blob goes leaves the blob
        // without them (as if they expired), never them without the blob.
        c.remove_staged(name)?;
        if entry.is_none() {
            // A name with only uncommitted blocks, deleted as in Azure.
            return Ok(());
        }
        let path = layout::blob_path(&c.dir, name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        c.set_entry(name, None);
        if let Some(parent) = path.parent() {
            layout::sync_dir(parent)?;
        }
        self.sweep_extents(&c, name);
        Ok(())
    }

    fn list_blobs(&self, req: &ListBlobs) -> Result<Page<BlobListItem>, StoreError> {
        let c = self.container(&req.container)?;
        c.with_index(|map| listing::list_blobs_page(map, req, |e| e.props.clone()))
    }

    fn uncommitted_names(&self, container: &ContainerName, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.container(container)?.uncommitted_names(prefix)
    }

    fn name_order(&self) -> fn(&str, &str) -> std::cmp::Ordering {
        listing::azure_cmp
    }

    fn put_block(
        &self,
        target: &BlobRef,
        id: &BlockId,
        data: &mut dyn DataSource,
        expected_crc64: Option<u64>,
    ) -> Result<u64, StoreError> {
        blocks::put_block(self, target, id, data, expected_crc64)
    }

    fn put_block_list(&self, req: &PutBlockList, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        blocks::put_block_list(self, req, txn)
    }

    fn get_block_list(&self, target: &BlobRef, list_type: BlockListType) -> Result<Vec<BlockInfo>, StoreError> {
        blocks::get_block_list(self, target, list_type)
    }

    fn set_blob_properties(&self, req: &SetBlobProperties, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        props::set_blob_properties(self, req, txn)
    }

    fn copy_blob(&self, req: &vmblob_protocol::ops::CopyBlob, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        copy::copy_blob(self, req, txn)
    }
}
