//! In-memory view of what is on disk: the containers, and per container an
//! index of its blobs (loaded by scanning headers on first use) and of each
//! blob's staged blocks (loaded per blob on first use).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use vmblob_protocol::ContainerName;
use vmblob_protocol::ops::{BlobProperties, ContainerProperties};

use super::extents::Pins;
use super::layout::{self, BLOCK_MAGIC, BlobHeader, BlockHeader, ContainerMeta};
use crate::store::listing::NameKey;
use crate::store::semantics::{NameLocks, hex, lock, observe_etag, read, unhex, write};
use crate::store::{StoreError, TxnId};

/// What the index keeps per blob: enough to list and stat without disk I/O.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub props: BlobProperties,
    pub txn: TxnId,
}

/// A staged block, as the staging index keeps it.
#[derive(Debug, Clone, Copy)]
pub struct StagedInfo {
    pub size: u64,
    pub crc64: u64,
}

/// Staged blocks of one blob, by id.
pub type StagedSet = BTreeMap<Vec<u8>, StagedInfo>;

pub struct Container {
    pub dir: PathBuf,
    pub props: ContainerProperties,
    pub txn: TxnId,
    /// False once the container is deleted. Commits hold it shared, so a
    /// delete waits for them and later commits see it and fail instead of
    /// renaming into a directory that went to the trash.
    pub alive: RwLock<bool>,
    /// Blob index; `None` until first use.
    index: RwLock<Option<BTreeMap<NameKey, IndexEntry>>>,
    /// Staged blocks of the blobs touched so far; a blob not in the map is
    /// loaded from its staging directory on first use.
    staged: Mutex<HashMap<String, StagedSet>>,
    /// Held by every write to a blob name, check through commit.
    pub locks: NameLocks,
    /// Readers that may still open a blob's extent files (see `extents.rs`).
    pub pins: Pins,
}

impl Container {
    pub fn new(dir: PathBuf, props: ContainerProperties, txn: TxnId) -> Self {
        Self {
            dir,
            props,
            txn,
            alive: RwLock::new(true),
            index: RwLock::new(None),
            staged: Mutex::new(HashMap::new()),
            locks: NameLocks::new(),
            pins: Pins::default(),
        }
    }

