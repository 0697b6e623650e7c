//! Garbage collection of staged blocks.
//!
//! Uncommitted blocks expire as in Azure: a blob's staged blocks all go once
//! its staging directory has not changed for `staged_block_ttl` (7 days by
//! default), i.e. that long after the last block was staged for it. A staged
//! block renamed into its directory updates the directory's mtime, so one
//! `stat` per blob tells its age.
//!
//! - **At open** ([`collect_at_start`]), before anything else can touch the
//!   store, it removes whatever no upload can still commit: expired staging
//!   directories; block files the store cannot read or that sit where their
//!   header does not put them (never listed, never committable); empty
//!   staging directories; and blocks staged before the last write of their
//!   blob (that write should have discarded them, and a crash came first).
//!   Blocks of uploads that may still be going on stay: a guest does not see a
//!   VSP restart (it reconnects and replays what was in flight), so it may
//!   well commit blocks it staged before. It also removes the extent files
//!   no blob file names ([`extents::sweep_hash`]): a crash between linking
//!   them and the rename, or between the rename and the sweep, leaves some.
//! - **While the store runs** a background thread makes a pass every
//!   `gc_interval`, looking at no more than [`PASS_BUDGET`] staging
//!   directories and resuming where the last pass stopped. It removes an
//!   expired directory under the blob's name lock, after checking again that
//!   it is still expired and its container still alive.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::FsOptions;
use super::extents::{self, Swept};
use super::index::Container;
use super::layout::{self, BLOCK_MAGIC, BlockHeader, Layout};
use crate::store::semantics::{hex, read, unhex};

/// Azure's: uncommitted blocks go a week after the blob's last PutBlock.
pub const DEFAULT_STAGED_BLOCK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Staging directories one background pass looks at, at most.
pub const PASS_BUDGET: usize = 1024;
/// How soon the next pass comes when a pass ran out of budget.
const CATCH_UP: Duration = Duration::from_secs(1);

pub(super) type Containers = Arc<RwLock<BTreeMap<String, Arc<Container>>>>;

/// How often the collector runs when `FsOptions::gc_interval` is not set:
/// an eighth of the TTL, between 100 ms and 10 minutes.
pub fn default_interval(ttl: Duration) -> Duration {
    (ttl / 8).clamp(Duration::from_millis(100), Duration::from_secs(600))
}

/// The background collector; stops (and is joined) when dropped.
pub(super) struct Gc {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Gc {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once.
        drop(self.stop.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::warn!("the staged-block collector panicked");
        }
    }
}

/// Collects what no upload can commit any more (see the module comment),
/// then starts the background collector over `containers`.
pub(super) fn collect_at_start(
    layout: &Layout,
    containers: BTreeMap<String, Arc<Container>>,
    options: &FsOptions,
) -> io::Result<(Containers, Gc)> {
    let ttl = options.staged_block_ttl;
    let mut freed = Freed::default();
    let mut extents = Swept::default();
    for c in containers.values() {
        sweep_container_at_start(&c.dir, ttl, &mut freed)?;
        sweep_extents_at_start(&c.dir, &mut extents)?;
    }
    if extents.files > 0 {
        log::info!(
            "removed {} extent files ({} bytes) no blob names under {}",
            extents.files,
            extents.bytes,
            layout.containers().display()
        );
    }
    if freed.files > 0 || freed.dirs > 0 {
        log::info!(
            "removed {} staged block files ({} bytes) and {} staging directories no upload can commit under {}",
            freed.files,
            freed.bytes,
            freed.dirs,
            layout.containers().display()
        );
    }
    let containers = Arc::new(RwLock::new(containers));
    let gc = start(Arc::downgrade(&containers), ttl, options.gc_interval.unwrap_or_else(|| default_interval(ttl)))?;
    Ok((containers, gc))
}

/// What a collection removed.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Freed {
    pub files: u64,
    pub bytes: u64,
    /// Staging directories (one per blob).
    pub dirs: u64,
}

/// Whether a directory last changed at `mtime` is older than `ttl` now.
fn expired(meta: &Metadata, ttl: Duration) -> bool {
    let Ok(mtime) = meta.modified() else { return false };
    SystemTime::now().duration_since(mtime).is_ok_and(|age| age > ttl)
}

/// The time a file's inode last changed (for a block: when it was renamed
/// into place, since nothing else changes it).
fn ctime(meta: &Metadata) -> (i64, i64) {
    (meta.ctime(), meta.ctime_nsec())
}

