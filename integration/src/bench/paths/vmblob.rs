//! vmblob over vhost-user: the real `vmblob-vsp` daemon with its fs store,
//! driven by the real client stack (`BlobClient` on `VirtioTransport`).
//! `qd` small operations in flight are pipelined from one thread with
//! `submit`/`wait`, the way an asynchronous guest driver issues them; MiB-sized
//! ones run on `qd` threads, one request each, as an application moving large
//! objects would. GETs are read in place (`submit_get_bytes`) unless
//! `copy_out` is set.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use vmblob_protocol::ops::BlobWritten;
use vmblob_vsc::{BlobBytes, BlobContent, BlobHandle, ClientOptions, Conditions, ContainerClient, Pending, PutOptions};

use super::{BenchError, BenchPath, CHUNK, CONTAINER, OpKind, OpsSample, OpsSpec, Result, TRANSFER_PARALLEL};
use crate::{Guest, GuestOptions, Vsp, VspOptions};

/// How the daemon and the guest are set up.
#[derive(Debug, Clone)]
pub struct VmblobOptions {
    /// Request queues of the daemon and of the guest.
    pub queues: usize,
    /// Guest busy-poll window after a completion.
    pub guest_poll: Duration,
    /// Extra daemon flags, passed as given.
    pub vsp_args: Vec<String>,
    /// GETs through the copying API (`submit_get`: the bytes copied out of
    /// the DMA buffer into a `Vec`). Off: `submit_get_bytes`, which leaves
    /// them in the DMA buffer for the caller to read in place.
    pub copy_out: bool,
}

pub struct VmblobPath {
    // Field order: the guest disconnects before the daemon is killed. The
    // container's client shares the guest's transport; the guest is kept
    // for its lifetime only.
    container: ContainerClient,
    _guest: Guest,
    vsp: Vsp,
    copy_out: bool,
}

impl VmblobPath {
    /// Start a daemon in `dir` and connect a guest to it. Call on the
    /// thread that outlives the path (the daemon dies with that thread).
    pub fn start(dir: &Path, opts: &VmblobOptions) -> Result<VmblobPath> {
        let vsp_opts = VspOptions { log_level: "warn", extra: opts.vsp_args.clone(), ..VspOptions::default() };
        // The rig panics when the daemon cannot be built or started; here that
        // is a path that is not available, not the end of the run.
        let vsp = std::panic::catch_unwind(|| Vsp::start(dir, vsp_opts.queues(opts.queues))).map_err(|p| {
            let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            BenchError::Other(format!("vmblob-vsp did not start: {}", why.unwrap_or_default()))
        })?;
        let mut guest_opts = GuestOptions::default().queues(opts.queues).poll(opts.guest_poll);
        // Room for 16 readers' 4 MiB ranges plus the deepest queue of small requests.
        guest_opts.ram_size = 1 << 30;
        guest_opts.client = ClientOptions { timeout_ms: 60_000, block_size: CHUNK as u32, parallel: TRANSFER_PARALLEL };
        let guest = Guest::try_connect(vsp.socket(), guest_opts)?;
        let container = guest.client.container(CONTAINER);
        container.create()?;
        Ok(VmblobPath { container, _guest: guest, vsp, copy_out: opts.copy_out })
    }

    fn blob(&self, name: &str) -> BlobHandle {
        self.container.blob(name)
    }

    /// A GET through the API `copy_out` picks; waiting checks its length.
    fn submit_get(&self, blob: &str, offset: u64, len: usize) -> Result<InFlight> {
        let range = offset..offset + len as u64;
        let blob = self.blob(blob);
        Ok(if self.copy_out {
            InFlight::Copied(blob.submit_get(range, Conditions::none())?, len)
        } else {
            InFlight::InPlace(blob.submit_get_bytes(range, Conditions::none())?, len)
        })
    }

    fn submit_put(&self, blob: &str, data: &[u8]) -> Result<InFlight> {
        Ok(InFlight::Put(self.blob(blob).submit_put(data, PutOptions::default())?))
    }

