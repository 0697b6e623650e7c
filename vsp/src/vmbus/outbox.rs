//! The host→guest ring of one open channel, written by whoever has a completion: a runner
//! thread that finished a request, or the dispatcher refusing a packet.
//!
//! OpenVMM storvsp's rule: ring space for a request's completion is reserved before the request
//! is taken from the guest→host ring. A finished request is then posted at once, by the thread
//! that served it; nothing completed is ever kept back waiting for space. When no completion
//! fits, the dispatcher stops taking requests and waits with `pending_send_sz` instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmblob_protocol::VspResponse;
use vmblob_protocol::framing::vmbus::encode_blob_completion;
use vmblob_vmbus::{ChannelSignal, RingMem};
use vmblob_vmbus::{CorruptError, OutgoingRing, TRAILER_SIZE, WriteError};

use super::{ChannelFailure, ServiceReport};
use crate::engine::{AdmitError, CancelToken, InflightTable};

/// Whether a completion may be promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reserve {
    Granted,
    /// No room: `pending_send_sz` is set (or a completion in flight will ask again once posted),
    /// and the dispatcher's doorbell rings once a completion fits.
    Wait,
    /// The ring is unusable or the channel gone: take nothing more.
    Refused,
}

struct State {
    ring: OutgoingRing<Arc<dyn RingMem>>,
    /// Ring bytes promised to completions not yet written.
    reserved: usize,
    /// Free ring bytes not promised, as last seen. A lower bound: only the guest changes it, by
    /// reading, which frees space; so `read_index` is looked at only when it runs short.
    credit: usize,
    /// The dispatcher sleeps until one more completion fits.
    waiting: bool,
    /// Completions cannot be written any more: they are dropped (and counted undelivered).
    broken: bool,
    /// The channel is gone: a request that outlived its drain posts nothing (counted late).
    detached: bool,
}

pub(super) struct Outbox {
    state: Mutex<State>,
    /// Ring bytes one completion takes, trailer included (every completion is the same size).
    slot: usize,
    table: Arc<InflightTable<u64>>,
    report: Arc<Mutex<ServiceReport>>,
    /// Interrupts the guest; its `wake_self` wakes the dispatcher when a posted completion made
    /// the room it waits for (the guest only signals for space it frees, not for space we stop
    /// needing).
    signal: Arc<dyn ChannelSignal>,
    /// The channel failed: read nothing more.
    failed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Re-reads `read_index`.
    fn refresh(&mut self) -> Result<(), CorruptError> {
        // Less free than promised only if the guest moved `read_index` back; a write then fails.
        self.credit = self.ring.free_space()?.saturating_sub(self.reserved);
        Ok(())
    }

    /// Whether one more completion fits; if not, asks the guest to signal once it does, then
    /// looks again (it may have read meanwhile without seeing the request).
    fn room_for_one(&mut self, slot: usize) -> Result<bool, CorruptError> {
        if self.credit >= slot {
            return Ok(true);
        }
        self.refresh()?;
        if self.credit >= slot {
            return Ok(true);
        }
        // The guest signals once more than this is free: what is promised, plus one more.
        self.ring.set_pending_send_size(u32::try_from(self.reserved + slot).unwrap_or(u32::MAX));
        self.refresh()?;
        let fits = self.credit >= slot;
        if fits {
            self.ring.set_pending_send_size(0);
        }
        Ok(fits)
    }
}

impl Outbox {
    pub(super) fn new(
        ring: OutgoingRing<Arc<dyn RingMem>>,
        table: Arc<InflightTable<u64>>,
        report: Arc<Mutex<ServiceReport>>,
        signal: Arc<dyn ChannelSignal>,
    ) -> Self {
        let slot = encode_blob_completion(0, &VspResponse::default()).len() + TRAILER_SIZE;
        let state = State { ring, reserved: 0, credit: 0, waiting: false, broken: false, detached: false };
        Outbox { state: Mutex::new(state), slot, table, report, signal, failed: AtomicBool::new(false) }
    }

