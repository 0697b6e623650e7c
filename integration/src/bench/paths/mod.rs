//! The ways to reach blobs that the bench compares. Each runs the same
//! workload shapes; how it keeps `qd` operations in flight is its own
//! natural way (one pipelining thread, threads, or async tasks).

pub mod direct;
pub mod rest;
pub mod vmblob;

use std::time::{Duration, Instant};

/// The container (or bucket) every path uses.
pub const CONTAINER: &str = "bench";

/// Chunk size of large transfers and of the many-reader ranges.
pub const CHUNK: usize = 4 << 20;
/// Chunks in flight for one large transfer.
pub const TRANSFER_PARALLEL: usize = 8;

/// Why a path could not run a workload.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("vmblob client: {0}")]
    Client(#[from] vmblob_vsc::ClientError),
    #[error("fs store: {0}")]
    Store(#[from] vmblob_vsp::store::StoreError),
    #[error("object_store: {0}")]
    Rest(#[from] object_store::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum OpKind {
    Get,
    Put,
}

/// Whole-blob GETs or PUTs of `size` bytes, `qd` in flight, issued until
/// `duration` has passed. GETs read `g<size>-<i>` (stored beforehand), PUTs
/// overwrite `p<size>-<i>`, `i` cycling through `blobs` names.
#[derive(Debug, Clone)]
pub struct OpsSpec {
    pub kind: OpKind,
    pub size: usize,
    pub qd: usize,
    pub duration: Duration,
    pub blobs: usize,
}

impl OpsSpec {
    pub fn blob(&self, i: u64) -> String {
        let prefix = match self.kind {
            OpKind::Get => 'g',
            OpKind::Put => 'p',
        };
        blob_name(prefix, self.size, (i % self.blobs.max(1) as u64) as usize)
    }
}

pub fn blob_name(prefix: char, size: usize, i: usize) -> String {
    format!("{prefix}{size}-{i}")
}

/// What one timed run of an [`OpsSpec`] did.
#[derive(Debug, Default)]
pub struct OpsSample {
    pub ops: u64,
    pub wall: Duration,
    /// Submit to completion, per operation.
    pub latencies: Vec<Duration>,
}

impl OpsSample {
    pub fn merge(&mut self, other: OpsSample) {
        self.ops += other.ops;
        self.wall = self.wall.max(other.wall);
        self.latencies.extend(other.latencies);
    }
}

/// A way to reach the blobs.
pub trait BenchPath: Send + Sync {
    fn name(&self) -> &'static str;
    /// Store `data` as `blob` (set-up, not timed; any size).
    fn store_blob(&self, blob: &str, data: &[u8]) -> Result<()>;
    /// Run `spec`; PUTs send `data` (`spec.size` bytes).
    fn ops(&self, spec: &OpsSpec, data: &[u8]) -> Result<OpsSample>;
    /// Move one large blob in [`CHUNK`]s, [`TRANSFER_PARALLEL`] in flight
    /// where the path can split it; returns the wall time.
    fn transfer(&self, kind: OpKind, blob: &str, data: &[u8]) -> Result<Duration>;
    /// One client per blob, all at once, each reading its blob front to back
    /// in `range`-byte ranges; returns the wall time until the last is done.
    fn readers(&self, blobs: &[String], blob_size: u64, range: usize) -> Result<Duration>;
    /// The serving process, for its peak RSS (none when in-process).
    fn server_pid(&self) -> Option<u32>;
}

/// Run `per_thread(t, deadline)` on `threads` threads at once and merge what
/// they did (the threaded paths' way to keep `qd` in flight).
pub fn on_threads(
    threads: usize,
    duration: Duration,
    per_thread: impl Fn(usize, Instant) -> Result<OpsSample> + Sync,
) -> Result<OpsSample> {
    let start = Instant::now();
    let deadline = start + duration;
    let results: Vec<Result<OpsSample>> = std::thread::scope(|s| {
        let per_thread = &per_thread;
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || per_thread(t, deadline))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(BenchError::Other("bench thread panicked".into()))))
            .collect()
    });
    let mut total = OpsSample::default();
    for r in results {
        total.merge(r?);
    }
    total.wall = start.elapsed();
    Ok(total)
}

/// An ops workload on `qd` threads, one operation at a time each: thread `t`
/// runs `op(i, scratch)` for `i = t, t + qd, ...` until the deadline, timing
/// every call (`scratch` is the thread's own buffer).
pub fn ops_on_threads(spec: &OpsSpec, op: impl Fn(u64, &mut Vec<u8>) -> Result<()> + Sync) -> Result<OpsSample> {
    let qd = spec.qd.max(1);
    on_threads(qd, spec.duration, |t, deadline| {
        let mut out = OpsSample::default();
        let mut scratch = Vec::with_capacity(spec.size);
        let mut i = t as u64;
        while Instant::now() < deadline {
            let t0 = Instant::now();
            op(i, &mut scratch)?;
            out.latencies.push(t0.elapsed());
            out.ops += 1;
            i += qd as u64;
        }
        Ok(out)
    })
}

/// Byte ranges `(offset, len)` covering `size` bytes in `chunk`-byte pieces.
pub fn ranges(size: u64, chunk: usize) -> impl Iterator<Item = (u64, usize)> {
    (0..size.div_ceil(chunk as u64)).map(move |i| {
        let off = i * chunk as u64;
        (off, (size - off).min(chunk as u64) as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_exactly() {
        let r: Vec<_> = ranges(10, 4).collect();
        assert_eq!(r, vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(ranges(0, 4).count(), 0);
        assert_eq!(ranges(8, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 4)]);
    }

    #[test]
    fn op_blobs_cycle_through_the_names() {
        let spec = OpsSpec { kind: OpKind::Get, size: 4096, qd: 1, duration: Duration::ZERO, blobs: 3 };
        assert_eq!(spec.blob(0), "g4096-0");
        assert_eq!(spec.blob(4), "g4096-1");
        let put = OpsSpec { kind: OpKind::Put, ..spec };
        assert_eq!(put.blob(2), "p4096-2");
    }

    #[test]
    fn threads_merge_their_samples() {
        let s = on_threads(3, Duration::ZERO, |t, _| {
            Ok(OpsSample { ops: t as u64 + 1, wall: Duration::ZERO, latencies: vec![Duration::from_micros(1); t] })
        })
        .unwrap();
        assert_eq!((s.ops, s.latencies.len()), (6, 3));
        assert!(
            on_threads(2, Duration::ZERO, |t, _| if t == 1 {
                Err(BenchError::Other("x".into()))
            } else {
                Ok(OpsSample::default())
            })
            .is_err()
        );
    }
}
