//! The guest's view: the bus (offers, open) and an open channel (rings, interrupts, rescind).
//! This is the surface the VSC transport builds on; keep it small and stable.

use std::io;
use std::sync::Arc;

use std::time::Duration;

use vm_memory::GuestMemoryMmap;
use vmblob_vmbus::packet::PageBuffer;
use vmm_sys_util::eventfd::EventFd;

use super::lifecycle::{EmulatorError, OpenError, Shared};
use super::offer::OpenParams;
use crate::GuestRam;
use vmblob_vmbus::{
    ChannelEnded, ChannelRings, ChannelState, ChannelStatus, Doorbell, DoorbellSignal, GuestRingMem, Offer,
    RING_PAGE_SIZE, RawChannel,
};

/// Why a guest call on an open channel failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// uio's EIO: the host rescinded the channel.
    #[error("the VMBus channel was rescinded")]
    Rescinded,
    #[error("the VMBus channel is closed")]
    Closed,
    #[error("interrupt eventfd: {0}")]
    Io(#[from] io::Error),
}

impl From<ChannelEnded> for GuestError {
    fn from(e: ChannelEnded) -> Self {
        match e {
            ChannelEnded::Rescinded => GuestError::Rescinded,
            ChannelEnded::Closed => GuestError::Closed,
            ChannelEnded::Io(e) => GuestError::Io(e),
        }
    }
}

/// What ended a [`GuestChannel::wait_interrupt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// The host signalled (`count` signals coalesced): look at both rings.
    Interrupt {
        count: u64,
    },
    Timeout,
}

/// The guest's side of the bus: watch for offers, open the channel.
#[derive(Clone)]
pub struct GuestBus {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for GuestBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestBus").field("offer", &self.current_offer()).finish()
    }
}

impl GuestBus {
    /// The channel on offer (open or not), if any.
    pub fn current_offer(&self) -> Option<Offer> {
        self.shared.current_offer()
    }

    /// Waits up to `timeout` for an offer newer than generation `seen` (`None`: any offer) and
    /// returns it; `None` on timeout. After a rescind, pass the old offer's generation.
    pub fn wait_offer(&self, seen: Option<u64>, timeout: Duration) -> Option<Offer> {
        self.shared.wait_offer(seen, timeout)
    }

    /// Opens `offer` with rings placed at `params` in guest RAM. The emulator re-initialises both
    /// ring control pages (like Linux `vmbus_open`), then the device starts serving.
    pub fn open(&self, offer: &Offer, params: OpenParams) -> Result<GuestChannel, OpenError> {
        self.shared.clone().open(offer, params)
    }

    /// Guest RAM (GPA = offset; PFN = GPA >> 12), for ring pages and DMA buffers.
    pub fn ram(&self) -> &GuestRam {
        self.shared.ram()
    }
}

/// An open channel as the guest sees it. Dropping it does not close the channel; call
/// [`close`](Self::close).
pub struct GuestChannel {
    pub(crate) offer: Offer,
    pub(crate) params: OpenParams,
    pub(crate) rings: ChannelRings<GuestMemoryMmap>,
    pub(crate) interrupt: Doorbell,
    pub(crate) host: Doorbell,
    pub(crate) watch: ChannelState,
    pub(crate) open_id: u64,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for GuestChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestChannel")
            .field("offer", &self.offer)
            .field("params", &self.params)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl GuestChannel {
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Where the rings are.
    pub fn params(&self) -> OpenParams {
        self.params
    }

    /// Guest RAM (GPA = offset; PFN = GPA >> 12).
    pub fn ram(&self) -> &GuestRam {
        self.shared.ram()
    }

    /// The open channel as the one value drivers take: the guest's rings and its signal
    /// (ring the host, sleep on the interrupt, see the rescind).
    pub fn channel(&self) -> RawChannel {
        RawChannel {
            incoming: Arc::new(self.incoming_ring()),
            outgoing: Arc::new(self.outgoing_ring()),
            signal: Arc::new(DoorbellSignal {
                to_peer: self.host.clone(),
                from_peer: self.interrupt.clone(),
                state: self.watch.clone(),
            }),
        }
    }

    /// The guest's outgoing ring (guest→host); attach an `OutgoingRing` to it.
    pub fn outgoing_ring(&self) -> GuestRingMem {
        self.rings.guest_to_host.clone()
    }

    /// The guest's incoming ring (host→guest); attach an `IncomingRing` to it.
    pub fn incoming_ring(&self) -> GuestRingMem {
        self.rings.host_to_guest.clone()
    }

    /// Signals the host (the hypercall uio's `write(1)` makes). Fails once the channel ended.
    pub fn signal_host(&self) -> Result<(), GuestError> {
        self.watch.check()?;
        self.host.ring();
        Ok(())
    }

    /// Sleeps until the host signals or `timeout` (`None`: forever) passes. `Err(Rescinded)`
    /// (uio's EIO) or `Err(Closed)` once the channel ended; the rings stay readable in guest RAM,
    /// so drain the incoming ring once more after a rescind.
    pub fn wait_interrupt(&self, timeout: Option<Duration>) -> Result<Wakeup, GuestError> {
        self.watch.check()?;
        let count = self.interrupt.wait(timeout)?;
        self.watch.check()?;
        Ok(if count == 0 { Wakeup::Timeout } else { Wakeup::Interrupt { count } })
    }

    /// The interrupt eventfd, for a guest that polls several sources itself (read it to
    /// acknowledge; check [`status`](Self::status) after every wakeup).
    pub fn interrupt_fd(&self) -> &EventFd {
        self.interrupt.event_fd()
    }

    pub fn status(&self) -> ChannelStatus {
        self.watch.status()
    }

    pub fn is_rescinded(&self) -> bool {
        self.watch.is_rescinded()
    }

    /// A cloneable status view, for other threads.
    pub fn watch(&self) -> ChannelState {
        self.watch.clone()
    }

    /// Closes the channel (`CLOSECHANNEL`): the device stops touching the rings and guest memory
    /// before this returns; the offer stays open for a new `open`. A no-op if already ended.
    pub fn close(&self) -> Result<(), EmulatorError> {
        self.shared.close_open(self.open_id)
    }
}

/// A guest buffer of `len` bytes at `gpa` as the pages a GPA-direct packet names.
pub fn page_buffer(gpa: u64, len: u32) -> PageBuffer {
    let page = RING_PAGE_SIZE as u64;
    let first_page_offset = (gpa % page) as u32;
    let pages = (u64::from(first_page_offset) + u64::from(len)).div_ceil(page).max(1);
    PageBuffer { first_page_offset, len, pfns: (0..pages).map(|i| gpa / page + i).collect() }
}
