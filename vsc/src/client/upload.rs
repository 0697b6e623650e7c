//! The windowed block uploader: blocks are staged with `parallel` PutBlocks
//! in flight, each from its own DMA buffer (so memory stays bounded by the
//! window), each checked against its CRC-64/NVME, and the whole against the
//! CRC the commit returns. `put_stream`, the object store's writes, copies
//! and multipart parts all stage through it.

use std::collections::VecDeque;

use vmblob_protocol::names::BlockId;
use vmblob_protocol::ops::BlobWritten;

use super::handles::parts_crc;
use super::{BlobHandle, Pending, PutOptions};
use crate::error::ClientError;

/// Blocks staged and acknowledged, in staging order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedBlocks {
    pub ids: Vec<BlockId>,
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
    window: VecDeque<InFlight>,
    ids: Vec<BlockId>,
    digest: crate::Crc64,
    staged: u64,
    acknowledged: u64,
    parallel: usize,
}

impl BlockUploader {
    pub(super) fn new(blob: BlobHandle) -> Self {
        let parallel = blob.client().options().parallel.max(1);
        Self {
            blob,
            window: VecDeque::new(),
            ids: Vec::new(),
            digest: crate::Crc64::new(),
            staged: 0,
            acknowledged: 0,
            parallel,
        }
    }

    /// Stage the bytes of `parts`, in order, as the next block under `id`
    /// (at most the device's data limit; see [`BlobClient::block_size`]).
    /// Waits for the oldest block in flight when the window is full.
    ///
    /// [`BlobClient::block_size`]: super::BlobClient::block_size
    pub fn stage(&mut self, id: BlockId, parts: &[&[u8]]) -> Result<(), ClientError> {
        let crc = parts_crc(parts);
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let op = self.blob.submit_block(&id, parts, crc)?;
        parts.iter().for_each(|p| self.digest.write(p));
        self.ids.push(id);
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
        Ok(StagedBlocks { ids: self.ids, crc64: self.digest.sum64(), len: self.staged })
    }

    /// Wait for every block in flight; the ids to commit, in order.
    pub fn finish(self) -> Result<StagedBlocks, ClientError> {
        self.finish_with(&|_| {})
    }

    /// Finish and commit the blocks as the blob, checking that the committed
    /// blob's CRC is that of the bytes staged.
    pub fn commit(self, options: PutOptions) -> Result<BlobWritten, ClientError> {
        self.commit_with(options, &|_| {})
    }

    /// [`BlockUploader::commit`], calling `progress` as the last blocks are acknowledged.
    pub fn commit_with(self, options: PutOptions, progress: &dyn Fn(u64)) -> Result<BlobWritten, ClientError> {
        let blob = self.blob.clone();
        let staged = self.finish_with(progress)?;
        let written = blob.commit_blocks(staged.ids, options)?;
        if written.content_crc64 != staged.crc64 {
            return Err(ClientError::checksum_mismatch("committed blob differs from the source"));
        }
        Ok(written)
    }
}
