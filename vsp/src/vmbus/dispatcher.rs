//! One open channel's dispatcher thread: reads packets from the guest→host ring, admits requests
//! and hands them to the runner, which serves each and posts its completion itself. Before it
//! takes a packet the dispatcher reserves room for the answer in the host→guest ring
//! ([`Outbox::reserve`]), so it never holds a completion: when there is no room it stops reading
//! and leaves the guest's requests in its ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vm_memory::GuestMemoryMmap;
use vmblob_protocol::BlobError;
use vmblob_protocol::framing::vmbus::GpaDirectFrame;
use vmblob_vmbus::{ChannelSignal, IncomingRing, ReadError, RingMem};

use super::outbox::{Outbox, Reserve};
use super::packet::{Classified, classify};
use super::{ChannelFailure, ServiceReport};
use crate::engine::{AdmitError, CancelToken, Engine};
use crate::runner::{self, Runner};

/// Packets read per round: the guest waiting for the space they free gets its signal at least
/// this often.
const READ_BATCH: usize = 64;
/// How often to look for work if the doorbell cannot be waited on.
const POLL_WITHOUT_DOORBELL: std::time::Duration = std::time::Duration::from_millis(1);

/// Set by the service to steer the dispatcher.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// Read no more packets (the channel is going away).
    pub stopping: AtomicBool,
    /// Return.
    pub exit: AtomicBool,
}

/// What a runner thread needs to serve a request and post its completion.
pub(super) struct Serving {
    pub engine: Arc<Engine>,
    pub mem: GuestMemoryMmap,
    pub outbox: Arc<Outbox>,
}

/// The dispatcher's parts; it runs on a thread of its own.
pub(super) struct Dispatcher {
    pub incoming: IncomingRing<Arc<dyn RingMem>>,
    /// Interrupts the guest; sleeps until the guest signals, or the service or a completion
    /// wakes this thread (`wake_self`).
    pub signal: Arc<dyn ChannelSignal>,
    pub serving: Arc<Serving>,
    pub runner: Runner,
    pub control: Arc<Control>,
    pub report: Arc<Mutex<ServiceReport>>,
    pub max_pages: usize,
}

/// What handling a packet left behind.
enum Read {
    More,
    /// Not accepted (the table is closed): leave it in the ring, unread.
    Stop,
}

/// What a round of reading left behind.
#[derive(Default)]
struct Round {
    /// The guest may wait for the space the round freed.
    signal: bool,
    /// No room for another completion: do not look for packets until woken.
    no_room: bool,
}

impl Dispatcher {
    fn outbox(&self) -> &Outbox {
        &self.serving.outbox
    }

    fn report(&self) -> std::sync::MutexGuard<'_, ServiceReport> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs until told to exit. Dropping the runner handle then lets its threads finish their
    /// queue and stop.
    pub(super) fn run(mut self) {
        while !self.control.exit.load(Ordering::Acquire) {
            let reading = !self.outbox().failed() && !self.control.stopping.load(Ordering::Acquire);
            let mut look = reading;
            if reading {
                let round = self.read_packets();
                if round.signal {
                    let _ = self.signal.signal_peer();
                }
                look = !round.no_room;
            }
            if self.has_work(look) {
                continue;
            }
            if let Err(e) = self.signal.wait(None) {
                // Serve nothing more; poll for the exit instead of sleeping.
                self.outbox().fail(ChannelFailure::Wait(e.to_string()));
                std::thread::sleep(POLL_WITHOUT_DOORBELL);
            }
        }
    }

    /// Whether to go round again instead of sleeping. Unmasks the guest→host ring before
    /// sleeping when looking for packets, so one that races in is either seen here or signalled.
    fn has_work(&mut self, look: bool) -> bool {
        if self.control.exit.load(Ordering::Acquire) {
            return true;
        }
        if look {
            match self.incoming.unmask_and_check() {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    self.outbox().fail(ChannelFailure::CorruptIncoming(e));
                    return true;
                }
            }
        }
        false
    }

    /// Reads up to a batch of packets, each only once its answer has room, releasing each one's
    /// ring space once handled.
    fn read_packets(&mut self) -> Round {
        let mut round = Round::default();
        for _ in 0..READ_BATCH {
            match self.outbox().reserve() {
                Reserve::Granted => {}
                Reserve::Wait => {
                    round.no_room = true;
                    break;
                }
                Reserve::Refused => break,
            }
            let bytes = match self.incoming.read() {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.outbox().release();
                    if let ReadError::Corrupt(e) = e {
                        self.outbox().fail(ChannelFailure::CorruptIncoming(e));
                    }
                    break;
                }
            };
            match self.handle(&bytes) {
                Read::More => round.signal |= self.incoming.commit_read(),
                Read::Stop => {
                    self.incoming.revert();
                    break;
                }
            }
        }
        round
    }

    /// Handles one packet, its completion's room reserved: the packet's answer, or its job,
    /// takes the reservation; a packet with no answer gives it back.
    fn handle(&mut self, bytes: &[u8]) -> Read {
        let frame = match classify(bytes, self.max_pages) {
            Classified::Request(frame) => frame,
            Classified::Refuse { transaction_id, status } => {
                log::debug!("vmbus: transaction {transaction_id} refused: {status}");
                self.refuse(transaction_id, status);
                return Read::More;
            }
            Classified::Drop(why) => {
                log::debug!("vmbus: packet dropped: {why}");
                self.outbox().release();
                self.report().dropped += 1;
                return Read::More;
            }
        };
        let id = frame.transaction_id;
        match self.outbox().admit(id, frame.header.timeout_ms.get()) {
            Ok(cancel) => {
                self.run_request(frame, cancel);
                Read::More
            }
            Err(AdmitError::Full) => {
                self.refuse(id, BlobError::Busy);
                Read::More
            }
            Err(AdmitError::Duplicate) => {
                // The first keeps its own, single completion; this packet gets a status.
                log::warn!("vmbus: guest reused in-flight transaction {id}");
                self.refuse(id, BlobError::InvalidRequest);
                Read::More
            }
            Err(AdmitError::Closed) => {
                self.outbox().release();
                Read::Stop
            }
        }
    }

    fn run_request(&self, frame: GpaDirectFrame, cancel: CancelToken) {
        let serving = self.serving.clone();
        self.runner.spawn(move || {
            let id = frame.transaction_id;
            let response =
                runner::serve(&serving.engine, &serving.mem, &frame, &cancel, format_args!("transaction {id}"));
            serving.outbox.post(id, &response, true);
        });
    }

    fn refuse(&self, transaction_id: u64, status: BlobError) {
        self.report().refused += 1;
        self.outbox().post(transaction_id, &Engine::refused(status), false);
    }
}
