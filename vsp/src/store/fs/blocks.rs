//! Block blobs on disk: staging blocks and committing block lists.
//!
//! A staged block is a file in the blob's staging directory, written like a
//! blob (temp, fsync, rename). Committing a list copies the listed blocks, in
//! order, into a new blob file that replaces the old one with one rename.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vmblob_protocol::BlockId;
use vmblob_protocol::ops::{BlobRef, BlobWritten, BlockInfo, BlockListType, PutBlockList};

use super::index::{IndexEntry, StagedInfo};
use super::layout::{self, BLOB_MAGIC, BLOCK_MAGIC, BlobHeader, BlockHeader};
use super::{FaultPoint, FsStore};
use crate::store::semantics::{
    Checksums, CommittedBlock, MAX_COMMITTED_BLOCKS, PartSource, check_size, check_stage_room, check_write, hex,
    new_props, resolve_block_list, verify, written,
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
    let room_check = |set: &mut super::index::StagedSet| check_stage_room(set.len(), set.contains_key(id));
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
    let committed = match &old {
        Some((file, raw, _)) => raw.read_blocks(file)?,
        None => Vec::new(),
    };
    let (parts, total) =
        resolve_block_list(&req.blocks, |id| staged.get(id).map(|s| s.size), &committed, store.max_blob_size)?;
    // Staged CRCs are in the index: refuse a foreign block before copying anything.
    for p in parts.iter().filter(|p| p.source == PartSource::Staged) {
        if let Some(info) = staged.get(&p.id) {
            p.check_crc(info.crc64)?;
        }
    }
    let new_blocks: Vec<CommittedBlock> =
        parts.iter().map(|p| CommittedBlock { id: p.id.clone(), size: p.size }).collect();
    let block_count = u32::try_from(new_blocks.len()).map_err(|_| StoreError::TooLarge("block count".into()))?;

    let res = layout::reserve(BlobHeader::room(name, &req.content_type, &req.metadata, total, false)?, &new_blocks)?;
    let mut tmp = store.layout.temp_file("blocklist")?;
    let mut buf = store.bufs.take();
    let mut sums = Checksums::new(false);
    let mut at = res.data_start;
    let staging = layout::staging_dir(&c.dir, name);
    for (i, p) in parts.iter().enumerate() {
        match p.source {
            PartSource::Staged => {
                let info = staged.get(&p.id).copied().ok_or_else(|| io::Error::other("staged block vanished"))?;
                // Opened per use: a list may name tens of thousands of blocks.
                let file = File::open(layout::block_path(&staging, &p.id))?;
                let raw = layout::read_header(&file, BLOCK_MAGIC)?;
                let mut block_sums = Checksums::new(false);
                copy(&file, raw.data_start, &tmp.file, at, p.size, &mut buf, &mut [&mut sums, &mut block_sums])?;
                // Catches a block file damaged since it was staged.
                if block_sums.finish().crc64 != info.crc64 {
                    let msg = format!("staged block {} no longer matches its checksum", hex(&p.id));
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg).into());
                }
            }
            PartSource::Committed { offset } => {
                let (file, raw, _) = old.as_ref().ok_or_else(|| io::Error::other("committed block without blob"))?;
                // A committed block's CRC is not stored: it is known once copied.
                let mut block_sums = Checksums::new(false);
                copy(
                    file,
                    raw.data_start + offset,
                    &tmp.file,
                    at,
                    p.size,
                    &mut buf,
                    &mut [&mut sums, &mut block_sums],
                )?;
                p.check_crc(block_sums.finish().crc64)?;
            }
        }
        at += p.size;
        if i == 0 {
            store.checkpoint(FaultPoint::DataPartlyWritten, Some(&mut tmp))?;
        }
    }
    drop(buf);
    let props = new_props(&req.content_type, &req.metadata, total, &sums.finish(), block_count);
    let json = layout::to_json(&BlobHeader::new(name, &props, txn))?;
    store.finish_temp(&mut tmp, BLOB_MAGIC, &res, &json)?;
    let entry = IndexEntry { props: props.clone(), txn: *txn };
    let _alive = store.commit(&c, &mut tmp, &layout::blob_path(&c.dir, name), false, || {
        c.set_entry(name, Some(entry));
    })?;
    // Uncommitted blocks left out of the list are discarded, as in Azure.
    c.discard_staged(name);
    Ok(written(&props))
}

/// Copies `len` bytes between files through `buf`, feeding every checksum.
fn copy(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    len: u64,
    buf: &mut [u8],
    sums: &mut [&mut Checksums],
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let chunk = &mut buf[..n];
        src.read_exact_at(chunk, src_off)?;
        for s in sums.iter_mut() {
            s.update(chunk);
        }
        dst.write_all_at(chunk, dst_off)?;
        src_off += n as u64;
        dst_off += n as u64;
        left -= n as u64;
    }
    Ok(())
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
