//! One channel end as a value: the ring it reads, the ring it writes, and how it signals and
//! waits. The uio guest, the emulator (both ends) and [`connected_pair`] all hand out a
//! [`RawChannel`], so a device, a driver and their tests are written once against it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::control::RingError;
use crate::doorbell::Doorbell;
use crate::incoming::IncomingRing;
use crate::mapped::{ChannelRings, SharedMemory};
use crate::outgoing::OutgoingRing;
use crate::ring_mem::{FlatRingMem, RingMem};

/// Why a channel end can no longer signal or wait.
#[derive(Debug, thiserror::Error)]
pub enum ChannelEnded {
    /// The bus took the channel away (uio's EIO).
    #[error("the VMBus channel was rescinded")]
    Rescinded,
    /// This end or the peer closed it.
    #[error("the VMBus channel is closed")]
    Closed,
    #[error("channel signal: {0}")]
    Io(#[from] io::Error),
}

/// How one end wakes its peer and sleeps until the peer wakes it. The rings only say *when*
/// to signal; one signal covers both rings (the woken side re-examines both).
pub trait ChannelSignal: Send + Sync {
    /// Wake the peer. Fails once the channel ended.
    fn signal_peer(&self) -> Result<(), ChannelEnded>;
    /// Sleep until the peer signals (`Ok(true)`) or `timeout` passes (`Ok(false)`; `None`:
    /// forever). Fails once the channel ended. Whether the rings stay readable after that is
    /// the provider's: an emulated bus keeps them, so a reader may drain what the peer
    /// committed; Linux's `uio_hv_generic` frees them on a rescind, so its reader must not.
    fn wait(&self, timeout: Option<Duration>) -> Result<bool, ChannelEnded>;
    /// Re-enable interrupt delivery outside the rings, where the provider has such a switch;
    /// the rings' own `interrupt_mask` is the ring user's job.
    fn unmask(&self) -> Result<(), ChannelEnded> {
        Ok(())
    }
    /// Wake this end's own sleeper in [`wait`](Self::wait) (to make it look at something
    /// else, e.g. a stop request). A spurious wake-up is harmless.
    fn wake_self(&self) {}
    fn is_rescinded(&self) -> bool;
}

/// One end of an open channel.
#[derive(Clone)]
pub struct RawChannel {
    /// The ring this end reads (attach an [`IncomingRing`](crate::IncomingRing)).
    pub incoming: Arc<dyn RingMem>,
    /// The ring this end writes (attach an [`OutgoingRing`](crate::OutgoingRing)).
    pub outgoing: Arc<dyn RingMem>,
    pub signal: Arc<dyn ChannelSignal>,
}

impl std::fmt::Debug for RawChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawChannel").field("rescinded", &self.signal.is_rescinded()).finish_non_exhaustive()
    }
}

/// Where a channel stands, shared by both ends of an in-process pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelStatus {
    Open,
    /// Closed by an end (or the bus going away).
    Closed,
    /// Rescinded by the host.
    Rescinded,
}

const OPEN: u8 = 0;
const CLOSED: u8 = 1;
const RESCINDED: u8 = 2;

/// A cheap, cloneable view of one channel's status; the first end wins.
#[derive(Debug, Clone, Default)]
pub struct ChannelState(Arc<AtomicU8>);

impl ChannelState {
    pub fn status(&self) -> ChannelStatus {
        match self.0.load(Ordering::Acquire) {
            OPEN => ChannelStatus::Open,
            CLOSED => ChannelStatus::Closed,
            _ => ChannelStatus::Rescinded,
        }
    }

    pub fn is_rescinded(&self) -> bool {
        self.status() == ChannelStatus::Rescinded
    }

