//! vmblob over vhost-user: the real `vmblob-vsp` daemon with its fs store,
//! driven by the real client stack (`BlobClient` on `VirtioTransport`).
//! `qd` operations in flight are pipelined from one thread with
//! `submit`/`wait`, the way an asynchronous guest driver issues them.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use vmblob_protocol::OpResponse;
use vmblob_vsc::{BlobHandle, ClientOptions, Conditions, ContainerClient, OpResult, PendingOp, PutOptions};

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
    /// Copy each GET's bytes out of the DMA buffer, as a caller of today's
    /// client must to use them. Off: the transport alone (the data stays in
    /// guest memory), to see what a zero-copy client API would gain.
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

    /// The raw operation: its data buffer is read in place (or not at all).
    fn submit_get(&self, blob: &str, offset: u64, len: usize) -> Result<PendingOp> {
        let range = offset..offset + len as u64;
        Ok(self.blob(blob).submit_get(range, Conditions::none())?.into_raw())
    }

    fn submit_put(&self, blob: &str, data: &[u8]) -> Result<PendingOp> {
        Ok(self.blob(blob).submit_put(data, PutOptions::default())?.into_raw())
    }
}

/// Check a completed GET or PUT; a GET's bytes are copied out of the DMA
/// buffer into `scratch` (if given), as a caller would consume them.
fn finish(r: OpResult, want: usize, scratch: Option<&mut Vec<u8>>) -> Result<()> {
    match r.response {
        OpResponse::BlobData { length, .. } => {
            let buf = r.data.ok_or_else(|| BenchError::Other("GET without a data buffer".into()))?;
            if length != want as u64 || buf.len() < want {
                return Err(BenchError::Other(format!("GET returned {length} of {want} bytes")));
            }
            let Some(scratch) = scratch else { return Ok(()) };
            scratch.resize(want, 0);
            buf.read_at(0, scratch).map_err(|e| BenchError::Other(e.to_string()))
        }
        OpResponse::BlobWritten(_) => Ok(()),
        other => Err(BenchError::Other(format!("unexpected response {other:?}"))),
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

    fn ops(&self, spec: &OpsSpec, data: &[u8]) -> Result<OpsSample> {
        let mut out = OpsSample::default();
        let mut window: VecDeque<(PendingOp, Instant)> = VecDeque::with_capacity(spec.qd);
        let mut scratch = Vec::with_capacity(spec.size);
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
            finish(op.wait()?, spec.size, self.copy_out.then_some(&mut scratch))?;
            out.latencies.push(t0.elapsed());
            out.ops += 1;
        }
        out.wall = start.elapsed();
        Ok(out)
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
            let mut scratch = Vec::with_capacity(range);
            for (off, len) in super::ranges(blob_size, range) {
                let scratch = self.copy_out.then_some(&mut scratch);
                finish(self.submit_get(&blobs[t], off, len)?.wait()?, len, scratch)?;
            }
            Ok(OpsSample::default())
        })?;
        Ok(sample.wall)
    }

    fn server_pid(&self) -> Option<u32> {
        self.vsp.pid()
    }
}
