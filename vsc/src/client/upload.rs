//! The windowed block uploader: blocks are staged with `parallel` PutBlocks
//! in flight, each from its own DMA buffer (so memory stays bounded by the
//! window), each checked against its CRC-64/NVME, and the whole against the
//! CRC the commit returns. `put_stream`, the object store's writes, copies
//! and multipart parts all stage through it.
//!
//! Concurrent uploads of one name must not pick up each other's blocks
//! (docs/PROTOCOL.md §6.4, "Concurrent writers"): ids are per upload
//! ([`BlockUploader::stage_next`], or the caller's own unique ids), and the
//! commit lists each block's CRC so the device refuses a block it holds
//! under that id that this upload did not stage.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use vmblob_protocol::BlobError;
use vmblob_protocol::names::BlockId;
use vmblob_protocol::ops::{BlobWritten, LeaseId, ListedBlock};

use super::handles::parts_crc;
use super::{BlobHandle, Pending, PutOptions};
use crate::error::ClientError;

/// 16 bytes no other upload uses: random, or if the OS cannot give random
/// bytes, the clock, the process and a counter (unique within a host).
pub(crate) fn upload_tag() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut tag = [0u8; 16];
    if getrandom::fill(&mut tag).is_err() {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        tag[..8].copy_from_slice(&nanos.to_le_bytes());
        let unique = (u64::from(std::process::id()) << 40) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
        tag[8..].copy_from_slice(&unique.to_le_bytes());
    }
    tag
}

/// Bytes of every block id vmblob's clients make, this uploader's and
/// `objstore`'s multipart ones alike: Azure (and the VSP) refuse a block whose
/// id length differs from the name's uncommitted blocks', so two kinds of
/// upload of one name must not differ in it.
pub(crate) const BLOCK_ID_LEN: usize = 48;

/// The id of block `index` of the upload `tag`: 32 hex digits, `-`, 15 decimal
/// digits ([`BLOCK_ID_LEN`] bytes for every block).
pub(crate) fn block_id(tag: &[u8; 16], index: usize) -> BlockId {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(BLOCK_ID_LEN);
    tag.iter().for_each(|b| {
        let _ = write!(s, "{b:02x}");
    });
    let _ = write!(s, "-{:015}", index as u64 % 1_000_000_000_000_000);
    BlockId::new(s.as_bytes()).unwrap_or_else(|_| unreachable!("48 ASCII bytes are a valid block id"))
}

/// The device's answer to a commit of blocks this upload staged: an
/// `InvalidBlockList` means another writer's commit of the name discarded
/// them, or re-staged one of their ids.
pub(crate) fn superseded(e: ClientError) -> ClientError {
    match e {
        ClientError::Status { error: BlobError::InvalidBlockList, message } => ClientError::Superseded { message },
        e => e,
    }
}

/// Blocks staged and acknowledged, in staging order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedBlocks {
    /// Each block's id with the CRC-64 of the bytes staged under it.
    pub blocks: Vec<ListedBlock>,
    /// CRC-64/NVME of all the blocks' bytes in order.
    pub crc64: u64,
    pub len: u64,
}

/// A block in flight: its answer and what it must say.
struct InFlight {
    op: Pending<u64>,
    crc: u64,
    len: u64,
}

/// Stages blocks of one blob, `parallel` in flight (see the module docs).
pub struct BlockUploader {
    blob: BlobHandle,
    /// This upload's id prefix for [`BlockUploader::stage_next`].
    tag: [u8; 16],
    window: VecDeque<InFlight>,
    blocks: Vec<ListedBlock>,
    digest: crate::Crc64,
    staged: u64,
    acknowledged: u64,
    parallel: usize,
    /// The blob's lease, sent with every PutBlock (a leased blob takes
    /// blocks only from its holder).
    lease_id: Option<LeaseId>,
}

impl BlockUploader {
    pub(super) fn new(blob: BlobHandle) -> Self {
        let parallel = blob.client().options().parallel.max(1);
        Self {
            blob,
            tag: upload_tag(),
            window: VecDeque::new(),
            blocks: Vec::new(),
            digest: crate::Crc64::new(),
            staged: 0,
            acknowledged: 0,
            parallel,
            lease_id: None,
        }
    }

