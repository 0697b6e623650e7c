//! A channel end (one incoming, one outgoing ring, a way to wake the peer) and an in-process
//! loopback pair for tests.

use std::sync::Arc;

use super::control::{ReadError, RingError, WriteError};
use super::incoming::IncomingRing;
use super::outgoing::OutgoingRing;
use super::ring_mem::{FlatRingMem, RingMem};
use super::signal::{CountingSignal, Signal};

/// One end of a channel. `send`/`try_recv` commit one packet at a time and signal the peer when
/// the rings say so; use the rings directly to batch.
#[derive(Debug)]
pub struct Channel<M, S> {
    pub incoming: IncomingRing<M>,
    pub outgoing: OutgoingRing<M>,
    /// Wakes the other end.
    pub peer: S,
}

impl<M: RingMem, S: Signal> Channel<M, S> {
    pub fn new(incoming: IncomingRing<M>, outgoing: OutgoingRing<M>, peer: S) -> Self {
        Channel { incoming, outgoing, peer }
    }

    /// Writes and commits one packet, signalling the peer if its ring went non-empty.
    pub fn send(&mut self, packet: &[u8]) -> Result<(), WriteError> {
        self.outgoing.write(packet)?;
        if self.outgoing.commit_write() {
            self.peer.signal();
        }
        Ok(())
    }

    /// Reads and commits one packet, signalling the peer if it waits for the space.
    pub fn try_recv(&mut self) -> Result<Vec<u8>, ReadError> {
        let packet = self.incoming.read()?;
        if self.incoming.commit_read() {
            self.peer.signal();
        }
        Ok(packet)
    }
}

/// The end type of [`Loopback`].
pub type LoopbackEnd = Channel<Arc<FlatRingMem>, Arc<CountingSignal>>;

/// Two connected channel ends over heap rings. `guest.peer` is `host_events` and the other way
/// round, so each side sleeps on its own counter.
#[derive(Debug)]
pub struct Loopback {
    pub guest: LoopbackEnd,
    pub host: LoopbackEnd,
    /// Signals received by the guest.
    pub guest_events: Arc<CountingSignal>,
    /// Signals received by the host.
    pub host_events: Arc<CountingSignal>,
    /// The guest→host ring.
    pub guest_to_host: Arc<FlatRingMem>,
    /// The host→guest ring.
    pub host_to_guest: Arc<FlatRingMem>,
}

impl Loopback {
    /// Both rings with `data_size` bytes of data each, both unmasked.
    pub fn new(data_size: usize) -> Result<Self, RingError> {
        let ring = || FlatRingMem::new(data_size).map(Arc::new).map_err(RingError::from);
        let (guest_to_host, host_to_guest) = (ring()?, ring()?);
        let (guest_events, host_events) = (Arc::new(CountingSignal::new()), Arc::new(CountingSignal::new()));
        let guest = Channel::new(
            IncomingRing::new(host_to_guest.clone())?,
            OutgoingRing::new(guest_to_host.clone())?,
            host_events.clone(),
        );
        let host = Channel::new(
            IncomingRing::new(guest_to_host.clone())?,
            OutgoingRing::new(host_to_guest.clone())?,
            guest_events.clone(),
        );
        Ok(Loopback { guest, host, guest_events, host_events, guest_to_host, host_to_guest })
    }
}
