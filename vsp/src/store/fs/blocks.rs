//! Block blobs on disk: staging blocks and committing block lists.
//!
//! A staged block is a file in the blob's staging directory, written like a
//! blob (temp, fsync, rename). Committing a list hard-links the listed blocks'
//! files into the blob's extents directory and writes a small v2 blob file
//! naming them, in order, that replaces the old one with one rename: the data
//! is neither copied nor read (see `layout.rs`, `extents.rs`).

use std::collections::HashMap;
use std::fs::File;
use std::io;

use vmblob_protocol::BlockId;
use vmblob_protocol::ops::{BlobRef, BlobWritten, BlockInfo, BlockListType, PutBlockList};

use super::extents::{self, Extent, Linked};
use super::index::{Container, IndexEntry, StagedInfo, StagedSet};
use super::layout::{self, BLOB_MAGIC_V2, BLOCK_MAGIC, BlobHeader, BlockHeader};
use super::{FaultPoint, FsStore, crc};
use crate::store::semantics::{
    Digests, MAX_COMMITTED_BLOCKS, Part, PartSource, check_size, check_stage_room, check_write, hex, new_props,
    resolve_block_list, verify, written,
};
use crate::store::{DataSource, StoreError, TxnId};

pub(super) fn put_block(
    store: &FsStore,
    target: &BlobRef,
    id: &BlockId,
    data: &mut dyn DataSource,
    expected_crc64: Option<u64>,
) -> Result<u64, StoreError> {
    let c = store.container(&target.container)?;
    let (name, id) = (target.blob.as_str(), id.as_bytes());
    let len = data.len();
    check_size(len, store.max_blob_size)?;
    let room_check = |set: &mut super::index::StagedSet| {
        check_stage_room(set.len(), set.contains_key(id), set.keys().next().map(Vec::as_slice), id)
    };
    // Refuse a blob that is full before reading data; checked again at commit.
    {
        let _g = c.locks.lock(name);
        c.with_staged(name, room_check)??;
    }
    let res = layout::reserve(BlockHeader::room(name, id, len)?, &[])?;
    let (mut tmp, digests) = store.write_temp("block", &res, data, false)?;
    verify(&digests, expected_crc64, None)?;
    let header = BlockHeader { blob: name.to_owned(), id: hex(id), size: len, crc64: digests.crc64 };
    store.finish_temp(&mut tmp, BLOCK_MAGIC, &res, &layout::to_json(&header)?)?;

    let _g = c.locks.lock(name);
    c.with_staged(name, room_check)??;
    let target = layout::block_path(&layout::staging_dir(&c.dir, name), id);
    let info = StagedInfo { size: len, crc64: digests.crc64 };
    drop(store.commit(&c, &mut tmp, &target, true, || c.note_staged(name, id, info))?);
    Ok(digests.crc64)
}

pub(super) fn put_block_list(store: &FsStore, req: &PutBlockList, txn: &TxnId) -> Result<BlobWritten, StoreError> {
    let c = store.container(&req.target.container)?;
    let name = req.target.blob.as_str();
    if req.blocks.len() > MAX_COMMITTED_BLOCKS {
        return Err(StoreError::TooLarge(format!("{} blocks exceed {MAX_COMMITTED_BLOCKS}", req.blocks.len())));
    }
    // Held throughout: the staged and committed blocks read below must stay put.
    let _g = c.locks.lock(name);
    let current = c.entry(name)?;
    if let Some(w) = check_write(current.as_ref().map(|e| (&e.props, &e.txn)), &req.conditions, txn)? {
        return Ok(w);
    }
    let staged = c.with_staged(name, |s| s.clone())?;
    let old = match &current {
        Some(_) => store.open_blob(&c, name)?,
        None => None,
    };
    let old = match old {
        Some((file, raw, _)) => {
            let extents = if raw.extents { Some(extents::read_list(&raw, &file)?) } else { None };
            Some(OldBlob { file, raw, extents })
        }
        None => None,
    };
    let committed = match &old {
        Some(o) => o.raw.read_blocks(&o.file)?,
        None => Vec::new(),
    };
    let (parts, total) =
        resolve_block_list(&req.blocks, |id| staged.get(id).map(|s| s.size), &committed, store.max_blob_size)?;
    // Staged CRCs are in the index: refuse a foreign block before linking anything.
    for p in parts.iter().filter(|p| p.source == PartSource::Staged) {
        if let Some(info) = staged.get(&p.id) {
            p.check_crc(info.crc64)?;
        }
    }
    let block_count = u32::try_from(parts.len()).map_err(|_| StoreError::TooLarge("block count".into()))?;

    let dir = extents::ensure_dir(&c.dir, name, store.layout.modes)?;
    let mut linked = Linked::new(dir.clone());
    let result = (|| {
        let list = link_parts(store, &c, name, &parts, &staged, old.as_ref(), &mut linked)?;
        if !linked.is_empty() {
            // The links must be durable before a blob file names them.
            layout::sync_dir(&dir)?;
        }
        store.checkpoint(FaultPoint::ExtentsLinked, None)?;
        let crc64 = list.iter().fold(0, |crc, e| crc::combine(crc, e.crc64, e.size));
        let props = new_props(req.into(), total, &Digests { crc64, md5: None }, block_count);
        let room = BlobHeader::room(name, req.into(), total, false)?;
        let res = layout::reserve_list(room, list.len(), extents::encode(&list)?)?;
        let mut tmp = store.layout.temp_file("blocklist")?;
        let json = layout::to_json(&BlobHeader::new(name, &props, txn))?;
        store.finish_temp(&mut tmp, BLOB_MAGIC_V2, &res, &json)?;
        let entry = IndexEntry { props: props.clone(), txn: *txn };
        let alive = store.commit(&c, &mut tmp, &layout::blob_path(&c.dir, name), false, || {
            c.set_entry(name, Some(entry));
            // The blob on disk names them now, whatever fails after.
            linked.keep();
        })?;
        Ok((props, alive))
    })();
    let (props, _alive) = match result {
        Ok(r) => r,
        Err(e) => {
            // A simulated crash leaves the links for the next open to collect.
            if store.crashed.load(std::sync::atomic::Ordering::Relaxed) {
                linked.keep();
            }
            return Err(e);
        }
    };
    // Uncommitted blocks left out of the list are discarded, as in Azure;
    // the listed ones live on as extents.
    c.discard_staged(name);
    store.sweep_extents(&c, name);
    Ok(written(&props))
}

