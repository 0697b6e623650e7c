//! One open channel's dispatcher thread: reads packets from the guest→host ring, admits and hands
//! requests to the workers, and is the only writer of the host→guest ring. A completion is
//! committed to the ring before its request leaves the in-flight table, so an empty table means
//! every completion is visible to the guest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};

use vmblob_protocol::framing::vmbus::encode_blob_completion;
use vmblob_protocol::{BlobError, VspResponse};
use vmblob_vmbus::HostChannel;
use vmblob_vmbus::{ReadError, WriteError};

use super::packet::{Classified, classify};
use super::workers::{Done, Job};
use super::{ChannelFailure, ServiceReport};
use crate::engine::{AdmitError, Engine, InflightTable};

/// Packets read per round before completions get their turn again.
const READ_BATCH: usize = 64;
/// How often to look for work if the doorbell cannot be waited on.
const POLL_WITHOUT_DOORBELL: std::time::Duration = std::time::Duration::from_millis(1);

/// Set by the service to steer the dispatcher.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// Read no more packets (the channel is going away).
    pub stopping: AtomicBool,
    /// Post what is ready, then return.
    pub exit: AtomicBool,
}

/// A completion waiting for ring space.
struct Pending {
    transaction_id: u64,
    response: VspResponse,
    /// Whether it leaves the in-flight table once posted.
    admitted: bool,
}

/// What a dispatcher is built from.
pub(super) struct Parts {
    pub channel: HostChannel,
    pub table: Arc<InflightTable<u64>>,
    pub jobs: Sender<Job>,
    pub done: Receiver<Done>,
    pub control: Arc<Control>,
    pub report: Arc<Mutex<ServiceReport>>,
    pub max_pages: usize,
    /// Completions held back before reading stops (back-pressure on a guest that does not read).
    pub backlog_limit: usize,
}

pub(super) struct Dispatcher {
    channel: HostChannel,
    table: Arc<InflightTable<u64>>,
    /// `None` once exiting: the workers stop when it is dropped.
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    control: Arc<Control>,
    report: Arc<Mutex<ServiceReport>>,
    max_pages: usize,
    backlog_limit: usize,
    backlog: VecDeque<Pending>,
    /// The guest→host ring is unusable: read nothing more.
    reading_failed: bool,
    /// The host→guest ring is unusable: completions are dropped.
    posting_failed: bool,
}

/// What reading a packet left behind.
enum Read {
    More,
    /// Stop reading this round (empty, closed, back-pressure, failure).
    Stop,
}

impl Dispatcher {
    pub(super) fn new(p: Parts) -> Self {
        Dispatcher {
            channel: p.channel,
            table: p.table,
            jobs: Some(p.jobs),
            done: p.done,
            control: p.control,
            report: p.report,
            max_pages: p.max_pages,
            backlog_limit: p.backlog_limit.max(1),
            backlog: VecDeque::new(),
            reading_failed: false,
            posting_failed: false,
        }
    }

