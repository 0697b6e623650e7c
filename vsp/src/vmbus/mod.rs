//! The VSP's VMBus service: serves blob requests arriving as GPA-direct packets on a VMBus
//! channel (`../shared/notes/vmbus.md` §2, `az_blob.md` §2.3–2.4), behind the emulator's
//! [`ChannelDevice`] hooks.
//!
//! Per open channel one dispatcher thread reads the guest→host ring, admits each request into
//! an [`InflightTable`] keyed by the packet's transaction id (the guest's requestor id), and hands
//! it to a [`Runner`] pool running [`Engine::serve`] on guest memory; the thread that served a
//! request writes its completion into the host→guest ring. Room for that completion is reserved
//! before the request is taken, so posting never waits: when the ring has no room the dispatcher
//! stops reading and waits with `pending_send_sz` (see `outbox`).
//!
//! Hostile input: a packet well-formed enough to answer gets a status-coded completion; a corrupt
//! ring is a clean channel failure (serve nothing more, complete what is pending, log, report).
//! On rescind or close every pending request gets exactly one completion (rescinded unless it
//! already finished) in the ring before the hook returns, within `Limits::drain_timeout`.

mod dispatcher;
mod outbox;
mod packet;

#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use vmblob_protocol::framing::vmbus::MAX_PACKET_PAGES;
use vmblob_vmbus::{AttachedChannel, ChannelDevice, ChannelSignal, DeviceError, HostChannel, Offer};
use vmblob_vmbus::{CorruptError, WriteError};

use crate::engine::{Engine, InflightTable};
use crate::runner::Runner;
use dispatcher::{Control, Dispatcher, Serving};
use outbox::Outbox;

/// How the service runs a channel.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Runner threads serving requests concurrently.
    pub workers: usize,
    /// Most PFNs one GPA-direct packet may carry (the seed's 8192).
    pub max_pages: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions { workers: 2, max_pages: MAX_PACKET_PAGES }
    }
}

/// Why the service stopped serving a channel before it was closed or rescinded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelFailure {
    #[error("guest→host ring corrupt: {0}")]
    CorruptIncoming(CorruptError),
    #[error("completions cannot be written to the host→guest ring: {0}")]
    Undeliverable(WriteError),
    #[error("waiting for the guest's signal: {0}")]
    Wait(String),
}

/// How a rescind or close drained the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests in flight when the channel started going away.
    pub pending: usize,
    /// Whether all of them completed within the drain timeout.
    pub drained: bool,
}

/// What the service has done, across channels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceReport {
    pub opens: u64,
    /// Completions posted for admitted requests.
    pub completed: u64,
    /// Packets answered with a status without being served (busy, duplicate id, malformed).
    pub refused: u64,
    /// Packets that cannot be answered (no completion requested, id 0, a guest completion).
    pub dropped: u64,
    /// Completions lost because the host→guest ring became unusable.
    pub undelivered: u64,
    /// Completions of requests that outlived their channel's drain: dropped,
    /// since a re-opened channel may reuse the rings.
    pub late: u64,
    /// The last channel failure.
    pub failure: Option<ChannelFailure>,
    /// The last rescind or close.
    pub last_drain: Option<DrainReport>,
}

/// Whether a channel is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Idle,
    Serving,
    /// A rescind or close is completing the pending requests.
    Draining,
}

struct Running {
    control: Arc<Control>,
    table: Arc<InflightTable<u64>>,
    outbox: Arc<Outbox>,
    /// The channel's signal; `wake_self` wakes the dispatcher.
    signal: Arc<dyn ChannelSignal>,
    dispatcher: JoinHandle<()>,
}

