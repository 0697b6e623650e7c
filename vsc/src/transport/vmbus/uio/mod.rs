//! Guest-side access to a VMBus channel through Linux `uio_hv_generic`
//! (notes/vmbus.md §3): discovery and binding in sysfs ([`sysfs`]), the
//! opened device with its mapped rings and interrupt fd ([`device`]), and
//! the channel the VMBus transport runs on ([`channel`]). Bounds-checked
//! windows and pinned memory with guest-physical page numbers are shared
//! with the other guest transports (`transport::{region, pinned, pagemap}`).
//!
//! The ring-buffer algorithm lives in `vmblob-vmbus`; this module provides
//! the mapped memory and the signals it runs on. No `unsafe` here: mappings are
//! vm-memory `MmapRegion`s, polling is vmm-sys-util's epoll.
#![forbid(unsafe_code)]

pub mod channel;
pub mod device;
pub mod isolation;
pub mod kernel;
pub mod sysfs;

pub use channel::{UioChannel, UioChannelSource};
pub use device::{ChannelIds, RescindWatch, UioDevice, UioError, UioInterrupt};
pub use isolation::Isolation;
pub use kernel::{KernelRelease, check_kernel};
pub use sysfs::{SysfsError, UioMap, VmbusDevice, bind_uio, find_devices, read_maps};

#[cfg(test)]
mod tests {
    /// The ring and transport code share these across threads.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::transport::region::MappedRegion>();
        check::<super::UioDevice>();
        check::<super::UioInterrupt>();
        check::<super::RescindWatch>();
        check::<crate::transport::pinned::PinnedDma>();
        check::<super::UioChannel>();
        check::<super::UioChannelSource>();
    }
}
