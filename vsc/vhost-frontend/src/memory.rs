//! Guest RAM that a vhost-user backend can map: one memfd, mapped shared in this process.
//!
//! A real VMM (Cloud Hypervisor with `--memory shared=on`) backs guest RAM with a memfd so it can
//! pass the fd to vhost-user backends in `SET_MEM_TABLE`; the backend maps the same pages and sees
//! every write the guest (here: the in-process guest driver) makes. This is the only module of the
//! crate with `unsafe` code: creating the memfd is an FFI call.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::{Error, Result};

const MEMFD_NAME: &CStr = c"vmblob-guest-ram";

/// Guest RAM: a single memfd-backed region starting at guest physical address 0.
///
/// Cheap to clone: clones share the mapping (and the memfd), which stays alive until the last
/// clone is dropped.
#[derive(Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    // Computed once: the mapping never moves, so neither do the user addresses.
    regions: Vec<VhostUserMemoryRegionInfo>,
}

impl fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRam").field("size", &self.size).finish_non_exhaustive()
    }
}

impl GuestRam {
    /// Creates `size` bytes of zeroed, shareable guest RAM at guest physical address 0.
    pub fn new(size: u64) -> Result<GuestRam> {
        let len = usize::try_from(size).ok().filter(|&l| l > 0).ok_or(Error::InvalidRamSize(size))?;
        let file = memfd_create(MEMFD_NAME).map_err(Error::MemfdCreate)?;
        // ftruncate: a fresh memfd has size 0; the new pages read as zero.
        file.set_len(size).map_err(Error::MemfdResize)?;
        let mem = GuestMemoryMmap::from_ranges_with_files(&[(GuestAddress(0), len, Some(FileOffset::new(file, 0)))])
            .map_err(Error::MapRam)?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::RegionInfo)?;
        Ok(GuestRam { mem, size, regions })
    }

    /// The guest memory, for the guest driver's reads and writes (`vm_memory::Bytes`).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The regions as `SET_MEM_TABLE` wants them: guest address, size, this process's user
    /// address, and the memfd with its offset. The raw fds stay valid while `self` lives.
    pub fn region_infos(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.regions.clone()
    }

    /// This process's virtual address of guest address `gpa`: the "frontend VA" that
    /// `SET_VRING_ADDR` carries (the backend translates it through the mem-table's user
    /// addresses). `None` outside guest RAM.
    pub fn host_address(&self, gpa: GuestAddress) -> Option<u64> {
        self.host_address_range(gpa, 1)
    }

    /// Like [`host_address`](Self::host_address), but also checks that `len` bytes from `gpa`
    /// lie inside one region, so the host range is contiguous (CH's `get_host_address_range`).
    pub fn host_address_range(&self, gpa: GuestAddress, len: u64) -> Option<u64> {
        let (region, offset) = self.mem.to_region_addr(gpa)?;
        let end = offset.raw_value().checked_add(len)?;
        if len == 0 || end > region.len() {
            return None;
        }
        let host = region.get_host_address(MemoryRegionAddress(offset.raw_value())).ok()?;
        Some(host as usize as u64)
    }
}

/// `memfd_create(2)` with `MFD_CLOEXEC`, as an owned `File`.
fn memfd_create(name: &CStr) -> std::io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call, the flags are a
    // valid combination, and the call touches no memory of ours besides reading `name`.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by a successful memfd_create, so it is an open descriptor
    // that nothing else owns; `OwnedFd` takes sole ownership and closes it on drop.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owned))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn memfd_backed_single_region() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert_eq!(ram.size(), 1 << 20);
        let infos = ram.region_infos();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].guest_phys_addr, 0);
        assert_eq!(infos[0].memory_size, 1 << 20);
        assert_eq!(infos[0].mmap_offset, 0);
        assert!(infos[0].mmap_handle >= 0);
        assert_eq!(ram.host_address(GuestAddress(0)), Some(infos[0].userspace_addr));
    }

    #[test]
    fn host_addresses_follow_the_mapping() {
        let ram = GuestRam::new(0x10000).unwrap();
        let base = ram.host_address(GuestAddress(0)).unwrap();
        assert_eq!(ram.host_address(GuestAddress(0x1234)), Some(base + 0x1234));
        assert_eq!(ram.host_address(GuestAddress(0xffff)), Some(base + 0xffff));
        assert_eq!(ram.host_address(GuestAddress(0x10000)), None);
        assert_eq!(ram.host_address_range(GuestAddress(0xfff0), 0x10), Some(base + 0xfff0));
        assert_eq!(ram.host_address_range(GuestAddress(0xfff0), 0x11), None);
        assert_eq!(ram.host_address_range(GuestAddress(0), u64::MAX), None);
        assert_eq!(ram.host_address_range(GuestAddress(0), 0), None);
    }

    #[test]
    fn memory_starts_zeroed_and_clones_share_it() {
        let ram = GuestRam::new(0x2000).unwrap();
        let copy = ram.clone();
        assert_eq!(ram.memory().read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 0);
        ram.memory().store(0xabcd_u16, GuestAddress(0x1000), Ordering::Release).unwrap();
        assert_eq!(copy.memory().load::<u16>(GuestAddress(0x1000), Ordering::Acquire).unwrap(), 0xabcd);
    }

    #[test]
    fn rejects_zero_size() {
        assert!(matches!(GuestRam::new(0), Err(Error::InvalidRamSize(0))));
    }
}
