//! Extent files of block-list blobs: sharing, garbage, crashes around the
//! commit, old (v1) blob files, and readers racing a replace.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vmblob_protocol::ops::{BlockListType, Conditions};

use super::layout::{self, BLOB_MAGIC, BlobHeader};
use super::{FaultPoint, FsStore, extents};
use crate::store::conformance::{VecSink, block_list_req, bref, get, get_req, new_container, pattern, put, stage, txn};
use crate::store::semantics::CommittedBlock;
use crate::store::{BlobStore, DataSink, StoreError, crc64};

fn container_dir(root: &Path) -> PathBuf {
    root.join("containers/box")
}

/// The extent files on disk for `blob`, by name.
fn on_disk(root: &Path, blob: &str) -> BTreeSet<String> {
    match fs::read_dir(layout::extents_dir(&container_dir(root), blob)) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("{e}"),
    }
}

/// The extent files the blob's file names (none for a v1 blob or none at all).
fn named(root: &Path, blob: &str) -> BTreeSet<String> {
    let Ok(file) = File::open(layout::blob_path(&container_dir(root), blob)) else { return BTreeSet::new() };
    let raw = layout::read_blob_header(&file).unwrap();
    if !raw.extents {
        return BTreeSet::new();
    }
    extents::read_list(&raw, &file).unwrap().into_iter().map(|e| e.file).collect()
}

fn ino(root: &Path, blob: &str, name: &str) -> u64 {
    fs::metadata(layout::extents_dir(&container_dir(root), blob).join(name)).unwrap().ino()
}

#[test]
fn reused_blocks_keep_their_extents_and_dropped_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = FsStore::open(root).unwrap();
    new_container(&s, "box");
    let (a, b, c, d) = (pattern(3000, 1), pattern(4000, 2), pattern(5000, 3), pattern(600, 4));
    stage(&s, "box", "x", b"a", &a);
    stage(&s, "box", "x", b"b", &b);
    stage(&s, "box", "x", b"c", &c);
    // A repeated id is linked once and named twice.
    s.put_block_list(&block_list_req("box", "x", &[b"a", b"b", b"c", b"a"]), &txn()).unwrap();
    assert_eq!(get(&s, "box", "x").unwrap().1, [&a[..], &b, &c, &a].concat());
    let first = on_disk(root, "x");
    assert_eq!(first.len(), 3);
    assert_eq!(first, named(root, "x"));
    let inodes: BTreeSet<u64> = first.iter().map(|n| ino(root, "x", n)).collect();

    // c and a again (committed), plus a new staged d; b is dropped.
    stage(&s, "box", "x", b"d", &d);
    let w = s.put_block_list(&block_list_req("box", "x", &[b"c", b"d", b"a"]), &txn()).unwrap();
    let want = [&c[..], &d, &a].concat();
    let (p, got) = get(&s, "box", "x").unwrap();
    assert_eq!(got, want);
    assert_eq!((w.content_crc64, p.content_crc64), (crc64(&want), crc64(&want)));
    let second = on_disk(root, "x");
    assert_eq!(second, named(root, "x"), "only what the blob names is left");
    assert_eq!(second.len(), 3);
    assert_eq!(first.intersection(&second).count(), 2, "c and a are shared, not linked again");
    let kept: Vec<u64> = second.iter().filter(|n| first.contains(*n)).map(|n| ino(root, "x", n)).collect();
    assert!(kept.iter().all(|i| inodes.contains(i)));
    let blocks = s.get_block_list(&bref("box", "x"), BlockListType::Committed).unwrap();
    let ids: Vec<&[u8]> = blocks.iter().map(|b| b.id.as_slice()).collect();
    assert_eq!(ids, [&b"c"[..], b"d", b"a"]);

    // A whole-blob write replaces it: its extents go.
    put(&s, "box", "x", b"plain");
    assert!(on_disk(root, "x").is_empty());
    assert!(!layout::extents_dir(&container_dir(root), "x").exists());
    // And a delete.
    stage(&s, "box", "x", b"e", b"eee");
    s.put_block_list(&block_list_req("box", "x", &[b"e"]), &txn()).unwrap();
    assert_eq!(on_disk(root, "x").len(), 1);
    s.delete_blob(&bref("box", "x"), &Conditions::none()).unwrap();
    assert!(on_disk(root, "x").is_empty());
    // Nothing of the blob is left anywhere but the empty fan-out directories.
    let left: Vec<_> = fs::read_dir(container_dir(root).join("extents")).unwrap().collect();
    assert!(left.is_empty());
}

