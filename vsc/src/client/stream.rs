//! Large transfers: uploads cut into blocks and downloads into ranges, with
//! `parallel` requests in flight, streamed through a bounded set of DMA
//! buffers (a blob is never held whole in memory) and checked end to end
//! with CRC-64/NVME.

use std::collections::VecDeque;
use std::io::{Read, Write};

use vmblob_protocol::BlobError;
use vmblob_protocol::names::BlockId;
use vmblob_protocol::ops::{BlobProperties, BlobWritten, Conditions, ETag, OpResponse};

use crate::client::{BlobClient, Data, PendingOp, target};
use crate::error::ClientError;

/// Read exactly `buf.len()` bytes or fail: the caller promised `len`.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), ClientError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ClientError::Invalid("source shorter than its stated length".into()),
        _ => ClientError::Io(e),
    })
}

fn checksum_mismatch(what: &str) -> ClientError {
    ClientError::Blob { error: BlobError::ChecksumMismatch, message: what.into() }
}

impl BlobClient {
    /// Upload `len` bytes from `reader`. Up to one block goes in a single
    /// PutBlob; larger sources go through PutBlock/PutBlockList.
    pub fn put_stream(
        &self,
        c: &str,
        b: &str,
        reader: &mut dyn Read,
        len: u64,
        progress: &dyn Fn(u64),
    ) -> Result<BlobWritten, ClientError> {
        let t = target(c, b)?;
        let block = self.block_size();
        let mut digest = crc64fast_nvme::Digest::new();
        let mut staging = vec![0u8; (len as usize).min(block)];
        if len as usize <= block {
            read_full(reader, &mut staging)?;
            let w = self.put(c, b, &staging)?;
            progress(len);
            return Ok(w);
        }
        let nblocks = len.div_ceil(block as u64);
        let width = nblocks.to_string().len().max(6);
        let mut window: VecDeque<(PendingOp, u64, u64)> = VecDeque::new();
        let mut ids = Vec::with_capacity(nblocks as usize);
        let mut sent = 0u64;
        for i in 0..nblocks {
            let n = (len - i * block as u64).min(block as u64) as usize;
            read_full(reader, &mut staging[..n])?;
            digest.write(&staging[..n]);
            let crc = crate::crc64(&staging[..n]);
            let mut buf = self.alloc_data(n)?;
            buf.write_at(0, &staging[..n]).map_err(|e| ClientError::Transport(e.to_string()))?;
            // Same-length ids, as Azure requires within one blob.
            let id = BlockId::new(format!("{i:0width$}").as_bytes())
                .map_err(|_| ClientError::Invalid("too many blocks".into()))?;
            ids.push(id.clone());
            window.push_back((self.submit_block(&t, &id, buf, n, crc)?, crc, n as u64));
            if window.len() >= self.options().parallel.max(1) {
                sent += Self::finish_block(window.pop_front())?;
                progress(sent);
            }
        }
        while let Some(p) = window.pop_front() {
            sent += Self::finish_block(Some(p))?;
            progress(sent);
        }
        let written = self.commit_blocks(&t, ids)?;
        if written.content_crc64 != digest.sum64() {
            return Err(checksum_mismatch("committed blob differs from the source"));
        }
        Ok(written)
    }

    /// Wait for a staged block; returns its size.
    fn finish_block(p: Option<(PendingOp, u64, u64)>) -> Result<u64, ClientError> {
        let Some((op, crc, n)) = p else { return Ok(0) };
        match op.wait()?.response {
            OpResponse::BlockStaged { content_crc64 } if content_crc64 == crc => Ok(n),
            OpResponse::BlockStaged { .. } => Err(checksum_mismatch("staged block differs")),
            r => Err(ClientError::Protocol(format!("unexpected {r:?}"))),
        }
    }

    /// Download the whole blob into `writer`, `parallel` ranges in flight,
    /// pinned to the ETag seen first so a concurrent overwrite cannot mix.
    pub fn get_to_writer(
        &self,
        c: &str,
        b: &str,
        writer: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> Result<BlobProperties, ClientError> {
        let props = self.stat(c, b)?;
        self.get_to_writer_from(c, b, &props, writer, Some(progress))?;
        Ok(props)
    }

    pub(crate) fn get_to_writer_from(
        &self,
        c: &str,
        b: &str,
        props: &BlobProperties,
        writer: &mut dyn Write,
        progress: Option<&dyn Fn(u64)>,
    ) -> Result<(), ClientError> {
        let t = target(c, b)?;
        let size = props.content_length;
        let chunk = self.block_size() as u64;
        let etag = ETag::new(&props.etag).map_err(|_| ClientError::Protocol("bad etag".into()))?;
        let cond = || Conditions { if_match: Some(etag.clone()), if_none_match: None };
        let mut digest = crc64fast_nvme::Digest::new();
        let mut window: VecDeque<(PendingOp, usize)> = VecDeque::new();
        let mut next = 0u64;
        let mut done = 0u64;
        // One scratch buffer for every range instead of a fresh one each.
        let mut data = Vec::with_capacity(chunk.min(size) as usize);
        loop {
            while next < size && window.len() < self.options().parallel.max(1) {
                let n = (size - next).min(chunk) as usize;
                window.push_back((self.submit_range(&t, next, n, cond())?, n));
                next += n as u64;
            }
            let Some((op, n)) = window.pop_front() else { break };
            Self::finish_range_into(op.wait()?, &mut data)?;
            if data.len() != n {
                return Err(ClientError::Protocol(format!("range returned {} of {n} bytes", data.len())));
            }
            digest.write(&data);
            writer.write_all(&data)?;
            done += n as u64;
            if let Some(p) = progress {
                p(done);
            }
        }
        if size == 0 {
            // An empty blob still proves it exists with one request.
            let _ = self
                .call(&vmblob_protocol::OpRequest::GetBlobProperties { target: t, conditions: cond() }, Data::None)?;
        }
        if digest.sum64() != props.content_crc64 {
            return Err(checksum_mismatch("downloaded bytes differ from the stored CRC"));
        }
        Ok(())
    }
}
