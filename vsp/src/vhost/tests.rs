//! The backend over a hand-driven split ring: a reset with requests inside
//! executors completes each exactly once, and admits nothing until the
//! frontend sets the device up again; a restarted backend resubmits what the
//! inflight region says the dead one took; a completion after a stop that
//! timed out is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmblob_protocol::framing::virtio::canonical_offsets;
use vmblob_protocol::names::{BlobName, ContainerName};
use vmblob_protocol::ops::{BlobRef, Conditions, Metadata, OpRequest, PutBlob};
use vmblob_protocol::transport::{OperationType, RESPONSE_SIZE};
use vmblob_protocol::{BlobError, DataDirection, VspRequest, VspResponse};
use vmm_sys_util::epoll::EventSet;
use zerocopy::IntoBytes;

use super::inflight::{self, Geometry, InflightSlot};
use super::{BlobBackend, QueueOptions};
use crate::engine::{Engine, Limits};
use crate::store::BlobStore;
use crate::store::fs::{FaultPoint, FsStore};

/// Room for 8 chains of 4 descriptors.
const SIZE: u16 = 32;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const DATA: &[u8] = &[0x5a; 512];
const RESP_CAP: u32 = 1024;

/// Holds every PUT at `TempWritten` while closed.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    held: AtomicUsize,
}

