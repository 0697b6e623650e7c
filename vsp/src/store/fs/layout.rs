//! On-disk layout and file format.
//!
//! ```text
//! root/containers/<container>/container.json
//! root/containers/<container>/blobs/<h[0..2]>/<h>     h = hex SHA-256 of the blob name
//! root/containers/<container>/staging/<h>/<hex id>    staged blocks of that blob (expire, see gc.rs)
//! root/containers/<container>/extents/<h>/<name>      data files a block-list blob refers to (extents.rs)
//! root/tmp/      files and directories being written (cleared on open)
//! root/trash/    deleted containers being removed (cleared on open)
//! ```
//!
//! Guest names never become path components: container names are validated
//! `[a-z0-9-]`, blob names are hashed, block ids are hex-encoded, extent
//! names are random hex.
//!
//! A blob (or staged block) is one file: a fixed prefix, a JSON header padded
//! to a reserved size, a binary committed-block list, then the data at a
//! 4 KiB-aligned offset. Header and data therefore commit with one rename.
//!
//! ```text
//! 0   magic (8)       "VMBLOB\0\x01" or "VMBLCK\0\x01" (data inline), "VMBLOB\0\x02" (extents)
//! 8   u32 LE          header JSON length (the rest of its room is spaces)
//! 12  u32 LE          committed block count
//! 16  u64 LE          offset of the block list: per block u8 id length, id, u64 LE size
//!                     (v2 adds per block: u64 LE CRC-64, u64 LE offset in its extent file,
//!                     u8 extent name length, extent name)
//! 24  u64 LE          data offset (v2: no data follows)
//! 32  header JSON
//! ```
//!
//! A v2 blob (written by PutBlockList) holds no data: each committed block is
//! a range of an extent file, which is the staged block's own file hard-linked
//! (link(2): atomic, no data copied) into the blob's extents directory before
//! the blob file is renamed into place. So a commit needs no second copy of
//! the data on disk, and is still one rename. Linking beats the alternatives:
//! copy_file_range copies on most filesystems (tmpfs, ext4), reflinks exist
//! only on a few, and renaming the staged files would break a crash between
//! the renames (the old blob would lose nothing, but the staged blocks would
//! be gone before the commit). The blob's CRC-64 is combined from the blocks'
//! CRCs (`crc.rs`), so a commit reads no data either. v1 blob files (PutBlob,
//! and stores written before v2) keep their data inline and read as before.
//! Extent files are immutable; which of them are garbage, and when they go,
//! is in `extents.rs`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmblob_protocol::ops::{BlobProperties, ContainerProperties, ContentHeaders, Metadata};

use super::access::Modes;
use crate::store::TxnId;
use crate::store::semantics::{CommittedBlock, Described, hex, unhex};

pub const BLOB_MAGIC: [u8; 8] = *b"VMBLOB\0\x01";
pub const BLOCK_MAGIC: [u8; 8] = *b"VMBLCK\0\x01";
/// A blob whose blocks live in extent files.
pub const BLOB_MAGIC_V2: [u8; 8] = *b"VMBLOB\0\x02";
const PREFIX_LEN: u64 = 32;
const DATA_ALIGN: u64 = 4096;
/// Headers are small (name ≤ 1 KiB, metadata ≤ 8 KiB, even if JSON-escaped);
/// anything bigger is corruption.
const MAX_HEADER_JSON: u32 = 1 << 20;
const CONTAINER_META: &str = "container.json";
/// Bounds on the block list, so a corrupt prefix can't make a reader allocate
/// gigabytes: the committed-list limit, and an entry with the longest id.
const MAX_BLOCKS_IN_FILE: u32 = crate::store::semantics::MAX_COMMITTED_BLOCKS as u32;
const MAX_BLOCK_ENTRY: u64 = 1 + vmblob_protocol::names::BLOCK_ID_MAX as u64 + 8;
/// A v2 entry adds a CRC, an offset and an extent name.
pub const MAX_EXTENT_NAME: usize = 64;
const MAX_EXTENT_ENTRY: u64 = MAX_BLOCK_ENTRY + 8 + 8 + 1 + MAX_EXTENT_NAME as u64;
const EXTENTS: &str = "extents";