    /// Reads a container directory written by `create_container`.
    pub fn load(dir: PathBuf, name: &str) -> io::Result<Self> {
        let (meta, props, txn) = ContainerMeta::read(&dir)?;
        if meta.name != name || ContainerName::new(name).is_err() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "container.json names another container"));
        }
        observe_etag(&props.etag);
        Ok(Self::new(dir, props, txn))
    }

    /// Runs `f` on the blob index, loading it first if needed.
    pub fn with_index<R>(&self, f: impl FnOnce(&BTreeMap<NameKey, IndexEntry>) -> R) -> Result<R, StoreError> {
        if let Some(map) = read(&self.index).as_ref() {
            return Ok(f(map));
        }
        let mut guard = write(&self.index);
        if guard.is_none() {
            match scan_blobs(&self.dir) {
                Ok(map) => *guard = Some(map),
                // A delete moved the directory away under the first scan: the container is
                // gone, not broken (a delete marks it dead before it renames).
                Err(_) if !*read(&self.alive) => return Err(StoreError::ContainerNotFound),
                Err(e) => return Err(e.into()),
            }
        }
        let map = guard.as_ref().ok_or_else(|| StoreError::Io(io::Error::other("index not loaded")))?;
        Ok(f(map))
    }

    pub fn entry(&self, name: &str) -> Result<Option<IndexEntry>, StoreError> {
        self.with_index(|m| m.get(&NameKey::of(name)).cloned())
    }

    /// Records a committed write (or, with `None`, a delete). The caller holds
    /// the name lock and has loaded the index.
    pub fn set_entry(&self, name: &str, entry: Option<IndexEntry>) {
        if let Some(map) = write(&self.index).as_mut() {
            match entry {
                Some(e) => map.insert(NameKey::of(name), e),
                None => map.remove(&NameKey::of(name)),
            };
        }
    }

    /// Runs `f` on the staged blocks of `name`, loading them first if needed.
    /// The caller holds the name lock, so nobody else loads or changes them.
    pub fn with_staged<R>(&self, name: &str, f: impl FnOnce(&mut StagedSet) -> R) -> Result<R, StoreError> {
        let loaded = lock(&self.staged).contains_key(name);
        if !loaded {
            // Scan outside the map's lock: it is disk I/O.
            let set = match scan_staged(&layout::staging_dir(&self.dir, name), name) {
                Ok(set) => set,
                // As in `with_index`: a delete moved the directory away mid-scan.
                Err(_) if !*read(&self.alive) => return Err(StoreError::ContainerNotFound),
                Err(e) => return Err(e.into()),
            };
            lock(&self.staged).insert(name.to_owned(), set);
        }
        let mut staged = lock(&self.staged);
        let set = staged.entry(name.to_owned()).or_default();
        let r = f(set);
        if set.is_empty() {
            // An empty set means the same as an unloaded one whose directory is empty.
            staged.remove(name);
        }
        Ok(r)
    }

    /// Records a block staged on disk, if the blob's set is loaded (otherwise
    /// loading it later finds the file). The caller holds the name lock.
    pub fn note_staged(&self, name: &str, id: &[u8], info: StagedInfo) {
        if let Some(set) = lock(&self.staged).get_mut(name) {
            set.insert(id.to_vec(), info);
        }
    }

    /// Forgets a blob's staged blocks and removes their files (after a commit
    /// or delete). The caller holds the name lock. Failing to remove them is
    /// logged, not returned: the write they belong to has already succeeded.
    pub fn discard_staged(&self, name: &str) {
        if let Err(e) = self.remove_staged(name) {
            log::warn!("discarding staged blocks of {name:?} in {}: {e}", self.dir.display());
        }
    }

    /// Forgets a blob's staged blocks and durably removes their files. The
    /// caller holds the name lock and the container's liveness guard.
    pub fn remove_staged(&self, name: &str) -> io::Result<()> {
        lock(&self.staged).remove(name);
        match fs::remove_dir_all(layout::staging_dir(&self.dir, name)) {
            Ok(()) => layout::sync_dir(&layout::staging_root(&self.dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Container {
    /// Names starting with `prefix` that have staged blocks on disk and no
    /// committed blob. A blob's blocks sit in `staging/<sha256(name)>/`, each
    /// block file's header naming the blob: the first readable one whose name
    /// hashes to its directory names it.
    pub fn uncommitted_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let entries = match fs::read_dir(layout::staging_root(&self.dir)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(_) if !*read(&self.alive) => return Err(StoreError::ContainerNotFound),
            Err(e) => return Err(e.into()),
        };
        let mut names = Vec::new();
        for (seen, dir) in entries.enumerate() {
            if seen == crate::store::MAX_STAGED_BLOBS {
                return Err(crate::store::too_many_staged());
            }
            let dir = dir?.path();
            if let Some(name) = staged_name(&dir).filter(|n| n.starts_with(prefix))
                && self.entry(&name)?.is_none()
            {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// The blob a staging directory holds blocks of: the first block file that
/// `scan_staged` would take (its name the block id in hex, its header naming
/// a blob whose hash is the directory's). None: empty, discarded meanwhile,
/// or nothing readable; what cannot be read is logged and skipped, so one bad
/// entry does not fail every listing of the container.
fn staged_name(dir: &Path) -> Option<String> {
    let files = match fs::read_dir(dir) {
        Ok(f) => f,
        // Discarded meanwhile (a commit or delete).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("skipping staging entry {}: {e}", dir.display());
            return None;
        }
    };
    for f in files {
        let Ok(path) = f.map(|f| f.path()) else { continue };
        let header = File::open(&path).and_then(|file| BlockHeader::parse(&layout::read_header(&file, BLOCK_MAGIC)?));
        match header {
            Ok(h)
                if dir.file_name().is_some_and(|d| *d == *layout::name_hash(&h.blob))
                    && path.file_name().is_some_and(|f| *f == *h.id)
                    && unhex(&h.id).is_some_and(|id| hex(&id) == h.id) =>
            {
                return Some(h.blob);
            }
            Ok(_) => log::warn!("skipping misplaced block file {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("skipping unreadable block file {}: {e}", path.display()),
        }
    }
    None
}

/// Builds a container's blob index from the headers of its files. Files that
/// don't parse are skipped (and logged): one bad file must not hide the rest.
fn scan_blobs(dir: &Path) -> io::Result<BTreeMap<NameKey, IndexEntry>> {
    let mut map = BTreeMap::new();
    for fan in fs::read_dir(layout::blobs_dir(dir))? {
        let fan = fan?;
        if !fan.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(fan.path())? {
            let path = f?.path();
            match read_index_entry(&path) {
                Ok((name, entry)) => {
                    observe_etag(&entry.props.etag);
                    map.insert(NameKey(name), entry);
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    log::warn!("skipping unreadable blob file {}: {e}", path.display());
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(map)
}

fn read_index_entry(path: &Path) -> io::Result<(String, IndexEntry)> {
    let file = File::open(path)?;
    let raw = layout::read_blob_header(&file)?;
    let (h, props, txn) = BlobHeader::parse(&raw)?;
    // The file must be where its name hashes to (guards against misplaced copies).
    let expect = layout::name_hash(&h.name);
    let ok_place = path.file_name().is_some_and(|f| f == expect.as_str())
        && path.parent().and_then(Path::file_name).is_some_and(|f| f == &expect[..2]);
    if !ok_place {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "blob file is not at its name's hash"));
    }
    Ok((h.name, IndexEntry { props, txn }))
}

/// Reads the staged blocks of one blob from its staging directory.
fn scan_staged(dir: &Path, blob: &str) -> io::Result<StagedSet> {
    let mut set = StagedSet::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(set),
        Err(e) => return Err(e),
    };
    for f in entries {
        let path = f?.path();
        let parsed = File::open(&path).and_then(|file| {
            let raw = layout::read_header(&file, BLOCK_MAGIC)?;
            BlockHeader::parse(&raw)
        });
        match parsed {
            Ok(h) if h.blob == blob && path.file_name().is_some_and(|f| f == h.id.as_str()) => {
                if let Some(id) = unhex(&h.id).filter(|id| hex(id) == h.id) {
                    set.insert(id, StagedInfo { size: h.size, crc64: h.crc64 });
                }
            }
            Ok(_) => log::warn!("skipping misplaced block file {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                log::warn!("skipping unreadable block file {}: {e}", path.display());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container a delete moved away before its index was first loaded answers
    /// ContainerNotFound, not the I/O error of the failed scan (seen once in CI as
    /// `Io(NotFound)` from a put racing a container delete).
    #[test]
    fn a_scan_of_a_deleted_container_is_container_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("gone");
        let c = Container::new(dir, ContainerProperties::default(), [0; 16]);
        *write(&c.alive) = false;
        assert!(matches!(c.entry("b"), Err(StoreError::ContainerNotFound)));
        assert!(matches!(c.with_staged("b", |_| ()), Ok(()) | Err(StoreError::ContainerNotFound)));
        // A live container whose directory is missing is a real I/O error.
        *write(&c.alive) = true;
        assert!(matches!(c.entry("b"), Err(StoreError::Io(_))));
    }
}