    fn report(&self) -> std::sync::MutexGuard<'_, ServiceReport> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn run(mut self) {
        loop {
            let exiting = self.control.exit.load(Ordering::Acquire);
            self.collect_done();
            let mut signal = self.post();
            if exiting {
                if signal {
                    self.channel.to_guest.ring();
                }
                break;
            }
            let reading = !self.reading_failed && !self.control.stopping.load(Ordering::Acquire);
            if reading {
                signal |= self.read_packets();
                // Refusals answer right away.
                signal |= self.post();
            }
            if signal {
                self.channel.to_guest.ring();
            }
            if self.has_work(reading) {
                continue;
            }
            if let Err(e) = self.channel.from_guest.wait(None) {
                // Serve nothing more, but keep posting what is pending, polling instead of sleeping.
                self.fail_reading(ChannelFailure::Wait(e.to_string()));
                std::thread::sleep(POLL_WITHOUT_DOORBELL);
            }
        }
        // Dropping the sender lets the workers finish their queue and stop.
        self.jobs = None;
    }

    /// Whether to go round again instead of sleeping. Unmasks the guest→host ring before
    /// sleeping, so a packet that races in is either seen here or signalled.
    fn has_work(&mut self, reading: bool) -> bool {
        if self.control.exit.load(Ordering::Acquire) {
            return true;
        }
        if reading && self.backlog.len() < self.backlog_limit {
            match self.channel.incoming.unmask_and_check() {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    self.fail_reading(ChannelFailure::CorruptIncoming(e));
                    return true;
                }
            }
        }
        false
    }

    fn collect_done(&mut self) {
        loop {
            match self.done.try_recv() {
                Ok(d) => self.backlog.push_back(Pending {
                    transaction_id: d.transaction_id,
                    response: d.response,
                    admitted: true,
                }),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Reads up to a batch of packets, releasing each one's ring space once handled. Returns
    /// whether to signal the guest (it waits for that space).
    fn read_packets(&mut self) -> bool {
        let mut signal = false;
        for _ in 0..READ_BATCH {
            if self.backlog.len() >= self.backlog_limit {
                break;
            }
            let bytes = match self.channel.incoming.read() {
                Ok(bytes) => bytes,
                Err(ReadError::Empty) => break,
                Err(ReadError::Corrupt(e)) => {
                    self.fail_reading(ChannelFailure::CorruptIncoming(e));
                    break;
                }
            };
            match self.handle(&bytes) {
                Read::More => signal |= self.channel.incoming.commit_read(),
                Read::Stop => {
                    // Not accepted: leave it in the ring, unread.
                    self.channel.incoming.revert();
                    break;
                }
            }
        }
        signal
    }

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
                self.report().dropped += 1;
                return Read::More;
            }
        };
        let id = frame.transaction_id;
        match self.table.admit(id, frame.header.timeout_ms.get()) {
            Ok(cancel) => {
                let job = Job { frame, cancel };
                if self.jobs.as_ref().is_none_or(|jobs| jobs.send(job).is_err()) {
                    // No worker left to run it: it still gets its one completion.
                    log::error!("vmbus: no worker for transaction {id}");
                    self.backlog.push_back(Pending {
                        transaction_id: id,
                        response: Engine::refused(BlobError::Internal),
                        admitted: true,
                    });
                }
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
            Err(AdmitError::Closed) => Read::Stop,
        }
    }

    fn refuse(&mut self, transaction_id: u64, status: BlobError) {
        self.report().refused += 1;
        self.backlog.push_back(Pending { transaction_id, response: Engine::refused(status), admitted: false });
    }

    /// Writes as many waiting completions as fit, commits them, and only then lets their requests
    /// leave the in-flight table. Returns whether to signal the guest.
    fn post(&mut self) -> bool {
        let mut posted = Vec::new();
        while let Some(next) = self.backlog.front() {
            if self.posting_failed {
                break;
            }
            let packet = encode_blob_completion(next.transaction_id, &next.response);
            match self.channel.outgoing.write(&packet) {
                Ok(()) => posted.extend(self.backlog.pop_front()),
                Err(WriteError::Full { .. }) => match self.channel.outgoing.poll_ready(packet.len()) {
                    Ok(true) => continue,
                    // The guest signals once it has made room (pending_send_sz).
                    Ok(false) => break,
                    Err(e) => self.fail_posting(e),
                },
                Err(e) => self.fail_posting(e),
            }
        }
        let signal = self.channel.outgoing.commit_write();
        if self.posting_failed {
            // Nothing can reach the guest any more: the requests still leave the table, so a
            // drain does not wait for completions that cannot be delivered.
            let lost = self.backlog.len();
            if lost > 0 {
                log::error!("vmbus: {lost} completions cannot be delivered");
                self.report().undelivered += lost as u64;
            }
            posted.extend(self.backlog.drain(..));
        }
        let mut completed = 0;
        for p in posted.into_iter().filter(|p| p.admitted) {
            if self.table.complete(p.transaction_id) {
                completed += 1;
            } else {
                log::error!("vmbus: transaction {} was not in flight", p.transaction_id);
            }
        }
        if completed > 0 {
            self.report().completed += completed;
        }
        signal
    }

    /// The guest→host ring is corrupt: serve nothing more, complete what is pending.
    fn fail_reading(&mut self, failure: ChannelFailure) {
        if self.reading_failed {
            return;
        }
        self.reading_failed = true;
        let pending = self.table.rescind_all();
        log::error!("vmbus: channel failed: {failure}; completing {pending} pending requests as rescinded");
        self.report().failure = Some(failure);
    }

    fn fail_posting(&mut self, e: WriteError) {
        self.posting_failed = true;
        self.fail_reading(ChannelFailure::Undeliverable(e));
    }
}
