//! SetBlobMetadata / SetBlobProperties: the blob file is replaced like any
//! write (temp file, fsync, rename, fsync the directory), so a crash leaves
//! the old properties or the new ones. A block-list blob's new file names
//! the same extents, so nothing of its data moves; a blob written whole has
//! its bytes copied file to file inside the kernel (`copy_file_range`,
//! shared extents where the filesystem reflinks), never through the guest.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};

use vmblob_protocol::ops::{BlobWritten, SetBlobProperties};

use super::extents::Extent;
use super::index::IndexEntry;
use super::layout::{self, BLOB_MAGIC, BLOB_MAGIC_V2, BlobHeader, RawHeader, TempFile};
use super::{FsStore, extents};
use crate::store::semantics::{check_write, update_condition, updated_props, written};
use crate::store::{StoreError, TxnId};

pub(super) fn set_blob_properties(
    store: &FsStore,
    req: &SetBlobProperties,
    txn: &TxnId,
) -> Result<BlobWritten, StoreError> {
    let c = store.container(&req.target.container)?;
    let name = req.target.blob.as_str();
    let _g = c.locks.lock(name);
    let current = c.entry(name)?;
    let checked = check_write(current.as_ref().map(|e| (&e.props, &e.txn)), &req.conditions, txn);
    if let Some(w) = checked.map_err(update_condition)? {
        return Ok(w);
    }
    // Only staged blocks, or nothing: Azure's BlobNotFound.
    if current.is_none() {
        return Err(StoreError::BlobNotFound);
    }
    let (file, raw, old) = store.open_blob(&c, name)?.ok_or(StoreError::BlobNotFound)?;
    let props = updated_props(&old, &req.update);
    let json = layout::to_json(&BlobHeader::new(name, &props, txn))?;
    // The same extents, named as they are.
    let mut tmp = temp_with_content(store, "blob", (&file, &raw), &json, props.content_length, Ok)?;
    // The new file keeps the old one's mtime: at open, blocks staged before a
    // blob file's mtime count as discarded by that write (gc.rs), and this
    // one discards none.
    tmp.file.set_modified(file.metadata()?.modified()?)?;
    tmp.file.sync_all()?;
    let entry = IndexEntry { props: props.clone(), txn: *txn };
    let _alive = store.commit(&c, &mut tmp, &layout::blob_path(&c.dir, name), false, || {
        c.set_entry(name, Some(entry));
    })?;
    // Unlike a write, the uncommitted blocks stay (Azure keeps them too).
    Ok(written(&props))
}

/// A finished temp file with header `json` and the content of the blob open
/// as `file`: a v2 blob's extents as `relink` names them (the same ones for a
/// property change, links into the target's directory for a copy), or a v1
/// blob's `len` data bytes and block list (stores from before extents), copied.
pub(super) fn temp_with_content(
    store: &FsStore,
    kind: &str,
    (file, raw): (&File, &RawHeader),
    json: &[u8],
    len: u64,
    relink: impl FnMut(Extent) -> Result<Extent, StoreError>,
) -> Result<TempFile, StoreError> {
    let mut tmp = store.layout.temp_file(kind)?;
    if raw.extents {
        let list = extents::read_list(raw, file)?.into_iter().map(relink).collect::<Result<Vec<_>, _>>()?;
        let res = layout::reserve_list(json.len(), list.len(), extents::encode(&list)?)?;
        store.finish_temp(&mut tmp, BLOB_MAGIC_V2, &res, json)?;
    } else {
        let res = layout::reserve(json.len(), &raw.read_blocks(file)?)?;
        copy_data(file, raw, len, &tmp.file, res.data_start)?;
        store.finish_temp(&mut tmp, BLOB_MAGIC, &res, json)?;
    }
    Ok(tmp)
}

/// The `len` data bytes of a whole-written blob into `to` at `at`.
fn copy_data(from: &File, raw: &RawHeader, len: u64, mut to: &File, at: u64) -> Result<(), StoreError> {
    let mut src = from;
    src.seek(SeekFrom::Start(raw.data_start))?;
    to.seek(SeekFrom::Start(at))?;
    let copied = io::copy(&mut src.take(len), &mut to)?;
    if copied != len {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "blob data shorter than its header says").into());
    }
    Ok(())
}
