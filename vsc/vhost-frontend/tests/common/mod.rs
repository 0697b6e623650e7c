//! Test fixtures: an echo/reverse vhost-user backend served by `vhost-user-backend` on a tempdir
//! socket (a fresh daemon per connection on one listener), and a minimal split-ring driver.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vhost::vhost_user::{Listener, VhostUserProtocolFeatures};
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmblob_vhost_frontend::{GuestRam, QueueConfig};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};
use vmm_sys_util::eventfd::EventFd;

/// A device-specific feature bit the test backend offers; CH's generic device never acks it.
pub const DEVICE_BIT_5: u64 = 1 << 5;
pub const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

/// The test backend's config space.
pub const CONFIG_SPACE: &[u8; 24] = b"vmblob-echo-config-v1\0\0\0";

/// What a test backend offers.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub num_queues: usize,
    pub features: u64,
    pub protocol_features: VhostUserProtocolFeatures,
}

impl Default for BackendSpec {
    fn default() -> Self {
        BackendSpec {
            num_queues: 2,
            // More than CH would take: INDIRECT_DESC and a device-specific bit.
            features: (1 << VIRTIO_F_VERSION_1)
                | (1 << VIRTIO_RING_F_EVENT_IDX)
                | (1 << VIRTIO_RING_F_INDIRECT_DESC)
                | PROTOCOL_FEATURES_BIT
                | DEVICE_BIT_5,
            // Includes features the frontend must not ack. REPLY_ACK is added by the crate.
            protocol_features: VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::RESET_DEVICE
                | VhostUserProtocolFeatures::LOG_SHMFD,
        }
    }
}

/// What one backend session observed.
#[derive(Default)]
pub struct SessionLog {
    pub acked_features: Mutex<Option<u64>>,
    pub event_idx: AtomicBool,
    pub requests: AtomicUsize,
    /// Set once the daemon has returned from `wait()` and been dropped.
    pub ended: AtomicBool,
}

/// The echo/reverse device: every chain's readable bytes are written back reversed into its
/// writable part.
#[derive(Clone)]
pub struct EchoBackend {
    spec: BackendSpec,
    mem: Arc<Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>>,
    event_idx: Arc<AtomicBool>,
    log: Arc<SessionLog>,
}

impl EchoBackend {
    fn new(spec: BackendSpec, log: Arc<SessionLog>) -> Self {
        EchoBackend { spec, mem: Arc::default(), event_idx: Arc::default(), log }
    }

    fn process(&self, vring: &VringRwLock) -> io::Result<bool> {
        let atomic = self.mem.lock().unwrap().clone().ok_or_else(|| io::Error::other("no memory table"))?;
        let mem = atomic.memory();
        let mut used_any = false;
        loop {
            let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut reader = chain.clone().reader(&mem).map_err(io::Error::other)?;
            let mut writer = chain.writer(&mem).map_err(io::Error::other)?;
            let mut data = Vec::new();
            reader.read_to_end(&mut data)?;
            data.reverse();
            let written = writer.write(&data)?;
            vring.add_used(head, written as u32).map_err(io::Error::other)?;
            self.log.requests.fetch_add(1, Ordering::SeqCst);
            used_any = true;
        }
        Ok(used_any)
    }
}

