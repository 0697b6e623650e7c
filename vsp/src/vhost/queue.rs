//! One queue: pop and admit chains, hand admitted requests to the runner
//! pool, post their completions out of order, and poll the avail ring while
//! the guest keeps it busy.
//!
//! At most one thread *watches* the ring at a time (the kick handler or a
//! runner thread that just finished a request): it pops, and it keeps the guest
//! from kicking while it polls. Whoever stops watching re-arms kicks and pops
//! what raced in, so a chain is never left unseen. A watcher that finds work
//! keeps one request to run itself (no thread hop at queue depth 1) and
//! passes the rest to the pool; before running it, it stops watching, so a
//! slow request never holds up the ring. The kick thread itself runs only a
//! quick read that is alone in flight (a small GET or a properties read on
//! the embedded store), which costs less than the hand-off to a pool thread.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vhost_user_backend::{VringState, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmblob_protocol::framing::virtio::{ChainDescriptor, VirtioFrame};
use vmblob_protocol::sg::{sub_range, total_len};
use vmblob_protocol::transport::{REQUEST_SIZE, RESPONSE_SIZE, VspRequest};
use vmblob_protocol::{BlobError, Segment, VspResponse};
use zerocopy::IntoBytes;

use super::chain::read_chain;
use super::completion::{Completions, Done};
use super::inflight::InflightSlot;
use super::request::VirtioRequest;
use super::ring::{Ring, rearm_kicks, suppress_kicks};
use super::session::QueueSession;
use crate::engine::guest_io::{read_exact, write_all};
use crate::engine::{AdmitError, CancelToken, Engine, InflightTable};
use crate::runner::{self, Runner};

/// What every queue of one connection shares.
pub struct DeviceState {
    /// The daemon is going away: take no more requests.
    pub closing: AtomicBool,
    /// The connection is gone and drained (or gave up draining): a late
    /// completion must not touch its rings any more.
    pub detached: AtomicBool,
    pub event_idx: AtomicBool,
    /// How long a watcher polls the avail ring after the last chain (zero:
    /// kicks only).
    pub poll: Duration,
}

impl DeviceState {
    pub fn new(poll: Duration) -> Self {
        Self {
            closing: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            event_idx: AtomicBool::new(false),
            poll,
        }
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    fn event_idx(&self) -> bool {
        self.event_idx.load(Ordering::Acquire)
    }
}

/// An admitted request, tracked in the in-flight table until its
/// completion is in the used ring.
struct Admitted {
    head: u16,
    request: VirtioRequest,
    cancel: CancelToken,
    /// The queue's epoch at admission (see `session`).
    epoch: u64,
}

/// Which thread runs a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Here {
    Pool,
    KickThread,
}

/// Where a chain came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Popped from the avail ring.
    Avail,
    /// Resubmitted from the inflight region after a restart.
    Region,
}

pub struct QueueWorker {
    engine: Arc<Engine>,
    device: Arc<DeviceState>,
    inflight: Arc<InflightTable<u16>>,
    session: Arc<QueueSession>,
    runner: Runner,
    completions: Completions,
    /// Someone watches the avail ring (see the module comment).
    watching: AtomicBool,
    index: usize,
    /// The first batch after the queue started has been popped (it is logged when the queue
    /// starts past index 0: what a restarted backend finds waiting).
    started: AtomicBool,
}

impl QueueWorker {
    pub fn new(
        index: usize,
        engine: Arc<Engine>,
        device: Arc<DeviceState>,
        runner: Runner,
        slot: Arc<InflightSlot>,
    ) -> Self {
        let inflight = Arc::new(InflightTable::new(engine.limits().max_inflight));
        let session = Arc::new(QueueSession::new(index, slot));
        Self {
            completions: Completions::new(inflight.clone(), device.clone(), session.clone()),
            engine,
            device,
            inflight,
            session,
            runner,
            watching: AtomicBool::new(false),
            index,
            started: AtomicBool::new(false),
        }
    }

    pub fn inflight(&self) -> &InflightTable<u16> {
        &self.inflight
    }

    pub fn session(&self) -> &QueueSession {
        &self.session
    }

