//! The fs store called in-process: the same store `vmblob-vsp` serves, with
//! no transport at all (the upper bound of the transport). `qd` operations
//! in flight are `qd` threads calling the store. As the `handoff` path each
//! call goes to a sleeping thread instead: the store behind nothing but one
//! wake-up each way (the floor of a device on its own threads).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmblob_protocol::names::{BlobName, BlockId, ContainerName};
use vmblob_protocol::ops::{BlobRef, ByteRange, Conditions, GetBlob, Metadata, PutBlob, PutBlockList};
use vmblob_vsp::store::fs::FsStore;
use vmblob_vsp::store::{BlobStore, DataSink, DataSource, StoreError, TxnId};

use crate::bench::limits::handoff::{Pool, on_sleeping_threads};

use super::{BenchError, BenchPath, CHUNK, CONTAINER, OpKind, OpsSample, OpsSpec, Result, TRANSFER_PARALLEL};

pub struct DirectPath {
    store: FsStore,
    txn: AtomicU64,
    /// The `handoff` path: every store call runs on sleeping threads
    /// ([`on_sleeping_threads`]), the caller polling this long for the
    /// answer at queue depth 1.
    handoff: Option<Duration>,
}

/// A PUT's bytes from a slice.
struct SliceSource<'a> {
    data: &'a [u8],
    pos: usize,
}

impl DataSource for SliceSource<'_> {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_chunk(&mut self, buf: &mut [u8]) -> std::result::Result<usize, StoreError> {
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A GET's destination: a caller's buffer, reused across operations. Bytes
/// land at `filled..` over whatever the last GET left there; the buffer is
/// zeroed only where it grows (once per thread), not before every read as a
/// cleared `Vec` resized again would be, which cost the direct path a memset
/// of each GET (15% of its samples at 1 MiB QD8, 12-07) that no caller needs.
struct BufSink<'a> {
    buf: &'a mut Vec<u8>,
    filled: usize,
    capacity: u64,
}

impl BufSink<'_> {
    /// The next `len` bytes of the destination, grown if needed.
    fn next(&mut self, len: u64) -> std::result::Result<&mut [u8], StoreError> {
        if self.filled as u64 + len > self.capacity {
            return Err(StoreError::TooLarge("sink overfilled".into()));
        }
        let (start, end) = (self.filled, self.filled + len as usize);
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.filled = end;
        Ok(&mut self.buf[start..end])
    }
}

impl DataSink for BufSink<'_> {
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn fill_from_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> std::result::Result<(), StoreError> {
        file.read_exact_at(self.next(len)?, offset)?;
        Ok(())
    }
    fn write_bytes(&mut self, bytes: &[u8]) -> std::result::Result<(), StoreError> {
        self.next(bytes.len() as u64)?.copy_from_slice(bytes);
        Ok(())
    }
}

pub(crate) fn blob_ref(blob: &str) -> Result<BlobRef> {
    let bad = |what: &str| BenchError::Other(format!("invalid {what} name"));
    Ok(BlobRef {
        container: ContainerName::new(CONTAINER).map_err(|_| bad("container"))?,
        blob: BlobName::new(blob).map_err(|_| bad("blob"))?,
    })
}

impl DirectPath {
    pub fn open(dir: &Path, handoff: Option<Duration>) -> Result<DirectPath> {
        let path = DirectPath { store: FsStore::open(dir)?, txn: AtomicU64::new(1), handoff };
        let name = ContainerName::new(CONTAINER).map_err(|_| BenchError::Other("container name".into()))?;
        path.store.create_container(&name, &Metadata::default(), &path.next_txn())?;
        Ok(path)
    }

    fn next_txn(&self) -> TxnId {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&self.txn.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        t[8..].copy_from_slice(b"benchdir");
        t
    }

    fn put(&self, blob: &str, data: &[u8]) -> Result<()> {
        let req = PutBlob {
            target: blob_ref(blob)?,
            content_type: String::new(),
            headers: Default::default(),
            metadata: Metadata::default(),
            conditions: Conditions::none(),
            content_md5: None,
            // What the client sends with every write, so the store checks it here too.
            content_crc64: Some(vmblob_vsc::crc64(data)),
        };
        self.store.put_blob(&req, &mut SliceSource { data, pos: 0 }, &self.next_txn())?;
        Ok(())
    }

    /// Read `len` bytes at `offset` into the front of `buf` (its contents are
    /// overwritten, not cleared first: see [`BufSink`]).
    fn get(&self, blob: &str, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        let req = GetBlob {
            target: blob_ref(blob)?,
            range: Some(ByteRange { offset, length: len as u64 }),
            conditions: Conditions::none(),
        };
        let (_, _, n) = self.store.get_blob(&req, &mut BufSink { buf, filled: 0, capacity: len as u64 })?;
        if n != len as u64 {
            return Err(BenchError::Other(format!("{blob}: read {n} of {len} bytes")));
        }
        Ok(())
    }
}

/// Run `job` on `pool` (for `caller`, polling `poll` first) or, without a
/// pool, right here.
fn call<'env, T: Send + 'env>(
    pool: Option<&Pool<'env>>,
    caller: usize,
    poll: Duration,
    job: impl FnOnce() -> T + Send + 'env,
) -> T {
    match pool {
        Some(p) => p.run_polling(caller, poll, job),
        None => job(),
    }
}