#[test]
fn an_empty_block_reused_from_the_committed_list_keeps_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open(dir.path()).unwrap();
    new_container(&s, "box");
    // "e" and "b" start at the same offset: the id must pick the extent.
    stage(&s, "box", "z", b"e", b"");
    stage(&s, "box", "z", b"b", b"bytes");
    s.put_block_list(&block_list_req("box", "z", &[b"e", b"b"]), &txn()).unwrap();
    s.put_block_list(&block_list_req("box", "z", &[b"b", b"e", b"b"]), &txn()).unwrap();
    assert_eq!(get(&s, "box", "z").unwrap().1, b"bytesbytes");
    let blocks = s.get_block_list(&bref("box", "z"), BlockListType::Committed).unwrap();
    let got: Vec<(&[u8], u64)> = blocks.iter().map(|b| (b.id.as_slice(), b.size)).collect();
    assert_eq!(got, [(&b"b"[..], 5), (b"e", 0), (b"b", 5)]);
}

/// A hook that fails once at `at` while `armed`, like a crash there.
fn crash_at(at: FaultPoint, armed: Arc<AtomicBool>) -> super::FaultHook {
    Arc::new(move |p| {
        if p == at && armed.swap(false, Ordering::SeqCst) {
            Err(io::Error::other(format!("crash at {p:?}")))
        } else {
            Ok(())
        }
    })
}

#[test]
fn a_crash_around_the_commit_leaves_old_or_new_and_only_named_extents() {
    let (a, b, c) = (pattern(70_000, 1), pattern(80_000, 2), pattern(90_000, 3));
    let old_data = [&a[..], &b].concat();
    let new_data = [&b[..], &c].concat();
    for at in [
        FaultPoint::ExtentsLinked,
        FaultPoint::TempWritten,
        FaultPoint::TempSynced,
        FaultPoint::Renamed,
        FaultPoint::DirSynced,
    ] {
        // The old blob a block list (extents of its own), then a v1 one.
        for old_is_list in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let armed = Arc::new(AtomicBool::new(false));
            {
                let s = FsStore::with_faults(root, crash_at(at, armed.clone())).unwrap();
                new_container(&s, "box");
                if old_is_list {
                    stage(&s, "box", "b", b"a", &a);
                    stage(&s, "box", "b", b"b", &b);
                    s.put_block_list(&block_list_req("box", "b", &[b"a", b"b"]), &txn()).unwrap();
                } else {
                    put(&s, "box", "b", &old_data);
                }
                stage(&s, "box", "b", b"c", &c);
                stage(&s, "box", "b", b"b", &b);
                armed.store(true, Ordering::SeqCst);
                let r = s.put_block_list(&block_list_req("box", "b", &[b"b", b"c"]), &txn());
                assert!(matches!(r, Err(StoreError::Io(_))), "{at:?}: {r:?}");
                assert!(!armed.load(Ordering::SeqCst), "never reached {at:?}");
                // The crash left links behind (and, after the rename, the old ones).
                let renamed = matches!(at, FaultPoint::Renamed | FaultPoint::DirSynced);
                if old_is_list || !renamed {
                    assert!(on_disk(root, "b").len() > named(root, "b").len(), "{at:?}: nothing to collect");
                }
            }
            let s = FsStore::open(root).unwrap();
            let renamed = matches!(at, FaultPoint::Renamed | FaultPoint::DirSynced);
            let (p, got) = get(&s, "box", "b").unwrap();
            assert!(&got == if renamed { &new_data } else { &old_data }, "{at:?} list={old_is_list}");
            assert_eq!(p.content_crc64, crc64(&got));
            assert_eq!(on_disk(root, "b"), named(root, "b"), "{at:?} list={old_is_list}: unnamed extents left");
            // Another reopen finds nothing more to do, and the store works on.
            drop(s);
            let s = FsStore::open(root).unwrap();
            assert_eq!(on_disk(root, "b"), named(root, "b"));
            stage(&s, "box", "b", b"z", b"zz");
            s.put_block_list(&block_list_req("box", "b", &[b"z"]), &txn()).unwrap();
            assert_eq!(get(&s, "box", "b").unwrap().1, b"zz");
            assert_eq!(on_disk(root, "b").len(), 1);
        }
    }
}

