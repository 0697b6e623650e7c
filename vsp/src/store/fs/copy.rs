//! CopyBlob: the target's new file is written and renamed into place like
//! any write. A block-list source's extent files are hard-linked into the
//! target's extent directory (no bytes move); a whole-written source's data
//! is copied file to file inside the kernel. The source is read from one
//! opened file, its extents pinned, so a concurrent replace of the source
//! copies the old version or the new one, never a mix.

use vmblob_protocol::ops::{BlobWritten, CopyBlob};

use super::FsStore;
use super::extents::{self, Extent, Linked};
use super::index::IndexEntry;
use super::layout::{self, BlobHeader};
use super::props::temp_with_content;
use crate::store::semantics::{check_conditions, check_write, copied_props, written};
use crate::store::{StoreError, TxnId};

pub(super) fn copy_blob(store: &FsStore, req: &CopyBlob, txn: &TxnId) -> Result<BlobWritten, StoreError> {
    let from = store.container(&req.source.container)?;
    let to = store.container(&req.target.container)?;
    let (src_name, name) = (req.source.blob.as_str(), req.target.blob.as_str());
    // Before the source file opens: its extents stay until the copy is done.
    // Taken before the name lock, since dropping the last pin takes it.
    let _pin = extents::Pin::new(&from, src_name);
    let _g = to.locks.lock(name);
    // A replay is answered before the source is looked at: it may be gone by now.
    let current = to.entry(name)?;
    if let Some(w) = check_write(current.as_ref().map(|e| (&e.props, &e.txn)), &req.conditions, txn)? {
        return Ok(w);
    }
    // Opened under the target's lock: a copy onto itself reads the version it replaces.
    let (file, raw, src) = store.open_blob(&from, src_name)?.ok_or(StoreError::BlobNotFound)?;
    check_conditions(&src, &req.source_conditions)?;
    let props = copied_props(&src, req.metadata.as_ref());
    let json = layout::to_json(&BlobHeader::new(name, &props, txn))?;
    let mut linked = None;
    let mut tmp = if raw.extents {
        let dir = extents::ensure_dir(&to.dir, name, store.layout.modes)?;
        let src_dir = layout::extents_dir(&from.dir, src_name);
        let mut links = Linked::new(dir.clone());
        let tmp = temp_with_content(store, "copy", (&file, &raw), &json, props.content_length, |e| {
            Ok(Extent { file: links.link(&src_dir.join(&e.file))?, ..e })
        })?;
        // The links must be durable before a blob file names them (at the rename).
        layout::sync_dir(&dir)?;
        linked = Some(links);
        tmp
    } else {
        temp_with_content(store, "copy", (&file, &raw), &json, props.content_length, Ok)?
    };
    let entry = IndexEntry { props: props.clone(), txn: *txn };
    let result = store.commit(&to, &mut tmp, &layout::blob_path(&to.dir, name), false, || {
        to.set_entry(name, Some(entry));
        // The target on disk names them now, whatever fails after.
        if let Some(l) = linked.as_mut() {
            l.keep();
        }
    });
    if result.is_err() && store.crashed.load(std::sync::atomic::Ordering::Relaxed) {
        // A simulated crash leaves the links for the next open to collect.
        if let Some(l) = linked.as_mut() {
            l.keep();
        }
    }
    let _alive = result?;
    // A write discards the target's uncommitted blocks and the extents it no longer names.
    to.discard_staged(name);
    store.sweep_extents(&to, name);
    Ok(written(&props))
}
