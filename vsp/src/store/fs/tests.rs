//! Filesystem-store tests: the conformance suite, plus what only a disk has:
//! name safety, persistence, crash consistency.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vmblob_protocol::ops::{BlockListType, Conditions, Metadata};

use super::{FaultPoint, FsOptions, FsStore};
use crate::store::conformance::{
    self, block_list_req, bref, get, list_all, meta, new_container, pattern, put, put_req, stage, txn,
};
use crate::store::{BlobStore, StoreError, crc64};

fn fresh() -> (FsStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (FsStore::open(dir.path()).unwrap(), dir)
}

fn limited(max: u64) -> (FsStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (FsStore::open_with(dir.path(), FsOptions { max_blob_size: max, ..FsOptions::default() }).unwrap(), dir)
}

conformance::conformance_tests!(fresh, limited);

/// Every path under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn guest_names_never_become_paths() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("store");
    let s = FsStore::open(&root).unwrap();
    new_container(&s, "box");
    let deep = vec!["seg"; 254].join("/");
    let names = ["..a/..b/passwd", "a/...../etc", "ünïcode/名前/😀", &"n".repeat(1024), &deep, "x/ y /z", "%2e%2e/x"];
    for (i, n) in names.iter().enumerate() {
        put(&s, "box", n, &[i as u8]);
        stage(&s, "box", n, b"../blk", b"block");
    }
    // Nothing appeared next to the root.
    assert_eq!(fs::read_dir(outer.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>(), ["store"]);
    let paths = walk(&root);
    let blobs: Vec<_> =
        paths.iter().filter(|p| p.components().count() == 5 && p.starts_with("containers/box/blobs")).collect();
    assert_eq!(blobs.len(), names.len());
    for p in &paths {
        let leaf = p.file_name().unwrap().to_str().unwrap();
        let hexy = leaf.chars().all(|c| c.is_ascii_hexdigit());
        let known =
            ["containers", "tmp", "trash", "box", "blobs", "staging", "extents", "container.json", "vmblob.lock"]
                .contains(&leaf);
        assert!(hexy || known, "unexpected path component {p:?}");
        assert!(p.as_os_str().len() < 200, "{p:?}");
    }
    for (i, n) in names.iter().enumerate() {
        assert_eq!(get(&s, "box", n).unwrap().1, [i as u8]);
    }
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t_container = txn();
    let t_blob = txn();
    let (props_before, list_before, blocks_before, cont_before);
    {
        let s = FsStore::open(dir.path()).unwrap();
        s.create_container(&conformance::cname("box"), &meta(&[("c", "1")]), &t_container).unwrap();
        new_container(&s, "other");
        let mut req = put_req("box", "dir/a");
        req.metadata = meta(&[("k", "v")]);
        req.content_md5 = Some({
            use md5::Digest as _;
            md5::Md5::digest(b"hello").into()
        });
        s.put_blob(&req, &mut conformance::VecSource::new(b"hello"), &t_blob).unwrap();
        for i in 0..30 {
            put(&s, "box", &format!("f{i:02}"), &pattern(i * 1000, i as u8));
        }
        stage(&s, "box", "blocks", b"1", b"one");
        stage(&s, "box", "blocks", b"2", b"two");
        s.put_block_list(&block_list_req("box", "blocks", &[b"2", b"1"]), &txn()).unwrap();
        stage(&s, "box", "blocks", b"3", b"three");
        stage(&s, "box", "only-staged", b"9", b"nine");
        props_before = s.blob_properties(&bref("box", "dir/a"), &Conditions::none()).unwrap();
        list_before = list_all(&s, "box", "", "", 7);
        blocks_before = s.get_block_list(&bref("box", "blocks"), BlockListType::All).unwrap();
        cont_before = s.container_properties(&conformance::cname("box")).unwrap();
    }
    let s = FsStore::open(dir.path()).unwrap();
    assert_eq!(s.container_properties(&conformance::cname("box")).unwrap(), cont_before);
    assert_eq!(list_all(&s, "box", "", "", 7), list_before);
    assert_eq!(s.blob_properties(&bref("box", "dir/a"), &Conditions::none()).unwrap(), props_before);
    assert_eq!(s.get_block_list(&bref("box", "blocks"), BlockListType::All).unwrap(), blocks_before);
    assert_eq!(s.get_block_list(&bref("box", "only-staged"), BlockListType::Uncommitted).unwrap().len(), 1);
    assert_eq!(get(&s, "box", "blocks").unwrap().1, b"twoone");
    assert_eq!(get(&s, "box", "f29").unwrap().1, pattern(29_000, 29));
    // Txns persist: replays still answer unchanged after a restart.
    let replay = s.put_blob(&put_req("box", "dir/a"), &mut conformance::VecSource::new(b"x"), &t_blob).unwrap();
    assert_eq!(replay.etag, props_before.etag);
    assert_eq!(
        s.create_container(&conformance::cname("box"), &Metadata::default(), &t_container).unwrap(),
        cont_before
    );
    // New ETags stay above the ones on disk.
    let w = put(&s, "box", "f00", b"new");
    let tick = |e: &str| u64::from_str_radix(e.trim_matches('"').trim_start_matches("0x"), 16).unwrap();
    assert!(tick(&w.etag) > tick(&props_before.etag));
    s.put_block_list(&block_list_req("box", "blocks", &[b"1", b"3"]), &txn()).unwrap();
    assert_eq!(get(&s, "box", "blocks").unwrap().1, b"onethree");
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

/// What a write does in the crash test.
#[derive(Debug, Clone, Copy)]
enum Op {
    Blob,
    BlockList,
    Block,
}

#[test]
fn crash_at_every_step_leaves_old_or_new() {
    let new_data = pattern(600_000, 42);
    for op in [Op::Blob, Op::BlockList, Op::Block] {
        // A block list writes no data: it links its blocks' files first.
        let first = if matches!(op, Op::BlockList) { FaultPoint::ExtentsLinked } else { FaultPoint::DataPartlyWritten };
        for at in [first, FaultPoint::TempWritten, FaultPoint::TempSynced, FaultPoint::Renamed, FaultPoint::DirSynced] {
            let dir = tempfile::tempdir().unwrap();
            let armed = Arc::new(AtomicBool::new(false));
            let old = {
                let s = FsStore::with_faults(dir.path(), crash_at(at, armed.clone())).unwrap();
                new_container(&s, "box");
                let old = put(&s, "box", "b", b"old contents");
                if matches!(op, Op::BlockList) {
                    // PutBlockList's data is the staged blocks'.
                    stage(&s, "box", "b", b"1", &new_data[..300_000]);
                    stage(&s, "box", "b", b"2", &new_data[300_000..]);
                }
                armed.store(true, Ordering::SeqCst);
                let r = match op {
                    Op::Blob => s
                        .put_blob(&put_req("box", "b"), &mut conformance::VecSource::new(&new_data), &txn())
                        .map(|_| ()),
                    Op::BlockList => s.put_block_list(&block_list_req("box", "b", &[b"1", b"2"]), &txn()).map(|_| ()),
                    Op::Block => s
                        .put_block(
                            &bref("box", "b"),
                            &conformance::bid(b"new"),
                            &mut conformance::VecSource::new(&new_data),
                            None,
                        )
                        .map(|_| ()),
                };
                assert!(matches!(r, Err(StoreError::Io(_))), "{op:?} at {at:?}: {r:?}");
                assert!(!armed.load(Ordering::SeqCst), "{op:?} never reached {at:?}");
                // A crash before the rename leaves its temp file behind, as is.
                let before_rename =
                    matches!(at, FaultPoint::DataPartlyWritten | FaultPoint::TempWritten | FaultPoint::TempSynced);
                assert_eq!(entries(&dir.path().join("tmp")), usize::from(before_rename), "{op:?} at {at:?}");
                old
            };
            let s = FsStore::open(dir.path()).unwrap();
            assert_eq!(entries(&dir.path().join("tmp")), 0, "reopen clears tmp/");
            let renamed = matches!(at, FaultPoint::Renamed | FaultPoint::DirSynced);
            let (p, got) = get(&s, "box", "b").unwrap();
            assert_eq!(p.content_crc64, crc64(&got), "{op:?} at {at:?}: torn blob");
            let staged: BTreeSet<Vec<u8>> = s
                .get_block_list(&bref("box", "b"), BlockListType::Uncommitted)
                .unwrap()
                .into_iter()
                .map(|b| b.id)
                .collect();
            match op {
                Op::Blob | Op::BlockList if renamed => {
                    assert!(got == new_data, "{op:?} at {at:?}: new blob incomplete");
                    assert_ne!(p.etag, old.etag);
                }
                _ => {
                    assert_eq!(
                        (got.as_slice(), p.etag.as_str()),
                        (&b"old contents"[..], old.etag.as_str()),
                        "{op:?} at {at:?}"
                    );
                }
            }
            if let Op::Block = op {
                assert_eq!(staged.contains(&b"new"[..]), renamed, "{op:?} at {at:?}");
            }
            // The store works normally afterwards.
            put(&s, "box", "b", b"after");
            assert_eq!(get(&s, "box", "b").unwrap().1, b"after");
        }
    }
}

/// A SetBlobMetadata cut short at any step leaves the old properties or the
/// new ones after a reopen, with the bytes and the staged blocks whole, for a
/// whole-written blob (its data copied) and a block-list one (same extents).
#[test]
fn crash_while_setting_properties_leaves_old_or_new() {
    use vmblob_protocol::ops::{BlobUpdate, SetBlobProperties};
    let data = pattern(300_000, 9);
    for block_list in [false, true] {
        for at in [FaultPoint::TempWritten, FaultPoint::TempSynced, FaultPoint::Renamed, FaultPoint::DirSynced] {
            let dir = tempfile::tempdir().unwrap();
            let armed = Arc::new(AtomicBool::new(false));
            let old = {
                let s = FsStore::with_faults(dir.path(), crash_at(at, armed.clone())).unwrap();
                new_container(&s, "box");
                let old = if block_list {
                    stage(&s, "box", "b", b"1", &data[..100_000]);
                    stage(&s, "box", "b", b"2", &data[100_000..]);
                    s.put_block_list(&block_list_req("box", "b", &[b"1", b"2"]), &txn()).unwrap()
                } else {
                    s.put_blob(&put_req("box", "b"), &mut conformance::VecSource::new(&data), &txn()).unwrap()
                };
                stage(&s, "box", "b", b"3", b"staged");
                armed.store(true, Ordering::SeqCst);
                let req = SetBlobProperties {
                    target: bref("box", "b"),
                    update: BlobUpdate::Metadata(meta(&[("k", "new")])),
                    conditions: Conditions::none(),
                };
                let r = s.set_blob_properties(&req, &txn());
                assert!(matches!(r, Err(StoreError::Io(_))), "at {at:?}: {r:?}");
                old
            };
            let s = FsStore::open(dir.path()).unwrap();
            let (p, got) = get(&s, "box", "b").unwrap();
            assert!(got == data, "block list {block_list} at {at:?}: the bytes changed");
            let renamed = matches!(at, FaultPoint::Renamed | FaultPoint::DirSynced);
            if renamed {
                assert_eq!(p.metadata, meta(&[("k", "new")]), "at {at:?}");
                assert_ne!(p.etag, old.etag);
            } else {
                assert_eq!((p.metadata.0.len(), p.etag.as_str()), (0, old.etag.as_str()), "at {at:?}");
            }
            let staged = s.get_block_list(&bref("box", "b"), BlockListType::Uncommitted).unwrap();
            assert_eq!(staged.len(), 1, "the staged block stays");
        }
    }
}

#[test]
fn crash_during_container_create_or_delete() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    {
        let s = FsStore::with_faults(dir.path(), crash_at(FaultPoint::ContainerPrepared, armed.clone())).unwrap();
        assert!(matches!(
            s.create_container(&conformance::cname("box"), &Metadata::default(), &txn()),
            Err(StoreError::Io(_))
        ));
        assert_eq!(entries(&dir.path().join("tmp")), 1);
    }
    {
        let s = FsStore::open(dir.path()).unwrap();
        assert!(matches!(s.container_properties(&conformance::cname("box")), Err(StoreError::ContainerNotFound)));
        assert_eq!(entries(&dir.path().join("tmp")), 0);
        new_container(&s, "box");
        put(&s, "box", "b", b"x");
    }
    armed.store(true, Ordering::SeqCst);
    {
        let s = FsStore::with_faults(dir.path(), crash_at(FaultPoint::ContainerTrashed, armed.clone())).unwrap();
        assert!(matches!(s.delete_container(&conformance::cname("box")), Err(StoreError::Io(_))));
        assert_eq!(entries(&dir.path().join("trash")), 1);
    }
    let s = FsStore::open(dir.path()).unwrap();
    assert!(matches!(s.container_properties(&conformance::cname("box")), Err(StoreError::ContainerNotFound)));
    assert_eq!(entries(&dir.path().join("trash")), 0);
    assert_eq!(entries(&dir.path().join("containers")), 0);
}