#[test]
fn extents_no_blob_names_go_at_open_and_an_unreadable_blob_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    {
        let s = FsStore::open(root).unwrap();
        new_container(&s, "box");
        stage(&s, "box", "kept", b"1", b"one");
        s.put_block_list(&block_list_req("box", "kept", &[b"1"]), &txn()).unwrap();
        stage(&s, "box", "bad", b"1", b"one");
        s.put_block_list(&block_list_req("box", "bad", &[b"1"]), &txn()).unwrap();
    }
    let ext = container_dir(root).join("extents");
    // Debris: a stray file, a directory that is no hash, one for a blob that
    // does not exist, an unnamed file next to a live blob's extent.
    fs::write(ext.join("stray"), b"x").unwrap();
    fs::create_dir(ext.join("not-a-hash")).unwrap();
    fs::write(ext.join("not-a-hash/f"), b"x").unwrap();
    let ghost = layout::extents_dir(&container_dir(root), "ghost");
    fs::create_dir(&ghost).unwrap();
    fs::write(ghost.join("00ff"), b"x").unwrap();
    fs::write(layout::extents_dir(&container_dir(root), "kept").join("abcd"), b"x").unwrap();
    // A blob file that no longer parses keeps the extents it may name.
    let bad = layout::blob_path(&container_dir(root), "bad");
    fs::OpenOptions::new().write(true).open(&bad).unwrap().write_all_at(b"JUNK", 0).unwrap();
    let s = FsStore::open(root).unwrap();
    let mut left: Vec<String> =
        fs::read_dir(&ext).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    let mut want = vec![layout::name_hash("kept"), layout::name_hash("bad")];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(on_disk(root, "kept"), named(root, "kept"));
    assert_eq!(on_disk(root, "bad").len(), 1);
    assert_eq!(get(&s, "box", "kept").unwrap().1, b"one");
}

/// Writes a v1 block-list blob, as stores made before v2 hold them.
fn write_v1_block_list(root: &Path, name: &str, blocks: &[(&[u8], &[u8])]) {
    let dir = container_dir(root);
    let list: Vec<CommittedBlock> =
        blocks.iter().map(|(id, d)| CommittedBlock { id: id.to_vec(), size: d.len() as u64 }).collect();
    let data: Vec<u8> = blocks.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    let md = vmblob_protocol::ops::Metadata::default();
    let headers = vmblob_protocol::ops::ContentHeaders::default();
    let d = crate::store::semantics::Described { content_type: "text/plain", headers: &headers, metadata: &md };
    let room = BlobHeader::room(name, d, data.len() as u64, false).unwrap();
    let res = layout::reserve(room, &list).unwrap();
    let props = vmblob_protocol::ops::BlobProperties {
        lease: Default::default(),
        etag: "\"0x7\"".into(),
        last_modified_ms: 1,
        created_ms: 0,
        content_length: data.len() as u64,
        content_type: "text/plain".into(),
        headers: Default::default(),
        content_md5: None,
        content_crc64: crc64(&data),
        committed_blocks: list.len() as u32,
        metadata: md,
    };
    let json = layout::to_json(&BlobHeader::new(name, &props, &[7; 16])).unwrap();
    let path = layout::blob_path(&dir, name);
    let f = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    f.write_all_at(&data, res.data_start).unwrap();
    layout::write_header(&f, BLOB_MAGIC, &res, &json).unwrap();
}

/// A v1 block-list blob keeps its committed blocks through SetBlobMetadata
/// and lends them to a copy (the review found them dropped: the new file was
/// written as a whole blob).
#[test]
fn a_v1_block_list_blob_keeps_its_blocks_through_set_metadata_and_copy() {
    use vmblob_protocol::ops::{BlobUpdate, CopyBlob, SetBlobProperties};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    drop({
        let s = FsStore::open(root).unwrap();
        new_container(&s, "box");
        s
    });
    let (one, two) = (pattern(10_000, 1), pattern(20_000, 2));
    write_v1_block_list(root, "old", &[(b"1", &one), (b"2", &two)]);
    let s = FsStore::open(root).unwrap();
    let meta = crate::store::conformance::meta(&[("k", "v")]);
    let set = SetBlobProperties {
        target: bref("box", "old"),
        update: BlobUpdate::Metadata(meta.clone()),
        conditions: Conditions::none(),
    };
    s.set_blob_properties(&set, &txn()).unwrap();
    let copy = CopyBlob {
        source: bref("box", "old"),
        target: bref("box", "copy"),
        source_conditions: Conditions::none(),
        conditions: Conditions::none(),
        metadata: None,
    };
    s.copy_blob(&copy, &txn()).unwrap();
    drop(s);
    let s = FsStore::open(root).unwrap();
    for name in ["old", "copy"] {
        let (p, data) = get(&s, "box", name).unwrap();
        assert!(data == [&one[..], &two].concat(), "{name}");
        assert_eq!((p.committed_blocks, &p.metadata), (2, &meta), "{name}");
        let ids: Vec<Vec<u8>> =
            s.get_block_list(&bref("box", name), BlockListType::Committed).unwrap().into_iter().map(|b| b.id).collect();
        assert_eq!(ids, [b"1".to_vec(), b"2".to_vec()], "{name}");
    }
    s.put_block_list(&block_list_req("box", "copy", &[b"2", b"1"]), &txn()).unwrap();
    assert!(get(&s, "box", "copy").unwrap().1 == [&two[..], &one].concat());
}