/// Paths under the store's root, and the modes of what is created there.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    pub modes: Modes,
}

impl Layout {
    pub fn new(root: &Path, modes: Modes) -> Self {
        Self { root: root.to_path_buf(), modes }
    }
    /// A new temp file in `tmp/`.
    pub fn temp_file(&self, kind: &str) -> io::Result<TempFile> {
        TempFile::create(&self.tmp(), kind, self.modes)
    }
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }
    /// `name` must be a validated container name.
    pub fn container(&self, name: &str) -> PathBuf {
        self.containers().join(name)
    }
}

/// Paths inside one container's directory.
pub fn container_meta(dir: &Path) -> PathBuf {
    dir.join(CONTAINER_META)
}
pub fn blobs_dir(dir: &Path) -> PathBuf {
    dir.join("blobs")
}
pub fn staging_root(dir: &Path) -> PathBuf {
    dir.join("staging")
}
pub fn extents_root(dir: &Path) -> PathBuf {
    dir.join(EXTENTS)
}

/// Hex SHA-256 of a blob name: its file name on disk.
pub fn name_hash(name: &str) -> String {
    hex(&Sha256::digest(name.as_bytes()))
}

/// The blob's file (under a fan-out directory named by the hash's first byte).
pub fn blob_path(dir: &Path, name: &str) -> PathBuf {
    let h = name_hash(name);
    blobs_dir(dir).join(&h[..2]).join(h)
}
pub fn staging_dir(dir: &Path, name: &str) -> PathBuf {
    staging_root(dir).join(name_hash(name))
}
/// The blob's file by its name hash (what a directory under `extents/` is named).
pub fn blob_path_for_hash(dir: &Path, h: &str) -> Option<PathBuf> {
    let valid = h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then(|| blobs_dir(dir).join(&h[..2]).join(h))
}
pub fn extents_dir(dir: &Path, name: &str) -> PathBuf {
    extents_root(dir).join(name_hash(name))
}
pub fn block_path(staging: &Path, id: &[u8]) -> PathBuf {
    staging.join(hex(id))
}

/// Flushes a directory's entries (a rename or unlink in it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates every fan-out directory a container's blobs go into.
pub fn make_container_dirs(dir: &Path, modes: Modes) -> io::Result<()> {
    let blobs = blobs_dir(dir);
    modes.create_dir(&blobs)?;
    for b in 0..=255u8 {
        modes.create_dir(&blobs.join(hex(&[b])))?;
    }
    modes.create_dir(&staging_root(dir))?;
    modes.create_dir(&extents_root(dir))?;
    sync_dir(&blobs)?;
    sync_dir(dir)
}

/// Removes everything under `dir` (leftovers of an earlier run).
pub fn clear_dir(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
        n += 1;
    }
    Ok(n)
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A name in `tmp/` (or `trash/`) no other writer of this store uses.
pub fn unique_name(kind: &str) -> String {
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{kind}-{}-{seq}", std::process::id())
}

/// A file being written in `tmp/`; removed on drop unless renamed into place
/// or deliberately left behind (a simulated crash).
pub struct TempFile {
    path: PathBuf,
    pub file: File,
    armed: bool,
}

impl TempFile {
    pub fn create(tmp_dir: &Path, kind: &str, modes: Modes) -> io::Result<Self> {
        let path = tmp_dir.join(unique_name(kind));
        let file = modes.create_file(&path)?;
        Ok(Self { path, file, armed: true })
    }
    /// Leave the file where it is (a crash would).
    pub fn abandon(&mut self) {
        self.armed = false;
    }
    /// Renames the file to `target`; on success it is no longer ours to remove.
    pub fn rename_to(&mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = fs::remove_file(&self.path)
        {
            log::warn!("removing temp file {}: {e}", self.path.display());
        }
    }
}

/// Where the parts of a file go, fixed before its data is written.
#[derive(Debug, Clone)]
pub struct Reservation {
    header_room: u64,
    blocks_offset: u64,
    block_count: u32,
    block_bytes: Vec<u8>,
    pub data_start: u64,
}

