//! A block list commits without a second copy of its data (issue 12): what the
//! disk holds during and after a commit, a disk with room for one copy only,
//! and reads of a blob kept as extents. Only the store's public surface and
//! paths are used here, so these run against the copying store too (and fail).

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use vmblob_protocol::ops::ByteRange;

use super::{FaultPoint, FsStore};
use crate::store::conformance::{VecSink, block_list_req, get, get_req, new_container, pattern, stage, txn};
use crate::store::{BlobStore, crc64};

const MIB: usize = 1 << 20;

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p);
            } else if m.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// Bytes allocated under `dir`, each inode counted once (what the disk holds).
fn allocated(dir: &Path) -> u64 {
    let mut seen = HashSet::new();
    files(dir)
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .filter(|m| seen.insert((m.dev(), m.ino())))
        .map(|m| m.blocks() * 512)
        .sum()
}

fn inodes(files: &[PathBuf]) -> BTreeSet<u64> {
    files.iter().map(|p| fs::metadata(p).unwrap().ino()).collect()
}

/// Bytes allocated, and the extent files' (inode, link count), just after
/// the rename, while the staged names are still there.
type AtCommit = (u64, Vec<(u64, u64)>);

#[test]
fn a_block_list_commit_never_holds_a_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let seen: Arc<Mutex<Option<AtCommit>>> = Arc::default();
    let hook = {
        let (root, seen) = (root.clone(), seen.clone());
        Arc::new(move |p: FaultPoint| {
            if p == FaultPoint::DirSynced {
                let extents: Vec<(u64, u64)> = files(&root.join("containers/box/extents"))
                    .iter()
                    .map(|f| fs::metadata(f).map(|m| (m.ino(), m.nlink())))
                    .collect::<Result<_, _>>()?;
                *seen.lock().unwrap() = Some((allocated(&root), extents));
            }
            Ok(())
        })
    };
    let s = FsStore::with_faults(&root, hook).unwrap();
    new_container(&s, "box");
    let data = pattern(24 * MIB, 3);
    for (i, chunk) in data.chunks(8 * MIB).enumerate() {
        stage(&s, "box", "big", &[b'0' + i as u8], chunk);
    }
    let staged = files(&root.join("containers/box/staging"));
    assert_eq!(staged.len(), 3);
    let staged_inodes = inodes(&staged);
    let before = allocated(&root);
    assert!(before >= data.len() as u64, "staging holds the data: {before}");

    s.put_block_list(&block_list_req("box", "big", &[b"0", b"1", b"2"]), &txn()).unwrap();

    let (peak, extents) = seen.lock().unwrap().take().expect("the commit reached DirSynced");
    // Headers and directories may add a little, a copy would add 24 MiB.
    assert!(peak < before + MIB as u64, "the commit held {peak} bytes with {before} staged: a second copy");
    let linked: BTreeSet<u64> = extents.iter().map(|&(ino, _)| ino).collect();
    assert_eq!(linked, staged_inodes, "the committed extents are the staged files themselves");
    assert!(extents.iter().all(|&(_, nlink)| nlink == 2), "staged and committed name one inode: {extents:?}");

    // Afterwards: the staged names are gone, the data is on disk once.
    assert!(files(&root.join("containers/box/staging")).is_empty());
    let after = allocated(&root);
    assert!(after >= data.len() as u64 && after < (data.len() + MIB) as u64, "{after}");
    let blob = files(&root.join("containers/box/blobs"));
    assert_eq!(blob.len(), 1);
    assert!(fs::metadata(&blob[0]).unwrap().len() < 64 * 1024, "the blob file names its blocks, not holds them");
    let (p, got) = get(&s, "box", "big").unwrap();
    assert!(got == data);
    assert_eq!(p.content_crc64, crc64(&data), "the stored CRC is the data's");
}

/// A tmpfs mounted for the test; unmounted when dropped, whatever happened.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` (and a loud line) when the test can't mount one here.
    fn mount(size: &str) -> Option<Tmpfs> {
        let uid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
        if uid != 0 {
            eprintln!("**** SKIPPED (needs root to mount tmpfs) ****");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir)),
            Ok(o) => {
                eprintln!("**** SKIPPED (mount -t tmpfs failed: {}) ****", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("**** SKIPPED (no mount command: {e}) ****");
                None
            }
        }
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg(self.0.path()).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("umount {}: {other:?}", self.0.path().display()),
        }
    }
}

