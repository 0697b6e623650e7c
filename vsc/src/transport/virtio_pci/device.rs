//! An opened virtio-pci function on `uio_pci_generic`: its configuration
//! space, the mapped structures the capabilities locate, and the uio fd
//! that delivers INTx.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use vmblob_protocol::config::CONFIG_MAGIC;

use super::caps::{self, CapError, VirtioCaps};
use super::common::CommonCfg;
use super::mmio::{Mmio, Window};
use super::sysfs::{self, CMD_BUS_MASTER, CMD_MEMORY, ConfigSpace, PciSysfsError};
use crate::transport::region::{MappedRegion, RegionError};
use crate::transport::vmbus::uio::UioInterrupt;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Sysfs(#[from] PciSysfsError),
    #[error("{bdf}: {source}")]
    Caps { bdf: String, source: CapError },
    #[error("{bdf}: device config register access failed: {source}")]
    Register { bdf: String, source: RegionError },
    #[error("{bdf}: device config magic is {found:#010x}, not vmblob's \"VBCF\"")]
    NotVmblob { bdf: String, found: u32 },
}

/// Wraps each mapped BAR before use (tests put a trapping device model in
/// front; production uses the mapping itself).
pub type BarHook<'a> = &'a dyn Fn(u8, MappedRegion) -> Arc<dyn Mmio>;

/// The structures of one function.
#[derive(Debug)]
pub struct PciDevice {
    pub bdf: String,
    pub config: ConfigSpace,
    pub caps: VirtioCaps,
    pub common: CommonCfg,
    pub notify: Window,
    pub isr: Window,
    pub device_cfg: Window,
    /// `/dev/uioN`, non-blocking (INTx waits and removal notice).
    pub irq: Option<UioInterrupt>,
}

impl PciDevice {
    /// Open `bdf` under `sysfs_root`: parse its capabilities, map the BARs
    /// they use, turn on memory space and bus mastering, and check the
    /// vmblob config magic.
    pub fn open(sysfs_root: &Path, bdf: &str, irq: Option<File>) -> Result<Self, DeviceError> {
        Self::open_with(sysfs_root, bdf, irq, &|_, region| Arc::new(region))
    }

    pub fn open_with(sysfs_root: &Path, bdf: &str, irq: Option<File>, hook: BarHook<'_>) -> Result<Self, DeviceError> {
        let config = ConfigSpace::open(sysfs_root, bdf)?;
        let bar_len = sysfs::bar_lengths(sysfs_root, bdf)?;
        let caps = caps::parse(&config.read_all()?, &bar_len)
            .map_err(|source| DeviceError::Caps { bdf: bdf.to_owned(), source })?;
        // uio does not enable the function, and qboot leaves bus mastering off.
        config.update_command(CMD_MEMORY | CMD_BUS_MASTER, 0)?;
        let mut bars: BTreeMap<u8, Arc<dyn Mmio>> = BTreeMap::new();
        let mut window = |w: caps::Window| -> Result<Window, DeviceError> {
            let bar = match bars.get(&w.bar) {
                Some(b) => b.clone(),
                None => {
                    let region = sysfs::map_bar(sysfs_root, bdf, w.bar, bar_len[usize::from(w.bar)])?;
                    let b = hook(w.bar, region);
                    bars.insert(w.bar, b.clone());
                    b
                }
            };
            // Checked against the BAR length (a u64 that was mapped) by caps::parse.
            Ok(Window::new(bar, w.offset as usize, w.len as usize))
        };
        let common = CommonCfg::new(window(caps.common)?);
        let notify = window(caps.notify)?;
        let isr = window(caps.isr)?;
        let device_cfg = window(caps.device)?;
        let magic = device_cfg.read32(0).map_err(|source| DeviceError::Register { bdf: bdf.to_owned(), source })?;
        if magic != CONFIG_MAGIC {
            return Err(DeviceError::NotVmblob { bdf: bdf.to_owned(), found: magic });
        }
        Ok(Self { bdf: bdf.to_owned(), config, caps, common, notify, isr, device_cfg, irq: irq.map(UioInterrupt::new) })
    }
}