/// Plans a file whose header JSON will be at most `header_room` bytes (the
/// length of the header serialised with the widest placeholder values).
pub fn reserve(header_room: usize, blocks: &[CommittedBlock]) -> io::Result<Reservation> {
    let mut block_bytes = Vec::with_capacity(blocks.len() * 24);
    for b in blocks {
        push_block(&mut block_bytes, &b.id, b.size)?;
    }
    reserve_list(header_room, blocks.len(), block_bytes)
}

/// One block-list entry's common part: u8 id length, id, u64 LE size.
pub fn push_block(out: &mut Vec<u8>, id: &[u8], size: u64) -> io::Result<()> {
    let len = u8::try_from(id.len()).map_err(|_| invalid("block id over 255 bytes"))?;
    out.push(len);
    out.extend_from_slice(id);
    out.extend_from_slice(&size.to_le_bytes());
    Ok(())
}

/// Plans a file with an already encoded block list of `count` entries.
pub fn reserve_list(header_room: usize, count: usize, block_bytes: Vec<u8>) -> io::Result<Reservation> {
    let header_room = header_room as u64;
    let blocks_offset = PREFIX_LEN + header_room;
    let end = blocks_offset + block_bytes.len() as u64;
    let data_start = end.div_ceil(DATA_ALIGN) * DATA_ALIGN;
    let block_count = u32::try_from(count).map_err(|_| invalid("too many blocks"))?;
    Ok(Reservation { header_room, blocks_offset, block_count, block_bytes, data_start })
}

/// Writes the prefix, the header JSON (space-padded to its room) and the block list.
pub fn write_header(file: &File, magic: [u8; 8], res: &Reservation, json: &[u8]) -> io::Result<()> {
    if json.len() as u64 > res.header_room {
        return Err(invalid("header outgrew its reservation"));
    }
    let json_len = u32::try_from(json.len()).map_err(|_| invalid("header too long"))?;
    let mut head = Vec::with_capacity((res.blocks_offset as usize) + res.block_bytes.len());
    head.extend_from_slice(&magic);
    head.extend_from_slice(&json_len.to_le_bytes());
    head.extend_from_slice(&res.block_count.to_le_bytes());
    head.extend_from_slice(&res.blocks_offset.to_le_bytes());
    head.extend_from_slice(&res.data_start.to_le_bytes());
    head.extend_from_slice(json);
    head.resize(res.blocks_offset as usize, b' ');
    head.extend_from_slice(&res.block_bytes);
    file.write_all_at(&head, 0)?;
    // Without data nothing was written at `data_start`: make the file reach it.
    if file.metadata()?.len() < res.data_start {
        file.set_len(res.data_start)?;
    }
    Ok(())
}

/// A header read back from a file.
pub struct RawHeader {
    pub json: Vec<u8>,
    /// A v2 blob: its blocks are in extent files, its list says where.
    pub extents: bool,
    block_count: u32,
    blocks_offset: u64,
    pub data_start: u64,
    pub file_len: u64,
}

pub fn read_header(file: &File, magic: [u8; 8]) -> io::Result<RawHeader> {
    read_header_of(file, &[magic])
}

/// A blob file's header, either version.
pub fn read_blob_header(file: &File) -> io::Result<RawHeader> {
    read_header_of(file, &[BLOB_MAGIC, BLOB_MAGIC_V2])
}

