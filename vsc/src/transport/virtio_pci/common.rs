//! The virtio-pci common configuration structure (virtio 1.2 §4.1.4.3) and
//! the modern initialisation steps on it (§3.1.1): reset, feature
//! negotiation with FEATURES_OK read back, per-queue setup, DRIVER_OK.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use super::mmio::Window;
use crate::transport::region::RegionError;

// Register offsets.
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Feature bits the driver may accept.
pub mod features {
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

/// A removed PCI device reads all ones.
pub const REMOVED_STATUS: u8 = 0xff;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("register access failed: {0}")]
    Register(#[from] RegionError),
    #[error("device status still {status:#x} {timeout:?} after reset")]
    ResetTimeout { status: u8, timeout: Duration },
    #[error("device does not offer VERSION_1 (features {0:#x}): not a modern virtio device")]
    NotModern(u64),
    #[error("device did not keep FEATURES_OK for features {0:#x}")]
    FeaturesRefused(u64),
    #[error("queue {index} has size 0 (not available)")]
    NoQueue { index: u16 },
    #[error("queue {index} reads size {got} after setting {want}")]
    QueueSize { index: u16, want: u16, got: u16 },
    #[error("queue {index} did not enable")]
    QueueEnable { index: u16 },
    #[error("device reads status {0:#x}: removed or failed")]
    Gone(u8),
}

/// The common configuration window.
#[derive(Debug, Clone)]
pub struct CommonCfg {
    w: Window,
}

impl CommonCfg {
    pub fn new(w: Window) -> Self {
        Self { w }
    }

    pub fn status(&self) -> Result<u8, RegionError> {
        self.w.read8(DEVICE_STATUS)
    }

    pub fn set_status(&self, s: u8) -> Result<(), RegionError> {
        self.w.write8(DEVICE_STATUS, s)
    }

    /// OR `bits` into the status (the driver only ever adds bits until reset).
    pub fn add_status(&self, bits: u8) -> Result<(), InitError> {
        let s = self.status()?;
        if s == REMOVED_STATUS {
            return Err(InitError::Gone(s));
        }
        Ok(self.set_status(s | bits)?)
    }

    /// Write 0 and wait until the device reads 0: only then has it stopped
    /// using the rings and buffers (§2.4).
    pub fn reset(&self, timeout: Duration) -> Result<(), InitError> {
        self.set_status(0)?;
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            if s == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(InitError::ResetTimeout { status: s, timeout });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    pub fn device_features(&self) -> Result<u64, RegionError> {
        self.w.write32(DEVICE_FEATURE_SELECT, 0)?;
        let lo = self.w.read32(DEVICE_FEATURE)?;
        self.w.write32(DEVICE_FEATURE_SELECT, 1)?;
        let hi = self.w.read32(DEVICE_FEATURE)?;
        Ok(u64::from(hi) << 32 | u64::from(lo))
    }

    pub fn set_driver_features(&self, f: u64) -> Result<(), RegionError> {
        self.w.write32(DRIVER_FEATURE_SELECT, 0)?;
        self.w.write32(DRIVER_FEATURE, f as u32)?;
        self.w.write32(DRIVER_FEATURE_SELECT, 1)?;
        self.w.write32(DRIVER_FEATURE, (f >> 32) as u32)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, then accept VERSION_1 and whatever of
    /// `wanted` the device offers; FEATURES_OK must read back. Returns the
    /// negotiated features.
    pub fn negotiate(&self, wanted: u64, reset_timeout: Duration) -> Result<u64, InitError> {
        self.reset(reset_timeout)?;
        self.add_status(status::ACKNOWLEDGE)?;
        self.add_status(status::DRIVER)?;
        let offered = self.device_features()?;
        if offered & features::VERSION_1 == 0 {
            return Err(InitError::NotModern(offered));
        }
        let accepted = offered & (wanted | features::VERSION_1);
        self.set_driver_features(accepted)?;
        self.add_status(status::FEATURES_OK)?;
        if self.status()? & status::FEATURES_OK == 0 {
            return Err(InitError::FeaturesRefused(accepted));
        }
        Ok(accepted)
    }

    pub fn num_queues(&self) -> Result<u16, RegionError> {
        self.w.read16(NUM_QUEUES)
    }

    /// Select queue `index`; returns its maximum size (0: no such queue).
    pub fn select_queue(&self, index: u16) -> Result<u16, RegionError> {
        self.w.write16(QUEUE_SELECT, index)?;
        self.w.read16(QUEUE_SIZE)
    }

    /// Program the selected queue: size, ring addresses (device addresses),
    /// then enable. Returns its `queue_notify_off`. The MSI-X vector is left
    /// at NO_VECTOR: uio_pci_generic interrupts are INTx.
    pub fn setup_queue(&self, index: u16, size: u16, desc: u64, driver: u64, device: u64) -> Result<u16, InitError> {
        self.w.write16(QUEUE_SIZE, size)?;
        let got = self.w.read16(QUEUE_SIZE)?;
        if got != size {
            return Err(InitError::QueueSize { index, want: size, got });
        }
        self.w.write64(QUEUE_DESC, desc)?;
        self.w.write64(QUEUE_DRIVER, driver)?;
        self.w.write64(QUEUE_DEVICE, device)?;
        let notify_off = self.w.read16(QUEUE_NOTIFY_OFF)?;
        self.w.write16(QUEUE_ENABLE, 1)?;
        if self.w.read16(QUEUE_ENABLE)? != 1 {
            return Err(InitError::QueueEnable { index });
        }
        Ok(notify_off)
    }
}