impl Gate {
    fn pass(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// How a rig starts: fresh guest RAM or one left by a dead backend, and the inflight region.
struct Setup {
    workers: usize,
    ram: Option<GuestMemoryMmap>,
    /// Chains the guest had posted before (a restart).
    posted: u16,
    /// Where the ring restarts, as QEMU sets it after a reconnect: the used index.
    base: u16,
    slot: Arc<InflightSlot>,
    drain_timeout: Duration,
}

impl Setup {
    fn workers(workers: usize) -> Setup {
        Setup {
            workers,
            ram: None,
            posted: 0,
            base: 0,
            slot: Default::default(),
            drain_timeout: Limits::default().drain_timeout,
        }
    }
}

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

struct Rig {
    backend: BlobBackend,
    vring: VringRwLock,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    gate: Arc<Gate>,
    _dir: tempfile::TempDir,
    posted: u16,
}

impl Rig {
    fn new(workers: usize) -> Rig {
        Rig::build(Setup::workers(workers))
    }

    fn build(setup: Setup) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        let hook = Arc::new(move |p: FaultPoint| {
            if p == FaultPoint::TempWritten {
                g.pass();
            }
            Ok(())
        });
        let store = Arc::new(FsStore::with_faults(dir.path(), hook).unwrap());
        store.create_container(&ContainerName::new("box").unwrap(), &Metadata::default(), &[0; 16]).unwrap();
        let limits = Limits { drain_timeout: setup.drain_timeout, ..Limits::default() };
        let engine = Arc::new(Engine::new(store, limits, 1));
        let opts = QueueOptions { queues: 1, queue_size: SIZE, workers: setup.workers, poll: Duration::ZERO };
        let backend = BlobBackend::new(engine, &opts, setup.slot).unwrap();
        let mem = GuestMemoryAtomic::new(setup.ram.unwrap_or_else(ram));
        let vring = VringRwLock::new(mem.clone(), SIZE).unwrap();
        vring.set_queue_size(SIZE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_event_idx(true);
        vring.set_queue_next_avail(setup.base);
        vring.set_queue_next_used(setup.base);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        backend.update_memory(mem.clone()).unwrap();
        backend.set_event_idx(true);
        Rig { backend, vring, mem, gate, _dir: dir, posted: setup.posted }
    }

    fn base(i: u16) -> u64 {
        0x10000 + u64::from(i) * 0x4000
    }

    fn target(i: u16) -> BlobRef {
        BlobRef { container: ContainerName::new("box").unwrap(), blob: BlobName::new(&format!("b{i}")).unwrap() }
    }

    /// Lay out PutBlob `i` in descriptors `4i..4i+4` and publish it.
    fn post_put(&mut self, i: u16) {
        let op = OpRequest::PutBlob(PutBlob {
            target: Self::target(i),
            content_type: String::new(),
            headers: Default::default(),
            metadata: Metadata::default(),
            conditions: Conditions::none(),
            content_md5: None,
            content_crc64: None,
        });
        self.post(i, &op, Some(DATA));
    }

    /// Lay out a GetBlobProperties of blob `blob` in descriptors `4i..4i+3` and publish it.
    fn post_properties(&mut self, i: u16, blob: u16) {
        let op = OpRequest::GetBlobProperties { target: Self::target(blob), conditions: Conditions::none() };
        self.post(i, &op, None);
    }

    /// Request `i`: header and op, then `data` (sent to the host), the
    /// response buffer and the status, from descriptor `4i` on.
    fn post(&mut self, i: u16, op: &OpRequest, data: Option<&[u8]>) {
        let m = self.mem.memory();
        let op = op.encode();
        let mut txn = [0u8; 16];
        txn[..2].copy_from_slice(&(i + 1).to_le_bytes());
        let data_len = data.map_or(0, |d| d.len() as u32);
        let mut hdr = VspRequest {
            operation_type: (OperationType::UserRequest as u32).into(),
            request_buffer_length: (op.len() as u32).into(),
            response_buffer_length: RESP_CAP.into(),
            data_buffer_length: data_len.into(),
            data_buffer_valid: data_len.into(),
            transaction_id: txn,
            ..Default::default()
        };
        canonical_offsets(&mut hdr, if data.is_some() { DataDirection::ToHost } else { DataDirection::None });
        let base = Self::base(i);
        m.write_slice(hdr.as_bytes(), GuestAddress(base)).unwrap();
        m.write_slice(&op, GuestAddress(base + 56)).unwrap();
        let mut descs = vec![(base, 56 + op.len() as u32, false)];
        if let Some(data) = data {
            m.write_slice(data, GuestAddress(base + 0x1000)).unwrap();
            descs.push((base + 0x1000, data_len, false));
        }
        descs.push((base + 0x2000, RESP_CAP, true));
        descs.push((base + 0x2000 + u64::from(RESP_CAP), RESPONSE_SIZE as u32, true));
        let last = descs.len() - 1;
        for (k, (addr, len, writable)) in descs.iter().enumerate() {
            let idx = 4 * i + k as u16;
            let flags: u16 = if *writable { 2 } else { 0 } | if k < last { 1 } else { 0 };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&(idx + 1).to_le_bytes());
            m.write_slice(&raw, GuestAddress(DESC + 16 * u64::from(idx))).unwrap();
        }
        let slot = u64::from(self.posted % SIZE);
        m.write_obj((4 * i).to_le(), GuestAddress(AVAIL + 4 + 2 * slot)).unwrap();
        self.posted += 1;
        m.store(self.posted.to_le(), GuestAddress(AVAIL + 2), Ordering::Release).unwrap();
    }

    fn kick(&self) {
        self.backend.handle_event(0, EventSet::IN, std::slice::from_ref(&self.vring), 0).unwrap();
    }

    fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.memory().load(GuestAddress(USED + 2), Ordering::Acquire).unwrap())
    }

    /// The used entries' heads, in ring order.
    fn used_heads(&self) -> Vec<u32> {
        let m = self.mem.memory();
        (0..self.used_idx()).map(|k| m.read_obj(GuestAddress(USED + 4 + 8 * u64::from(k))).unwrap()).collect()
    }

    /// A copy of guest RAM as it is now.
    fn snapshot(&self) -> GuestMemoryMmap {
        let mut bytes = vec![0u8; 1 << 20];
        self.mem.memory().read_slice(&mut bytes, GuestAddress(0)).unwrap();
        let copy = ram();
        copy.write_slice(&bytes, GuestAddress(0)).unwrap();
        copy
    }

    /// Head -> status of every used entry.
    fn used(&self) -> HashMap<u32, u32> {
        let m = self.mem.memory();
        let mut out = HashMap::new();
        for k in 0..self.used_idx() {
            let id: u32 = m.read_obj(GuestAddress(USED + 4 + 8 * u64::from(k))).unwrap();
            let mut raw = [0u8; RESPONSE_SIZE];
            let i = (id / 4) as u16;
            m.read_slice(&mut raw, GuestAddress(Self::base(i) + 0x2000 + u64::from(RESP_CAP))).unwrap();
            let status = VspResponse::parse(&raw).unwrap().error.get();
            assert!(out.insert(id, status).is_none(), "head {id} completed twice");
        }
        out
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not reached in 10 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn reset_completes_requests_inside_executors_once_and_admits_nothing_until_set_up_again() {
    let mut rig = Rig::new(2);
    for i in 0..3 {
        rig.post_put(i);
    }
    rig.kick();
    wait_for("two PUTs held in the store", || rig.gate.held.load(Ordering::SeqCst) == 2);
    assert_eq!(rig.backend.inflight(), 3, "the third waits for a worker, admitted");

    let rig = Arc::new(Mutex::new(rig));
    let (done_tx, done_rx) = mpsc::channel();
    let (r2, gate) = (rig.clone(), rig.lock().unwrap().gate.clone());
    let backend_reset = std::thread::spawn(move || {
        // Only the backend is touched here; the test thread holds no lock meanwhile.
        let rig = r2.lock().unwrap();
        rig.backend.reset_device();
        done_tx.send(rig.backend.inflight()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "reset must wait for the requests held in the store"
    );
    gate.open();
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(0), "reset drained everything");
    backend_reset.join().unwrap();

    let mut rig = Arc::try_unwrap(rig).ok().unwrap().into_inner().unwrap();
    let used = rig.used();
    assert_eq!(used.len(), 3, "each accepted request completed once: {used:?}");
    let rescinded = BlobError::Rescinded.code();
    assert!(used.values().all(|&s| s == 0 || s == rescinded), "{used:?}");
    assert!(used.values().any(|&s| s == rescinded), "the one still queued was rescinded: {used:?}");

    // Reset: a new chain stays in the ring until the frontend sets up again.
    rig.post_put(3);
    rig.kick();
    assert_eq!((rig.used_idx(), rig.backend.inflight()), (3, 0));
    rig.backend.set_event_idx(true);
    rig.kick();
    wait_for("the chain posted after the reset is served", || rig.used_idx() == 4);
    assert_eq!(rig.used().get(&12), Some(&0));
}

/// A slot holding a region on `fd` (laid out for one queue of `SIZE`).
fn slot_on(fd: &std::os::fd::OwnedFd) -> Arc<InflightSlot> {
    let g = Geometry::new(1, SIZE).unwrap();
    let slot = Arc::new(InflightSlot::default());
    slot.set(inflight::map(fd.try_clone().unwrap(), 0, g.size() as u64, g).unwrap());
    slot
}

/// The region's bytes copied into a fresh memfd: what the VMM holds at the instant of a crash.
fn copy_region(fd: &std::os::fd::OwnedFd) -> std::os::fd::OwnedFd {
    use std::os::unix::fs::FileExt;
    let g = Geometry::new(1, SIZE).unwrap();
    let mut bytes = vec![0u8; g.size()];
    std::fs::File::from(fd.try_clone().unwrap()).read_exact_at(&mut bytes, 0).unwrap();
    let copy = inflight::create(g).unwrap();
    std::fs::File::from(copy.try_clone().unwrap()).write_all_at(&bytes, 0).unwrap();
    copy
}

#[test]
fn a_restarted_backend_resubmits_what_the_dead_one_took_in_order_then_pops_on() {
    let g = Geometry::new(1, SIZE).unwrap();
    let region = inflight::create(g).unwrap();
    let mut first = Rig::build(Setup { slot: slot_on(&region), ..Setup::workers(2) });
    first.post_put(0);
    first.post_put(1);
    first.kick();
    wait_for("two PUTs held in the store", || first.gate.held.load(Ordering::SeqCst) == 2);
    // Out of order: chain 2 (head 8) is refused at once (its first descriptor is empty), then chain 3
    // waits for a worker.
    first.post_put(2);
    first.mem.memory().write_slice(&[0u8; 12], GuestAddress(DESC + 16 * 8)).unwrap();
    first.kick();
    assert_eq!(first.used_heads(), vec![8]);
    first.post_put(3);
    first.kick();
    assert_eq!(first.backend.inflight(), 3, "two running, one waiting for a worker");

    // The crash: guest RAM and the region as they are at this instant. The
    // first backend never touches either copy again.
    let (ram, kept) = (first.snapshot(), copy_region(&region));
    let mut second =
        Rig::build(Setup { ram: Some(ram), posted: 4, base: 1, slot: slot_on(&kept), ..Setup::workers(1) });
    second.gate.open();
    second.post_put(4);
    second.kick();
    wait_for("the three resubmitted and the new one served", || second.used_idx() == 5);
    // One worker serves in submission order: the dead backend's heads in the
    // order it took them, then the chain after them in the avail ring. From
    // the used index alone the refused chain would be served again and head 0
    // never.
    assert_eq!(second.used_heads(), vec![8, 0, 4, 12, 16]);
    let used = second.used();
    assert_eq!(used[&8], BlobError::InvalidRequest.code());
    assert!([0, 4, 12, 16].iter().all(|h| used[h] == 0), "each served once, successfully: {used:?}");
    assert_eq!(second.vring.get_ref().get_queue().next_avail(), 5, "used index 1 + 3 in flight, then one popped");
    let left = inflight::map(kept, 0, g.size() as u64, g).unwrap().queue(0).unwrap().recover(5, SIZE).unwrap();
    assert_eq!(left.heads, Vec::<u16>::new(), "nothing left in flight in the region");

    first.gate.open();
    wait_for("the first backend's requests finish into its own RAM", || first.backend.inflight() == 0);
}

#[test]
fn a_completion_after_a_stop_that_timed_out_is_dropped_and_counted() {
    let mut rig = Rig::build(Setup { drain_timeout: Duration::from_millis(20), ..Setup::workers(2) });
    rig.post_put(0);
    rig.post_put(1);
    rig.kick();
    wait_for("two PUTs held in the store", || rig.gate.held.load(Ordering::SeqCst) == 2);
    // GET_VRING_BASE: vhost-user-backend marks the ring not ready, then asks the backend to stop it.
    rig.vring.set_queue_ready(false);
    assert!(rig.backend.stop_vring(0).is_err(), "the drain cannot finish while the store holds both");
    rig.gate.open();
    wait_for("both late requests retired", || rig.backend.inflight() == 0 && rig.gate.held.load(Ordering::SeqCst) == 0);
    assert_eq!(rig.used_idx(), 0, "nothing posted into a ring the VMM may have re-based");
    assert_eq!(rig.backend.stale_completions(), 2);
    let mut status = [0u8; RESPONSE_SIZE];
    rig.mem.memory().read_slice(&mut status, GuestAddress(Rig::base(0) + 0x2000 + u64::from(RESP_CAP))).unwrap();
    assert_eq!(status, [0u8; RESPONSE_SIZE], "the guest's status buffer is not written either");
}

#[test]
fn a_quick_read_alone_in_flight_runs_on_the_kick_thread_and_one_behind_other_work_waits_for_the_pool() {
    let mut rig = Rig::new(1);
    rig.post_properties(0, 0);
    rig.kick();
    // Served before the kick handler returned: no pool thread involved.
    assert_eq!(rig.used_idx(), 1, "the quick read completed inside the kick");
    assert_eq!(rig.used()[&0], BlobError::BlobNotFound.code());

    // The one pool thread holds a PUT at the gate; a read behind it is not
    // alone in flight, so it goes to the pool and waits there.
    rig.post_put(1);
    rig.kick();
    wait_for("the PUT at the gate", || rig.gate.held.load(Ordering::SeqCst) == 1);
    rig.post_properties(2, 1);
    rig.kick();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.used_idx(), 1, "the read waited for the pool");
    rig.gate.open();
    wait_for("both completions", || rig.used_idx() == 3);
    let used = rig.used();
    assert_eq!((used[&4], used[&8]), (0, 0), "the read ran after the PUT it queued behind");
}