    /// Ends the channel with `status` unless it already ended; whether this call ended it.
    pub fn end(&self, status: ChannelStatus) -> bool {
        let v = match status {
            ChannelStatus::Open => return false,
            ChannelStatus::Closed => CLOSED,
            ChannelStatus::Rescinded => RESCINDED,
        };
        self.0.compare_exchange(OPEN, v, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// `Ok` while open, else why not.
    pub fn check(&self) -> Result<(), ChannelEnded> {
        match self.status() {
            ChannelStatus::Open => Ok(()),
            ChannelStatus::Closed => Err(ChannelEnded::Closed),
            ChannelStatus::Rescinded => Err(ChannelEnded::Rescinded),
        }
    }
}

/// One end's signalling in an in-process pair: ring the peer's doorbell, sleep on our own,
/// and a status both ends share (what an emulated bus or a test host gives each end).
#[derive(Debug, Clone)]
pub struct DoorbellSignal {
    pub to_peer: Doorbell,
    pub from_peer: Doorbell,
    pub state: ChannelState,
}

impl ChannelSignal for DoorbellSignal {
    fn signal_peer(&self) -> Result<(), ChannelEnded> {
        self.state.check()?;
        self.to_peer.ring();
        Ok(())
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool, ChannelEnded> {
        self.state.check()?;
        let count = self.from_peer.wait(timeout)?;
        self.state.check()?;
        Ok(count > 0)
    }

    fn wake_self(&self) {
        self.from_peer.ring();
    }

    fn is_rescinded(&self) -> bool {
        self.state.is_rescinded()
    }
}

/// Two connected ends and the status they share.
#[derive(Debug, Clone)]
pub struct ChannelPair {
    pub guest: RawChannel,
    pub host: RawChannel,
    pub state: ChannelState,
    /// Rung by the host end, waited on by the guest end (the guest's interrupt).
    pub to_guest: Doorbell,
    /// Rung by the guest end, waited on by the host end.
    pub to_host: Doorbell,
}

impl ChannelPair {
    /// Ends the channel (first end wins) and wakes both sleepers so they see it.
    pub fn end(&self, status: ChannelStatus) -> bool {
        let ended = self.state.end(status);
        self.to_guest.ring();
        self.to_host.ring();
        ended
    }

    fn over(guest_to_host: Arc<dyn RingMem>, host_to_guest: Arc<dyn RingMem>) -> io::Result<Self> {
        let (to_guest, to_host, state) = (Doorbell::new()?, Doorbell::new()?, ChannelState::default());
        let signal = |to_peer: &Doorbell, from_peer: &Doorbell| {
            Arc::new(DoorbellSignal { to_peer: to_peer.clone(), from_peer: from_peer.clone(), state: state.clone() })
        };
        Ok(ChannelPair {
            guest: RawChannel {
                incoming: host_to_guest.clone(),
                outgoing: guest_to_host.clone(),
                signal: signal(&to_host, &to_guest),
            },
            host: RawChannel { incoming: guest_to_host, outgoing: host_to_guest, signal: signal(&to_guest, &to_host) },
            state: state.clone(),
            to_guest,
            to_host,
        })
    }

    /// Both ends over the rings of one channel allocation in shared memory (guest RAM).
    pub fn in_memory<M: SharedMemory + Clone + 'static>(rings: &ChannelRings<M>) -> io::Result<Self> {
        Self::over(Arc::new(rings.guest_to_host.clone()), Arc::new(rings.host_to_guest.clone()))
    }
}

/// Two connected ends over heap rings with `data_size` bytes of data each (a bad size is
/// `InvalidInput`).
pub fn connected_pair(data_size: usize) -> io::Result<ChannelPair> {
    let ring = || {
        FlatRingMem::new(data_size)
            .map(|r| Arc::new(r) as Arc<dyn RingMem>)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let (guest_to_host, host_to_guest) = (ring()?, ring()?);
    ChannelPair::over(guest_to_host, host_to_guest)
}

/// A channel end with its ring state attached: what a device or driver loop holds while it
/// serves the channel.
pub struct AttachedChannel {
    pub incoming: IncomingRing<Arc<dyn RingMem>>,
    pub outgoing: OutgoingRing<Arc<dyn RingMem>>,
    pub signal: Arc<dyn ChannelSignal>,
}

impl RawChannel {
    /// Attaches a reader to `incoming` and a writer to `outgoing` (each checks its ring's
    /// control page).
    pub fn attach(&self) -> Result<AttachedChannel, RingError> {
        Ok(AttachedChannel {
            incoming: IncomingRing::new(self.incoming.clone())?,
            outgoing: OutgoingRing::new(self.outgoing.clone())?,
            signal: self.signal.clone(),
        })
    }
}
