//! Extent files: where the data of a v2 (block-list) blob lives; see the top
//! of `layout.rs` for the format and why.
//!
//! An extent file is a staged block's own file (or, when a list reuses blocks
//! of a v1 blob, that blob's file) hard-linked into `extents/<h>/<random
//! hex>`; the v2 blob names a range of one per block. Extent files never
//! change. A linked v1 file stays whole while any of its blocks is named:
//! space its dropped blocks take comes back when the last one goes. Only the blob file at `h` names the extents under `extents/<h>/`,
//! so garbage is decided per blob: whatever the current blob file does not
//! name ([`sweep`]). It goes under the blob's name lock after a commit
//! replaced the blob (PutBlockList, PutBlob) or a delete removed it, and at
//! open for whatever a crash left (`gc.rs`); a container delete takes its
//! directory, extents and all.
//!
//! A reader opens the blob file, then each extent by name as its range gets
//! there. A sweep between the two would pull an extent from under it, so a
//! reader pins the name first ([`Pins`]); a sweep that finds the name pinned
//! is left to the last reader to unpin. A pin taken after the check is
//! harmless: that reader opens the blob file after the commit's rename, and
//! the sweep keeps every extent that file names.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::access::Modes;
use super::index::Container;
use super::layout::{self, MAX_EXTENT_NAME, RawHeader, invalid, push_block, take_block, take_u64};
use crate::store::semantics::{Checksums, hex, lock, read};
use crate::store::{DataSink, StoreError};

/// One committed block of a v2 blob: `size` bytes at `offset` of extent `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub id: Vec<u8>,
    pub size: u64,
    pub crc64: u64,
    pub file: String,
    pub offset: u64,
}

/// Encodes a v2 block list (see `layout.rs`).
pub fn encode(list: &[Extent]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(list.len() * 64);
    for e in list {
        push_block(&mut out, &e.id, e.size)?;
        out.extend_from_slice(&e.crc64.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        let n = u8::try_from(e.file.len()).map_err(|_| invalid("extent name too long"))?;
        out.push(n);
        out.extend_from_slice(e.file.as_bytes());
    }
    Ok(out)
}

/// Reads a v2 blob's list; names that could leave the directory are corruption.
pub fn read_list(raw: &RawHeader, file: &File) -> io::Result<Vec<Extent>> {
    let bytes = raw.list_bytes(file)?;
    let mut list = Vec::with_capacity(raw.block_count() as usize);
    let mut rest = bytes.as_slice();
    for _ in 0..raw.block_count() {
        let (id, size, tail) = take_block(rest)?;
        let (crc64, tail) = take_u64(tail)?;
        let (offset, tail) = take_u64(tail)?;
        let (&n, tail) = tail.split_first().ok_or_else(|| invalid("block list truncated"))?;
        let (name, tail) = tail.split_at_checked(usize::from(n)).ok_or_else(|| invalid("block list truncated"))?;
        if !valid_name(name) {
            return Err(invalid("bad extent name"));
        }
        let file = String::from_utf8_lossy(name).into_owned();
        list.push(Extent { id: id.to_vec(), size, crc64, file, offset });
        rest = tail;
    }
    Ok(list)
}

fn valid_name(name: &[u8]) -> bool {
    (1..=MAX_EXTENT_NAME).contains(&name.len()) && name.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// A name no other extent file has: 128 random bits (names outlive restarts,
/// so a counter would repeat).
fn new_name() -> io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("random extent name: {e}")))?;
    Ok(hex(&b))
}

