//! The transport against a fake function ([`fake`]): `BlobClient` round
//! trips over INTx and busy-polling, feature refusal, surprise removal, a
//! corrupt used ring and duplicate completions.

pub(crate) mod fake;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vmblob_protocol::ContainerName;
use vmblob_protocol::ops::{Metadata, OpRequest};

use crate::client::GetOptions;

use super::caps::tests::Config;
use super::common::features;
use super::sysfs::{CMD_BUS_MASTER, CMD_INTX_DISABLE, CMD_MEMORY};
use super::{CompletionMode, PciDevice, VirtioPciOptions, VirtioPciTransport};
use crate::client::{BlobClient, ClientOptions, Data, PendingOp};
use crate::error::ClientError;
use crate::transport::Transport;
use fake::{BDF, Behaviour, FakeDma, FakeTree, Intx, Model, Server, Trap};

const POLL: CompletionMode = CompletionMode::Poll { idle_sleep: Duration::from_micros(100) };

struct Rig {
    tree: FakeTree,
    model: Arc<Model>,
    dma: FakeDma,
    server: Server,
    /// The kernel's end of `/dev/uioN` (INTx mode).
    uio: Option<UnixStream>,
}

fn opts(tree: &FakeTree, mode: CompletionMode) -> VirtioPciOptions {
    VirtioPciOptions {
        sysfs_root: tree.root().into(),
        queues: 2,
        queue_size: 64,
        mode,
        config_timeout: Duration::from_secs(10),
        wait_slice: Duration::from_millis(20),
        ..Default::default()
    }
}

/// A fake function with `offered` features, its device thread, and a
/// transport started on it (or the error).
fn rig_with(
    mode: CompletionMode,
    behaviour: Behaviour,
    offered: u64,
    prepare: impl FnOnce(&Model),
) -> (Rig, Result<VirtioPciTransport, ClientError>) {
    let tree = FakeTree::new(&Config::standard()).bound();
    let model = Model::new(2, 256, offered);
    prepare(&model);
    let (dma_files, mut dma) = FakeDma::new(512);
    // Every health check re-reads the (fake) frames, so a move is seen at once.
    dma.set_verify_every(Duration::ZERO);
    let (irq, uio, intx) = match mode {
        CompletionMode::Interrupts => {
            let (guest, kernel) = UnixStream::pair().unwrap();
            guest.set_nonblocking(true).unwrap();
            let intx = Intx::new(kernel.try_clone().unwrap(), &tree);
            (Some(File::from(OwnedFd::from(guest))), Some(kernel), Some(intx))
        }
        CompletionMode::Poll { .. } => (None, None, None),
    };
    let server = Server::start(model.clone(), dma_files.device_memory(), behaviour, intx);
    let m = model.clone();
    let dev =
        PciDevice::open_with(tree.root(), BDF, irq, &move |_, bar| Arc::new(Trap { bar, model: m.clone() })).unwrap();
    let t = VirtioPciTransport::start(dev, dma, opts(&tree, mode));
    (Rig { tree, model, dma: dma_files, server, uio }, t)
}

fn rig(mode: CompletionMode, behaviour: Behaviour) -> (Rig, Arc<VirtioPciTransport>) {
    let (r, t) = rig_with(mode, behaviour, features::VERSION_1 | features::RING_EVENT_IDX, |_| {});
    (r, Arc::new(t.unwrap()))
}

fn client(t: &Arc<VirtioPciTransport>) -> BlobClient {
    BlobClient::new(t.clone(), t.device_config(), ClientOptions { timeout_ms: 0, ..Default::default() })
}

