//! Shared-memory mappings with bounds-checked volatile and atomic access.
//!
//! The `mmap`/`munmap` calls and the raw-pointer accesses are vm-memory's
//! (`MmapRegion`, `VolatileMemory`): its `build` is a safe constructor (it
//! refuses `MAP_FIXED`), so this crate keeps `forbid(unsafe_code)`.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, Ordering};

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, VolatileMemory};

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("access [{offset:#x}, +{len:#x}) is outside the {region_len:#x}-byte region")]
    OutOfBounds { offset: usize, len: usize, region_len: usize },
    #[error("offset {offset:#x} is not aligned to the access size")]
    Misaligned { offset: usize },
    #[error("mmap of {len:#x} bytes failed: {source}")]
    Map { len: usize, source: vm_memory::mmap::MmapRegionError },
}

/// A window `[offset, offset + len)` of a mapping; clones share the mapping,
/// which is unmapped when the last clone is dropped.
///
/// Accessors take offsets relative to the window and never touch memory
/// outside it. The memory is shared with another party (the host, the
/// kernel), so everything is volatile or atomic; there are no references to
/// plain bytes.
#[derive(Debug, Clone)]
pub struct MappedRegion {
    map: Arc<MmapRegion>,
    offset: usize,
    len: usize,
}

impl MappedRegion {
    /// `MAP_SHARED` read-write mapping of `len` bytes of `file` at `file_offset`.
    pub(crate) fn map_file(file: &File, file_offset: u64, len: usize) -> Result<Self, RegionError> {
        let file = file.try_clone().map_err(|e| RegionError::Map { len, source: map_io(e) })?;
        Self::build(Some(FileOffset::new(file, file_offset)), len, libc::MAP_SHARED)
    }

    /// Anonymous mapping with `flags` (plus `MAP_ANONYMOUS`).
    pub(crate) fn map_anonymous(len: usize, flags: i32) -> Result<Self, RegionError> {
        Self::build(None, len, flags | libc::MAP_ANONYMOUS)
    }

    fn build(file: Option<FileOffset>, len: usize, flags: i32) -> Result<Self, RegionError> {
        let map = MmapRegion::build(file, len, libc::PROT_READ | libc::PROT_WRITE, flags)
            .map_err(|source| RegionError::Map { len, source })?;
        Ok(Self { map: Arc::new(map), offset: 0, len })
    }

    /// The whole mapping (not just this window), for `GuestMemoryMmap`.
    pub(crate) fn mapping(&self) -> &Arc<MmapRegion> {
        &self.map
    }

    /// Virtual address of the window's first byte (for `/proc/self/pagemap`).
    pub(crate) fn virt_addr(&self) -> u64 {
        self.map.as_ptr() as u64 + self.offset as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-window `[offset, offset + len)` of this window.
    pub fn subregion(&self, offset: usize, len: usize) -> Result<Self, RegionError> {
        let start = self.check(offset, len)?;
        Ok(Self { map: Arc::clone(&self.map), offset: start, len })
    }

    /// Absolute offset in the mapping of `[offset, offset + len)`, if inside the window.
    fn check(&self, offset: usize, len: usize) -> Result<usize, RegionError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.offset + offset),
            _ => Err(RegionError::OutOfBounds { offset, len, region_len: self.len }),
        }
    }

    /// The 32-bit word at `offset` (4-byte aligned) as an atomic, e.g. a ring
    /// control word. Lives as long as this window.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, RegionError> {
        let abs = self.check(offset, 4)?;
        if !abs.is_multiple_of(4) {
            return Err(RegionError::Misaligned { offset });
        }
        // Bounds and alignment were checked above; vm-memory re-checks both.
        self.map.get_atomic_ref::<AtomicU32>(abs).map_err(|_| RegionError::Misaligned { offset })
    }

    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, RegionError> {
        Ok(self.atomic_u32(offset)?.load(order))
    }

    pub fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), RegionError> {
        self.atomic_u32(offset)?.store(value, order);
        Ok(())
    }

    /// Atomically OR `bits` into the word at `offset`; returns the old value.
    pub fn fetch_or_u32(&self, offset: usize, bits: u32, order: Ordering) -> Result<u32, RegionError> {
        Ok(self.atomic_u32(offset)?.fetch_or(bits, order))
    }

    /// 8- and 16-bit accesses of exactly that width, for device registers
    /// (virtio-pci requires each field to be accessed at its own size).
    pub fn load_u8(&self, offset: usize, order: Ordering) -> Result<u8, RegionError> {
        let abs = self.check(offset, 1)?;
        Ok(self.map.get_atomic_ref::<AtomicU8>(abs).map_err(|_| self.oob(offset, 1))?.load(order))
    }

    pub fn store_u8(&self, offset: usize, value: u8, order: Ordering) -> Result<(), RegionError> {
        let abs = self.check(offset, 1)?;
        self.map.get_atomic_ref::<AtomicU8>(abs).map_err(|_| self.oob(offset, 1))?.store(value, order);
        Ok(())
    }

    pub fn load_u16(&self, offset: usize, order: Ordering) -> Result<u16, RegionError> {
        Ok(self.atomic_u16(offset)?.load(order))
    }

    pub fn store_u16(&self, offset: usize, value: u16, order: Ordering) -> Result<(), RegionError> {
        self.atomic_u16(offset)?.store(value, order);
        Ok(())
    }

    fn atomic_u16(&self, offset: usize) -> Result<&AtomicU16, RegionError> {
        let abs = self.check(offset, 2)?;
        if !abs.is_multiple_of(2) {
            return Err(RegionError::Misaligned { offset });
        }
        self.map.get_atomic_ref::<AtomicU16>(abs).map_err(|_| RegionError::Misaligned { offset })
    }

    /// Volatile copy out of the window.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<(), RegionError> {
        let abs = self.check(offset, out.len())?;
        self.map.as_volatile_slice().read_slice(out, abs).map_err(|_| self.oob(offset, out.len()))
    }

    /// Volatile copy into the window.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), RegionError> {
        let abs = self.check(offset, data.len())?;
        self.map.as_volatile_slice().write_slice(data, abs).map_err(|_| self.oob(offset, data.len()))
    }

    fn oob(&self, offset: usize, len: usize) -> RegionError {
        RegionError::OutOfBounds { offset, len, region_len: self.len }
    }
}

