//! Guest-side access to a VMBus channel through Linux `uio_hv_generic`
//! (notes/vmbus.md §3): discovery and binding in sysfs ([`sysfs`]), the
//! opened device with its mapped rings and interrupt fd ([`uio`]),
//! bounds-checked shared-memory windows ([`region`]), and pinned memory with
//! guest-physical page numbers for GPA-direct packets ([`dma`], [`pagemap`]).
//! [`channel`] is what the VMBus transport needs from all this, implemented
//! for uio ([`uio_channel`]) and for the glue's emulator ([`emulated`]).
//!
//! The ring-buffer algorithm lives elsewhere; this module provides the
//! mapped memory and the signals it runs on. No `unsafe` here: mappings are
//! vm-memory `MmapRegion`s, polling is vmm-sys-util's epoll.
#![forbid(unsafe_code)]

pub mod channel;
pub mod dma;
pub mod emulated;
pub mod pagemap;
pub mod region;
pub mod sysfs;
pub mod uio;
pub mod uio_channel;

pub use channel::{ChannelError, ChannelSource, GuestChannel, identity_page_buffer, pinned_page_buffer};
pub use dma::{GpaRange, PinnedDma, PinnedDmaError, PinnedDmaOptions};
pub use emulated::{EmulatedChannel, EmulatedSource};
pub use pagemap::{Pagemap, PagemapError};
pub use region::{MappedRegion, RegionError, host_page_size};
pub use sysfs::{SysfsError, UioMap, VmbusDevice, bind_uio, find_devices, read_maps};
pub use uio::{ChannelIds, RescindWatch, UioDevice, UioError, UioInterrupt};
pub use uio_channel::{UioChannel, UioChannelSource};

#[cfg(test)]
mod tests {
    /// The ring and transport code share these across threads.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::MappedRegion>();
        check::<super::UioDevice>();
        check::<super::UioInterrupt>();
        check::<super::RescindWatch>();
        check::<super::PinnedDma>();
        check::<super::UioChannel>();
        check::<super::UioChannelSource>();
        check::<super::EmulatedChannel>();
        check::<super::EmulatedSource>();
    }
}