fn read_header_of(file: &File, magics: &[[u8; 8]]) -> io::Result<RawHeader> {
    let file_len = file.metadata()?.len();
    let mut prefix = [0u8; PREFIX_LEN as usize];
    file.read_exact_at(&mut prefix, 0).map_err(short)?;
    let u32_at = |i: usize| u32::from_le_bytes([prefix[i], prefix[i + 1], prefix[i + 2], prefix[i + 3]]);
    let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
    if !magics.iter().any(|m| prefix[..8] == *m) {
        return Err(invalid("bad magic"));
    }
    let extents = prefix[..8] == BLOB_MAGIC_V2;
    let max_entry = if extents { MAX_EXTENT_ENTRY } else { MAX_BLOCK_ENTRY };
    let (json_len, block_count, blocks_offset, data_start) = (u32_at(8), u32_at(12), u64_at(16), u64_at(24));
    if json_len > MAX_HEADER_JSON
        || block_count > MAX_BLOCKS_IN_FILE
        || blocks_offset < PREFIX_LEN + u64::from(json_len)
        || data_start < blocks_offset
        || data_start - blocks_offset > u64::from(block_count) * max_entry + DATA_ALIGN
        || data_start > file_len
    {
        return Err(invalid("inconsistent header"));
    }
    let mut json = vec![0u8; json_len as usize];
    file.read_exact_at(&mut json, PREFIX_LEN).map_err(short)?;
    Ok(RawHeader { json, extents, block_count, blocks_offset, data_start, file_len })
}

impl RawHeader {
    /// Bytes of data the file holds past its header.
    pub fn data_len(&self) -> u64 {
        self.file_len - self.data_start
    }
    pub fn block_count(&self) -> u32 {
        self.block_count
    }
    /// The encoded block list, as `reserve_list` was given it (and padding).
    pub fn list_bytes(&self, file: &File) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.data_start - self.blocks_offset).map_err(|_| invalid("block list too long"))?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, self.blocks_offset).map_err(short)?;
        Ok(bytes)
    }
    /// The committed block list, of either version.
    pub fn read_blocks(&self, file: &File) -> io::Result<Vec<CommittedBlock>> {
        if self.extents {
            let list = super::extents::read_list(self, file)?;
            return Ok(list.into_iter().map(|e| CommittedBlock { id: e.id, size: e.size }).collect());
        }
        let bytes = self.list_bytes(file)?;
        let mut blocks = Vec::with_capacity(self.block_count as usize);
        let mut rest = bytes.as_slice();
        for _ in 0..self.block_count {
            let (id, size, tail) = take_block(rest)?;
            blocks.push(CommittedBlock { id: id.to_vec(), size });
            rest = tail;
        }
        Ok(blocks)
    }
}

/// Splits one entry's common part (id, size) off an encoded block list.
pub fn take_block(rest: &[u8]) -> io::Result<(&[u8], u64, &[u8])> {
    let (&n, tail) = rest.split_first().ok_or_else(|| invalid("block list truncated"))?;
    let (id, tail) = tail.split_at_checked(usize::from(n)).ok_or_else(|| invalid("block list truncated"))?;
    let (size, tail) = take_u64(tail)?;
    Ok((id, size, tail))
}

pub fn take_u64(rest: &[u8]) -> io::Result<(u64, &[u8])> {
    let (v, tail) = rest.split_at_checked(8).ok_or_else(|| invalid("block list truncated"))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(v);
    Ok((u64::from_le_bytes(b), tail))
}

/// A file too short for what its header promises is corrupt, not an I/O failure.
fn short(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof { invalid("file truncated") } else { e }
}

pub fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn parse<T: for<'de> Deserialize<'de>>(json: &[u8]) -> io::Result<T> {
    serde_json::from_slice(json).map_err(|e| invalid(&format!("header: {e}")))
}

pub fn to_json<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io::Error::other)
}

fn txn_hex(txn: &TxnId) -> String {
    hex(txn)
}

fn txn_from_hex(s: &str) -> io::Result<TxnId> {
    unhex(s).and_then(|v| TxnId::try_from(v).ok()).ok_or_else(|| invalid("bad txn"))
}

/// Header of a blob file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobHeader {
    pub name: String,
    pub txn: String,
    pub etag: String,
    pub last_modified_ms: u64,
    /// Absent in files written before creation times were kept: 0, unknown.
    #[serde(default)]
    pub created_ms: u64,
    pub content_length: u64,
    pub content_type: String,
    // The other HTTP headers, left out when empty (and in older files).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_encoding: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_language: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_disposition: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cache_control: String,
    pub content_md5: Option<String>,
    pub content_crc64: u64,
    pub metadata: Vec<(String, String)>,
}