#[test]
fn a_block_list_commits_on_a_disk_with_room_for_one_copy() {
    let Some(disk) = Tmpfs::mount("40m") else { return };
    let data = pattern(24 * MIB, 5);
    {
        let s = FsStore::open(&disk.path().join("store")).unwrap();
        new_container(&s, "box");
        for (i, chunk) in data.chunks(8 * MIB).enumerate() {
            stage(&s, "box", "big", &[b'0' + i as u8], chunk);
        }
        let w = s.put_block_list(&block_list_req("box", "big", &[b"0", b"1", b"2"]), &txn());
        let w = w.expect("24 MiB commit with 40 MiB of disk");
        assert_eq!(w.content_crc64, crc64(&data));
        assert!(get(&s, "box", "big").unwrap().1 == data);
    }
    // The store is closed before the disk goes (drop order).
}

#[test]
fn ranged_reads_cross_block_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open(dir.path()).unwrap();
    new_container(&s, "box");
    let sizes = [5000usize, 7000, 9000];
    let data = pattern(sizes.iter().sum(), 9);
    let mut at = 0;
    for (i, n) in sizes.iter().enumerate() {
        stage(&s, "box", "b", &[b'0' + i as u8], &data[at..at + n]);
        at += n;
    }
    s.put_block_list(&block_list_req("box", "b", &[b"0", b"1", b"2"]), &txn()).unwrap();
    // Kept as three extents, not as one file of data.
    assert_eq!(files(&dir.path().join("containers/box/extents")).len(), 3);
    let len = data.len() as u64;
    let cases = [
        (1234, 5000 + 7000 + 4500 - 1234), // in block 1 to the middle of block 3
        (5000, 7000),                      // exactly block 2
        (4999, 2),                         // the last byte of one block, the first of the next
        (6000, 100),                       // inside one block
        (20_000, 10_000),                  // the tail, past the end
        (0, len),
        (len, 5), // at the end: nothing
        (3, 0),
    ];
    for (offset, length) in cases {
        let mut req = get_req("box", "b");
        req.range = Some(ByteRange { offset, length });
        let mut sink = VecSink::new(u64::MAX);
        let (_, got_off, got_len) = s.get_blob(&req, &mut sink).unwrap();
        let end = (offset + length).min(len);
        assert_eq!((got_off, got_len), (offset, end - offset), "range {offset}+{length}");
        assert!(sink.data == data[offset as usize..end as usize], "range {offset}+{length}");
    }
    // A buffer smaller than the range cuts it, across a boundary too.
    let mut req = get_req("box", "b");
    req.range = Some(ByteRange { offset: 4000, length: 10_000 });
    let mut sink = VecSink::new(3000);
    assert_eq!(s.get_blob(&req, &mut sink).unwrap().2, 3000);
    assert!(sink.data == data[4000..7000]);
}

#[test]
fn a_commit_the_disk_refuses_unlinks_what_it_linked_and_keeps_the_blocks() {
    use std::io::Write as _;
    let Some(disk) = Tmpfs::mount("16m") else { return };
    let root = disk.path().join("store");
    let s = FsStore::open(&root).unwrap();
    new_container(&s, "box");
    let data = pattern(4 * MIB, 6);
    stage(&s, "box", "b", b"0", &data[..2 * MIB]);
    stage(&s, "box", "b", b"1", &data[2 * MIB..]);
    // Fill the disk: not even the blob file's header page fits now.
    let mut filler = fs::File::create(disk.path().join("filler")).unwrap();
    for chunk in [MIB, 4096, 1] {
        while filler.write_all(&vec![7u8; chunk]).is_ok() {}
    }
    let r = s.put_block_list(&block_list_req("box", "b", &[b"0", b"1"]), &txn());
    assert!(matches!(r, Err(crate::store::StoreError::Io(_))), "{r:?}");
    assert!(files(&root.join("containers/box/extents")).is_empty(), "a failed commit left links");
    assert!(files(&root.join("tmp")).is_empty());
    assert_eq!(files(&root.join("containers/box/staging")).len(), 2, "the staged blocks stay committable");
    drop(filler);
    fs::remove_file(disk.path().join("filler")).unwrap();
    s.put_block_list(&block_list_req("box", "b", &[b"0", b"1"]), &txn()).unwrap();
    assert!(get(&s, "box", "b").unwrap().1 == data);
}
