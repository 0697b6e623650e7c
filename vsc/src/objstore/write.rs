//! Writes. An object up to one block goes in one PutBlob; a larger one is
//! staged as blocks, `parallel` in flight, and committed with one
//! PutBlockList. Either way the object appears whole or not at all, and the
//! write's conditions are checked by the device in the step that commits.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::PutPayload;
use vmblob_protocol::BlobError;
use vmblob_protocol::names::BlockId;
use vmblob_protocol::ops::{BlobRef, BlobWritten, Conditions, OpRequest, OpResponse, PutBlob, PutBlockList};

use super::attributes::BlobAttributes;
use super::error::ObjStoreError;
use crate::client::{BlobClient, Data, PendingOp};
use crate::error::ClientError;
use crate::transport::dma::DmaBuf;

const MAX_PARTS: usize = 100_000_000;
const MAX_BLOCKS_PER_PART: usize = 1_000_000;

/// Names the blocks of one upload. Blocks are staged per blob name, so two
/// uploads to one name must not share ids: each upload draws a random tag.
/// Every id has the same length, as Azure requires within one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UploadTag(u64);

impl UploadTag {
    pub(crate) fn random() -> Self {
        // The counter keeps tags distinct even if the random source fails.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Self(u64::from_le_bytes(b) ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
    }

    /// The tag in a `MultipartId` (16 lowercase hex digits).
    pub(crate) fn parse(s: &str) -> Result<Self, ObjStoreError> {
        let hex = s.len() == 16 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        match hex.then(|| u64::from_str_radix(s, 16)) {
            Some(Ok(v)) => Ok(Self(v)),
            _ => Err(ObjStoreError::InvalidUploadId(s.to_owned())),
        }
    }

    /// `<tag>-<part>-<block>`, 32 bytes.
    pub(crate) fn block_id(self, part: usize, block: usize) -> Result<BlockId, ObjStoreError> {
        if part >= MAX_PARTS {
            return Err(ObjStoreError::TooManyBlocks { what: "parts", max: MAX_PARTS });
        }
        if block >= MAX_BLOCKS_PER_PART {
            return Err(ObjStoreError::TooManyBlocks { what: "blocks in a part", max: MAX_BLOCKS_PER_PART });
        }
        BlockId::new(format!("{self}-{part:08}-{block:06}").as_bytes()).map_err(|_| invalid("block id"))
    }
}

impl fmt::Display for UploadTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Copies a payload's bytes, in order, into DMA buffers.
struct PayloadCursor<'a> {
    chunks: std::slice::Iter<'a, bytes::Bytes>,
    current: &'a [u8],
}

impl<'a> PayloadCursor<'a> {
    fn new(payload: &'a PutPayload) -> Self {
        Self { chunks: payload.as_ref().iter(), current: &[] }
    }

    /// Fill `buf[..n]` with the next `n` bytes; returns their CRC-64/NVME.
    fn copy_into(&mut self, buf: &mut DmaBuf, n: usize) -> Result<u64, ObjStoreError> {
        let mut digest = crc64fast_nvme::Digest::new();
        let mut at = 0;
        while at < n {
            if self.current.is_empty() {
                let next = self.chunks.next().ok_or_else(|| invalid("payload shorter than its length"))?;
                self.current = next;
                continue;
            }
            let take = (n - at).min(self.current.len());
            let (piece, rest) = self.current.split_at(take);
            buf.write_at(at, piece).map_err(|e| ClientError::Transport(e.to_string()))?;
            digest.write(piece);
            at += take;
            self.current = rest;
        }
        Ok(digest.sum64())
    }
}

fn invalid(what: &str) -> ObjStoreError {
    ObjStoreError::Client(ClientError::Invalid(what.into()))
}

pub(crate) fn checksum_mismatch(what: &str) -> ObjStoreError {
    ObjStoreError::Client(ClientError::Blob { error: BlobError::ChecksumMismatch, message: what.into() })
}

fn unexpected(r: OpResponse) -> ObjStoreError {
    ObjStoreError::Client(ClientError::Protocol(format!("unexpected response {r:?}")))
}