impl VhostUserBackend for EchoBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.spec.num_queues
    }

    fn max_queue_size(&self) -> usize {
        256
    }

    fn features(&self) -> u64 {
        self.spec.features
    }

    fn acked_features(&self, features: u64) {
        *self.log.acked_features.lock().unwrap() = Some(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.spec.protocol_features
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::SeqCst);
        self.log.event_idx.store(enabled, Ordering::SeqCst);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let (start, len) = (offset as usize, size as usize);
        CONFIG_SPACE.get(start..start.saturating_add(len)).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.mem.lock().unwrap() = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without it, dropping the daemon hangs joining the worker threads.
        Some(new_event_consumer_and_notifier(EventFlag::NONBLOCK).expect("exit eventfd"))
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        let Some(vring) = vrings.get(usize::from(device_event)) else { return Ok(()) };
        if self.event_idx.load(Ordering::SeqCst) {
            // The standard EVENT_IDX loop: catch buffers that race with re-enabling.
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                self.process(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
            if vring.needs_notification().map_err(io::Error::other)? {
                vring.signal_used_queue()?;
            }
        } else if self.process(vring)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

/// One accepted connection, as seen from the test.
pub struct Session {
    pub shutdown: ShutdownHandle,
    pub log: Arc<SessionLog>,
}

/// A backend server thread: one `Listener`, a fresh backend and daemon per connection.
pub struct TestServer {
    pub path: PathBuf,
    sessions: Receiver<Session>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Serves `connections` connections on one listener, then removes the socket.
    pub fn spawn(spec: BackendSpec, connections: usize) -> Self {
        Self::spawn_with(spec, connections, Duration::ZERO, None)
    }

    /// Like `spawn`, but binds the socket only after `delay`.
    pub fn spawn_after(spec: BackendSpec, connections: usize, delay: Duration) -> Self {
        Self::spawn_with(spec, connections, delay, None)
    }

    /// A backend that restarts: after each session its socket is removed for `downtime`
    /// before a new listener is bound.
    pub fn spawn_restarting(spec: BackendSpec, connections: usize, downtime: Duration) -> Self {
        Self::spawn_with(spec, connections, Duration::ZERO, Some(downtime))
    }

    fn spawn_with(spec: BackendSpec, connections: usize, delay: Duration, restart: Option<Duration>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backend.sock");
        let (tx, sessions) = mpsc::channel();
        let thread_path = path.clone();
        let thread = thread::spawn(move || {
            thread::sleep(delay);
            let mut listener = Some(Listener::new(&thread_path, true).expect("listener"));
            for n in 0..connections {
                let bound = listener.get_or_insert_with(|| Listener::new(&thread_path, true).expect("listener"));
                let log = Arc::new(SessionLog::default());
                let backend = EchoBackend::new(spec.clone(), log.clone());
                let mut daemon =
                    VhostUserDaemon::new(format!("echo-{n}"), backend, GuestMemoryAtomic::new(GuestMemoryMmap::new()))
                        .expect("daemon");
                daemon.start(bound).expect("accept");
                let shutdown = daemon.shutdown_handle().expect("connected daemon");
                if tx.send(Session { shutdown, log: log.clone() }).is_err() {
                    return;
                }
                // Hang-ups surface as errors here; any end of the session is fine for the tests.
                let _ = daemon.wait();
                drop(daemon);
                log.ended.store(true, Ordering::SeqCst);
                if let Some(downtime) = restart {
                    drop(listener.take()); // Unlinks the socket, like a dead daemon's cleanup.
                    thread::sleep(downtime);
                }
            }
        });
        TestServer { path, sessions, thread: Some(thread), _dir: dir }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next accepted session.
    pub fn session(&self) -> Session {
        self.sessions.recv_timeout(Duration::from_secs(10)).expect("backend session")
    }

    /// Waits for the server thread (all connections served).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

/// Polls until `cond` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Waits until `fd` is readable; returns false on timeout.
pub fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let epoll = Epoll::new().unwrap();
    epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), EpollEvent::new(EventSet::IN, 0)).unwrap();
    let mut events = [EpollEvent::default(); 1];
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    epoll.wait(ms, &mut events).unwrap() > 0
}

/// The CH-style frontend-owned guest RAM size used by the tests.
pub const RAM_SIZE: u64 = 4 << 20;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// A minimal driver for one split virtqueue, written the way a guest would: descriptors,
/// avail ring and `avail.idx` with release ordering, used ring read with acquire ordering.
pub struct TestRing {
    mem: GuestMemoryMmap,
    index: usize,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    data: GuestAddress,
    avail_idx: u16,
    last_used: u16,
    next_desc: u16,
    posted: u32,
}

impl TestRing {
    /// Lays out queue `index` with `size` entries at `base` (rings) and `data` (buffers), both
    /// in guest RAM; the ring starts at index `start` (as after earlier use).
    pub fn new(ram: &GuestRam, index: usize, size: u16, base: u64, data: u64, start: u16) -> Self {
        let n = u64::from(size);
        let desc = GuestAddress(base);
        let avail = desc.unchecked_add(16 * n);
        let used = GuestAddress((avail.raw_value() + 6 + 2 * n + 3) & !3);
        let mem = ram.memory().clone();
        let total = used.raw_value() + 6 + 8 * n - base;
        mem.write_slice(&vec![0u8; total as usize], desc).unwrap();
        // A ring in use so far: both indexes at `start`, as a driver would leave them.
        mem.store(start.to_le(), avail.unchecked_add(2), Ordering::Release).unwrap();
        mem.store(start.to_le(), used.unchecked_add(2), Ordering::Release).unwrap();
        mem.store(start.to_le(), avail.unchecked_add(4 + 2 * n), Ordering::Release).unwrap(); // used_event
        TestRing {
            mem,
            index,
            size,
            desc,
            avail,
            used,
            data: GuestAddress(data),
            avail_idx: start,
            last_used: start,
            next_desc: 0,
            posted: 0,
        }
    }

    /// Where the backend should resume: the driver's avail index.
    pub fn config(&self) -> QueueConfig {
        QueueConfig {
            index: self.index,
            size: self.size,
            desc: self.desc,
            avail: self.avail,
            used: self.used,
            base: self.avail_idx,
        }
    }

    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    fn write_desc(&self, i: u16, addr: GuestAddress, len: u32, flags: u16, next: u16) {
        let at = self.desc.unchecked_add(16 * u64::from(i));
        self.mem.write_obj(addr.raw_value().to_le(), at).unwrap();
        self.mem.write_obj(len.to_le(), at.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags.to_le(), at.unchecked_add(12)).unwrap();
        self.mem.write_obj(next.to_le(), at.unchecked_add(14)).unwrap();
    }

    /// Posts a two-descriptor chain (`out` readable, `in_len` writable bytes) and publishes it.
    /// Returns the head index and the guest address of the writable buffer.
    pub fn post(&mut self, out: &[u8], in_len: u32) -> (u16, GuestAddress) {
        let slot = self.data.unchecked_add(u64::from(self.posted) * 0x2000);
        let (out_addr, in_addr) = (slot, slot.unchecked_add(0x1000));
        self.posted += 1;
        self.mem.write_slice(out, out_addr).unwrap();
        let head = self.next_desc;
        let second = (head + 1) % self.size;
        self.next_desc = (head + 2) % self.size;
        self.write_desc(head, out_addr, out.len() as u32, DESC_F_NEXT, second);
        self.write_desc(second, in_addr, in_len, DESC_F_WRITE, 0);
        let entry = self.avail.unchecked_add(4 + 2 * u64::from(self.avail_idx % self.size));
        self.mem.write_obj(head.to_le(), entry).unwrap();
        // The ring entry and descriptors must be visible before the new index.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.store(self.avail_idx.to_le(), self.avail.unchecked_add(2), Ordering::Release).unwrap();
        (head, in_addr)
    }

    /// Takes the next used element `(id, len)`, if any, and moves `used_event` past it.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let used_idx = u16::from_le(self.mem.load(self.used.unchecked_add(2), Ordering::Acquire).unwrap());
        if used_idx == self.last_used {
            return None;
        }
        let elem = self.used.unchecked_add(4 + 8 * u64::from(self.last_used % self.size));
        let id = u32::from_le(self.mem.read_obj(elem).unwrap());
        let len = u32::from_le(self.mem.read_obj(elem.unchecked_add(4)).unwrap());
        self.last_used = self.last_used.wrapping_add(1);
        // used_event: ask to be notified for the next completion (EVENT_IDX).
        let used_event = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.store(self.last_used.to_le(), used_event, Ordering::Release).unwrap();
        Some((id, len))
    }

    /// The device's used index as it is in guest memory.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.load(self.used.unchecked_add(2), Ordering::Acquire).unwrap())
    }

    /// Waits on `call` until a used element arrives.
    pub fn wait_used(&mut self, call: &EventFd, timeout: Duration) -> Option<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(used) = self.pop_used() {
                return Some(used);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(call, left) {
                return self.pop_used();
            }
            let _ = call.read(); // Non-blocking; consumes the notification.
        }
    }

    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, addr).unwrap();
        buf
    }
}

/// Posts `msg`, kicks, waits for the completion and checks it is `msg` reversed.
pub fn round_trip(ring: &mut TestRing, kick: &EventFd, call: &EventFd, msg: &[u8]) {
    let (head, in_addr) = ring.post(msg, 64);
    kick.write(1).unwrap();
    let (id, len) = ring.wait_used(call, Duration::from_secs(5)).expect("completion");
    assert_eq!(id, u32::from(head), "completed chain");
    assert_eq!(len as usize, msg.len(), "bytes written by the backend");
    let mut expected = msg.to_vec();
    expected.reverse();
    assert_eq!(ring.read(in_addr, msg.len()), expected);
}
