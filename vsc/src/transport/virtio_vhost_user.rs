//! The virtio transport: the guest's split queues in memfd guest RAM, driven
//! through a vhost-user connection to `vmblob-vsp` (the role a VMM plus the
//! guest kernel play together).
//!
//! One reaper thread waits on every queue's call eventfd and the hang-up
//! event, pops used entries and completes requests. On hang-up it hands out
//! real completions already posted, then rescinds the rest at once; a
//! reconnect thread re-arms the rings when the backend comes back.
//!
//! With a vhost-user inflight region (the backend acked INFLIGHT_SHMFD) a
//! hang-up is a pause instead: pending requests stay pending and the rings
//! stay as they are, the reconnect hands the region to the new backend and
//! restarts each ring at its used index (as QEMU does), and the new backend
//! completes, each once, what the old one had taken; what it never took is
//! still in the avail ring. Only a backend away for longer than
//! [`VirtioOptions::hold_for`] gets the rescind. With
//! polling on, a caller waiting on a lone request first reaps the used rings
//! itself for up to the poll window (interrupts off meanwhile), so a quick
//! completion reaches it without waking the reaper; one thread spins at most.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::GuestAddress;
use vmblob_protocol::config::DeviceConfig;
use vmblob_vhost_frontend::{DisconnectHandle, FrontendOptions, GuestRam, QueueConfig, VhostUserDevice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::error::{ClientError, ProtocolError};
use crate::transport::dma::DmaPool;
use crate::transport::table::{RequestTable, WaitAssist};
use crate::transport::virtio::SplitQueue;
use crate::transport::virtio::submit::{self, QueueState, finish};
use crate::transport::{Completion, OpBuffers, Ticket, Transport};

const PAGE: u64 = 4096;
/// How long pending requests are kept across a hang-up with an inflight
/// region before they are rescinded after all (the default of
/// [`VirtioOptions::hold_for`]).
pub const HOLD_FOR: Duration = Duration::from_secs(30);
const HANGUP_TOKEN: u64 = u64::MAX;
const STOP_TOKEN: u64 = u64::MAX - 1;

/// How to reach and size the device.
#[derive(Debug, Clone)]
pub struct VirtioOptions {
    pub socket: PathBuf,
    pub queues: usize,
    pub queue_size: u16,
    /// Guest RAM for rings and request buffers.
    pub ram_size: u64,
    pub frontend: FrontendOptions,
    /// Reconnect after the backend goes away.
    pub reconnect: bool,
    /// How long a caller waiting on a lone request busy-polls the used rings
    /// before sleeping until the reaper wakes it (zero: interrupts only).
    /// Only one thread spins at a time, and only at queue depth 1: deeper,
    /// completions come from notifications. An idle client burns no CPU.
    pub poll: Duration,
    /// With an inflight region, how long a hang-up keeps pending requests
    /// for the backend's return before rescinding them; about the requests'
    /// own timeout is right (a caller stops waiting then anyway).
    pub hold_for: Duration,
}

impl VirtioOptions {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            queues: 1,
            queue_size: 256,
            ram_size: 256 << 20,
            frontend: FrontendOptions {
                connect_timeout: Duration::from_secs(10),
                reconnect_timeout: Duration::from_millis(500),
                ..FrontendOptions::default()
            },
            reconnect: true,
            poll: Duration::ZERO,
            hold_for: HOLD_FOR,
        }
    }
}

struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when descriptors are freed or the device goes away.
    space: Condvar,
    kick: Arc<EventFd>,
    call: Arc<EventFd>,
}

struct Inner {
    /// Holds the guest RAM the rings and DMA buffers live in for as long as
    /// the transport exists.
    _ram: GuestRam,
    pool: DmaPool,
    device: Mutex<VhostUserDevice>,
    queues: Vec<Queue>,
    table: RequestTable<OpBuffers, Completion>,
    hangup: DisconnectHandle,
    config: DeviceConfig,
    next_queue: AtomicUsize,
    stopping: AtomicBool,
    stop_evt: EventFd,
    reconnect: bool,
    reconnecting: AtomicBool,
    /// A used ring was found corrupt: the reaper reconnects (the old backend is cut off first).
    corrupt: AtomicBool,
    /// Completed reconnects.
    reconnects: AtomicUsize,
    /// The backend keeps an inflight region (fixed at connect).
    inflight: bool,
    /// A hang-up is being ridden out with pending requests kept (inflight).
    holding: AtomicBool,
    hold_for: Duration,
    /// Signalled when a reconnect completed (callers re-asking lost requests wait on it).
    back: Condvar,
    back_lock: Mutex<()>,
    poll: Duration,
    /// Threads busy-polling the used rings now (at most one: see `Inner::may_spin`).
    spinning: AtomicUsize,
    retry_interval: Duration,
}