/// A placeholder ETag at least as long as any real one.
const WIDEST_ETAG: &str = "\"0xFFFFFFFFFFFFFFFF\"";

impl BlobHeader {
    pub fn new(name: &str, props: &BlobProperties, txn: &TxnId) -> Self {
        Self {
            name: name.to_owned(),
            txn: txn_hex(txn),
            etag: props.etag.clone(),
            last_modified_ms: props.last_modified_ms,
            created_ms: props.created_ms,
            content_length: props.content_length,
            content_type: props.content_type.clone(),
            content_encoding: props.headers.content_encoding.clone(),
            content_language: props.headers.content_language.clone(),
            content_disposition: props.headers.content_disposition.clone(),
            cache_control: props.headers.cache_control.clone(),
            content_md5: props.content_md5.map(|m| hex(&m)),
            content_crc64: props.content_crc64,
            metadata: props.metadata.0.clone(),
        }
    }

    /// The header's JSON length can't exceed this for a blob with these
    /// known fields: the write-time fields get their widest values.
    pub fn room(name: &str, d: Described<'_>, len: u64, md5: bool) -> io::Result<usize> {
        let widest = BlobProperties {
            etag: WIDEST_ETAG.to_owned(),
            last_modified_ms: u64::MAX,
            created_ms: u64::MAX,
            content_length: len,
            // What `new_props` will store for it.
            content_type: crate::store::semantics::content_type_or_default(d.content_type).to_owned(),
            headers: d.headers.clone(),
            content_md5: md5.then_some([0xff; 16]),
            content_crc64: u64::MAX,
            committed_blocks: 0,
            metadata: d.metadata.clone(),
            lease: Default::default(),
        };
        Ok(to_json(&Self::new(name, &widest, &[0xff; 16]))?.len())
    }

    pub fn parse(raw: &RawHeader) -> io::Result<(Self, BlobProperties, TxnId)> {
        let h: Self = parse(&raw.json)?;
        let txn = txn_from_hex(&h.txn)?;
        if vmblob_protocol::ops::ETag::new(&h.etag).is_err() {
            return Err(invalid("bad etag"));
        }
        let content_md5 = match &h.content_md5 {
            None => None,
            Some(s) => Some(unhex(s).and_then(|v| <[u8; 16]>::try_from(v).ok()).ok_or_else(|| invalid("bad md5"))?),
        };
        // A v2 blob's length is checked against its extents when they are read.
        if !raw.extents && raw.data_len() < h.content_length {
            return Err(invalid("data shorter than the header says"));
        }
        let props = BlobProperties {
            etag: h.etag.clone(),
            last_modified_ms: h.last_modified_ms,
            created_ms: h.created_ms,
            content_length: h.content_length,
            content_type: h.content_type.clone(),
            headers: ContentHeaders {
                content_encoding: h.content_encoding.clone(),
                content_language: h.content_language.clone(),
                content_disposition: h.content_disposition.clone(),
                cache_control: h.cache_control.clone(),
            },
            content_md5,
            content_crc64: h.content_crc64,
            committed_blocks: raw.block_count,
            metadata: Metadata(h.metadata.clone()),
            lease: Default::default(),
        };
        Ok((h, props, txn))
    }
}

/// Header of a staged block file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockHeader {
    /// The blob the block is staged for.
    pub blob: String,
    pub id: String,
    pub size: u64,
    pub crc64: u64,
}

impl BlockHeader {
    pub fn room(blob: &str, id: &[u8], size: u64) -> io::Result<usize> {
        Ok(to_json(&Self { blob: blob.to_owned(), id: hex(id), size, crc64: u64::MAX })?.len())
    }
    pub fn parse(raw: &RawHeader) -> io::Result<Self> {
        let h: Self = parse(&raw.json)?;
        if raw.data_len() < h.size {
            return Err(invalid("block data shorter than its header says"));
        }
        Ok(h)
    }
}

/// `container.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub name: String,
    pub txn: String,
    pub etag: String,
    pub last_modified_ms: u64,
    pub metadata: Vec<(String, String)>,
}