fn map_io(e: io::Error) -> vm_memory::mmap::MmapRegionError {
    vm_memory::mmap::MmapRegionError::Mmap(e)
}

/// The kernel's page size (`AT_PAGESZ` from `/proc/self/auxv`): uio selects
/// map K with mmap offset `K * page_size`, and pagemap is indexed by it.
pub fn host_page_size() -> io::Result<usize> {
    const AT_NULL: usize = 0;
    const AT_PAGESZ: usize = 6;
    const WORD: usize = size_of::<usize>();
    let auxv = std::fs::read("/proc/self/auxv")?;
    let word = |i: usize| auxv.get(i * WORD..(i + 1) * WORD).map(|b| usize::from_ne_bytes(b.try_into().unwrap()));
    let mut i = 0;
    while let (Some(key), Some(value)) = (word(i), word(i + 1)) {
        match key {
            AT_PAGESZ if value.is_power_of_two() => return Ok(value),
            AT_NULL => break,
            _ => i += 2,
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "no AT_PAGESZ in /proc/self/auxv"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};

    use super::*;

    #[test]
    fn host_page_size_is_plausible() {
        let size = host_page_size().unwrap();
        assert!(size.is_power_of_two() && size >= 4096, "{size}");
    }

    #[test]
    fn windows_are_bounds_checked_and_share_memory() {
        let whole = MappedRegion::map_anonymous(3 * 4096, libc::MAP_SHARED).unwrap();
        let mid = whole.subregion(4096, 4096).unwrap();
        assert_eq!((mid.len(), mid.virt_addr()), (4096, whole.virt_addr() + 4096));
        mid.write_bytes(4092, b"abcd").unwrap();
        let mut out = [0u8; 4];
        whole.read_bytes(2 * 4096 - 4, &mut out).unwrap();
        assert_eq!(&out, b"abcd");
        assert!(matches!(mid.write_bytes(4093, b"abcd"), Err(RegionError::OutOfBounds { offset: 4093, len: 4, .. })));
        assert!(matches!(mid.read_bytes(usize::MAX, &mut out), Err(RegionError::OutOfBounds { .. })));
        assert!(matches!(mid.subregion(1, 4096), Err(RegionError::OutOfBounds { .. })));
        assert!(matches!(mid.load_u32(4096, Relaxed), Err(RegionError::OutOfBounds { .. })));
        assert!(matches!(mid.load_u32(2, Relaxed), Err(RegionError::Misaligned { offset: 2 })));
        mid.read_bytes(4096, &mut []).unwrap();

        mid.store_u32(8, 0x10, SeqCst).unwrap();
        assert_eq!(mid.fetch_or_u32(8, 0x3, SeqCst).unwrap(), 0x10);
        assert_eq!(whole.load_u32(4096 + 8, SeqCst).unwrap(), 0x13);
        whole.read_bytes(4096 + 8, &mut out).unwrap();
        assert_eq!(out, 0x13u32.to_le_bytes());
        // The mapping outlives the window it was cut from.
        drop(whole);
        assert_eq!(mid.load_u32(8, SeqCst).unwrap(), 0x13);
    }
}