/// Creates the blob's extents directory if missing (and `extents/` itself,
/// absent in containers made before v2), durably.
pub fn ensure_dir(container_dir: &Path, name: &str, modes: Modes) -> io::Result<PathBuf> {
    let root = layout::extents_root(container_dir);
    let dir = layout::extents_dir(container_dir, name);
    for (d, parent) in [(&root, container_dir), (&dir, root.as_path())] {
        match modes.create_dir(d) {
            Ok(()) => layout::sync_dir(parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Extent files a commit linked; unlinked when dropped unless kept (the
/// commit went through, or a simulated crash must leave them).
pub struct Linked {
    dir: PathBuf,
    names: Vec<String>,
    keep: bool,
}

impl Linked {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, names: Vec::new(), keep: false }
    }
    /// Hard-links `src` into the extents directory under a new name.
    pub fn link(&mut self, src: &Path) -> io::Result<String> {
        let name = new_name()?;
        fs::hard_link(src, self.dir.join(&name))?;
        self.names.push(name.clone());
        Ok(name)
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Linked {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for n in &self.names {
            if let Err(e) = fs::remove_file(self.dir.join(n)) {
                log::warn!("removing extent {n} in {}: {e}", self.dir.display());
            }
        }
    }
}

/// The CRC-64 of `len` bytes of `file` at `offset`, read through `buf`.
pub fn crc_of_range(file: &File, mut offset: u64, len: u64, buf: &mut [u8]) -> io::Result<u64> {
    let mut sums = Checksums::new(false);
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset)
            .map_err(|e| if e.kind() == io::ErrorKind::UnexpectedEof { invalid("blob file truncated") } else { e })?;
        sums.update(&buf[..n]);
        offset += n as u64;
        left -= n as u64;
    }
    Ok(sums.finish().crc64)
}

/// Copies `len` bytes of a v2 blob from `offset` into `sink`, extent by
/// extent, each read(2) straight into the sink. The caller pinned the name.
pub fn fill(
    c: &Container,
    name: &str,
    list: &[Extent],
    offset: u64,
    len: u64,
    sink: &mut dyn DataSink,
) -> Result<(), StoreError> {
    let dir = layout::extents_dir(&c.dir, name);
    let end = offset.checked_add(len).ok_or(StoreError::InvalidRange)?;
    let mut start = 0u64;
    for e in list {
        if start >= end {
            break;
        }
        let e_end = start.checked_add(e.size).ok_or_else(|| invalid("extents overflow"))?;
        let (from, to) = (offset.max(start), end.min(e_end));
        if from < to {
            let file = open_extent(c, &dir, e)?;
            sink.fill_from_file(&file, e.offset + (from - start), to - from)?;
        }
        start = e_end;
    }
    if start < end {
        return Err(invalid("extents shorter than the blob").into());
    }
    Ok(())
}

fn open_extent(c: &Container, dir: &Path, e: &Extent) -> Result<File, StoreError> {
    let file = {
        // Not deleted yet, so `dir` is still this container's and not a namesake's.
        let alive = read(&c.alive);
        if !*alive {
            return Err(StoreError::ContainerNotFound);
        }
        match File::open(dir.join(&e.file)) {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(&format!("extent {} is missing", e.file)).into());
            }
            Err(err) => return Err(err.into()),
        }
    };
    let len = file.metadata()?.len();
    if e.offset.checked_add(e.size).is_none_or(|end| end > len) {
        return Err(invalid(&format!("extent {} is shorter than its blob says", e.file)).into());
    }
    Ok(file)
}

/// What a sweep removed.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub files: u64,
    pub bytes: u64,
}

/// Removes the extents of blob `name` its current file does not name (all of
/// them once it is gone), unless a reader has the name pinned: then the last
/// reader does it. The caller holds the name lock and the liveness guard.
pub fn sweep(c: &Container, name: &str) -> io::Result<Swept> {
    if !c.pins.may_sweep(name) {
        return Ok(Swept::default());
    }
    sweep_hash(&c.dir, &layout::name_hash(name))
}

