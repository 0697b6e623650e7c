//! Large transfers: uploads cut into blocks and downloads into ranges, with
//! `parallel` requests in flight, streamed through a bounded set of DMA
//! buffers (a blob is never held whole in memory) and checked end to end
//! with CRC-64/NVME.

use std::collections::VecDeque;
use std::io::{Read, Write};

use vmblob_protocol::ops::{BlobProperties, BlobWritten, Conditions, ETag};

use super::handles::in_place;
use super::{BlobHandle, PutOptions};
use crate::error::{ClientError, ProtocolError};

/// Read exactly `buf.len()` bytes or fail: the caller promised the length.
fn read_full(r: &mut dyn Read, buf: &mut [u8], at: u64, expected: u64) -> Result<(), ClientError> {
    let got = read_up_to(r, buf)?;
    if got < buf.len() {
        return Err(ClientError::ShortSource { got: at + got as u64, expected });
    }
    Ok(())
}

/// Fill `buf` from `r` unless it ends first; returns how much was read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize, ClientError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

impl BlobHandle {
    /// Upload `len` bytes from `reader`. Up to one block goes in a single
    /// PutBlob; larger sources are staged with a [`super::BlockUploader`]
    /// and committed with PutBlockList. `options` apply to the commit.
    ///
    /// Uploads of one name at the same time (threads or clients) behave as
    /// PUTs do on S3 or Azure: the blob is always exactly one upload's bytes,
    /// the last to commit; an upload that loses while still staging fails
    /// with [`ClientError::Superseded`] and commits nothing.
    pub fn put_stream(
        &self,
        reader: &mut dyn Read,
        len: u64,
        options: PutOptions,
        progress: &dyn Fn(u64),
    ) -> Result<BlobWritten, ClientError> {
        let block = self.client().block_size();
        let mut staging = vec![0u8; (len as usize).min(block)];
        if len as usize <= block {
            read_full(reader, &mut staging, 0, len)?;
            let w = self.put_opts(&staging, options)?;
            progress(len);
            return Ok(w);
        }
        let nblocks = len.div_ceil(block as u64);
        let mut uploader = self.block_uploader().under_lease(options.conditions.lease_id);
        for i in 0..nblocks {
            let n = (len - i * block as u64).min(block as u64) as usize;
            read_full(reader, &mut staging[..n], i * block as u64, len)?;
            // Ids of this upload's own: a concurrent put_stream of the name cannot overwrite them.
            uploader.stage_next(&[&staging[..n]])?;
            progress(uploader.acknowledged());
        }
        uploader.commit_with(options, progress)
    }

    /// Upload everything `reader` yields until its end: for a pipe or stdin,
    /// whose length is not known up front. A source that ends within one
    /// block is one PutBlob; a longer one is staged block by block (same ids
    /// and proofs as [`BlobHandle::put_stream`]) and committed.
    pub fn put_stream_to_end(
        &self,
        reader: &mut dyn Read,
        options: PutOptions,
        progress: &dyn Fn(u64),
    ) -> Result<BlobWritten, ClientError> {
        let block = self.client().block_size();
        let mut staging = vec![0u8; block];
        let mut n = read_up_to(reader, &mut staging)?;
        if n < block {
            let w = self.put_opts(&staging[..n], options)?;
            progress(n as u64);
            return Ok(w);
        }
        let mut uploader = self.block_uploader().under_lease(options.conditions.lease_id);
        while n > 0 {
            uploader.stage_next(&[&staging[..n]])?;
            progress(uploader.acknowledged());
            n = read_up_to(reader, &mut staging)?;
        }
        uploader.commit_with(options, progress)
    }

    /// Download the whole blob into `writer`, `parallel` ranges in flight,
    /// pinned to the ETag seen first so a concurrent overwrite cannot mix.
    pub fn get_to_writer(&self, writer: &mut dyn Write, progress: &dyn Fn(u64)) -> Result<BlobProperties, ClientError> {
        self.get_to_writer_opts(writer, Conditions::none(), progress)
    }

    /// As [`BlobHandle::get_to_writer`], if `conditions` hold when it starts.
    pub fn get_to_writer_opts(
        &self,
        writer: &mut dyn Write,
        conditions: Conditions,
        progress: &dyn Fn(u64),
    ) -> Result<BlobProperties, ClientError> {
        let props = self.properties_opts(conditions)?;
        self.read_version(&props, writer, Some(progress))?;
        Ok(props)
    }

    /// Read the version `props` describes, whole, into `writer`.
    pub(super) fn read_version(
        &self,
        props: &BlobProperties,
        writer: &mut dyn Write,
        progress: Option<&dyn Fn(u64)>,
    ) -> Result<(), ClientError> {
        let size = props.content_length;
        let chunk = self.client().block_size() as u64;
        let etag = ETag::new(&props.etag).map_err(|_| ProtocolError::BadETag(props.etag.clone()))?;
        let cond = || Conditions::if_match(etag.clone());
        let mut digest = crate::Crc64::new();
        let mut window = VecDeque::new();
        let mut next = 0u64;
        let mut done = 0u64;
        loop {
            while next < size && window.len() < self.client().options().parallel.max(1) {
                let n = (size - next).min(chunk);
                window.push_back((self.submit_get(next..next + n, cond())?.into_raw(), n));
                next += n;
            }
            let Some((op, n)) = window.pop_front() else { break };
            // Checked and written straight from the DMA buffer the device filled.
            let data = in_place(op.wait()?)?.data;
            if data.len() as u64 != n {
                return Err(ProtocolError::ShortRead { got: data.len() as u64, want: n }.into());
            }
            digest.write(&data);
            writer.write_all(&data)?;
            done += n;
            if let Some(p) = progress {
                p(done);
            }
        }
        if size == 0 {
            // An empty blob still proves it exists with one request.
            self.properties_opts(cond())?;
        }
        if digest.sum64() != props.content_crc64 {
            return Err(ClientError::checksum_mismatch("downloaded bytes differ from the stored CRC"));
        }
        Ok(())
    }
}
