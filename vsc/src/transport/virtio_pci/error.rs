//! Why the virtio-pci transport could not reach or set up its device.

use std::path::PathBuf;

use super::common::InitError;
use super::device::DeviceError;
use super::sysfs::PciSysfsError;
use crate::transport::pinned::PinnedDmaError;
use crate::transport::region::RegionError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PciError {
    #[error("no vmblob virtio-pci device found")]
    NoDevice,
    /// The function went away while it was being set up: whatever the setup
    /// step reported (it reads garbage from a vanishing device) is not the cause.
    #[error("{bdf} was removed (hot-unplugged) while being set up")]
    Removed { bdf: String },
    #[error("opening {path}: {source}")]
    OpenUio {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sysfs(#[from] PciSysfsError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error("device registers: {0}")]
    Registers(#[from] RegionError),
    #[error("DMA memory: {0}")]
    Dma(#[from] PinnedDmaError),
    #[error("{bdf}: device has no queues")]
    NoQueues { bdf: String },
    #[error("{bdf}: queue {index} is not available")]
    QueueUnavailable { bdf: String, index: u16 },
    #[error("DMA memory too small for the rings")]
    RingsDoNotFit,
    #[error("{bdf}: queue {index} notify offset {at:#x} is outside the {len:#x}-byte notify structure")]
    NotifyOutside { bdf: String, index: u16, at: u64, len: usize },
    #[error("buffer [{addr:#x}, +{len:#x}) outside the DMA pool")]
    BufferOutsidePool { addr: u64, len: usize },
    #[error("request needs {needed} descriptors, limit {max}")]
    ChainTooLong { needed: usize, max: usize },
}
