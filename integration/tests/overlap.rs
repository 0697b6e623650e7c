//! Requests on one queue overlap: a slow request does not hold up fast ones,
//! completions come back out of order and each reaches its own caller, a
//! stop drains requests that sit inside executors, and a polling daemon is
//! silent when idle.
//!
//! The overlap tests run the daemon in-process over a store that holds
//! chosen requests up (`GatedStore`); the polling test runs the real binary.
//!
//! `measure_round_trips` (ignored) prints 4 KiB GET round trips at queue depth
//! 1 and 32 through the real daemon, beside an eventfd ping-pong between two
//! threads (the floor for one kick and one interrupt):
//!
//!     cargo test --release -p vmblob-integration --test overlap -- --ignored --nocapture
//!
//! `POLL_US=N` sets the client's poll window, `VSP_ARGS="--poll-us N ..."`
//! passes daemon flags.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmblob_integration::data::pattern;
use vmblob_integration::ops::{data_of, submit_get};
use vmblob_integration::{Guest, GuestOptions, Sandbox, Vsp, VspOptions, bounded, wait_until};
use vmblob_protocol::BlobError;
use vmblob_protocol::BlockId;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobWritten, BlockInfo, BlockListType, Conditions, ContainerEntry,
    ContainerProperties, GetBlob, ListBlobs, ListContainers, Metadata, PutBlob, PutBlockList,
};
use vmblob_vsc::ClientError;
use vmblob_vsp::Shutdown;
use vmblob_vsp::engine::{Engine, Limits};
use vmblob_vsp::store::memory::MemoryStore;
use vmblob_vsp::store::{BlobStore, DataSink, DataSource, Page, StoreError, TxnId};
use vmblob_vsp::vhost::{QueueOptions, SocketOptions, serve};
use vmm_sys_util::eventfd::EventFd;

/// A memory store whose GETs of blobs named `slow*` wait for the gate to
/// open (watching for cancellation like a real store's I/O loop), and whose
/// GETs of `jitter-N` take N mod 4 ms.
#[derive(Default)]
struct GatedStore {
    inner: MemoryStore,
    open: Mutex<bool>,
    opened: Condvar,
    /// GETs waiting at the gate now.
    waiting: AtomicUsize,
}