#[test]
fn unreadable_files_are_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FsStore::open(dir.path()).unwrap();
        new_container(&s, "box");
        put(&s, "box", "good", b"fine");
        put(&s, "box", "cut", &pattern(10_000, 1));
    }
    let blobs = dir.path().join("containers/box/blobs");
    // Garbage where a blob could be, a truncated blob, a copy under the wrong name,
    // and a container directory without metadata.
    fs::write(blobs.join("00/00junk"), b"not a blob").unwrap();
    let cut = super::layout::blob_path(&dir.path().join("containers/box"), "cut");
    let len = fs::metadata(&cut).unwrap().len();
    fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(len - 100).unwrap();
    let good = super::layout::blob_path(&dir.path().join("containers/box"), "good");
    fs::copy(&good, blobs.join("ff/ffcopy")).unwrap();
    fs::create_dir(dir.path().join("containers/broken")).unwrap();
    let s = FsStore::open(dir.path()).unwrap();
    assert_eq!(list_all(&s, "box", "", "", 10).len(), 1);
    assert_eq!(get(&s, "box", "good").unwrap().1, b"fine");
    assert!(get(&s, "box", "cut").is_err());
    assert_eq!(
        s.list_containers(&vmblob_protocol::ops::ListContainers {
            prefix: String::new(),
            marker: String::new(),
            max_results: 0,
            include_metadata: false
        })
        .unwrap()
        .items
        .len(),
        1
    );
}

