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
use vmblob_protocol::ops::{Conditions, ListedBlock};

use super::attributes::BlobAttributes;
use super::blocking;
use super::error::{ObjStoreError, OnPrecondition};
use super::write::{self, BLOCK_ID_LEN, UploadTag};
use crate::client::BlobHandle;

/// Blocks of one part, as `PartId::content_id`: `<id>:<crc64 hex>`, comma
/// separated. The CRCs go to the commit, which proves the blocks are ours.
pub(crate) fn part_id(blocks: &[ListedBlock]) -> String {
    let entries: Vec<String> = blocks
        .iter()
        .map(|b| {
            let id = std::str::from_utf8(b.id.as_bytes()).unwrap_or_default();
            format!("{id}:{:016x}", b.crc64.unwrap_or_default())
        })
        .collect();
    entries.join(",")
}

/// The blocks in a `PartId::content_id` of upload `tag`; anything else is refused.
pub(crate) fn parse_part_id(tag: UploadTag, content_id: &str) -> Result<Vec<ListedBlock>, ObjStoreError> {
    let ours = format!("{tag}-");
    content_id
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let entry = s.split_once(':').and_then(|(id, crc)| {
                let ok = id.starts_with(&ours) && id.len() == BLOCK_ID_LEN && crc.len() == 16;
                let crc =
                    u64::from_str_radix(crc, 16).ok().filter(|_| ok && crc.bytes().all(|c| c.is_ascii_hexdigit()))?;
                Some(ListedBlock::proven(BlockId::new(id.as_bytes()).ok()?, crc))
            });
            entry.ok_or_else(|| ObjStoreError::InvalidPartId(s.to_owned()))
        })
        .collect()
}

pub(crate) async fn commit(
    blob: BlobHandle,
    blocks: Vec<ListedBlock>,
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
) -> object_store::Result<Vec<ListedBlock>> {
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
    parts: Arc<Mutex<BTreeMap<usize, Vec<ListedBlock>>>>,
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
        let ids = vec![
            ListedBlock::proven(tag.block_id(3, 0).unwrap(), 0x0123_4567_89ab_cdef),
            ListedBlock::proven(tag.block_id(3, 1).unwrap(), 7),
        ];
        assert_eq!(parse_part_id(tag, &part_id(&ids)).unwrap(), ids);
        assert_eq!(parse_part_id(tag, "").unwrap(), Vec::<ListedBlock>::new(), "an empty part has no blocks");
        let other = ListedBlock::proven(UploadTag::random().block_id(3, 0).unwrap(), 1);
        let ours = std::str::from_utf8(ids[0].id.as_bytes()).unwrap().to_owned();
        for bad in [
            part_id(&[other]),
            format!("{tag}-x"),
            "x".repeat(100),
            format!("{},", "y".repeat(32)),
            ours.clone(),
            format!("{ours}:12"),
            format!("{ours}:+123456789abcdef"),
            format!("{ours}:0123456789abcdeg"),
        ] {
            assert!(matches!(parse_part_id(tag, &bad), Err(ObjStoreError::InvalidPartId(_))), "{bad:?}");
        }
    }
}