    /// Stage every block under `lease_id` (the commit's conditions carry it too).
    pub fn under_lease(mut self, lease_id: Option<LeaseId>) -> Self {
        self.lease_id = lease_id;
        self
    }

    /// Stage the bytes of `parts` as the next block, under an id of this
    /// upload's own (a random prefix and the block's index).
    pub fn stage_next(&mut self, parts: &[&[u8]]) -> Result<(), ClientError> {
        let id = block_id(&self.tag, self.blocks.len());
        self.stage(id, parts)
    }

    /// Stage the bytes of `parts`, in order, as the next block under `id`
    /// (at most the device's data limit; see [`BlobClient::block_size`]).
    /// Waits for the oldest block in flight when the window is full. `id`
    /// must be unique to this upload, or a concurrent upload of the name
    /// using it makes this one's commit fail with [`ClientError::Superseded`].
    ///
    /// [`BlobClient::block_size`]: super::BlobClient::block_size
    pub fn stage(&mut self, id: BlockId, parts: &[&[u8]]) -> Result<(), ClientError> {
        let crc = parts_crc(parts);
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let op = self.blob.submit_block(&id, parts, crc, self.lease_id)?;
        parts.iter().for_each(|p| self.digest.write(p));
        self.blocks.push(ListedBlock::proven(id, crc));
        self.staged += len;
        self.window.push_back(InFlight { op, crc, len });
        if self.window.len() >= self.parallel {
            self.settle_oldest()?;
        }
        Ok(())
    }

    /// Bytes the device has acknowledged so far (for progress).
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    /// Bytes handed to [`BlockUploader::stage`] so far.
    pub fn staged(&self) -> u64 {
        self.staged
    }

    fn settle_oldest(&mut self) -> Result<(), ClientError> {
        let Some(b) = self.window.pop_front() else { return Ok(()) };
        if b.op.wait()? != b.crc {
            return Err(ClientError::checksum_mismatch("staged block differs from the source"));
        }
        self.acknowledged += b.len;
        Ok(())
    }

    /// Wait for every block in flight, calling `progress` with the bytes acknowledged.
    pub fn finish_with(mut self, progress: &dyn Fn(u64)) -> Result<StagedBlocks, ClientError> {
        while !self.window.is_empty() {
            self.settle_oldest()?;
            progress(self.acknowledged);
        }
        Ok(StagedBlocks { blocks: self.blocks, crc64: self.digest.sum64(), len: self.staged })
    }

    /// Wait for every block in flight; the ids to commit, in order.
    pub fn finish(self) -> Result<StagedBlocks, ClientError> {
        self.finish_with(&|_| {})
    }

    /// Finish and commit the blocks as the blob, checking that the committed
    /// blob's CRC is that of the bytes staged. Another writer's commit of the
    /// name while this upload staged makes it fail with
    /// [`ClientError::Superseded`], committing nothing.
    pub fn commit(self, options: PutOptions) -> Result<BlobWritten, ClientError> {
        self.commit_with(options, &|_| {})
    }

    /// [`BlockUploader::commit`], calling `progress` as the last blocks are acknowledged.
    pub fn commit_with(self, options: PutOptions, progress: &dyn Fn(u64)) -> Result<BlobWritten, ClientError> {
        let blob = self.blob.clone();
        let staged = self.finish_with(progress)?;
        let written = blob.commit_blocks(staged.blocks, options).map_err(superseded)?;
        if written.content_crc64 != staged.crc64 {
            return Err(ClientError::checksum_mismatch("committed blob differs from the source"));
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_are_per_upload_and_of_one_length() {
        let (a, b) = (upload_tag(), upload_tag());
        assert_ne!(a, b);
        assert_ne!(block_id(&a, 0), block_id(&b, 0));
        assert_ne!(block_id(&a, 0), block_id(&a, 1));
        for i in [0, 7, 99_999_999, usize::MAX] {
            assert_eq!(block_id(&a, i).as_bytes().len(), BLOCK_ID_LEN);
        }
    }

    #[test]
    fn only_an_invalid_block_list_is_superseded() {
        let status = |error| ClientError::Status { error, message: "m".into() };
        assert!(
            matches!(superseded(status(BlobError::InvalidBlockList)), ClientError::Superseded { message } if message == "m")
        );
        assert!(matches!(superseded(status(BlobError::Io)), ClientError::Status { error: BlobError::Io, .. }));
    }
}
