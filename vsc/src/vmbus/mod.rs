//! Guest-side access to a VMBus channel through Linux `uio_hv_generic`
//! (notes/vmbus.md §3): discovery and binding in sysfs ([`sysfs`]).
//!
//! The ring-buffer algorithm lives elsewhere; this module provides the
//! mapped memory and the signals it runs on.
#![forbid(unsafe_code)]

pub mod sysfs;

pub use sysfs::{UioMap, VmbusDevice, bind_uio, find_devices, read_maps};