    fn ops_pipelined(&self, spec: &OpsSpec, data: &[u8]) -> Result<OpsSample> {
        let mut out = OpsSample::default();
        let mut window: VecDeque<(InFlight, Instant)> = VecDeque::with_capacity(spec.qd);
        let start = Instant::now();
        let deadline = start + spec.duration;
        let mut i = 0u64;
        loop {
            while window.len() < spec.qd.max(1) && Instant::now() < deadline {
                let t0 = Instant::now();
                let op = match spec.kind {
                    OpKind::Get => self.submit_get(&spec.blob(i), 0, spec.size)?,
                    OpKind::Put => self.submit_put(&spec.blob(i), data)?,
                };
                window.push_back((op, t0));
                i += 1;
            }
            let Some((op, t0)) = window.pop_front() else { break };
            op.finish()?;
            out.latencies.push(t0.elapsed());
            out.ops += 1;
        }
        out.wall = start.elapsed();
        Ok(out)
    }

    fn ops_threaded(&self, spec: &OpsSpec, data: &[u8]) -> Result<OpsSample> {
        super::ops_on_threads(spec, |i, _| {
            match spec.kind {
                OpKind::Get => self.submit_get(&spec.blob(i), 0, spec.size)?,
                OpKind::Put => self.submit_put(&spec.blob(i), data)?,
            }
            .finish()
        })
    }
}

/// Requests of at least this size run on `qd` threads (see `ops`).
const THREADED_FROM: usize = 1 << 20;

/// A submitted operation of a workload, and the GET length it must return.
enum InFlight {
    InPlace(Pending<BlobBytes>, usize),
    Copied(Pending<BlobContent>, usize),
    Put(Pending<BlobWritten>),
}

impl InFlight {
    /// Wait for the answer and check a GET's length; its bytes are dropped
    /// unread, as the direct store's are (both end up in caller memory).
    fn finish(self) -> Result<()> {
        let (got, want) = match self {
            InFlight::InPlace(op, want) => (op.wait()?.data.len(), want),
            InFlight::Copied(op, want) => (op.wait()?.data.len(), want),
            InFlight::Put(op) => return Ok(op.wait().map(drop)?),
        };
        if got != want {
            return Err(BenchError::Other(format!("GET returned {got} of {want} bytes")));
        }
        Ok(())
    }
}

impl BenchPath for VmblobPath {
    fn name(&self) -> &'static str {
        "vmblob"
    }

    fn store_blob(&self, blob: &str, data: &[u8]) -> Result<()> {
        self.blob(blob).put_stream(&mut &data[..], data.len() as u64, PutOptions::default(), &|_| {})?;
        Ok(())
    }

    /// Small requests pipelined from one thread (an asynchronous driver);
    /// MiB-sized ones from `qd` threads with one request each, as an
    /// application moving large objects does (and as the direct path runs).
    fn ops(&self, spec: &OpsSpec, data: &[u8]) -> Result<OpsSample> {
        if spec.size >= THREADED_FROM { self.ops_threaded(spec, data) } else { self.ops_pipelined(spec, data) }
    }

    fn transfer(&self, kind: OpKind, blob: &str, data: &[u8]) -> Result<Duration> {
        let start = Instant::now();
        match kind {
            OpKind::Put => {
                self.blob(blob).put_stream(&mut &data[..], data.len() as u64, PutOptions::default(), &|_| {})?;
            }
            OpKind::Get => {
                let props = self.blob(blob).get_to_writer(&mut std::io::sink(), &|_| {})?;
                if props.content_length != data.len() as u64 {
                    return Err(BenchError::Other(format!("{blob} is {} bytes", props.content_length)));
                }
            }
        }
        Ok(start.elapsed())
    }

    fn readers(&self, blobs: &[String], blob_size: u64, range: usize) -> Result<Duration> {
        let sample = super::on_threads(blobs.len(), Duration::ZERO, |t, _| {
            for (off, len) in super::ranges(blob_size, range) {
                self.submit_get(&blobs[t], off, len)?.finish()?;
            }
            Ok(OpsSample::default())
        })?;
        Ok(sample.wall)
    }

    fn server_pid(&self) -> Option<u32> {
        self.vsp.pid()
    }
}