/// Stage `payload` as part `part` of upload `tag`: its block ids, in order
/// (none for an empty payload).
pub(crate) fn stage_part(
    client: &BlobClient,
    t: &BlobRef,
    tag: UploadTag,
    part: usize,
    payload: &PutPayload,
) -> Result<Vec<BlockId>, ObjStoreError> {
    let block = client.block_size();
    let len = payload.content_length();
    let mut cursor = PayloadCursor::new(payload);
    let mut window: VecDeque<(PendingOp, u64)> = VecDeque::new();
    let mut ids = Vec::with_capacity(len.div_ceil(block));
    for (i, start) in (0..len).step_by(block).enumerate() {
        let n = block.min(len - start);
        let id = tag.block_id(part, i)?;
        let mut buf = client.alloc_data(n)?;
        let crc = cursor.copy_into(&mut buf, n)?;
        window.push_back((client.submit_block(t, &id, buf, n, crc)?, crc));
        ids.push(id);
        if window.len() >= client.options().parallel.max(1) {
            staged(window.pop_front())?;
        }
    }
    while let Some(p) = window.pop_front() {
        staged(Some(p))?;
    }
    Ok(ids)
}

pub(crate) fn staged(p: Option<(PendingOp, u64)>) -> Result<(), ObjStoreError> {
    let Some((op, crc)) = p else { return Ok(()) };
    match op.wait()?.response {
        OpResponse::BlockStaged { content_crc64 } if content_crc64 == crc => Ok(()),
        OpResponse::BlockStaged { .. } => Err(checksum_mismatch("staged block differs from the source")),
        r => Err(unexpected(r)),
    }
}

/// Make `blocks` the content of `t`, if `conditions` hold.
pub(crate) fn commit(
    client: &BlobClient,
    t: &BlobRef,
    blocks: Vec<BlockId>,
    attrs: &BlobAttributes,
    conditions: Conditions,
) -> Result<BlobWritten, ObjStoreError> {
    let op = OpRequest::PutBlockList(PutBlockList {
        target: t.clone(),
        blocks,
        content_type: attrs.content_type.clone(),
        metadata: attrs.metadata.clone(),
        conditions,
    });
    match client.call(&op, Data::None)?.response {
        OpResponse::BlobWritten(w) => Ok(w),
        r => Err(unexpected(r)),
    }
}

/// Write `payload` as the whole content of `t`, if `conditions` hold.
pub(crate) fn put_whole(
    client: &BlobClient,
    t: &BlobRef,
    payload: &PutPayload,
    attrs: &BlobAttributes,
    conditions: Conditions,
) -> Result<BlobWritten, ObjStoreError> {
    let len = payload.content_length();
    if len > client.block_size() {
        let ids = stage_part(client, t, UploadTag::random(), 0, payload)?;
        let written = commit(client, t, ids, attrs, conditions)?;
        let mut digest = crc64fast_nvme::Digest::new();
        payload.iter().for_each(|chunk| digest.write(chunk));
        if written.content_crc64 != digest.sum64() {
            return Err(checksum_mismatch("committed object differs from the payload"));
        }
        return Ok(written);
    }
    let mut buf = client.alloc_data(len)?;
    let crc = PayloadCursor::new(payload).copy_into(&mut buf, len)?;
    let op = OpRequest::PutBlob(PutBlob {
        target: t.clone(),
        content_type: attrs.content_type.clone(),
        metadata: attrs.metadata.clone(),
        conditions,
        content_md5: None,
        content_crc64: Some(crc),
    });
    match client.call(&op, Data::OutBuf(buf, len))?.response {
        OpResponse::BlobWritten(w) if w.content_crc64 == crc => Ok(w),
        OpResponse::BlobWritten(_) => Err(checksum_mismatch("stored object differs from the payload")),
        r => Err(unexpected(r)),
    }
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
            assert_eq!(id.unwrap().as_bytes().len(), 32);
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
        for bad in ["", "0123", "0123456789abcdeF", "0123456789abcdefa", "+123456789abcdef", "ghijklmnopqrstuv"] {
            assert!(matches!(UploadTag::parse(bad), Err(ObjStoreError::InvalidUploadId(_))), "{bad:?}");
        }
    }
}