impl ContainerMeta {
    pub fn new(name: &str, props: &ContainerProperties, txn: &TxnId) -> Self {
        Self {
            name: name.to_owned(),
            txn: txn_hex(txn),
            etag: props.etag.clone(),
            last_modified_ms: props.last_modified_ms,
            metadata: props.metadata.0.clone(),
        }
    }
    pub fn read(dir: &Path) -> io::Result<(Self, ContainerProperties, TxnId)> {
        let m: Self = parse(&fs::read(container_meta(dir))?)?;
        let txn = txn_from_hex(&m.txn)?;
        let props = ContainerProperties {
            etag: m.etag.clone(),
            last_modified_ms: m.last_modified_ms,
            metadata: Metadata(m.metadata.clone()),
        };
        Ok((m, props, txn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_with_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::create(dir.path(), "t", Modes::new(false)).unwrap();
        let md = Metadata(vec![("k".into(), "v\"é".into())]);
        let headers = ContentHeaders::default();
        let d = Described { content_type: "text/plain", headers: &headers, metadata: &md };
        let room = BlobHeader::room("a/b", d, 5, true).unwrap();
        let blocks = vec![CommittedBlock { id: vec![1, 2], size: 2 }, CommittedBlock { id: vec![3; 64], size: 3 }];
        let res = reserve(room, &blocks).unwrap();
        assert_eq!(res.data_start % DATA_ALIGN, 0);
        t.file.write_all_at(b"hello", res.data_start).unwrap();
        let props = BlobProperties {
            lease: Default::default(),
            etag: "\"0x1\"".into(),
            last_modified_ms: 7,
            created_ms: 0,
            content_length: 5,
            content_type: "text/plain".into(),
            headers: Default::default(),
            content_md5: Some([9; 16]),
            content_crc64: 42,
            committed_blocks: 2,
            metadata: md.clone(),
        };
        let json = to_json(&BlobHeader::new("a/b", &props, &[5; 16])).unwrap();
        write_header(&t.file, BLOB_MAGIC, &res, &json).unwrap();
        let raw = read_header(&t.file, BLOB_MAGIC).unwrap();
        let (h, p, txn) = BlobHeader::parse(&raw).unwrap();
        assert_eq!((h.name.as_str(), p, txn), ("a/b", props, [5; 16]));
        assert_eq!(raw.read_blocks(&t.file).unwrap(), blocks);
        assert!(read_header(&t.file, BLOCK_MAGIC).is_err());
    }

    #[test]
    fn truncated_or_garbage_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        for junk in [&b""[..], b"VMBLOB\0\x01", &[0xff; 64], b"VMBLOB\0\x01\xff\xff\xff\xff"] {
            let p = dir.path().join("j");
            fs::write(&p, junk).unwrap();
            assert!(read_header(&File::open(&p).unwrap(), BLOB_MAGIC).is_err());
        }
    }

    #[test]
    fn corrupt_lengths_do_not_drive_allocations() {
        // A sparse 1 TiB file whose prefix claims a 512 GiB block list.
        let dir = tempfile::tempdir().unwrap();
        let f =
            std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(dir.path().join("big")).unwrap();
        f.set_len(1 << 40).unwrap();
        let mut prefix = BLOB_MAGIC.to_vec();
        prefix.extend_from_slice(&2u32.to_le_bytes());
        prefix.extend_from_slice(&1u32.to_le_bytes());
        prefix.extend_from_slice(&34u64.to_le_bytes());
        prefix.extend_from_slice(&(1u64 << 39).to_le_bytes());
        prefix.extend_from_slice(b"{}");
        f.write_all_at(&prefix, 0).unwrap();
        let e = read_header(&f, BLOB_MAGIC).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn paths_stay_inside_the_container() {
        let dir = Path::new("/r/containers/c");
        let p = blob_path(dir, "../../etc/passwd");
        let rel = p.strip_prefix(dir).unwrap();
        let parts: Vec<_> = rel.components().map(|c| c.as_os_str().to_str().unwrap().to_owned()).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "blobs");
        assert_eq!(parts[2].len(), 64);
        assert!(parts[2].starts_with(&parts[1]));
    }
}