/// A connected virtio blob device.
pub struct VirtioTransport {
    inner: Arc<Inner>,
    reaper: Option<JoinHandle<()>>,
}

/// The busy-poll slot, given back on drop.
struct SpinSlot<'a>(&'a AtomicUsize);

impl Drop for SpinSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VirtioTransport {
    pub fn connect(opts: VirtioOptions) -> Result<Self, ClientError> {
        let ring_bytes = SplitQueue::ring_bytes(opts.queue_size).div_ceil(PAGE) * PAGE;
        let rings_total = ring_bytes * opts.queues as u64;
        if opts.queues == 0 || rings_total + (1 << 20) > opts.ram_size {
            return Err(ClientError::InvalidOptions("guest RAM too small for the rings"));
        }
        let ram = GuestRam::new(opts.ram_size)?;
        let mut device = VhostUserDevice::connect(&opts.socket, &ram, opts.queues, opts.frontend.clone())?;
        let config_bytes = device.get_config(0, DeviceConfig::SIZE as u32)?;
        let config = DeviceConfig::from_bytes(&config_bytes).map_err(ProtocolError::DeviceConfig)?;
        let event_idx = device.negotiated().event_idx();
        let mut queues = Vec::with_capacity(opts.queues);
        let mut configs = Vec::with_capacity(opts.queues);
        for i in 0..opts.queues {
            let base = GuestAddress(ring_bytes * i as u64);
            let ring = SplitQueue::new(ram.memory().clone(), base, opts.queue_size, event_idx)?;
            configs.push(queue_config(i, &ring, 0));
            let kick = device.kick_fd(i).ok_or(ClientError::Setup("no kick eventfd"))?;
            let call = device.call_fd(i).ok_or(ClientError::Setup("no call eventfd"))?;
            queues.push(Queue { state: Mutex::new(QueueState::new(ring)), space: Condvar::new(), kick, call });
        }
        device.activate(&configs)?;
        let inflight = device.has_inflight();
        let pool = DmaPool::new(ram.memory().clone(), GuestAddress(rings_total), opts.ram_size - rings_total)?;
        let inner = Arc::new(Inner {
            hangup: device.disconnect_handle(),
            _ram: ram,
            pool,
            device: Mutex::new(device),
            queues,
            table: RequestTable::new(),
            config,
            next_queue: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            stop_evt: EventFd::new(EFD_NONBLOCK)?,
            reconnect: opts.reconnect,
            reconnecting: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            reconnects: AtomicUsize::new(0),
            inflight,
            holding: AtomicBool::new(false),
            hold_for: opts.hold_for,
            back: Condvar::new(),
            back_lock: Mutex::new(()),
            poll: opts.poll,
            spinning: AtomicUsize::new(0),
            retry_interval: opts.frontend.retry_interval,
        });
        inner.table.set_assist(Arc::downgrade(&(inner.clone() as Arc<dyn WaitAssist>)));
        let reaper_inner = inner.clone();
        let reaper = std::thread::Builder::new()
            .name("vmblob-reaper".into())
            .spawn(move || reaper_inner.reap_loop())
            .map_err(ClientError::Io)?;
        Ok(Self { inner, reaper: Some(reaper) })
    }

    /// The device's advertised limits and capabilities.
    pub fn device_config(&self) -> DeviceConfig {
        self.inner.config
    }

    /// Drop the vhost-user connection without stopping the rings first, as a
    /// VMM crash would (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn sever_connection(&self) -> Result<(), ClientError> {
        // reconnect() begins by shutting the old connection; a failure to
        // reach the backend again leaves the device disconnected.
        let inner = self.inner.clone();
        let configs = inner.queue_configs();
        let mut dev = lock(&inner.device);
        let _ = dev.reconnect(&configs);
        Ok(())
    }

    /// Write a used index more than a ring ahead of the driver's into queue
    /// `queue`'s used ring, as a broken device would, and wake the reaper (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn corrupt_used_ring(&self, queue: usize) -> Result<(), ClientError> {
        let q = self.inner.queues.get(queue).ok_or(ClientError::InvalidOptions("no such queue"))?;
        lock(&q.state).ring.scribble_used_idx_for_test()?;
        q.call.write(1)?;
        Ok(())
    }

    /// How many times the transport has reconnected to a backend.
    pub fn reconnects(&self) -> usize {
        self.inner.reconnects.load(Ordering::Acquire)
    }

    /// Requests submitted and not completed.
    pub fn pending(&self) -> usize {
        self.inner.table.pending()
    }
}