#[test]
fn leftovers_are_cleared_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(FsStore::open(dir.path()).unwrap());
    fs::write(dir.path().join("tmp/blob-1-2"), b"half").unwrap();
    fs::create_dir_all(dir.path().join("trash/container-1-3/blobs")).unwrap();
    drop(FsStore::open(dir.path()).unwrap());
    assert_eq!(entries(&dir.path().join("tmp")) + entries(&dir.path().join("trash")), 0);
}

#[test]
fn writes_racing_a_container_delete_do_not_resurface() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open(dir.path()).unwrap();
    for round in 0..5 {
        new_container(&s, "box");
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for i in 0..20 {
                    let r =
                        s.put_blob(&put_req("box", &format!("b{i}")), &mut conformance::VecSource::new(b"x"), &txn());
                    assert!(matches!(r, Ok(_) | Err(StoreError::ContainerNotFound)), "round {round}: {r:?}");
                }
            });
            s.delete_container(&conformance::cname("box")).unwrap();
        });
        new_container(&s, "box");
        assert!(list_all(&s, "box", "", "", 100).is_empty(), "round {round}");
        s.delete_container(&conformance::cname("box")).unwrap();
    }
    drop(s);
    let s = FsStore::open(dir.path()).unwrap();
    assert!(matches!(s.container_properties(&conformance::cname("box")), Err(StoreError::ContainerNotFound)));
}

