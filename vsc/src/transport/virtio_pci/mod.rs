//! The virtio transport of a real guest: a vmblob virtio-pci function driven
//! from user space through `uio_pci_generic`, as DPDK's and SPDK's virtio
//! drivers do (notes/qemu-guest.md).
//!
//! - [`sysfs`]: finding vendor-0x1af4 functions, binding (`driver_override`
//!   + `drivers_probe`), BAR lengths, the `config` file, `resourceN` maps;
//! - [`caps`]: total decoders for the BARs and the virtio capabilities;
//! - [`mmio`]: width-exact register access and bounds-checked windows;
//! - [`common`]: the common config and the modern init steps;
//! - [`device`]: one opened function (config, structures, uio fd);
//! - [`addr`]: guest-physical addresses of the pinned pool;
//! - [`transport`]: [`VirtioPciTransport`], the [`crate::Transport`].
//!
//! The device is identified by the vmblob config magic, not its device id
//! (0x1042 through QEMU's vhost-user-blk carrier, 0x1040 + id on QEMU
//! ≥ 10.2, 0x1B50 on Cloud Hypervisor). The 64-byte config is fetched with a
//! GetDeviceConfig request after init: the blk carrier overwrites bytes
//! 34–35 and reads 0xff past byte 57.
//!
//! **DMA addressing.** Rings and buffers live in one [`PinnedDma`] region
//! (locked, populated, hugepages unless normal pages are allowed; physical
//! frames read from `/proc/self/pagemap` once and re-checked every second
//! from the health check, which resets the device if one moved). The split-queue driver keeps working in pool
//! addresses (its `GuestMemoryMmap` view of the region, where every buffer
//! is checked) and writes device addresses through a [`DeviceAddr`]: here
//! [`addr::PhysMap`], identity for vhost-user. A buffer that crosses a
//! physical discontinuity is cut into several descriptors (protocol §8 lets
//! descriptor boundaries fall anywhere), so no contiguity beyond one page
//! is assumed; each ring part must be physically contiguous, which a
//! 4 KiB-aligned ring of at most 256 entries is on any page size, and larger
//! rings are with hugepages (`NotDeviceContiguous` otherwise). The device
//! config's `max_data_len` is cut so a worst-case split data buffer still
//! fits the ring and `max_segments`.
//!
//! [`PinnedDma`]: crate::transport::pinned::PinnedDma
//! [`DeviceAddr`]: crate::transport::virtio::DeviceAddr
#![forbid(unsafe_code)]

pub mod addr;
pub mod caps;
pub mod common;
mod config;
pub mod device;
mod error;
pub mod mmio;
pub mod sysfs;
pub mod transport;

#[cfg(test)]
mod tests;
/// The fake tree, shared with the sysfs and device tests.
#[cfg(test)]
pub(crate) use tests::fake as tests_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use device::{DeviceError, PciDevice};
pub use error::PciError;
pub use sysfs::{PciFunction, PciSysfsError, UIO_PCI_DRIVER};
pub use transport::VirtioPciTransport;

/// How completions are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionMode {
    /// INTx through `/dev/uioN` (QEMU).
    Interrupts,
    /// Spin on the used rings; sleep `idle_sleep` between scans while
    /// nothing is in flight (Cloud Hypervisor: no INTx at all).
    Poll { idle_sleep: Duration },
}

/// Where the device is and how to drive it.
#[derive(Debug, Clone)]
pub struct VirtioPciOptions {
    /// `/sys` on a real guest.
    pub sysfs_root: PathBuf,
    /// Where `uioN` nodes appear (`/dev`).
    pub dev_root: PathBuf,
    /// The function's BDF (`0000:00:03.0`); `None`: the first vmblob
    /// function [`find_devices`] reports.
    pub device: Option<String>,
    /// Request queues wanted (at most what the device has).
    pub queues: usize,
    /// Ring size wanted (at most the device's maximum; a power of two).
    pub queue_size: u16,
    /// Pinned memory for rings and buffers.
    pub dma_size: usize,
    /// Accept locked normal pages when no hugepages are free (see
    /// [`crate::transport::pinned`] for why that is not the default).
    pub allow_small_pages: bool,
    pub pagemap: PathBuf,
    pub mode: CompletionMode,
    pub bind_timeout: Duration,
    pub reset_timeout: Duration,
    pub config_timeout: Duration,
    /// Longest sleep of the completion thread between checks of the
    /// device's health (removal, NEEDS_RESET).
    pub wait_slice: Duration,
}

impl Default for VirtioPciOptions {
    fn default() -> Self {
        Self {
            sysfs_root: "/sys".into(),
            dev_root: "/dev".into(),
            device: None,
            queues: 1,
            queue_size: 256,
            dma_size: 64 << 20,
            allow_small_pages: false,
            pagemap: crate::transport::pagemap::SELF_PAGEMAP.into(),
            mode: CompletionMode::Interrupts,
            bind_timeout: Duration::from_secs(5),
            reset_timeout: Duration::from_secs(1),
            config_timeout: Duration::from_secs(10),
            wait_slice: Duration::from_millis(50),
        }
    }
}

/// The vmblob functions under `sysfs_root`: vendor 0x1af4 with virtio
/// capabilities and the vmblob config magic. Functions bound to a driver
/// other than `uio_pci_generic` are not touched (name one with
/// [`VirtioPciOptions::device`] to take it over). Probing turns on the
/// function's memory space to read the magic.
pub fn find_devices(sysfs_root: &Path) -> Result<Vec<PciFunction>, PciSysfsError> {
    let mut found = Vec::new();
    for f in sysfs::find_virtio_functions(sysfs_root)? {
        if f.driver.as_deref().is_some_and(|d| d != UIO_PCI_DRIVER) {
            log::debug!("{}: bound to {}, not probed", f.bdf, f.driver.as_deref().unwrap_or_default());
            continue;
        }
        match PciDevice::open(sysfs_root, &f.bdf, None) {
            Ok(_) => found.push(f),
            Err(e) => log::debug!("{}: not a vmblob device: {e}", f.bdf),
        }
    }
    Ok(found)
}