    fn report(&self) -> MutexGuard<'_, ServiceReport> {
        lock(&self.report)
    }

    /// Promises ring space to one completion, before the dispatcher takes a packet.
    pub(super) fn reserve(&self) -> Reserve {
        let mut s = lock(&self.state);
        if s.broken {
            return Reserve::Refused;
        }
        match s.room_for_one(self.slot) {
            Ok(true) => {}
            Ok(false) => {
                s.waiting = true;
                return Reserve::Wait;
            }
            Err(e) => {
                self.break_ring(&mut s, e.into());
                return Reserve::Refused;
            }
        }
        s.waiting = false;
        s.credit -= self.slot;
        s.reserved += self.slot;
        Reserve::Granted
    }

    /// Gives back a promise the dispatcher did not use (nothing read, or nothing to answer).
    pub(super) fn release(&self) {
        let mut s = lock(&self.state);
        s.reserved -= self.slot;
        s.credit += self.slot;
    }

    /// Admits a request. Under the ring's lock: a completion leaves the table under it too, so a
    /// guest reusing the id the moment it sees the completion is not taken for a duplicate.
    pub(super) fn admit(&self, transaction_id: u64, timeout_ms: u32) -> Result<CancelToken, AdmitError> {
        let _ring = lock(&self.state);
        self.table.admit(transaction_id, timeout_ms)
    }

    /// Writes a completion into its promised space and publishes it; an admitted request leaves
    /// the in-flight table only then, so an empty table means every completion is visible.
    pub(super) fn post(&self, transaction_id: u64, response: &VspResponse, admitted: bool) {
        let packet = encode_blob_completion(transaction_id, response);
        let mut s = lock(&self.state);
        if s.detached {
            log::warn!("vmbus: transaction {transaction_id} finished after its channel went away; dropped");
            self.report().late += 1;
            return;
        }
        s.reserved -= self.slot;
        let mut signal = false;
        if !s.broken {
            // Fits unless the guest broke the ring: the space was promised.
            match s.ring.write(&packet) {
                Ok(()) => signal = s.ring.commit_write(),
                Err(e) => self.break_ring(&mut s, e),
            }
            if s.broken {
                log::error!("vmbus: the completion of transaction {transaction_id} cannot be delivered");
                self.report().undelivered += 1;
            }
        }
        if admitted {
            if self.table.complete(transaction_id) {
                self.report().completed += 1;
            } else {
                log::error!("vmbus: transaction {transaction_id} was not in flight");
            }
        }
        let wake = s.waiting && self.room_for_dispatcher(&mut s);
        drop(s);
        if signal {
            // Fails only once the bus ended the channel; then nobody reads the ring anyway.
            let _ = self.signal.signal_peer();
        }
        if wake {
            self.signal.wake_self();
        }
    }

    /// The dispatcher waits for room: the write withdrew its `pending_send_sz`, and with one
    /// completion fewer promised it may fit now. Asks again, or says to wake it.
    fn room_for_dispatcher(&self, s: &mut State) -> bool {
        if s.broken {
            return true; // it finds out when it tries again
        }
        match s.room_for_one(self.slot) {
            Ok(false) => false,
            Ok(true) => {
                s.waiting = false;
                true
            }
            Err(e) => {
                self.break_ring(s, e.into());
                true
            }
        }
    }

    /// Completions can no longer be written: drop them from now on, and fail the channel.
    fn break_ring(&self, s: &mut State, e: WriteError) {
        s.broken = true;
        self.fail(ChannelFailure::Undeliverable(e));
    }

    /// The channel is going away and the drain is over: a request that outlived it must not
    /// write into rings a re-opened channel may reuse.
    pub(super) fn detach(&self) {
        let mut s = lock(&self.state);
        s.broken = true;
        s.detached = true;
    }

    /// Fails the channel (once): serve nothing more, complete what is pending as rescinded.
    pub(super) fn fail(&self, failure: ChannelFailure) {
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let pending = self.table.rescind_all();
        log::error!("vmbus: channel failed: {failure}; completing {pending} pending requests as rescinded");
        self.report().failure = Some(failure);
    }

    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}
