//! Copy and rename. The protocol has no copy: the bytes pass through the
//! guest, read pinned to the source's ETag and written to the destination
//! in one commit that carries the destination's conditions, so
//! `copy_if_not_exists` is atomic (If-None-Match `*` checked at commit).

use std::collections::VecDeque;

use bytes::Bytes;
use object_store::PutPayload;
use vmblob_protocol::BlobError;
use vmblob_protocol::ops::{BlobRef, Conditions, ETag, OpRequest};

use super::attributes::BlobAttributes;
use super::error::ObjStoreError;
use super::read::{read_pinned, stat};
use super::write::{self, UploadTag};
use crate::client::{BlobClient, Data, PendingOp};
use crate::error::ClientError;

/// Attempts when the source is replaced while it is copied.
const COPY_ATTEMPTS: usize = 3;

/// Copy `from` to `to` if `to_conditions` hold at commit; returns the ETag of
/// the source version copied.
pub(crate) fn copy(
    client: &BlobClient,
    from: &BlobRef,
    to: &BlobRef,
    to_conditions: &Conditions,
) -> Result<ETag, ObjStoreError> {
    let mut attempt = 1;
    loop {
        match copy_once(client, from, to, to_conditions.clone()) {
            Err(ObjStoreError::Changed) if attempt < COPY_ATTEMPTS => attempt += 1,
            r => return r,
        }
    }
}

fn copy_once(
    client: &BlobClient,
    from: &BlobRef,
    to: &BlobRef,
    to_conditions: Conditions,
) -> Result<ETag, ObjStoreError> {
    let props = stat(client, from, Conditions::none())?;
    let etag = ETag::new(&props.etag).map_err(|_| ClientError::Protocol(format!("bad ETag {:?}", props.etag)))?;
    let pin = Conditions { if_match: Some(etag.clone()), if_none_match: None };
    let attrs = BlobAttributes::from_properties(&props);
    let size = props.content_length;
    let block = client.block_size() as u64;
    let written = if size <= block {
        let data = if size == 0 { Vec::new() } else { read_pinned(client, from, 0, size as usize, pin)? };
        write::put_whole(client, to, &PutPayload::from(Bytes::from(data)), &attrs, to_conditions)?
    } else {
        let tag = UploadTag::random();
        let mut window: VecDeque<(PendingOp, u64)> = VecDeque::new();
        let mut ids = Vec::new();
        for (i, off) in (0..size).step_by(block as usize).enumerate() {
            let n = block.min(size - off) as usize;
            let data = read_pinned(client, from, off, n, pin.clone())?;
            let crc = crate::crc64(&data);
            let mut buf = client.alloc_data(n)?;
            buf.write_at(0, &data).map_err(|e| ClientError::Transport(e.to_string()))?;
            let id = tag.block_id(0, i)?;
            window.push_back((client.submit_block(to, &id, buf, n, crc)?, crc));
            ids.push(id);
            if window.len() >= client.options().parallel.max(1) {
                write::staged(window.pop_front())?;
            }
        }
        while let Some(p) = window.pop_front() {
            write::staged(Some(p))?;
        }
        write::commit(client, to, ids, &attrs, to_conditions)?
    };
    if written.content_crc64 != props.content_crc64 {
        return Err(write::checksum_mismatch("copy differs from its source"));
    }
    Ok(etag)
}

/// Delete `t` if it is still the version `etag` (rename's second half). A
/// source already gone counts as deleted.
pub(crate) fn delete_version(client: &BlobClient, t: &BlobRef, etag: ETag) -> Result<(), ObjStoreError> {
    let op = OpRequest::DeleteBlob {
        target: t.clone(),
        conditions: Conditions { if_match: Some(etag), if_none_match: None },
    };
    match client.call(&op, Data::None) {
        Ok(_) => Ok(()),
        Err(e) if e.blob_error() == Some(BlobError::BlobNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