/// [`sweep`] by the name's hash, without pins (at open nothing reads yet).
/// A blob file that exists but can't be read keeps its extents: what it
/// names is unknown, and nothing is lost by waiting for an operator.
pub fn sweep_hash(container_dir: &Path, h: &str) -> io::Result<Swept> {
    // Checked first: `h` becomes a path component.
    let blob = layout::blob_path_for_hash(container_dir, h).ok_or_else(|| invalid("not a name hash"))?;
    let dir = layout::extents_root(container_dir).join(h);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Swept::default()),
        Err(e) => return Err(e),
    };
    let Some(live) = live_names(&blob)? else { return Ok(Swept::default()) };
    let mut swept = Swept::default();
    let mut kept = 0;
    for e in entries {
        let e = e?;
        if e.file_name().to_str().is_some_and(|n| live.contains(n)) {
            kept += 1;
            continue;
        }
        let meta = fs::symlink_metadata(e.path())?;
        let gone = if meta.is_dir() { fs::remove_dir_all(e.path()) } else { fs::remove_file(e.path()) };
        match gone {
            Ok(()) => {
                swept.files += 1;
                swept.bytes += meta.len();
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    if kept == 0 {
        match fs::remove_dir(&dir) {
            Ok(()) => layout::sync_dir(&layout::extents_root(container_dir))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    } else if swept.files > 0 {
        layout::sync_dir(&dir)?;
    }
    Ok(swept)
}

/// The extent names the blob file at `path` holds; `None` if it is unreadable.
fn live_names(path: &Path) -> io::Result<Option<HashSet<String>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(HashSet::new())),
        Err(e) => return Err(e),
    };
    let list = layout::read_blob_header(&file)
        .and_then(|raw| if raw.extents { read_list(&raw, &file) } else { Ok(Vec::new()) });
    match list {
        Ok(list) => Ok(Some(list.into_iter().map(|e| e.file).collect())),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(None),
        Err(e) => Err(e),
    }
}

/// Readers of each blob name that may still open extents, and whether a
/// sweep waits for them.
#[derive(Default)]
pub struct Pins {
    map: Mutex<HashMap<String, PinState>>,
}

#[derive(Default)]
struct PinState {
    readers: usize,
    sweep_due: bool,
}

impl Pins {
    fn pin(&self, name: &str) {
        lock(&self.map).entry(name.to_owned()).or_default().readers += 1;
    }
    /// Whether this was the last reader and a sweep was left to it.
    fn unpin(&self, name: &str) -> bool {
        let mut map = lock(&self.map);
        let Some(p) = map.get_mut(name) else { return false };
        p.readers = p.readers.saturating_sub(1);
        if p.readers > 0 {
            return false;
        }
        map.remove(name).is_some_and(|p| p.sweep_due)
    }
    /// Whether a sweep may go now; if not, it is left to the last reader.
    fn may_sweep(&self, name: &str) -> bool {
        match lock(&self.map).get_mut(name) {
            Some(p) => {
                p.sweep_due = true;
                false
            }
            None => true,
        }
    }
}

/// A reader's pin on a blob name; the last one out runs a sweep left to it.
pub struct Pin<'c> {
    c: &'c Container,
    name: &'c str,
}

impl<'c> Pin<'c> {
    pub fn new(c: &'c Container, name: &'c str) -> Self {
        c.pins.pin(name);
        Self { c, name }
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        if !self.c.pins.unpin(self.name) {
            return;
        }
        let _g = self.c.locks.lock(self.name);
        let alive = read(&self.c.alive);
        if *alive && let Err(e) = sweep(self.c, self.name) {
            log::warn!("removing stale extents of {:?} in {}: {e}", self.name, self.c.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_name_defers_the_sweep_to_the_last_reader() {
        let p = Pins::default();
        assert!(p.may_sweep("a"));
        p.pin("a");
        p.pin("a");
        assert!(!p.may_sweep("a"));
        assert!(!p.unpin("a"), "another reader is still there");
        assert!(p.unpin("a"), "the last reader runs the sweep");
        assert!(!p.unpin("a"), "and only once");
        assert!(p.may_sweep("a"));
        p.pin("b");
        assert!(!p.unpin("b"), "nothing was left to it");
    }

    #[test]
    fn extent_names_cannot_leave_their_directory() {
        for bad in [&b""[..], b"..", b"../x", b"a/b", b"ABC", &[b'a'; 65]] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name(new_name().unwrap().as_bytes()));
    }
}