fn queue_config(index: usize, ring: &SplitQueue, base: u16) -> QueueConfig {
    QueueConfig {
        index,
        size: ring.size(),
        desc: ring.desc_table(),
        avail: ring.avail_ring(),
        used: ring.used_ring(),
        base,
    }
}

impl Inner {
    fn queue_configs(&self) -> Vec<QueueConfig> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let st = lock(&q.state);
                queue_config(i, &st.ring, st.ring.avail_idx())
            })
            .collect()
    }

    /// Pop every used entry of `q` and complete those requests, then re-arm
    /// the interrupt (re-checking for a race); returns how many completed.
    fn reap_queue(&self, q: &Queue) -> usize {
        self.reap(q, true)
    }

    /// `rearm`: false while busy-polling, so the device is not asked to
    /// signal completions the poller picks up anyway.
    fn reap(&self, q: &Queue, rearm: bool) -> usize {
        let mut done = Vec::new();
        let wake_submitters;
        {
            let mut st = lock(&q.state);
            loop {
                match st.ring.pop_used() {
                    Ok(Some((head, len))) => {
                        if let Some(id) = st.heads.remove(&head) {
                            done.push((id, len));
                        }
                    }
                    Ok(None) => {
                        if !rearm || !st.ring.enable_interrupts() {
                            break;
                        }
                    }
                    Err(e) => {
                        // A device that corrupts the used ring is treated as gone: pending
                        // requests fail now, and the reaper reconnects, which first cuts the
                        // old connection off (so its late writes cannot land in a reopened ring).
                        log::error!("used ring corrupt: {e}; failing pending requests and reconnecting");
                        self.corrupt.store(true, Ordering::Release);
                        self.hangup_now();
                        break;
                    }
                }
            }
            wake_submitters = !done.is_empty() && st.space_waiters > 0;
        }
        if wake_submitters {
            q.space.notify_all();
        }
        let n = done.len();
        self.table.complete_all(done, finish);
        n
    }

    /// Claim the one busy-poll slot if spinning pays: polling is for a lone
    /// request (queue depth 1), whose completion it catches without a
    /// wake-up. With more in flight completions keep coming and their
    /// notifications keep waiters fed, while a spinning thread would take a
    /// core from the device (on two cores it halved large reads); and a second
    /// spinner only competes with the first. `None`: sleep instead.
    fn may_spin(&self) -> Option<SpinSlot<'_>> {
        if self.poll.is_zero() || self.table.pending() > 1 {
            return None;
        }
        if self.spinning.fetch_add(1, Ordering::AcqRel) > 0 {
            self.spinning.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SpinSlot(&self.spinning))
    }

    fn spin_budget_left(&self, deadline: std::time::Instant) -> bool {
        std::time::Instant::now() < deadline && !self.stopping.load(Ordering::Relaxed) && !self.hangup.is_disconnected()
    }

    fn hangup_now(&self) {
        self.table.rescind();
        for q in &self.queues {
            q.space.notify_all();
        }
    }

    fn reap_loop(self: Arc<Self>) {
        let epoll = match self.epoll() {
            Ok(e) => e,
            Err(e) => {
                log::error!("reaper cannot poll: {e}");
                self.hangup_now();
                return;
            }
        };
        let mut events = vec![EpollEvent::default(); self.queues.len() + 2];
        while !self.stopping.load(Ordering::Acquire) {
            for q in &self.queues {
                self.reap_queue(q);
            }
            let down = self.hangup.is_disconnected();
            // `removing` is the "hang-up handled" state and only a completed
            // reconnect clears it, so a second hang-up right after a
            // reconnect is never missed.
            if down && !self.table.is_removing() && !self.holding.load(Ordering::Acquire) {
                // Completions the backend posted before it left are real.
                for q in &self.queues {
                    self.reap_queue(q);
                }
                if self.inflight && self.reconnect {
                    // The region says what the next backend must finish: keep everything.
                    self.holding.store(true, Ordering::Release);
                    log::warn!("device went away: {} pending requests kept for its return", self.table.pending());
                } else {
                    // Everything else fails now, without waiting for anyone.
                    let n = self.table.rescind().len();
                    for q in &self.queues {
                        q.space.notify_all();
                    }
                    log::warn!("device went away: {n} pending requests rescinded");
                }
                self.spawn_reconnect();
            }
            if self.corrupt.swap(false, Ordering::AcqRel) {
                self.spawn_reconnect();
            }
            // The reaper never spins: a waiting caller does (`assist`), and
            // a second spinner would only compete with it for a core.
            match epoll.wait(100, &mut events) {
                Ok(n) => {
                    for ev in &events[..n] {
                        match ev.data() {
                            HANGUP_TOKEN => {
                                let _ = self.hangup.event_fd().read();
                            }
                            STOP_TOKEN => {}
                            q => {
                                if let Some(q) = self.queues.get(q as usize) {
                                    let _ = q.call.read();
                                }
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("reaper poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn epoll(&self) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        for (i, q) in self.queues.iter().enumerate() {
            epoll.ctl(ControlOperation::Add, q.call.as_raw_fd(), EpollEvent::new(EventSet::IN, i as u64))?;
        }
        let hup = self.hangup.event_fd().as_raw_fd();
        epoll.ctl(ControlOperation::Add, hup, EpollEvent::new(EventSet::IN, HANGUP_TOKEN))?;
        epoll.ctl(ControlOperation::Add, self.stop_evt.as_raw_fd(), EpollEvent::new(EventSet::IN, STOP_TOKEN))?;
        Ok(epoll)
    }

    fn spawn_reconnect(self: &Arc<Self>) {
        if !self.reconnect || self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new().name("vmblob-reconnect".into()).spawn(move || {
            inner.reconnect_loop();
            // Also when the loop ended because the transport is stopping.
            inner.reconnecting.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.reconnecting.store(false, Ordering::Release);
        }
    }

    /// Re-arm the rings at the driver's avail index once the backend is back,
    /// then release the quarantine (the old backend is gone: the daemon
    /// accepts a new connection only after finishing the old one).
    fn reconnect_loop(&self) {
        let since = std::time::Instant::now();
        while !self.stopping.load(Ordering::Acquire) {
            if self.holding.load(Ordering::Acquire) && self.table.is_removing() {
                // A corrupt used ring met while holding: rescinded already, so back as without a region.
                self.holding.store(false, Ordering::Release);
            }
            if self.holding.load(Ordering::Acquire) {
                if since.elapsed() < self.hold_for {
                    match self.reconnect_holding() {
                        Ok(()) => return,
                        Err(e) => {
                            log::debug!("reconnect failed: {e}");
                            std::thread::sleep(self.retry_interval);
                            continue;
                        }
                    }
                }
                // Away too long: what is pending fails after all, and the device comes back
                // (if ever) with rings reset to the driver's view, as without a region.
                let n = self.table.rescind().len();
                self.holding.store(false, Ordering::Release);
                for q in &self.queues {
                    q.space.notify_all();
                }
                log::warn!("device away for {:?}: {n} kept requests rescinded", self.hold_for);
            }
            let configs = self.queue_configs();
            let result = lock(&self.device).reconnect_with(&configs, &mut || {
                // The old backend is done (the new one answered): its late completions first,
                // then the rings back to the driver's view before the new backend reads them
                // (it reloads used.idx from the ring, which a corrupt device may have scribbled).
                for q in &self.queues {
                    self.reap_queue(q);
                }
                for q in &self.queues {
                    let mut st = lock(&q.state);
                    st.ring.reset_after_disconnect();
                    st.heads.clear();
                }
                // The reset rewrote every used index: corruption the reap met is gone with it.
                self.corrupt.store(false, Ordering::Release);
            });
            match result {
                Ok(()) => {
                    // Clear the flag first: a hang-up handled right after
                    // reopen must be able to start the next reconnect.
                    self.reconnecting.store(false, Ordering::Release);
                    let released = self.table.reopen();
                    self.reconnects.fetch_add(1, Ordering::AcqRel);
                    log::info!("device is back; {released} quarantined buffers released");
                    let _g = lock(&self.back_lock);
                    self.back.notify_all();
                    return;
                }
                Err(e) => {
                    log::debug!("reconnect failed: {e}");
                    // Handshake errors return at once; don't spin on them.
                    std::thread::sleep(self.retry_interval);
                }
            }
        }
    }

    /// The reconnect of a held hang-up: the old backend's last completions,
    /// then each ring re-armed at its used index, rings and requests as they
    /// are; the new backend resubmits from the region what the old one took.
    fn reconnect_holding(&self) -> Result<(), vmblob_vhost_frontend::Error> {
        lock(&self.device).reconnect_then(&mut || {
            for q in &self.queues {
                self.reap_queue(q);
            }
            self.queues
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    let st = lock(&q.state);
                    queue_config(i, &st.ring, st.ring.last_used_idx())
                })
                .collect()
        })?;
        self.reconnecting.store(false, Ordering::Release);
        self.holding.store(false, Ordering::Release);
        self.reconnects.fetch_add(1, Ordering::AcqRel);
        log::info!("device is back; {} kept requests left to it", self.table.pending());
        let _g = lock(&self.back_lock);
        self.back.notify_all();
        Ok(())
    }

    fn submit(&self, mut b: OpBuffers) -> Result<Ticket, ClientError> {
        let mut chain = Vec::with_capacity(5);
        submit::lay_out_chain(&mut b, |gpa, len, writable| {
            chain.push((gpa, len, writable));
            Ok(())
        })?;
        let deadline = crate::transport::submit_deadline(&b.header);
        let (id, waiter) = self.table.register(b).map_err(|(e, _)| e)?;
        let q = &self.queues[self.next_queue.fetch_add(1, Ordering::Relaxed) % self.queues.len()];
        submit::post_chain(&self.table, id, deadline, &q.state, &q.space, &chain, || {
            let _ = q.kick.write(1);
        })?;
        Ok(waiter)
    }
}

/// A waiting caller reaps for itself. Interrupts stay off while it spins;
/// re-enabling them (with the re-check in `reap`) when it stops keeps every
/// other waiter's completion signalled, whoever spins and stops when.
impl WaitAssist for Inner {
    fn assist(&self, done: &dyn Fn() -> bool) {
        if done() {
            return;
        }
        let Some(_slot) = self.may_spin() else { return };
        for q in &self.queues {
            lock(&q.state).ring.disable_interrupts();
        }
        let deadline = std::time::Instant::now() + self.poll;
        while !done() && self.spin_budget_left(deadline) {
            if self.queues.iter().map(|q| self.reap(q, false)).sum::<usize>() == 0 {
                std::hint::spin_loop();
            }
        }
        for q in &self.queues {
            self.reap(q, true);
        }
    }
}

impl Transport for VirtioTransport {
    fn pool(&self) -> &DmaPool {
        &self.inner.pool
    }

    fn submit(&self, buffers: OpBuffers) -> Result<Ticket, ClientError> {
        self.inner.submit(buffers)
    }

    fn num_queues(&self) -> usize {
        self.inner.queues.len()
    }

    /// A held hang-up (inflight region) is a pause: submissions go into the
    /// rings, and the backend that comes back takes them.
    fn is_connected(&self) -> bool {
        !self.inner.table.is_removing()
            && (!self.inner.hangup.is_disconnected() || self.inner.holding.load(Ordering::Acquire))
    }

    fn wait_connected(&self, timeout: Duration) -> bool {
        let inner = &self.inner;
        if !inner.reconnect {
            return self.is_connected();
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut g = lock(&inner.back_lock);
        loop {
            if self.is_connected() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline || inner.stopping.load(Ordering::Acquire) {
                return false;
            }
            // Slices bound a wake-up that raced the check above.
            let slice = (deadline - now).min(Duration::from_millis(50));
            g = inner.back.wait_timeout(g, slice).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Drop for VirtioTransport {
    fn drop(&mut self) {
        // Stop the rings first: the backend completes everything it accepted
        // (GET_VRING_BASE drains), so no buffer is freed under the device.
        if !self.inner.hangup.is_disconnected() {
            let _ = lock(&self.inner.device).stop();
        }
        for q in &self.inner.queues {
            self.inner.reap_queue(q);
        }
        self.inner.table.rescind();
        self.inner.stopping.store(true, Ordering::Release);
        let _ = self.inner.stop_evt.write(1);
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
    }
}
