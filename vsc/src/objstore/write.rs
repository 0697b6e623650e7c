//! Writes. An object up to one block goes in one PutBlob; a larger one is
//! staged as blocks through the client's [`BlockUploader`] and committed
//! with one PutBlockList. Either way the object appears whole or not at all,
//! and the write's conditions are checked by the device in the step that
//! commits.

use std::fmt;

use object_store::PutPayload;
use vmblob_protocol::names::BlockId;
use vmblob_protocol::ops::{BlobWritten, Conditions, ListedBlock};

use super::attributes::BlobAttributes;
use super::error::ObjStoreError;
use crate::client::{BlobHandle, BlockUploader, superseded, upload_tag};

const MAX_PARTS: usize = 100_000_000;
const MAX_BLOCKS_PER_PART: usize = 1_000_000;

/// Names the blocks of one upload. Blocks are staged per blob name, so two
/// uploads to one name must not share ids: each upload draws a random
/// 128-bit tag. Every id has the same length, as Azure requires within one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UploadTag(u128);

/// Bytes of a block id: 32 hex digits, `-`, 8 digits, `-`, 6 digits (the
/// client uploader's length too).
pub(crate) use crate::client::upload::BLOCK_ID_LEN;

impl UploadTag {
    pub(crate) fn random() -> Self {
        Self(u128::from_le_bytes(upload_tag()))
    }

    /// The tag in a `MultipartId` (32 lowercase hex digits).
    pub(crate) fn parse(s: &str) -> Result<Self, ObjStoreError> {
        let hex = s.len() == 32 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        match hex.then(|| u128::from_str_radix(s, 16)) {
            Some(Ok(v)) => Ok(Self(v)),
            _ => Err(ObjStoreError::InvalidUploadId(s.to_owned())),
        }
    }

    /// `<tag>-<part>-<block>`, [`BLOCK_ID_LEN`] bytes.
    pub(crate) fn block_id(self, part: usize, block: usize) -> Result<BlockId, ObjStoreError> {
        if part >= MAX_PARTS {
            return Err(ObjStoreError::TooManyBlocks { what: "parts", max: MAX_PARTS });
        }
        if block >= MAX_BLOCKS_PER_PART {
            return Err(ObjStoreError::TooManyBlocks { what: "blocks in a part", max: MAX_BLOCKS_PER_PART });
        }
        Ok(BlockId::new(format!("{self}-{part:08}-{block:06}").as_bytes()).expect("hex and digits make a block id"))
    }
}

impl fmt::Display for UploadTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Walks a payload's chunks, in order, a block at a time.
struct PayloadCursor<'a> {
    chunks: std::slice::Iter<'a, bytes::Bytes>,
    current: &'a [u8],
}

impl<'a> PayloadCursor<'a> {
    fn new(payload: &'a PutPayload) -> Self {
        Self { chunks: payload.as_ref().iter(), current: &[] }
    }

    /// The pieces of the next `n` bytes (fewer at the payload's end).
    fn take(&mut self, n: usize) -> Vec<&'a [u8]> {
        let mut parts = Vec::new();
        let mut left = n;
        while left > 0 {
            if self.current.is_empty() {
                match self.chunks.next() {
                    Some(next) => self.current = next,
                    None => break,
                }
                continue;
            }
            let (piece, rest) = self.current.split_at(left.min(self.current.len()));
            parts.push(piece);
            left -= piece.len();
            self.current = rest;
        }
        parts
    }
}

/// Stage `payload` through `uploader` as part `part` of upload `tag`.
fn stage_payload(
    uploader: &mut BlockUploader,
    block: usize,
    tag: UploadTag,
    part: usize,
    payload: &PutPayload,
) -> Result<(), ObjStoreError> {
    let mut cursor = PayloadCursor::new(payload);
    for (i, start) in (0..payload.content_length()).step_by(block).enumerate() {
        let n = block.min(payload.content_length() - start);
        uploader.stage(tag.block_id(part, i)?, &cursor.take(n))?;
    }
    Ok(())
}

/// Stage `payload` as part `part` of upload `tag`: its blocks with their
/// CRCs, in order (none for an empty payload).
pub(crate) fn stage_part(
    blob: &BlobHandle,
    tag: UploadTag,
    part: usize,
    payload: &PutPayload,
) -> Result<Vec<ListedBlock>, ObjStoreError> {
    let mut uploader = blob.block_uploader();
    stage_payload(&mut uploader, blob.client().block_size(), tag, part, payload)?;
    Ok(uploader.finish()?.blocks)
}

/// Make `blocks` the content of the blob, if `conditions` hold.
pub(crate) fn commit(
    blob: &BlobHandle,
    blocks: Vec<ListedBlock>,
    attrs: &BlobAttributes,
    conditions: Conditions,
) -> Result<BlobWritten, ObjStoreError> {
    Ok(blob.commit_blocks(blocks, attrs.put_options(conditions)).map_err(superseded)?)
}

/// Write `payload` as the whole content of the blob, if `conditions` hold.
pub(crate) fn put_whole(
    blob: &BlobHandle,
    payload: &PutPayload,
    attrs: &BlobAttributes,
    conditions: Conditions,
) -> Result<BlobWritten, ObjStoreError> {
    let block = blob.client().block_size();
    let options = attrs.put_options(conditions);
    if payload.content_length() > block {
        let mut uploader = blob.block_uploader().under_lease(options.conditions.lease_id);
        stage_payload(&mut uploader, block, UploadTag::random(), 0, payload)?;
        return Ok(uploader.commit(options)?);
    }
    let parts: Vec<&[u8]> = payload.iter().map(|b| &b[..]).collect();
    Ok(blob.put_vectored_opts(&parts, options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_have_one_length_and_differ_per_upload() {
        let (a, b) = (UploadTag::random(), UploadTag::random());
        assert_ne!(a, b);
        let ids = [a.block_id(0, 0), a.block_id(7, 12), a.block_id(MAX_PARTS - 1, MAX_BLOCKS_PER_PART - 1)];
        for id in ids {
            assert_eq!(id.unwrap().as_bytes().len(), BLOCK_ID_LEN);
        }
        assert_ne!(a.block_id(1, 0).unwrap(), b.block_id(1, 0).unwrap());
        assert_ne!(a.block_id(1, 0).unwrap(), a.block_id(0, 1).unwrap());
        assert!(matches!(a.block_id(MAX_PARTS, 0), Err(ObjStoreError::TooManyBlocks { .. })));
        assert!(matches!(a.block_id(0, MAX_BLOCKS_PER_PART), Err(ObjStoreError::TooManyBlocks { .. })));
    }

    #[test]
    fn upload_tags_parse_back_and_refuse_anything_else() {
        let t = UploadTag::random();
        assert_eq!(UploadTag::parse(&t.to_string()).unwrap(), t);
        let ok = "0123456789abcdef0123456789abcdef";
        assert_eq!(UploadTag::parse(ok).unwrap().to_string(), ok);
        for bad in
            ["", "0123", "0123456789abcdef", "0123456789abcdef0123456789abcdeF", "+123456789abcdef0123456789abcdef"]
        {
            assert!(matches!(UploadTag::parse(bad), Err(ObjStoreError::InvalidUploadId(_))), "{bad:?}");
        }
    }
}