impl DirectPath {
    /// `body` with the sleeping threads of the hand-off path, or none.
    fn with_pool<'env, R>(&self, body: impl FnOnce(Option<&Pool<'env>>) -> Result<R>) -> Result<R> {
        if self.handoff.is_none() {
            return body(None);
        }
        // One per core: the fewest threads that can use the whole machine.
        let servers = std::thread::available_parallelism().map_or(2, |n| n.get());
        on_sleeping_threads(servers, |pool| body(Some(pool)))?
    }

    /// [`DirectPath::get`] through `pool`; the buffer travels to the server
    /// and back (a move, not a copy).
    #[allow(clippy::too_many_arguments)]
    fn get_via<'env>(
        &'env self,
        pool: Option<&Pool<'env>>,
        caller: usize,
        poll: Duration,
        blob: impl AsRef<str> + Send + 'env,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let mut moved = std::mem::take(buf);
        let (r, moved) = call(pool, caller, poll, move || (self.get(blob.as_ref(), offset, len, &mut moved), moved));
        *buf = moved;
        r
    }
}

impl BenchPath for DirectPath {
    fn name(&self) -> &'static str {
        if self.handoff.is_some() { "handoff" } else { "direct" }
    }

    fn store_blob(&self, blob: &str, data: &[u8]) -> Result<()> {
        self.put(blob, data)
    }

    fn ops(&self, spec: &OpsSpec, data: &[u8]) -> Result<OpsSample> {
        // Polling pays only for a lone request (the guest's rule too).
        let poll = if spec.qd <= 1 { self.handoff.unwrap_or_default() } else { Duration::ZERO };
        self.with_pool(|pool| {
            super::ops_on_threads(spec, |i, buf| {
                let caller = i as usize % spec.qd.max(1);
                match spec.kind {
                    OpKind::Get => self.get_via(pool, caller, poll, spec.blob(i), 0, spec.size, buf),
                    OpKind::Put => call(pool, caller, poll, move || self.put(&spec.blob(i), data)),
                }
            })
        })
    }

    fn transfer(&self, kind: OpKind, blob: &str, data: &[u8]) -> Result<Duration> {
        let start = Instant::now();
        let chunks: Vec<(u64, usize)> = super::ranges(data.len() as u64, CHUNK).collect();
        let target = blob_ref(blob)?;
        let ids: Vec<BlockId> = (0..chunks.len())
            .map(|i| BlockId::new(format!("{i:06}").as_bytes()).map_err(|_| BenchError::Other("block id".into())))
            .collect::<Result<_>>()?;
        // Chunks dealt round-robin to TRANSFER_PARALLEL threads.
        self.with_pool(|pool| {
            std::thread::scope(|s| -> Result<()> {
                let workers: Vec<_> = (0..TRANSFER_PARALLEL.min(chunks.len()))
                    .map(|w| {
                        let (chunks, ids, target) = (&chunks, &ids, &target);
                        s.spawn(move || -> Result<()> {
                            let mut buf = Vec::new();
                            for (i, &(off, len)) in chunks.iter().enumerate().skip(w).step_by(TRANSFER_PARALLEL) {
                                match kind {
                                    OpKind::Get => self.get_via(pool, w, Duration::ZERO, blob, off, len, &mut buf)?,
                                    OpKind::Put => call(pool, w, Duration::ZERO, move || -> Result<()> {
                                        let part = &data[off as usize..off as usize + len];
                                        let mut src = SliceSource { data: part, pos: 0 };
                                        self.store.put_block(
                                            target,
                                            &ids[i],
                                            &mut src,
                                            Some(vmblob_vsc::crc64(part)),
                                        )?;
                                        Ok(())
                                    })?,
                                }
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for w in workers {
                    w.join().map_err(|_| BenchError::Other("transfer thread panicked".into()))??;
                }
                Ok(())
            })
        })?;
        if kind == OpKind::Put {
            let req = PutBlockList {
                target,
                // The bench is the only writer of its names: no CRCs to prove.
                blocks: ids.into_iter().map(Into::into).collect(),
                content_type: String::new(),
                headers: Default::default(),
                metadata: Metadata::default(),
                conditions: Conditions::none(),
            };
            self.store.put_block_list(&req, &self.next_txn())?;
        }
        Ok(start.elapsed())
    }

    fn readers(&self, blobs: &[String], blob_size: u64, range: usize) -> Result<Duration> {
        let sample = self.with_pool(|pool| {
            super::on_threads(blobs.len(), Duration::ZERO, |t, _| {
                let mut buf = Vec::with_capacity(range);
                for (off, len) in super::ranges(blob_size, range) {
                    self.get_via(pool, t, Duration::ZERO, blobs[t].as_str(), off, len, &mut buf)?;
                }
                Ok(OpsSample::default())
            })
        })?;
        Ok(sample.wall)
    }

    fn server_pid(&self) -> Option<u32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-off shape runs the same store calls: every GET returns its
    /// blob's bytes (a wrong length fails `get`), at depth 1 and deeper.
    #[test]
    fn handed_off_ops_read_the_stored_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = DirectPath::open(dir.path(), Some(Duration::from_micros(50))).unwrap();
        let data = vec![3u8; 8192];
        for qd in [1, 4] {
            let spec =
                OpsSpec { kind: OpKind::Get, size: data.len(), qd, duration: Duration::from_millis(30), blobs: 3 };
            for i in 0..spec.blobs as u64 {
                path.store_blob(&spec.blob(i), &data).unwrap();
            }
            let sample = path.ops(&spec, &data).unwrap();
            assert!(sample.ops >= qd as u64, "qd {qd}: {} ops", sample.ops);
            assert_eq!(sample.latencies.len() as u64, sample.ops);
        }
        let spec = OpsSpec { kind: OpKind::Get, size: 4096, qd: 1, duration: Duration::from_millis(5), blobs: 1 };
        assert!(path.ops(&spec, &data).is_err(), "a missing blob fails through the hand-off too");
    }
}