impl GatedStore {
    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn hold(&self, name: &str, sink: &mut dyn DataSink) -> Result<(), StoreError> {
        if let Some(n) = name.strip_prefix("jitter-").and_then(|n| n.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(n % 4));
        }
        if !name.starts_with("slow") {
            return Ok(());
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        let result = loop {
            if *open {
                break Ok(());
            }
            // A zero-byte write fails once the request is cancelled.
            if let Err(e) = sink.write_bytes(&[]) {
                break Err(e);
            }
            open = self.opened.wait_timeout(open, Duration::from_millis(2)).unwrap().0;
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl BlobStore for GatedStore {
    fn create_container(&self, n: &ContainerName, m: &Metadata, t: &TxnId) -> Result<ContainerProperties, StoreError> {
        self.inner.create_container(n, m, t)
    }
    fn delete_container(&self, n: &ContainerName) -> Result<(), StoreError> {
        self.inner.delete_container(n)
    }
    fn container_properties(&self, n: &ContainerName) -> Result<ContainerProperties, StoreError> {
        self.inner.container_properties(n)
    }
    fn list_containers(&self, r: &ListContainers) -> Result<Page<ContainerEntry>, StoreError> {
        self.inner.list_containers(r)
    }
    fn put_blob(&self, r: &PutBlob, d: &mut dyn DataSource, t: &TxnId) -> Result<BlobWritten, StoreError> {
        self.inner.put_blob(r, d, t)
    }
    fn get_blob(&self, r: &GetBlob, sink: &mut dyn DataSink) -> Result<(BlobProperties, u64, u64), StoreError> {
        self.hold(r.target.blob.as_str(), sink)?;
        self.inner.get_blob(r, sink)
    }
    fn blob_properties(&self, t: &BlobRef, c: &Conditions) -> Result<BlobProperties, StoreError> {
        self.inner.blob_properties(t, c)
    }
    fn delete_blob(&self, t: &BlobRef, c: &Conditions) -> Result<(), StoreError> {
        self.inner.delete_blob(t, c)
    }
    fn list_blobs(&self, r: &ListBlobs) -> Result<Page<BlobListItem>, StoreError> {
        self.inner.list_blobs(r)
    }
    fn uncommitted_names(
        &self,
        container: &vmblob_protocol::ContainerName,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.uncommitted_names(container, prefix)
    }
    fn name_order(&self) -> fn(&str, &str) -> std::cmp::Ordering {
        self.inner.name_order()
    }
    fn put_block(
        &self,
        t: &BlobRef,
        id: &BlockId,
        d: &mut dyn DataSource,
        crc: Option<u64>,
    ) -> Result<u64, StoreError> {
        self.inner.put_block(t, id, d, crc)
    }
    fn put_block_list(&self, r: &PutBlockList, t: &TxnId) -> Result<BlobWritten, StoreError> {
        self.inner.put_block_list(r, t)
    }
    fn get_block_list(&self, t: &BlobRef, l: BlockListType) -> Result<Vec<BlockInfo>, StoreError> {
        self.inner.get_block_list(t, l)
    }
    fn set_blob_properties(
        &self,
        r: &vmblob_protocol::ops::SetBlobProperties,
        t: &TxnId,
    ) -> Result<BlobWritten, StoreError> {
        self.inner.set_blob_properties(r, t)
    }
    fn copy_blob(
        &self,
        r: &vmblob_protocol::ops::CopyBlob,
        t: &TxnId,
    ) -> Result<vmblob_protocol::ops::BlobWritten, StoreError> {
        self.inner.copy_blob(r, t)
    }
}

/// The daemon's serve loop on a thread of this process, one queue.
struct InProcessVsp {
    socket: PathBuf,
    store: Arc<GatedStore>,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl InProcessVsp {
    fn start(dir: &Path, workers: usize, poll: Duration) -> Self {
        let socket = dir.join("vsp.sock");
        let store = Arc::new(GatedStore::default());
        let engine = Arc::new(Engine::new(store.clone(), Limits::default(), 1));
        let shutdown = Shutdown::new().unwrap();
        let queues = QueueOptions { queues: 1, queue_size: 256, workers, poll };
        let (s, sd) = (SocketOptions { path: socket.clone(), group: None }, shutdown.clone());
        let thread = std::thread::spawn(move || serve(&s, engine, &queues, &sd, None).expect("serve"));
        wait_until(Duration::from_secs(10), "daemon socket", || socket.exists());
        Self { socket, store, shutdown, thread: Some(thread) }
    }
}

impl Drop for InProcessVsp {
    fn drop(&mut self) {
        self.store.open_gate();
        self.shutdown.request();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn one_queue_guest(socket: &Path) -> Guest {
    Guest::connect(socket, GuestOptions::default().queues(1))
}

#[test]
fn a_slow_request_does_not_hold_up_fast_ones_on_the_same_queue() {
    let sb = Sandbox::new();
    let vsp = InProcessVsp::start(&sb.dir, 4, Duration::ZERO);
    let g = one_queue_guest(&vsp.socket);
    g.container("mix").create().unwrap();
    let slow_data = pattern(1, 0, 8192);
    g.container("mix").blob("slow").put(&slow_data).unwrap();
    let slow = submit_get(&g.client, "mix", "slow", 8192).unwrap();
    wait_until(Duration::from_secs(10), "slow GET reaches the store", || vsp.store.waiting.load(Ordering::SeqCst) == 1);
    // Fast requests on the same (only) queue complete while it is held.
    for i in 0..50u64 {
        let data = pattern(100 + i, 0, 4096);
        g.container("mix").blob(&format!("fast{i}")).put(&data).unwrap();
        assert_eq!(g.container("mix").blob(&format!("fast{i}")).get().unwrap(), data);
    }
    assert_eq!(vsp.store.waiting.load(Ordering::SeqCst), 1, "the slow GET is still held");
    vsp.store.open_gate();
    let got = bounded(Duration::from_secs(10), "slow GET", move || slow.wait().map(data_of));
    assert_eq!(got.unwrap(), slow_data);
}

#[test]
fn out_of_order_completions_reach_their_own_callers() {
    let sb = Sandbox::new();
    let vsp = InProcessVsp::start(&sb.dir, 8, Duration::from_micros(50));
    let g = Arc::new(one_queue_guest(&vsp.socket));
    g.container("ooo").create().unwrap();
    const BLOBS: u64 = 24;
    let blob = |i: u64| pattern(i, 0, 1000 + 97 * i as usize);
    for i in 0..BLOBS {
        g.container("ooo").blob(&format!("jitter-{i}")).put(&blob(i)).unwrap();
    }
    // Four threads keep up to 16 GETs each in flight, of blobs that take
    // 0-3 ms: completions overtake each other all the time.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut inflight = VecDeque::new();
                for k in 0..200u64 {
                    let i = (k * 7 + t * 5) % BLOBS;
                    inflight.push_back((i, submit_get(&g.client, "ooo", &format!("jitter-{i}"), 4096).unwrap()));
                    if inflight.len() == 16 || k == 199 {
                        while let Some((i, op)) = inflight.pop_front() {
                            assert_eq!(data_of(op.wait().unwrap()), blob(i), "blob {i}");
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(g.transport.pending(), 0);
}

#[test]
fn stopping_the_rings_drains_requests_inside_executors() {
    let sb = Sandbox::new();
    // Two workers: two GETs wait in the store, four wait for a worker.
    let vsp = InProcessVsp::start(&sb.dir, 2, Duration::ZERO);
    let g = one_queue_guest(&vsp.socket);
    g.container("drain").create().unwrap();
    g.container("drain").blob("slow").put(&pattern(3, 0, 4096)).unwrap();
    let ops: Vec<_> = (0..6).map(|_| submit_get(&g.client, "drain", "slow", 4096).unwrap()).collect();
    wait_until(Duration::from_secs(10), "both workers in the store", || vsp.store.waiting.load(Ordering::SeqCst) == 2);
    // Dropping the guest stops its rings (GET_VRING_BASE): the VSP must
    // complete every accepted request before it answers, so each caller gets
    // the VSP's Rescinded, not the client's own.
    bounded(Duration::from_secs(20), "guest stop", move || drop(g));
    for (i, op) in ops.into_iter().enumerate() {
        match op.wait() {
            Err(ClientError::Status { error: BlobError::Rescinded, .. }) => {}
            Err(e) => panic!("request {i}: expected the VSP's Rescinded, got {e:?}"),
            Ok(_) => panic!("request {i} completed although the gate never opened"),
        }
    }
    assert_eq!(vsp.store.waiting.load(Ordering::SeqCst), 0, "no store call left behind");
    // The daemon serves the next guest.
    let g = one_queue_guest(&vsp.socket);
    vsp.store.open_gate();
    assert_eq!(g.container("drain").blob("slow").get().unwrap(), pattern(3, 0, 4096));
}

#[test]
fn a_polling_daemon_serves_traffic_and_is_silent_when_idle() {
    let sb = Sandbox::new();
    let mut opts = VspOptions::default().queues(1);
    opts.extra = vec!["--poll-us".into(), "500".into()];
    let vsp = Vsp::start(&sb.dir, opts);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().poll(Duration::from_micros(500)));
    g.container("poll").create().unwrap();
    for i in 0..300u64 {
        let data = pattern(i, 0, 4096 + i as usize);
        g.container("poll").blob(&format!("b{i}")).put(&data).unwrap();
        assert_eq!(g.container("poll").blob(&format!("b{i}")).get().unwrap(), data, "blob {i}");
    }
    // Polling must end once requests stop: an idle daemon burns no CPU.
    std::thread::sleep(Duration::from_millis(200));
    let before = vsp.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let burned = vsp.cpu_time() - before;
    assert!(burned < Duration::from_millis(150), "idle daemon used {burned:?} of CPU in 1 s");
}

/// Median and 99th percentile of `samples`.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// Round trips between two threads blocking on eventfds.
fn eventfd_ping_pong(rounds: usize) -> Duration {
    let (ping, pong) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
    let (ping2, pong2) = (ping.try_clone().unwrap(), pong.try_clone().unwrap());
    let peer = std::thread::spawn(move || {
        for _ in 0..rounds {
            ping2.read().unwrap();
            pong2.write(1).unwrap();
        }
    });
    let start = Instant::now();
    for _ in 0..rounds {
        ping.write(1).unwrap();
        pong.read().unwrap();
    }
    let took = start.elapsed();
    peer.join().unwrap();
    took / rounds as u32
}

/// 4 KiB GETs with `depth` in flight from one thread; returns ops/s and,
/// at depth 1, the per-op latencies.
fn get_4k(g: &Guest, depth: usize, ops: usize) -> (f64, Vec<Duration>) {
    let mut inflight: VecDeque<(Instant, vmblob_vsc::PendingOp)> = VecDeque::with_capacity(depth);
    let mut lat = Vec::with_capacity(ops);
    let start = Instant::now();
    for _ in 0..ops {
        if inflight.len() == depth {
            let (t0, op) = inflight.pop_front().unwrap();
            op.wait().unwrap();
            lat.push(t0.elapsed());
        }
        inflight.push_back((Instant::now(), submit_get(&g.client, "bench", "4k", 4096).unwrap()));
    }
    for (t0, op) in inflight {
        op.wait().unwrap();
        lat.push(t0.elapsed());
    }
    (ops as f64 / start.elapsed().as_secs_f64(), lat)
}

#[test]
#[ignore = "measurement, not a test: run with --release --ignored --nocapture"]
fn measure_round_trips() {
    let floor = eventfd_ping_pong(20_000);
    println!("eventfd ping-pong round trip: {:.1} us", floor.as_secs_f64() * 1e6);
    let poll_us: u64 = std::env::var("POLL_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut extra: Vec<String> =
        std::env::var("VSP_ARGS").unwrap_or_default().split_whitespace().map(Into::into).collect();
    let sb = Sandbox::new();
    let mut opts = VspOptions::default().queues(1);
    opts.extra.append(&mut extra);
    let vsp = Vsp::start(&sb.dir, opts);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().poll(Duration::from_micros(poll_us)));
    g.container("bench").create().unwrap();
    g.container("bench").blob("4k").put(&vec![7u8; 4096]).unwrap();
    get_4k(&g, 1, 2_000);
    for depth in [1usize, 32] {
        let before = vsp.cpu_time();
        let (ops_s, mut lat) = get_4k(&g, depth, 20_000);
        let cpu = vsp.cpu_time() - before;
        let (p50, p99) = percentiles(&mut lat);
        println!(
            "4 KiB GET QD{depth:<3} {ops_s:>9.0} ops/s  p50 {:>7.1} us  p99 {:>7.1} us  (client poll {poll_us} us, vsp cpu {cpu:?})",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
}
