//! Copy and rename. A device with the `COPY` capability copies inside
//! itself (CopyBlob, pinned to the source's ETag, the destination's
//! conditions checked in the same write). Without it the bytes pass through
//! the guest, read pinned to the source's ETag and written to the
//! destination in one commit that carries the destination's conditions.
//! Either way `copy_if_not_exists` is atomic (If-None-Match `*` checked at
//! commit).

use bytes::Bytes;
use object_store::PutPayload;
use vmblob_protocol::BlobError;
use vmblob_protocol::config::caps;
use vmblob_protocol::ops::{Conditions, ETag};

use super::attributes::BlobAttributes;
use super::error::ObjStoreError;
use super::read::read_pinned;
use super::write::{self, UploadTag};
use crate::client::{BlobHandle, CopyOptions};
use crate::error::{ClientError, ProtocolError};

/// Attempts when the source is replaced while it is copied.
const COPY_ATTEMPTS: usize = 3;

/// Copy `from` to `to` if `to_conditions` hold at commit; returns the ETag of
/// the source version copied.
pub(crate) fn copy(from: &BlobHandle, to: &BlobHandle, to_conditions: &Conditions) -> Result<ETag, ObjStoreError> {
    let mut attempt = 1;
    loop {
        match copy_once(from, to, to_conditions.clone()) {
            Err(ObjStoreError::Changed) if attempt < COPY_ATTEMPTS => attempt += 1,
            r => return r,
        }
    }
}

fn copy_once(from: &BlobHandle, to: &BlobHandle, to_conditions: Conditions) -> Result<ETag, ObjStoreError> {
    let props = from.properties()?;
    let etag = ETag::new(&props.etag).map_err(|_| ClientError::from(ProtocolError::BadETag(props.etag.clone())))?;
    let pin = Conditions::if_match(etag.clone());
    if from.client().device_config().capabilities & caps::COPY != 0 {
        let ambiguous = to_conditions.if_match.is_some();
        let options = CopyOptions { source_conditions: pin, conditions: to_conditions, metadata: None };
        return match to.copy_from(from, options) {
            Ok(_) => Ok(etag),
            // The source changed since its ETag was read (unless the target's own If-Match
            // failed), or, if it still has that ETag, the target refused: its lease.
            Err(e) if !ambiguous && e.blob_error() == Some(BlobError::PreconditionFailed) => match from.properties() {
                Ok(now) if now.etag == props.etag => Err(e.into()),
                _ => Err(ObjStoreError::Changed),
            },
            Err(e) => Err(e.into()),
        };
    }
    let attrs = BlobAttributes::from_properties(&props);
    let size = props.content_length;
    let block = from.client().block_size() as u64;
    let written = if size <= block {
        let data = if size == 0 { Bytes::new() } else { read_pinned(from, 0, size as usize, pin)? };
        write::put_whole(to, &PutPayload::from(data), &attrs, to_conditions)?
    } else {
        let tag = UploadTag::random();
        let mut uploader = to.block_uploader();
        for (i, off) in (0..size).step_by(block as usize).enumerate() {
            let n = block.min(size - off) as usize;
            let data = read_pinned(from, off, n, pin.clone())?;
            uploader.stage(tag.block_id(0, i)?, &[&data])?;
        }
        uploader.commit(attrs.put_options(to_conditions))?
    };
    if written.content_crc64 != props.content_crc64 {
        return Err(ClientError::checksum_mismatch("copy differs from its source").into());
    }
    Ok(etag)
}

/// Delete `blob` if it is still the version `etag` (rename's second half). A
/// source already gone counts as deleted.
pub(crate) fn delete_version(blob: &BlobHandle, etag: ETag) -> Result<(), ObjStoreError> {
    match blob.delete_opts(Conditions::if_match(etag)) {
        Ok(()) => Ok(()),
        Err(e) if e.blob_error() == Some(BlobError::BlobNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
