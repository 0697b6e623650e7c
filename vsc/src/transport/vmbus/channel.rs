//! What the VMBus transport needs from "the device", whatever provides it:
//! the real guest (`uio_hv_generic` + [`PinnedDma`]) or a host emulator's
//! guest end in a test rig.
//!
//! - `vmblob_vmbus::RawChannel`: one open channel as the guest sees it (two
//!   rings and a signal: wake the host, sleep until the host signals, whether
//!   the host rescinded it) — the one channel value the uio guest, the rigs'
//!   emulator and the tests all hand out.
//! - [`ChannelSource`]: where channels come from (offer, re-offer) and the
//!   guest memory the host reaches by GPA. It outlives every channel, so
//!   buffers and their page numbers stay valid across a rescind.
#![forbid(unsafe_code)]

use std::time::Duration;

use vm_memory::GuestAddress;
use vmblob_protocol::framing::vmbus::PageBuffer;
use vmblob_vmbus::{ChannelEnded, LayoutError, RawChannel, RingError};

use super::uio::device::UioError;
use super::uio::sysfs::SysfsError;
use crate::transport::dma::{DmaPool, PAGE_SIZE};
use crate::transport::pinned::{PinnedDma, PinnedDmaError};

/// Why a channel could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The host took the channel away.
    #[error("the VMBus channel was rescinded")]
    Rescinded,
    /// The guest (or a rig's bus) closed it.
    #[error("the VMBus channel is closed")]
    Closed,
    #[error("channel signal: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Uio(#[from] UioError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Dma(#[from] PinnedDmaError),
    #[error("channel rings: {0}")]
    Ring(#[from] RingError),
    #[error("buffer [{addr:#x}, +{len:#x}) is not inside the DMA pool")]
    BadBuffer { addr: u64, len: usize },
    /// No device of the class can ever be offered to this guest.
    #[error("no vmblob VMBus device: {0}")]
    NeverOffered(String),
    /// Anything else a provider reports (an emulator's own errors).
    #[error("{0}")]
    Other(String),
}

impl From<ChannelEnded> for ChannelError {
    fn from(e: ChannelEnded) -> Self {
        match e {
            ChannelEnded::Rescinded => ChannelError::Rescinded,
            ChannelEnded::Closed => ChannelError::Closed,
            ChannelEnded::Io(e) => ChannelError::Signal(e),
        }
    }
}

impl From<LayoutError> for ChannelError {
    fn from(e: LayoutError) -> Self {
        ChannelError::Ring(e.into())
    }
}

/// Offers of one device, and the guest memory its requests live in.
pub trait ChannelSource: Send + Sync {
    /// Buffers the host reads and writes by guest-physical address.
    fn pool(&self) -> &DmaPool;
    /// The pages under `[addr, addr + len)` of the pool (`addr` as a
    /// [`crate::transport::dma::DmaBuf::gpa`] gives it).
    fn page_buffer(&self, addr: GuestAddress, len: usize) -> Result<PageBuffer, ChannelError>;
    /// Open the channel once the host offers it, waiting at most `timeout`
    /// for an offer (`Ok(None)`: none yet). A re-offer after a rescind is
    /// opened the same way.
    fn open(&self, timeout: Duration) -> Result<Option<RawChannel>, ChannelError>;
    /// Whether a channel's rings stay mapped memory the guest may read once
    /// the host rescinded it, so that completions posted before the rescind
    /// can still be reaped (an emulator's rings in guest RAM: yes).
    /// `uio_hv_generic` frees them right after telling the guest (6.11+,
    /// notes/vmbus.md "Corrections", §3.8): no.
    fn rings_outlive_rescind(&self) -> bool {
        true
    }
    /// `Err` once the memory the host was given page numbers of is no longer
    /// where they point (a pinned page migrated). Polled by the channel
    /// thread; cheap when nothing is due. Rig memory never moves.
    fn check_pinned(&self) -> Result<(), ChannelError> {
        Ok(())
    }
}

/// The page numbers of `[addr, addr + len)` when pool addresses are
/// guest-physical addresses (a [`DmaPool`] over the guest RAM of a rig).
pub fn identity_page_buffer(addr: GuestAddress, len: usize) -> Result<PageBuffer, ChannelError> {
    let bad = || ChannelError::BadBuffer { addr: addr.0, len };
    let len32 = u32::try_from(len).ok().filter(|&l| l > 0).ok_or_else(bad)?;
    let end = addr.0.checked_add(len as u64).ok_or_else(bad)?;
    let (first, last) = (addr.0 / PAGE_SIZE, end.div_ceil(PAGE_SIZE));
    Ok(PageBuffer { first_page_offset: (addr.0 % PAGE_SIZE) as u32, len: len32, pfns: (first..last).collect() })
}

/// The page numbers of a range of pinned memory: its Hyper-V PFNs.
pub fn pinned_page_buffer(dma: &PinnedDma, addr: GuestAddress, len: usize) -> Result<PageBuffer, ChannelError> {
    let range = dma.gpa_range_at(addr.0, len)?;
    Ok(PageBuffer { first_page_offset: range.byte_offset, len: range.byte_count, pfns: range.pfns.to_vec() })
}

#[cfg(test)]
#[path = "channel_tests.rs"]
mod tests;
