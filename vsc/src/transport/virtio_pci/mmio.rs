//! Device registers: 8/16/32-bit accesses into a BAR, and bounds-checked
//! windows onto the structures the capabilities locate.
//!
//! Production BARs are `resourceN` mappings ([`MappedRegion`]); tests put a
//! trapping [`Mmio`] in front of the same mapping to emulate register side
//! effects, as a VMM does.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use crate::transport::region::{MappedRegion, RegionError};

/// Register access to one BAR, at offsets from its start.
pub trait Mmio: Send + Sync + std::fmt::Debug {
    fn read8(&self, offset: usize) -> Result<u8, RegionError>;
    fn read16(&self, offset: usize) -> Result<u16, RegionError>;
    fn read32(&self, offset: usize) -> Result<u32, RegionError>;
    fn write8(&self, offset: usize, value: u8) -> Result<(), RegionError>;
    fn write16(&self, offset: usize, value: u16) -> Result<(), RegionError>;
    fn write32(&self, offset: usize, value: u32) -> Result<(), RegionError>;
}

/// Single accesses of exactly the register's width (atomics compile to one
/// load or store of that size), never a byte-wise copy.
impl Mmio for MappedRegion {
    fn read8(&self, offset: usize) -> Result<u8, RegionError> {
        self.load_u8(offset, SeqCst)
    }
    fn read16(&self, offset: usize) -> Result<u16, RegionError> {
        self.load_u16(offset, SeqCst).map(u16::from_le)
    }
    fn read32(&self, offset: usize) -> Result<u32, RegionError> {
        self.load_u32(offset, SeqCst).map(u32::from_le)
    }
    fn write8(&self, offset: usize, value: u8) -> Result<(), RegionError> {
        self.store_u8(offset, value, SeqCst)
    }
    fn write16(&self, offset: usize, value: u16) -> Result<(), RegionError> {
        self.store_u16(offset, value.to_le(), SeqCst)
    }
    fn write32(&self, offset: usize, value: u32) -> Result<(), RegionError> {
        self.store_u32(offset, value.to_le(), SeqCst)
    }
}

/// `len` bytes at `base` of a BAR; offsets are relative to the window and
/// checked against it before the BAR is touched.
#[derive(Debug, Clone)]
pub struct Window {
    bar: Arc<dyn Mmio>,
    base: usize,
    len: usize,
}

impl Window {
    pub fn new(bar: Arc<dyn Mmio>, base: usize, len: usize) -> Self {
        Self { bar, base, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[offset, offset + len)` of this window, if inside it.
    pub fn subwindow(&self, offset: usize, len: usize) -> Option<Self> {
        let start = self.at(offset, len).ok()?;
        Some(Self { bar: self.bar.clone(), base: start, len })
    }

    fn at(&self, offset: usize, width: usize) -> Result<usize, RegionError> {
        match offset.checked_add(width) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(RegionError::OutOfBounds { offset, len: width, region_len: self.len }),
        }
    }

    pub fn read8(&self, offset: usize) -> Result<u8, RegionError> {
        self.bar.read8(self.at(offset, 1)?)
    }
    pub fn read16(&self, offset: usize) -> Result<u16, RegionError> {
        self.bar.read16(self.at(offset, 2)?)
    }
    pub fn read32(&self, offset: usize) -> Result<u32, RegionError> {
        self.bar.read32(self.at(offset, 4)?)
    }
    pub fn write8(&self, offset: usize, value: u8) -> Result<(), RegionError> {
        self.bar.write8(self.at(offset, 1)?, value)
    }
    pub fn write16(&self, offset: usize, value: u16) -> Result<(), RegionError> {
        self.bar.write16(self.at(offset, 2)?, value)
    }
    pub fn write32(&self, offset: usize, value: u32) -> Result<(), RegionError> {
        self.bar.write32(self.at(offset, 4)?, value)
    }
    /// A 64-bit field as two 32-bit accesses, low half first (virtio §4.1.3.1).
    pub fn write64(&self, offset: usize, value: u64) -> Result<(), RegionError> {
        self.write32(offset, value as u32)?;
        self.write32(offset + 4, (value >> 32) as u32)
    }
    /// Bytes one at a time (device config space allows any width).
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<(), RegionError> {
        self.at(offset, out.len())?;
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.read8(offset + i)?;
        }
        Ok(())
    }
}