    /// The guest kicked: pop everything and hand it to the pool, except a
    /// quick read alone in flight, which runs right here
    /// ([`QueueWorker::take_quick`]).
    pub fn on_kick(self: &Arc<Self>, ring: &Ring) -> io::Result<()> {
        if !self.try_watch() {
            // The watcher polls, or re-checks the ring when it stops.
            return Ok(());
        }
        loop {
            let mut work = self.pop_batch(ring);
            if work.is_empty() {
                break;
            }
            let quick = self.take_quick(ring, &mut work);
            self.dispatch(ring, work);
            if let Some(job) = quick {
                // Stop watching first, as a pool thread does before it runs
                // a request: with polling on, `run` then watches the ring for
                // the guest's next request from this thread.
                self.unwatch(ring);
                self.run(ring, job, Here::KickThread);
                return Ok(());
            }
        }
        self.unwatch(ring);
        Ok(())
    }

    fn try_watch(&self) -> bool {
        self.watching.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Stop watching: re-arm kicks, then pop (and pass on) whatever arrived
    /// before the re-arm, unless someone else took over watching.
    fn unwatch(self: &Arc<Self>, ring: &Ring) {
        loop {
            self.watching.store(false, Ordering::SeqCst);
            if !self.rearm(ring) || !self.try_watch() {
                return;
            }
            let work = self.pop_batch(ring);
            self.dispatch(ring, work);
        }
    }

    /// Re-arm kicks on a running ring; `true` if chains are waiting.
    fn rearm(&self, ring: &Ring) -> bool {
        let mut state = ring.vring.get_mut();
        // A stopped ring must not be written (the device is suspended), and a
        // reset one admits nothing: their chains wait for the next start,
        // whose enable calls the handler.
        if self.device.closing() || !state.get_queue().ready() || self.inflight.is_closed() {
            return false;
        }
        rearm_kicks(&mut state)
    }

    /// The batch's one request if it is alone in flight and a quick read
    /// ([`Engine::is_quick`]): handing that to a pool thread would cost a
    /// wake-up and a context switch, several times the read itself. With
    /// anything else in flight it goes to the pool like the rest, so a
    /// deep queue keeps overlapping.
    fn take_quick(&self, ring: &Ring, work: &mut Vec<Admitted>) -> Option<Admitted> {
        if work.len() == 1 && self.quick_alone(ring, &work[0]) { work.pop() } else { None }
    }

    fn quick_alone(&self, ring: &Ring, job: &Admitted) -> bool {
        self.inflight.len() == 1 && self.engine.is_quick(&ring.mem.memory(), &job.request)
    }

    fn dispatch(self: &Arc<Self>, ring: &Ring, work: Vec<Admitted>) {
        for job in work {
            let (me, ring) = (self.clone(), ring.clone());
            self.runner.spawn(move || me.run(&ring, job, Here::Pool));
        }
    }

    /// Run a request, post its completion, then (polling enabled) watch the
    /// ring for the guest's next request and run that one too; on the kick
    /// thread only if it is again a quick read alone in flight, so a slow
    /// request never keeps that thread from the next kick.
    fn run(self: &Arc<Self>, ring: &Ring, first: Admitted, here: Here) {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let resp = self.serve(ring, &job);
            let watch = !self.device.poll.is_zero() && !self.device.closing() && self.try_watch();
            if watch {
                // Before the completion: the guest answers it with its next
                // request, which the poll below picks up without a kick.
                suppress_kicks(&mut ring.vring.get_mut(), &ring.mem.memory(), self.device.event_idx());
            }
            let used_len = self.write_status(ring, &job.request.frame.status(), &resp, job.epoch);
            self.completions.post(ring, Done { head: job.head, used_len, epoch: job.epoch });
            if watch {
                next = self.poll(ring);
                if here == Here::KickThread
                    && let Some(job) = next.take_if(|job| !self.quick_alone(ring, job))
                {
                    self.dispatch(ring, vec![job]);
                }
            }
        }
    }

    fn serve(&self, ring: &Ring, job: &Admitted) -> VspResponse {
        runner::serve(&self.engine, &ring.mem.memory(), &job.request, &job.cancel, format_args!("head {}", job.head))
    }