/// Not a pass/fail test, a measurement:
/// `cargo test -p vmblob-vsp --lib -- --ignored --nocapture fs::tests::throughput`
#[test]
#[ignore]
fn throughput() {
    use std::time::Instant;
    let (s, _dir) = fresh();
    new_container(&s, "box");
    let big = pattern(256 << 20, 1);
    let mib = big.len() as f64 / (1 << 20) as f64;
    let t = Instant::now();
    put(&s, "box", "big", &big);
    println!("put_blob 256 MiB: {:.0} MiB/s", mib / t.elapsed().as_secs_f64());
    let t = Instant::now();
    let (_, got) = get(&s, "box", "big").unwrap();
    println!("get_blob 256 MiB: {:.0} MiB/s", mib / t.elapsed().as_secs_f64());
    assert_eq!(got.len(), big.len());
    for (i, chunk) in big.chunks(4 << 20).enumerate() {
        stage(&s, "box", "blocks", &(i as u32).to_be_bytes(), chunk);
    }
    let ids: Vec<[u8; 4]> = (0..64u32).map(u32::to_be_bytes).collect();
    let refs: Vec<&[u8]> = ids.iter().map(|i| &i[..]).collect();
    let t = Instant::now();
    s.put_block_list(&block_list_req("box", "blocks", &refs), &txn()).unwrap();
    println!("put_block_list 64 x 4 MiB: {:.0} MiB/s", mib / t.elapsed().as_secs_f64());
    let n = 2000;
    let small = pattern(4096, 2);
    let t = Instant::now();
    for i in 0..n {
        put(&s, "box", &format!("small/{i:05}"), &small);
    }
    println!("put_blob 4 KiB: {:.0} ops/s", f64::from(n) / t.elapsed().as_secs_f64());
    let t = Instant::now();
    for i in 0..n {
        stage(&s, "box", "many", &(i as u32).to_be_bytes(), b"x");
    }
    println!("put_block 1 B: {:.0} ops/s", f64::from(n) / t.elapsed().as_secs_f64());
    let t = Instant::now();
    for i in 0..n {
        get(&s, "box", &format!("small/{i:05}")).unwrap();
    }
    println!("get_blob 4 KiB: {:.0} ops/s", f64::from(n) / t.elapsed().as_secs_f64());
    drop(s);
    let s = FsStore::open(_dir.path()).unwrap();
    let t = Instant::now();
    assert_eq!(list_all(&s, "box", "small/", "", 5000).len(), n as usize);
    println!("first listing after reopen ({} blobs scanned): {:?}", n + 2, t.elapsed());
}