#[test]
fn a_v1_block_list_blob_reads_and_lends_its_blocks_without_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    drop({
        let s = FsStore::open(root).unwrap();
        new_container(&s, "box");
        s
    });
    // A container made before v2 has no extents/ directory either.
    fs::remove_dir(container_dir(root).join("extents")).unwrap();
    let (one, two) = (pattern(10_000, 1), pattern(20_000, 2));
    write_v1_block_list(root, "old", &[(b"1", &one), (b"2", &two)]);
    let v1_ino = fs::metadata(layout::blob_path(&container_dir(root), "old")).unwrap().ino();
    let s = FsStore::open(root).unwrap();
    assert_eq!(get(&s, "box", "old").unwrap().1, [&one[..], &two].concat());
    let mut req = get_req("box", "old");
    req.range = Some(vmblob_protocol::ops::ByteRange { offset: 9_000, length: 2_000 });
    let mut sink = VecSink::new(u64::MAX);
    s.get_blob(&req, &mut sink).unwrap();
    assert!(sink.data == [&one[9_000..], &two[..1_000]].concat());
    assert_eq!(s.get_block_list(&bref("box", "old"), BlockListType::Committed).unwrap().len(), 2);

    // Reordered from its committed blocks: the old file becomes the extent.
    let w = s.put_block_list(&block_list_req("box", "old", &[b"2", b"1", b"2"]), &txn()).unwrap();
    let want = [&two[..], &one, &two].concat();
    assert_eq!(w.content_crc64, crc64(&want));
    assert!(get(&s, "box", "old").unwrap().1 == want);
    let ext = on_disk(root, "old");
    assert_eq!(ext.len(), 1, "the v1 file is linked once");
    assert_eq!(ino(root, "old", ext.first().unwrap()), v1_ino);
    drop(s);
    let s = FsStore::open(root).unwrap();
    assert!(get(&s, "box", "old").unwrap().1 == want);
}

/// A sink that, before its first fill, lets `during` run (a writer racing the read).
struct RacingSink<F: FnMut()> {
    inner: VecSink,
    during: Option<F>,
}

impl<F: FnMut()> DataSink for RacingSink<F> {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn fill_from_file(&mut self, file: &File, offset: u64, len: u64) -> Result<(), StoreError> {
        if let Some(mut f) = self.during.take() {
            f();
        }
        self.inner.fill_from_file(file, offset, len)
    }
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.write_bytes(bytes)
    }
}

#[test]
fn a_read_keeps_the_extents_it_started_with_while_a_commit_replaces_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = FsStore::open(root).unwrap();
    new_container(&s, "box");
    let (a, b, c) = (pattern(50_000, 1), pattern(60_000, 2), pattern(70_000, 3));
    stage(&s, "box", "r", b"a", &a);
    stage(&s, "box", "r", b"b", &b);
    s.put_block_list(&block_list_req("box", "r", &[b"a", b"b"]), &txn()).unwrap();
    let old = on_disk(root, "r");
    let mut sink = RacingSink {
        inner: VecSink::new(u64::MAX),
        during: Some(|| {
            // After the reader opened the old blob file, before it opened "b".
            stage(&s, "box", "r", b"c", &c);
            s.put_block_list(&block_list_req("box", "r", &[b"c"]), &txn()).unwrap();
            assert!(on_disk(root, "r").is_superset(&old), "a sweep pulled extents from under a reader");
        }),
    };
    s.get_blob(&get_req("box", "r"), &mut sink).unwrap();
    assert!(sink.inner.data == [&a[..], &b].concat(), "the reader sees the old blob whole");
    // The last reader out ran the sweep left to it.
    assert_eq!(on_disk(root, "r"), named(root, "r"));
    assert_eq!(on_disk(root, "r").len(), 1);
    assert_eq!(get(&s, "box", "r").unwrap().1, c);
}
