//! Guest-side access to a VMBus channel through Linux `uio_hv_generic`
//! (notes/vmbus.md §3): discovery and binding in sysfs ([`sysfs`]), the
//! opened device with its mapped rings and interrupt fd ([`uio`]), and
//! bounds-checked shared-memory windows ([`region`]).
//!
//! The ring-buffer algorithm lives elsewhere; this module provides the
//! mapped memory and the signals it runs on. No `unsafe` here: mappings are
//! vm-memory `MmapRegion`s, polling is vmm-sys-util's epoll.
#![forbid(unsafe_code)]

pub mod region;
pub mod sysfs;
pub mod uio;

pub use region::{MappedRegion, RegionError, host_page_size};
pub use sysfs::{SysfsError, UioMap, VmbusDevice, bind_uio, find_devices, read_maps};
pub use uio::{ChannelIds, RescindWatch, UioDevice, UioError, UioInterrupt};