/// The blob a block list replaces, opened once for the blocks it reuses.
struct OldBlob {
    file: File,
    raw: layout::RawHeader,
    /// Its extents if it is a v2 blob; a v1 blob holds its data inline.
    extents: Option<Vec<Extent>>,
}

/// The new blob's extents, one per part: staged blocks are linked (once per
/// id), committed ones keep their extent, or for a v1 blob refer to its file,
/// linked once. Nothing is copied.
fn link_parts(
    store: &FsStore,
    c: &Container,
    name: &str,
    parts: &[Part],
    staged: &StagedSet,
    old: Option<&OldBlob>,
    linked: &mut Linked,
) -> Result<Vec<Extent>, StoreError> {
    let staging = layout::staging_dir(&c.dir, name);
    let mut linked_ids: HashMap<&[u8], Extent> = HashMap::new();
    let mut old_v1_link: Option<String> = None;
    let old_extents = old.and_then(|o| o.extents.as_deref()).map(by_id);
    let mut buf = store.bufs.take();
    let mut list = Vec::with_capacity(parts.len());
    for p in parts {
        let extent = match p.source {
            PartSource::Staged => match linked_ids.get(p.id.as_slice()) {
                Some(e) => e.clone(),
                None => {
                    let info = staged.get(&p.id).copied().ok_or_else(|| io::Error::other("staged block vanished"))?;
                    let path = layout::block_path(&staging, &p.id);
                    let raw = layout::read_header(&File::open(&path)?, BLOCK_MAGIC)?;
                    if raw.data_len() < p.size {
                        let msg = format!("staged block {} is shorter than staged", hex(&p.id));
                        return Err(io::Error::new(io::ErrorKind::InvalidData, msg).into());
                    }
                    let file = linked.link(&path)?;
                    let e = Extent { id: p.id.clone(), size: p.size, crc64: info.crc64, file, offset: raw.data_start };
                    linked_ids.insert(&p.id, e.clone());
                    e
                }
            },
            PartSource::Committed { offset } => {
                let o = old.ok_or_else(|| io::Error::other("committed block without blob"))?;
                match &old_extents {
                    Some(map) => {
                        let e =
                            map.get(p.id.as_slice()).ok_or_else(|| io::Error::other("committed block not found"))?;
                        p.check_crc(e.crc64)?;
                        (*e).clone()
                    }
                    None => {
                        // v1 keeps no per-block CRC: read it (a read costs no disk).
                        let at = o.raw.data_start + offset;
                        let crc64 = extents::crc_of_range(&o.file, at, p.size, &mut buf)?;
                        p.check_crc(crc64)?;
                        let file = match &old_v1_link {
                            Some(n) => n.clone(),
                            None => {
                                let n = linked.link(&layout::blob_path(&c.dir, name))?;
                                old_v1_link.insert(n).clone()
                            }
                        };
                        Extent { id: p.id.clone(), size: p.size, crc64, file, offset: at }
                    }
                }
            }
        };
        list.push(extent);
    }
    Ok(list)
}

/// A v2 blob's extents by block id, the first of each id: the one
/// `resolve_block_list` took (by its offset) for a committed part.
fn by_id(list: &[Extent]) -> HashMap<&[u8], &Extent> {
    let mut map = HashMap::with_capacity(list.len());
    for e in list {
        map.entry(e.id.as_slice()).or_insert(e);
    }
    map
}

pub(super) fn get_block_list(
    store: &FsStore,
    target: &BlobRef,
    list_type: BlockListType,
) -> Result<Vec<BlockInfo>, StoreError> {
    let c = store.container(&target.container)?;
    let name = target.blob.as_str();
    // Staged blocks load under the name lock; it also keeps the pair consistent.
    let _g = c.locks.lock(name);
    let uncommitted: Vec<BlockInfo> = c.with_staged(name, |s| {
        s.iter().map(|(id, info)| BlockInfo { id: id.clone(), size: info.size, committed: false }).collect()
    })?;
    if c.entry(name)?.is_none() {
        // A blob with only uncommitted blocks exists for this call, as in Azure.
        return if uncommitted.is_empty() {
            Err(StoreError::BlobNotFound)
        } else if list_type == BlockListType::Committed {
            Ok(Vec::new())
        } else {
            Ok(uncommitted)
        };
    }
    let mut out = Vec::new();
    if list_type != BlockListType::Uncommitted {
        // The committed list lives in the blob's file, not in the index.
        let (file, raw, _) = store.open_blob(&c, name)?.ok_or(StoreError::BlobNotFound)?;
        let committed = raw.read_blocks(&file)?;
        out.extend(committed.into_iter().map(|b| BlockInfo { id: b.id, size: b.size, committed: true }));
    }
    if list_type != BlockListType::Committed {
        out.extend(uncommitted);
    }
    Ok(out)
}