    /// Watch the ring until it stays idle for the poll window. Returns a
    /// request to run on this thread (others found go to the pool); `None`
    /// once idle. Either way this thread no longer watches.
    ///
    /// Spinning only pays while nothing else is in flight (queue depth 1):
    /// otherwise the next request to finish looks at the ring anyway, and a
    /// spinner would take a core from the requests being served.
    fn poll(self: &Arc<Self>, ring: &Ring) -> Option<Admitted> {
        let mut idle_since = Instant::now();
        while !self.device.closing() && idle_since.elapsed() < self.device.poll {
            if !ring.has_avail() {
                if !self.inflight.is_empty() {
                    break;
                }
                std::hint::spin_loop();
                continue;
            }
            let mut work = self.pop_batch(ring).into_iter();
            if let Some(mine) = work.next() {
                self.dispatch(ring, work.collect());
                self.unwatch(ring);
                return Some(mine);
            }
            if self.inflight.is_closed() {
                // Reset: the chains stay for the next start.
                break;
            }
            // Only refused chains: still activity.
            idle_since = Instant::now();
        }
        self.unwatch(ring);
        None
    }

    /// Pop and admit up to a ring's worth of chains under the vring lock:
    /// GET_VRING_BASE marks the ring not ready under the same lock, so a stop
    /// sees every admitted request. Refused chains are answered right here.
    fn pop_batch(&self, ring: &Ring) -> Vec<Admitted> {
        let mem = ring.mem.memory();
        let mut admitted = Vec::new();
        let mut refused = 0;
        {
            let mut state = ring.vring.get_mut();
            if self.device.closing() || !state.get_queue().ready() {
                return admitted;
            }
            // After a restart: the heads the dead backend took come first, in their order.
            let resubmit = self.session.attach(&mut state, &mem);
            let resubmitted = resubmit.len();
            for head in resubmit {
                match self.resubmit(&mut state, &mem, head) {
                    Popped::Admitted(a) => admitted.push(a),
                    Popped::Refused => refused += 1,
                    Popped::Skipped => {}
                    Popped::Stop => {
                        // Closed (a reset): recover again when the queue is set up anew.
                        self.session.forget();
                        break;
                    }
                }
            }
            suppress_kicks(&mut state, &mem, self.device.event_idx());
            let base = state.get_queue().next_avail();
            for _ in 0..state.get_queue().size() {
                match self.pop_one(&mut state, &mem) {
                    Popped::Admitted(a) => admitted.push(a),
                    Popped::Refused => refused += 1,
                    Popped::Skipped => {}
                    Popped::Stop => break,
                }
            }
            if !self.started.swap(true, Ordering::Relaxed) && base != 0 {
                // A queue restarted past 0 (a VMM reconnecting to a restarted VSP): what it re-offers.
                log::info!(
                    "queue {}: started at avail index {base} with {} requests waiting ({resubmitted} resubmitted from \
                     the inflight region): {} admitted, {refused} refused (an empty chain is one the guest had \
                     completed, re-offered from the used index)",
                    self.index,
                    admitted.len() + refused,
                    admitted.len()
                );
            }
        }
        if refused > 0 {
            self.completions.notify(ring);
        }
        admitted
    }

    fn pop_one(&self, state: &mut VringState, mem: &GuestMemoryMmap) -> Popped {
        let queue = state.get_queue_mut();
        let Some(chain) = queue.pop_descriptor_chain(mem) else { return Popped::Stop };
        let head = chain.head_index();
        let max = self.engine.limits().max_descriptors;
        // Collect at most max + 1 descriptors so the frame can refuse a long chain.
        let descs: Vec<ChainDescriptor> = chain
            .take(max + 1)
            .map(|d| ChainDescriptor { addr: d.addr().0, len: d.len(), writable: d.is_write_only() })
            .collect();
        self.accept(state, mem, head, &descs, Origin::Avail)
    }

    /// A head the inflight region says the previous backend took: read its
    /// chain from the descriptor table and admit it again.
    fn resubmit(&self, state: &mut VringState, mem: &GuestMemoryMmap, head: u16) -> Popped {
        let queue = state.get_queue();
        let limit = self.engine.limits().max_descriptors + 1;
        match read_chain(mem, queue.desc_table(), queue.size(), head, limit) {
            Ok(descs) => self.accept(state, mem, head, &descs, Origin::Region),
            Err(e) => {
                log::warn!("queue {}: resubmitted head {head} refused: {e}", self.index);
                self.refuse(state, mem, head, &[], BlobError::InvalidRequest)
            }
        }
    }