fn create(c: &BlobClient, name: &str) -> Result<PendingOp, ClientError> {
    let op = OpRequest::CreateContainer { container: ContainerName::new(name).unwrap(), metadata: Metadata::default() };
    c.submit(&op, Data::None)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn round_trips(t: &Arc<VirtioPciTransport>) {
    let c = client(t);
    assert_eq!(c.container("box").create().unwrap().etag, "box");
    // Larger than 4 pages, so the data crosses the fake frames' jumps.
    let data = pattern(150_000, 7);
    c.container("box").blob("blob").put(&data).unwrap();
    assert_eq!(c.container("box").blob("blob").get().unwrap(), data);
    assert_eq!(
        c.container("box")
            .blob("blob")
            .get_opts(GetOptions { range: Some(4093..13093), ..Default::default() })
            .unwrap()
            .data,
        data[4093..13093]
    );
    assert!(c.container("box").blob("missing").get().unwrap_err().is_not_found());
    // The fake speaks op version 1: a time condition cannot travel, and is
    // refused before anything is sent rather than dropped.
    assert_eq!(c.device_config().op_version(), 1);
    let since = vmblob_protocol::ops::Conditions { if_modified_since_ms: Some(0), ..Default::default() };
    match c.container("box").blob("blob").properties_opts(since) {
        Err(ClientError::NeedsVersion(e)) => assert_eq!((e.needed, e.version), (2, 1)),
        other => panic!("{other:?}"),
    }
    // Several callers at once spread over both queues.
    std::thread::scope(|s| {
        for k in 0..4u8 {
            let c = client(t);
            s.spawn(move || {
                for i in 0..8 {
                    let d = pattern(5000 + 3000 * i, k);
                    let name = format!("b{k}-{i}");
                    c.container("box").blob(&name).put(&d).unwrap();
                    assert_eq!(c.container("box").blob(&name).get().unwrap(), d, "{name}");
                }
            });
        }
    });
}

#[test]
fn blob_client_round_trips_over_intx() {
    let (r, t) = rig(CompletionMode::Interrupts, Behaviour::Honest);
    let cfg = t.device_config();
    assert_eq!(cfg.max_segments, 1024);
    assert!(cfg.max_data_len <= 55 * 4096, "cut to what a ring of 64 carries on 4 KiB pages: {}", cfg.max_data_len);
    assert_eq!(t.num_queues(), 2);
    round_trips(&t);
    assert!(r.model.isr_reads.load(std::sync::atomic::Ordering::SeqCst) > 0, "INTx acknowledged through the ISR");
    let cmd = r.tree.command();
    assert_eq!(cmd & (CMD_MEMORY | CMD_BUS_MASTER), CMD_MEMORY | CMD_BUS_MASTER);
    assert_eq!(cmd & CMD_INTX_DISABLE, 0, "INTx unmasked after each interrupt");
    assert_eq!(r.model.status() & 0x0f, 0x0f, "ACK, DRIVER, FEATURES_OK, DRIVER_OK");
    assert!(t.is_connected());
    let resets = r.model.resets.load(std::sync::atomic::Ordering::SeqCst);
    drop(t);
    assert_eq!(r.model.status(), 0, "reset on close");
    assert_eq!(r.model.resets.load(std::sync::atomic::Ordering::SeqCst), resets + 1);
    assert_eq!(r.tree.command() & CMD_BUS_MASTER, 0, "bus mastering off after close");
    drop(r.server);
}

#[test]
fn blob_client_round_trips_by_polling() {
    let (r, t) = rig(POLL, Behaviour::Honest);
    round_trips(&t);
    assert_eq!(r.tree.command() & CMD_INTX_DISABLE, CMD_INTX_DISABLE, "polling keeps INTx masked");
    assert_eq!(r.model.isr_reads.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn features_not_kept_fail_open_and_reset_the_device() {
    let (r, t) = rig_with(POLL, Behaviour::Honest, features::VERSION_1, |m| {
        m.refuse_features.store(true, std::sync::atomic::Ordering::SeqCst)
    });
    let err = t.err().unwrap();
    assert!(err.to_string().contains("FEATURES_OK"), "{err}");
    assert_eq!(r.model.status(), 0, "reset after the failed init");
    let (r, t) = rig_with(POLL, Behaviour::Honest, features::RING_EVENT_IDX, |_| {});
    let err = t.err().unwrap();
    assert!(err.to_string().contains("VERSION_1"), "{err}");
    assert_eq!(r.model.status(), 0);
}

/// Every pending request (a create: a write) fails once, its outcome unknown (this transport
/// does not come back to ask again); nothing is sent after, and a new request is refused as
/// Rescinded (never sent, so surely not done).
fn assert_all_rescinded(t: &Arc<VirtioPciTransport>, pending: Vec<PendingOp>) {
    for p in pending {
        let r = p.wait();
        assert!(
            matches!(r, Err(ClientError::OutcomeUnknown { op: vmblob_protocol::OpCode::CreateContainer })),
            "{:?}",
            r.err()
        );
    }
    assert_eq!(t.pending(), 0);
    assert!(!t.is_connected());
    assert!(matches!(create(&client(t), "later").err(), Some(ClientError::Rescinded)));
}

#[test]
fn surprise_removal_of_the_uio_device_fails_pending_requests_once() {
    let (r, t) = rig(CompletionMode::Interrupts, Behaviour::Silent);
    let c = client(&t);
    let pending: Vec<PendingOp> = (0..5).map(|i| create(&c, &format!("box{i}")).unwrap()).collect();
    let resets = r.model.resets.load(std::sync::atomic::Ordering::SeqCst);
    r.uio.as_ref().unwrap().shutdown(std::net::Shutdown::Both).unwrap();
    assert_all_rescinded(&t, pending);
    drop(t);
    assert_eq!(r.model.resets.load(std::sync::atomic::Ordering::SeqCst), resets, "a removed device is not touched");
}

#[test]
fn a_device_reading_all_ones_is_removed() {
    let (r, t) = rig(POLL, Behaviour::Silent);
    let c = client(&t);
    let pending: Vec<PendingOp> = (0..3).map(|i| create(&c, &format!("box{i}")).unwrap()).collect();
    r.model.removed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_all_rescinded(&t, pending);
}

#[test]
fn a_garbage_used_ring_fails_requests_and_resets_the_device() {
    // The config fetch is answered; the next completion is garbage.
    let (r, t) = rig(CompletionMode::Interrupts, Behaviour::GarbageAfter(1));
    let c = client(&t);
    let pending: Vec<PendingOp> = (0..3).map(|i| create(&c, &format!("box{i}")).unwrap()).collect();
    let resets = r.model.resets.load(std::sync::atomic::Ordering::SeqCst);
    assert_all_rescinded(&t, pending);
    assert_eq!(r.model.resets.load(std::sync::atomic::Ordering::SeqCst), resets + 1, "reset once, when it broke");
    assert_eq!(r.model.status(), 0);
}

/// A pool page whose frame changes (the kernel migrated it under the
/// device's DMA) is caught by the periodic re-check: the device is reset at
/// once, so it stops writing where the page was, and every pending request
/// fails once. Before, the frames were never looked at again.
#[test]
fn a_moved_dma_frame_resets_the_device_and_fails_pending_requests() {
    let (r, t) = rig(POLL, Behaviour::Silent);
    let c = client(&t);
    let pending: Vec<PendingOp> = (0..3).map(|i| create(&c, &format!("box{i}")).unwrap()).collect();
    let resets = r.model.resets.load(std::sync::atomic::Ordering::SeqCst);
    r.dma.move_page(100, 0x9_9999);
    assert_all_rescinded(&t, pending);
    assert_eq!(r.model.resets.load(std::sync::atomic::Ordering::SeqCst), resets + 1, "reset when the frame moved");
    assert_eq!(r.model.status(), 0);
}

#[test]
fn a_completion_for_a_head_not_in_flight_is_dropped() {
    let (r, t) = rig(CompletionMode::Interrupts, Behaviour::CompleteTwice);
    let c = client(&t);
    for i in 0..20 {
        assert_eq!(c.container(&format!("box{i}")).create().unwrap().etag, format!("box{i}"));
    }
    let d = pattern(20_000, 3);
    c.container("box0").blob("x").put(&d).unwrap();
    assert_eq!(c.container("box0").blob("x").get().unwrap(), d);
    assert!(t.is_connected(), "duplicates are not fatal");
    assert_eq!(t.pending(), 0);
    drop(r.server);
}

#[test]
fn a_device_that_stops_answering_leaves_open_with_a_timeout() {
    let tree = FakeTree::new(&Config::standard()).bound();
    let model = Model::new(1, 256, features::VERSION_1);
    let (_files, dma) = FakeDma::new(64);
    let m = model.clone();
    let dev =
        PciDevice::open_with(tree.root(), BDF, None, &move |_, bar| Arc::new(Trap { bar, model: m.clone() })).unwrap();
    let mut o = opts(&tree, POLL);
    o.config_timeout = Duration::from_millis(200);
    let err = VirtioPciTransport::start(dev, dma, o).err().unwrap();
    assert!(err.to_string().contains("device config"), "{err}");
    assert_eq!(model.status(), 0, "reset when open gives up");
}
