//! Multipart uploads as block blobs: each part is staged as one or more
//! blocks under ids unique to the upload, `complete` commits them in part
//! order with one PutBlockList, and `abort` commits nothing. Staged blocks
//! are never visible; the device drops them when the name is next committed
//! or deleted.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use object_store::{MultipartUpload, PutPayload, PutResult, UploadPart};
use vmblob_protocol::names::BlockId;
use vmblob_protocol::ops::Conditions;

use super::attributes::BlobAttributes;
use super::blocking;
use super::error::{ObjStoreError, OnPrecondition};
use super::write::{self, UploadTag};
use crate::client::BlobHandle;

/// Block ids of one part, as `PartId::content_id`.
pub(crate) fn part_id(ids: &[BlockId]) -> String {
    let ids: Vec<&str> = ids.iter().map(|id| std::str::from_utf8(id.as_bytes()).unwrap_or_default()).collect();
    ids.join(",")
}

/// The block ids in a `PartId::content_id` of upload `tag`; anything else is refused.
pub(crate) fn parse_part_id(tag: UploadTag, content_id: &str) -> Result<Vec<BlockId>, ObjStoreError> {
    let ours = format!("{tag}-");
    content_id
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let id = BlockId::new(s.as_bytes()).ok().filter(|_| s.starts_with(&ours) && s.len() == 32);
            id.ok_or_else(|| ObjStoreError::InvalidPartId(s.to_owned()))
        })
        .collect()
}

pub(crate) async fn commit(
    blob: BlobHandle,
    blocks: Vec<BlockId>,
    attrs: BlobAttributes,
    path: &str,
) -> object_store::Result<PutResult> {
    let w = blocking::run(move || write::commit(&blob, blocks, &attrs, Conditions::none()))
        .await
        .map_err(|e| e.into_os(path, OnPrecondition::Precondition))?;
    Ok(PutResult { e_tag: Some(w.etag), version: None, extensions: Default::default() })
}

pub(crate) async fn stage(
    blob: BlobHandle,
    tag: UploadTag,
    part: usize,
    data: PutPayload,
    path: &str,
) -> object_store::Result<Vec<BlockId>> {
    blocking::run(move || write::stage_part(&blob, tag, part, &data))
        .await
        .map_err(|e| e.into_os(path, OnPrecondition::Precondition))
}

/// One `put_multipart` upload.
pub(crate) struct BlockUpload {
    blob: BlobHandle,
    tag: UploadTag,
    attrs: BlobAttributes,
    next_part: usize,
    /// Block ids of every part whose upload finished.
    parts: Arc<Mutex<BTreeMap<usize, Vec<BlockId>>>>,
}

impl BlockUpload {
    pub(crate) fn new(blob: BlobHandle, attrs: BlobAttributes) -> Self {
        Self { blob, tag: UploadTag::random(), attrs, next_part: 0, parts: Default::default() }
    }

    fn path(&self) -> String {
        self.blob.name().to_owned()
    }
}

impl fmt::Debug for BlockUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockUpload")
            .field("blob", &self.blob)
            .field("tag", &self.tag.to_string())
            .field("parts", &self.next_part)
            .finish()
    }
}

#[async_trait]
impl MultipartUpload for BlockUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.next_part;
        self.next_part += 1;
        let (blob, tag, parts, path) = (self.blob.clone(), self.tag, self.parts.clone(), self.path());
        Box::pin(async move {
            let ids = stage(blob, tag, part, data, &path).await?;
            parts.lock().unwrap_or_else(PoisonError::into_inner).insert(part, ids);
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let path = self.path();
        let blocks = {
            let parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
            let mut blocks = Vec::new();
            for part in 0..self.next_part {
                let ids = parts
                    .get(&part)
                    .ok_or_else(|| ObjStoreError::MissingPart(part).into_os(&path, OnPrecondition::Precondition))?;
                blocks.extend(ids.iter().cloned());
            }
            blocks
        };
        commit(self.blob.clone(), blocks, self.attrs.clone(), &path).await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_ids_round_trip_and_refuse_foreign_blocks() {
        let tag = UploadTag::random();
        let ids = vec![tag.block_id(3, 0).unwrap(), tag.block_id(3, 1).unwrap()];
        assert_eq!(parse_part_id(tag, &part_id(&ids)).unwrap(), ids);
        assert_eq!(parse_part_id(tag, "").unwrap(), Vec::<BlockId>::new(), "an empty part has no blocks");
        let other = UploadTag::random().block_id(3, 0).unwrap();
        for bad in [part_id(&[other]), format!("{tag}-x"), "x".repeat(100), format!("{},", "y".repeat(32))] {
            assert!(matches!(parse_part_id(tag, &bad), Err(ObjStoreError::InvalidPartId(_))), "{bad:?}");
        }
    }
}