    /// Answer a chain with an error status at once, in the last 12 writable
    /// bytes if there are that many.
    fn refuse(
        &self,
        state: &mut VringState,
        mem: &GuestMemoryMmap,
        head: u16,
        descs: &[ChainDescriptor],
        status: BlobError,
    ) -> Popped {
        let writable: Vec<Segment> =
            descs.iter().filter(|d| d.writable).map(|d| Segment { addr: d.addr, len: d.len }).collect();
        let used_len = post_status(mem, &tail(&writable, RESPONSE_SIZE as u64), &Engine::refused(status));
        self.session.add_used(state, &[(head, used_len)]);
        Popped::Refused
    }

    fn accept(
        &self,
        state: &mut VringState,
        mem: &GuestMemoryMmap,
        head: u16,
        descs: &[ChainDescriptor],
        origin: Origin,
    ) -> Popped {
        let max = self.engine.limits().max_descriptors;
        let refuse = |state: &mut VringState, status: BlobError| self.refuse(state, mem, head, descs, status);
        let frame = match VirtioFrame::new(descs.iter().copied(), max) {
            Ok(f) => f,
            Err(e) => {
                if descs.first().is_some_and(|d| d.len == 0 && d.addr == 0) {
                    log::info!("queue {}: chain {head} is empty (completed before a restart); refused", self.index);
                } else {
                    log::debug!("queue chain {head} refused: {e}");
                }
                return refuse(state, BlobError::InvalidRequest);
            }
        };
        // The header is copied out of guest memory exactly once, here.
        let mut raw = [0u8; REQUEST_SIZE];
        let header = match read_exact(mem, &frame.header(), &mut raw).ok().and_then(|()| VspRequest::parse(&raw).ok()) {
            Some(h) => h,
            None => return refuse(state, BlobError::InvalidRequest),
        };
        match self.inflight.admit(head, header.timeout_ms.get()) {
            Ok(cancel) => {
                if origin == Origin::Avail {
                    // A resubmitted head is still marked, with its original order.
                    self.session.mark(head);
                }
                let epoch = self.session.epoch();
                Popped::Admitted(Admitted { head, request: VirtioRequest { frame, header }, cancel, epoch })
            }
            Err(AdmitError::Full) => refuse(state, BlobError::Busy),
            Err(AdmitError::Closed) => {
                // Not accepted: leave the chain in the ring for whoever runs
                // the device next; the guest fails it if nobody does.
                if origin == Origin::Avail {
                    state.get_queue_mut().go_to_previous_position();
                }
                Popped::Stop
            }
            Err(AdmitError::Duplicate) => {
                // The device popped a head that is still in flight: the guest
                // reused it. The first keeps the only completion.
                log::warn!("guest reused in-flight head {head}; dropped");
                Popped::Skipped
            }
        }
    }

    /// Write the 12-byte response unless the connection is gone; returns the
    /// used length to report.
    fn write_status(&self, ring: &Ring, status: &[Segment], resp: &VspResponse, epoch: u64) -> u32 {
        // A request from before a stop must not touch buffers the guest has taken back.
        if self.device.detached.load(Ordering::SeqCst) || epoch != self.session.epoch() {
            return 0;
        }
        post_status(&ring.mem.memory(), status, resp)
    }
}

enum Popped {
    Admitted(Admitted),
    /// Answered with an error status at once.
    Refused,
    /// Dropped (a reused head).
    Skipped,
    /// Nothing (more) to pop now.
    Stop,
}

/// The last `n` bytes of a segment list, or nothing if it is shorter.
fn tail(segs: &[Segment], n: u64) -> Vec<Segment> {
    let total = total_len(segs);
    if total < n { Vec::new() } else { sub_range(segs, total - n, n).unwrap_or_default() }
}

/// Write the 12-byte response; returns the used length to report (the
/// response's bytes plus the status, or 0 when nothing could be written).
fn post_status(mem: &GuestMemoryMmap, status: &[Segment], resp: &VspResponse) -> u32 {
    if status.is_empty() || write_all(mem, status, resp.as_bytes()).is_err() {
        return 0;
    }
    resp.response_len.get() + RESPONSE_SIZE as u32
}