fn mtime(meta: &Metadata) -> (i64, i64) {
    (meta.mtime(), meta.mtime_nsec())
}

/// Bytes a directory's files take, for the log.
fn dir_size(dir: &Path) -> (u64, u64) {
    let Ok(entries) = fs::read_dir(dir) else { return (0, 0) };
    entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// One staged block file, if its header is readable and matches its place.
fn read_block(path: &Path, dir_hash: &str) -> io::Result<Option<BlockHeader>> {
    let file = File::open(path)?;
    let parsed = layout::read_header(&file, BLOCK_MAGIC).and_then(|raw| BlockHeader::parse(&raw));
    match parsed {
        Ok(h) => {
            let named_here = path.file_name().is_some_and(|f| f == h.id.as_str())
                && unhex(&h.id).is_some_and(|id| hex(&id) == h.id)
                && layout::name_hash(&h.blob) == dir_hash;
            Ok(named_here.then_some(h))
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove_file(path: &Path, freed: &mut Freed) -> io::Result<()> {
    let len = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
    match fs::remove_file(path) {
        Ok(()) => {
            freed.files += 1;
            freed.bytes += len;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove_dir(dir: &Path, freed: &mut Freed) -> io::Result<()> {
    let (n, bytes) = dir_size(dir);
    match fs::remove_dir_all(dir) {
        Ok(()) => {
            freed.files += n;
            freed.bytes += bytes;
            freed.dirs += 1;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The open-time collection of one container (nothing else runs yet).
fn sweep_container_at_start(dir: &Path, ttl: Duration, freed: &mut Freed) -> io::Result<()> {
    let root = layout::staging_root(dir);
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let before = (freed.files, freed.dirs);
    for e in entries {
        let e = e?;
        let path = e.path();
        let meta = fs::symlink_metadata(&path)?;
        if !meta.is_dir() {
            remove_file(&path, freed)?;
            continue;
        }
        if expired(&meta, ttl) {
            remove_dir(&path, freed)?;
            continue;
        }
        let Some(hash) = e.file_name().to_str().map(str::to_owned) else {
            remove_dir(&path, freed)?;
            continue;
        };
        sweep_staging_dir_at_start(dir, &path, &hash, freed)?;
        if fs::read_dir(&path)?.next().is_none() {
            remove_dir(&path, freed)?;
        }
    }
    if (freed.files, freed.dirs) != before {
        layout::sync_dir(&root)?;
    }
    Ok(())
}

/// Removes the extent files of one container that no blob file names.
fn sweep_extents_at_start(dir: &Path, swept: &mut Swept) -> io::Result<()> {
    let entries = match fs::read_dir(layout::extents_root(dir)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let meta = fs::symlink_metadata(e.path())?;
        if !meta.is_dir() {
            fs::remove_file(e.path())?;
            swept.files += 1;
            swept.bytes += meta.len();
            continue;
        }
        let hash = e.file_name().to_str().filter(|h| layout::blob_path_for_hash(dir, h).is_some()).map(str::to_owned);
        let Some(h) = hash else {
            // Not named by a blob's hash: no blob can name what is in there.
            let (n, bytes) = dir_size(&e.path());
            fs::remove_dir_all(e.path())?;
            swept.files += n;
            swept.bytes += bytes;
            continue;
        };
        let s = extents::sweep_hash(dir, &h)?;
        swept.files += s.files;
        swept.bytes += s.bytes;
    }
    Ok(())
}

/// Removes the unreadable, misplaced and superseded block files of one blob.
fn sweep_staging_dir_at_start(dir: &Path, staging: &Path, hash: &str, freed: &mut Freed) -> io::Result<()> {
    // Blocks renamed into place before the blob's file was last written were
    // staged before that write, which discards every staged block.
    let mut blob_written: Option<Option<(i64, i64)>> = None;
    let mut removed = false;
    for f in fs::read_dir(staging)? {
        let path = f?.path();
        let meta = fs::symlink_metadata(&path)?;
        let header = if meta.is_file() { read_block(&path, hash)? } else { None };
        let Some(h) = header else {
            if meta.is_dir() {
                remove_dir(&path, freed)?;
            } else {
                remove_file(&path, freed)?;
            }
            removed = true;
            continue;
        };
        let written =
            blob_written.get_or_insert_with(|| fs::metadata(layout::blob_path(dir, &h.blob)).ok().map(|m| mtime(&m)));
        if written.is_some_and(|w| ctime(&meta) < w) {
            remove_file(&path, freed)?;
            removed = true;
        }
    }
    if removed {
        layout::sync_dir(staging)?;
    }
    Ok(())
}

fn start(containers: Weak<RwLock<BTreeMap<String, Arc<Container>>>>, ttl: Duration, every: Duration) -> io::Result<Gc> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new().name("vmblob-fs-gc".into()).spawn(move || {
        let mut cursor = Cursor::default();
        let mut wait = every;
        loop {
            match stopped.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(containers) = containers.upgrade() else { return };
            let (freed, more) = sweep_pass(&containers, ttl, &mut cursor, PASS_BUDGET);
            drop(containers);
            if freed.dirs > 0 {
                log::info!(
                    "expired the staged blocks of {} blobs ({} files, {} bytes) idle for over {ttl:?}",
                    freed.dirs,
                    freed.files,
                    freed.bytes
                );
            }
            wait = if more { CATCH_UP.min(every) } else { every };
        }
    })?;
    Ok(Gc { stop: Some(stop), thread: Some(thread) })
}

/// Where a pass stopped: the next staging directory to look at is after this
/// one (container name, name hash) in byte order.
#[derive(Default, Debug, Clone)]
pub(super) struct Cursor {
    after: Option<(String, String)>,
}

/// Looks at up to `budget` staging directories after `cursor`, removing the
/// expired ones. Returns what it freed and whether it stopped for the budget
/// (otherwise it reached the end, and the next pass starts over).
pub(super) fn sweep_pass(containers: &Containers, ttl: Duration, cursor: &mut Cursor, budget: usize) -> (Freed, bool) {
    let list: Vec<(String, Arc<Container>)> = read(containers).iter().map(|(n, c)| (n.clone(), c.clone())).collect();
    let mut freed = Freed::default();
    let mut seen = 0;
    for (cname, c) in list {
        if cursor.after.as_ref().is_some_and(|(after, _)| cname < *after) {
            continue;
        }
        let mut hashes: Vec<String> = match fs::read_dir(layout::staging_root(&c.dir)) {
            Ok(entries) => entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect(),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("listing staged blocks of container {cname}: {e}");
                }
                continue;
            }
        };
        hashes.sort_unstable();
        for h in hashes {
            if cursor.after.as_ref().is_some_and(|(after_c, after_h)| cname == *after_c && h <= *after_h) {
                continue;
            }
            if seen == budget {
                return (freed, true);
            }
            seen += 1;
            cursor.after = Some((cname.clone(), h.clone()));
            if let Err(e) = expire(&c, &h, ttl, &mut freed) {
                log::warn!("expiring staged blocks in {}: {e}", layout::staging_root(&c.dir).join(&h).display());
            }
        }
    }
    cursor.after = None;
    (freed, false)
}

/// Removes one blob's staging directory if it is expired.
fn expire(c: &Container, hash: &str, ttl: Duration, freed: &mut Freed) -> io::Result<()> {
    let dir = layout::staging_root(&c.dir).join(hash);
    let still_expired = || match fs::symlink_metadata(&dir) {
        Ok(m) => Ok(m.is_dir() && expired(&m, ttl)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    };
    if !still_expired()? {
        return Ok(());
    }
    // The blob's name, for its lock: from the first block that says it.
    let mut name = None;
    for f in fs::read_dir(&dir)? {
        if let Some(h) = read_block(&f?.path(), hash)? {
            name = Some(h.blob);
            break;
        }
    }
    // Only unreadable files: no upload can use them, but without the name
    // there is no lock to take; the next open removes them.
    let Some(name) = name else { return Ok(()) };
    let _g = c.locks.lock(&name);
    let alive = read(&c.alive);
    // A deleted container's directory may belong to a namesake by now.
    if !*alive || !still_expired()? {
        return Ok(());
    }
    let (n, bytes) = dir_size(&dir);
    c.remove_staged(&name)?;
    freed.files += n;
    freed.bytes += bytes;
    freed.dirs += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use vmblob_protocol::ops::{BlockListType, Conditions};

    use super::super::{FaultPoint, FsOptions, FsStore};
    use super::*;
    use crate::store::conformance::{self, block_list_req, bref, cname, get, list_all, new_container, put, stage, txn};
    use crate::store::{BlobStore, StoreError};

    const HOUR: Duration = Duration::from_secs(3600);

    fn open(dir: &Path, gc_interval: Duration, faults: Option<super::super::FaultHook>) -> FsStore {
        let options =
            FsOptions { staged_block_ttl: HOUR, gc_interval: Some(gc_interval), faults, ..FsOptions::default() };
        FsStore::open_with(dir, options).unwrap()
    }

    fn staging(root: &Path, container: &str, blob: &str) -> std::path::PathBuf {
        layout::staging_dir(&root.join("containers").join(container), blob)
    }

    /// Makes a blob's staging directory look untouched for two hours.
    fn age(root: &Path, container: &str, blob: &str) {
        let two_hours_ago = SystemTime::now() - 2 * HOUR;
        File::open(staging(root, container, blob)).unwrap().set_modified(two_hours_ago).unwrap();
    }

    fn uncommitted(s: &FsStore, blob: &str) -> Result<usize, StoreError> {
        s.get_block_list(&bref("box", blob), BlockListType::Uncommitted).map(|l| l.len())
    }

    #[test]
    fn expired_staged_blocks_go_while_the_store_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), Duration::from_millis(20), None);
        new_container(&s, "box");
        stage(&s, "box", "old", b"1", &conformance::pattern(100_000, 1));
        stage(&s, "box", "old", b"2", b"two");
        stage(&s, "box", "young", b"1", b"one");
        put(&s, "box", "mixed", b"committed");
        stage(&s, "box", "mixed", b"1", b"staged");
        // Loaded into the staging index: the collector must update it too.
        assert_eq!(uncommitted(&s, "old").unwrap(), 2);
        age(dir.path(), "box", "old");
        age(dir.path(), "box", "mixed");
        let t = Instant::now();
        while uncommitted(&s, "old").is_ok() || uncommitted(&s, "mixed").unwrap() > 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "expired blocks were not collected");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!staging(dir.path(), "box", "old").exists());
        assert!(!staging(dir.path(), "box", "mixed").exists());
        assert_err(s.put_block_list(&block_list_req("box", "old", &[b"1"]), &txn()));
        assert_eq!(get(&s, "box", "mixed").unwrap().1, b"committed");
        assert_eq!(uncommitted(&s, "young").unwrap(), 1);
        s.put_block_list(&block_list_req("box", "young", &[b"1"]), &txn()).unwrap();
        assert_eq!(get(&s, "box", "young").unwrap().1, b"one");
    }

    fn assert_err(r: Result<vmblob_protocol::ops::BlobWritten, StoreError>) {
        assert!(matches!(r, Err(StoreError::InvalidBlockList(_))), "{r:?}");
    }

    #[test]
    fn a_pass_is_bounded_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), HOUR, None);
        for c in ["box", "other"] {
            new_container(&s, c);
            for b in ["a", "b", "c"] {
                stage(&s, c, b, b"1", b"x");
                age(dir.path(), c, b);
            }
        }
        stage(&s, "box", "fresh", b"1", b"x");
        let mut cursor = Cursor::default();
        let mut freed = Vec::new();
        loop {
            let (f, more) = sweep_pass(&s.containers, HOUR, &mut cursor, 4);
            freed.push(f.dirs);
            if !more {
                break;
            }
        }
        // 7 directories, 4 a pass; the fresh one stays.
        assert_eq!(freed, [3, 3]);
        for c in ["box", "other"] {
            for b in ["a", "b", "c"] {
                assert!(s.get_block_list(&bref(c, b), BlockListType::All).is_err(), "{c}/{b}");
            }
        }
        assert_eq!(uncommitted(&s, "fresh").unwrap(), 1);
        assert_eq!(sweep_pass(&s.containers, HOUR, &mut cursor, 4), (Freed::default(), false));
    }

    #[test]
    fn open_collects_what_no_upload_can_commit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let armed = Arc::new(AtomicBool::new(false));
        let hook_armed = armed.clone();
        let hook: super::super::FaultHook = Arc::new(move |p| {
            if p == FaultPoint::Renamed && hook_armed.swap(false, Ordering::SeqCst) {
                Err(io::Error::other("crash"))
            } else {
                Ok(())
            }
        });
        {
            let s = open(root, HOUR, Some(hook));
            new_container(&s, "box");
            stage(&s, "box", "old", b"1", b"x");
            stage(&s, "box", "young", b"1", b"one");
            stage(&s, "box", "young", b"2", b"two");
            // A commit that crashed before discarding the blocks it superseded.
            stage(&s, "box", "done", b"1", b"one");
            stage(&s, "box", "done", b"2", b"left out");
            // Timestamps are coarse: let the commit come a tick later.
            std::thread::sleep(Duration::from_millis(50));
            armed.store(true, Ordering::SeqCst);
            assert!(s.put_block_list(&block_list_req("box", "done", &[b"1"]), &txn()).is_err());
            assert!(!armed.load(Ordering::SeqCst));
            assert_eq!(uncommitted(&s, "done").unwrap(), 2, "the crash skipped the discard");
            // A block staged after that commit is a new upload's.
            std::thread::sleep(Duration::from_millis(50));
            stage(&s, "box", "done", b"3", b"three");
        }
        age(root, "box", "old");
        // Garbage no upload can commit: a truncated block, a block under
        // another id's name, a block of another blob, stray files and
        // directories, an empty staging directory.
        let young = staging(root, "box", "young");
        let f = fs::OpenOptions::new().write(true).open(young.join(hex(b"2"))).unwrap();
        f.set_len(100).unwrap();
        fs::copy(young.join(hex(b"1")), young.join(hex(b"9"))).unwrap();
        fs::copy(young.join(hex(b"1")), staging(root, "box", "done").join(hex(b"1"))).unwrap();
        fs::write(young.join("junk"), b"junk").unwrap();
        fs::create_dir(young.join("subdir")).unwrap();
        let stage_root = layout::staging_root(&root.join("containers/box"));
        fs::write(stage_root.join("stray"), b"x").unwrap();
        fs::create_dir(stage_root.join("empty")).unwrap();

        let s = open(root, HOUR, None);
        assert!(uncommitted(&s, "old").is_err());
        assert!(!staging(root, "box", "old").exists());
        let ids = |b| -> Vec<Vec<u8>> {
            s.get_block_list(&bref("box", b), BlockListType::Uncommitted).unwrap().into_iter().map(|i| i.id).collect()
        };
        assert_eq!(ids("young"), [b"1".to_vec()]);
        assert_eq!(ids("done"), [b"3".to_vec()]);
        assert_eq!(get(&s, "box", "done").unwrap().1, b"one");
        let mut left: Vec<String> =
            fs::read_dir(&stage_root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut want = vec![layout::name_hash("young"), layout::name_hash("done")];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(fs::read_dir(&young).unwrap().count(), 1);
        // What stayed still commits.
        s.put_block_list(&block_list_req("box", "young", &[b"1"]), &txn()).unwrap();
        s.put_block_list(&block_list_req("box", "done", &[b"1", b"3"]), &txn()).unwrap();
        assert_eq!(get(&s, "box", "done").unwrap().1, b"onethree");
    }

    #[test]
    fn a_crash_in_delete_container_leaves_nothing_that_reappears() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let armed = Arc::new(AtomicBool::new(true));
        let hook_armed = armed.clone();
        let hook: super::super::FaultHook = Arc::new(move |p| {
            if p == FaultPoint::ContainerTrashed && hook_armed.swap(false, Ordering::SeqCst) {
                Err(io::Error::other("crash"))
            } else {
                Ok(())
            }
        });
        let check = |s: &FsStore| {
            assert!(list_all(s, "box", "", "", 100).is_empty());
            for b in ["blob", "staged-only"] {
                assert!(matches!(s.get_block_list(&bref("box", b), BlockListType::All), Err(StoreError::BlobNotFound)));
                assert_err(s.put_block_list(&block_list_req("box", b, &[b"1"]), &txn()));
                assert!(matches!(s.delete_blob(&bref("box", b), &Conditions::none()), Err(StoreError::BlobNotFound)));
            }
        };
        {
            let s = open(root, HOUR, Some(hook));
            new_container(&s, "box");
            put(&s, "box", "blob", b"x");
            stage(&s, "box", "blob", b"1", b"staged");
            stage(&s, "box", "staged-only", b"1", b"staged");
            assert!(matches!(s.delete_container(&cname("box")), Err(StoreError::Io(_))));
            assert!(!armed.load(Ordering::SeqCst));
            assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 1);
            // A namesake in the same run sees nothing of the old one.
            new_container(&s, "box");
            check(&s);
            let _ = sweep_pass(&s.containers, HOUR, &mut Cursor::default(), PASS_BUDGET);
            check(&s);
        }
        let s = open(root, HOUR, None);
        check(&s);
        assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 0);
        s.delete_container(&cname("box")).unwrap();
        drop(s);
        let s = open(root, HOUR, None);
        assert!(matches!(s.container_properties(&cname("box")), Err(StoreError::ContainerNotFound)));
        assert_eq!(fs::read_dir(root.join("containers")).unwrap().count(), 0);
    }
}