/// The VSP as a VMBus device: one channel at a time, a fresh in-flight table per open.
pub struct VmbusService {
    engine: Arc<Engine>,
    options: ServiceOptions,
    running: Mutex<Option<Running>>,
    draining: std::sync::atomic::AtomicBool,
    report: Arc<Mutex<ServiceReport>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VmbusService {
    pub fn new(engine: Arc<Engine>, options: ServiceOptions) -> Self {
        VmbusService {
            engine,
            options,
            running: Mutex::new(None),
            draining: Default::default(),
            report: Default::default(),
        }
    }

    pub fn report(&self) -> ServiceReport {
        lock(&self.report).clone()
    }

    pub fn state(&self) -> ServiceState {
        if self.draining.load(Ordering::Acquire) {
            ServiceState::Draining
        } else if lock(&self.running).is_some() {
            ServiceState::Serving
        } else {
            ServiceState::Idle
        }
    }

    /// Requests admitted and not yet completed on the current channel.
    pub fn in_flight(&self) -> usize {
        lock(&self.running).as_ref().map_or(0, |r| r.table.len())
    }

    fn start(&self, channel: HostChannel) -> Result<(), DeviceError> {
        let mut running = lock(&self.running);
        if running.is_some() {
            return Err("the VSP already serves a channel".into());
        }
        let table = Arc::new(InflightTable::new(self.engine.limits().max_inflight));
        let control = Arc::new(Control::default());
        let HostChannel { memory, channel, .. } = channel;
        let AttachedChannel { incoming, outgoing, signal } =
            channel.attach().map_err(|e| format!("channel rings: {e}"))?;
        let outbox = Arc::new(Outbox::new(outgoing, table.clone(), self.report.clone(), signal.clone()));
        let serving = Arc::new(Serving { engine: self.engine.clone(), mem: memory, outbox: outbox.clone() });
        let dispatcher = Dispatcher {
            incoming,
            signal: signal.clone(),
            serving,
            runner: Runner::new("vmbus-worker", self.options.workers)?,
            control: control.clone(),
            report: self.report.clone(),
            max_pages: self.options.max_pages,
        };
        let dispatcher = std::thread::Builder::new().name("vmbus-dispatch".into()).spawn(move || dispatcher.run())?;
        *running = Some(Running { control, table, outbox, signal, dispatcher });
        lock(&self.report).opens += 1;
        Ok(())
    }

    /// Stops serving: admit nothing more, cancel what is in flight (each still completes once,
    /// rescinded unless it finished), wait until every completion is in the ring or the drain
    /// timeout passes, then stop the threads.
    fn stop(&self, why: &str) {
        // Draining before the channel leaves `running`, so `state()` never reads Idle meanwhile.
        self.draining.store(true, Ordering::Release);
        let Some(r) = lock(&self.running).take() else {
            self.draining.store(false, Ordering::Release);
            return;
        };
        r.control.stopping.store(true, Ordering::Release);
        let pending = r.table.close();
        r.signal.wake_self();
        let timeout = self.engine.limits().drain_timeout;
        let drained = r.table.wait_empty(timeout);
        if !drained {
            log::error!(
                "vmbus {why}: {} of {pending} requests still running after {timeout:?}; they get no completion",
                r.table.len()
            );
        }
        // A request stuck in the store keeps its runner thread, but posts nothing any more.
        r.outbox.detach();
        r.control.exit.store(true, Ordering::Release);
        r.signal.wake_self();
        if r.dispatcher.join().is_err() {
            log::error!("vmbus {why}: the dispatcher panicked");
        }
        log::info!("vmbus {why}: {pending} requests were pending, drained: {drained}");
        lock(&self.report).last_drain = Some(DrainReport { pending, drained });
        self.draining.store(false, Ordering::Release);
    }
}

impl ChannelDevice for VmbusService {
    fn on_open(&self, channel: HostChannel) -> Result<(), DeviceError> {
        log::info!("vmbus: channel relid {} (offer {}) opened", channel.offer.relid, channel.offer.generation);
        self.start(channel)
    }

    fn on_rescind(&self, offer: &Offer) {
        log::info!("vmbus: rescinding relid {}", offer.relid);
        self.stop("rescind");
    }

    fn on_close(&self, offer: &Offer) {
        log::info!("vmbus: guest closed relid {}", offer.relid);
        self.stop("close");
    }
}
