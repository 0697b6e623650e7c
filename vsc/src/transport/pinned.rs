//! Pinned memory the host reads and writes by guest-physical address
//! (GPA-direct packets, notes/vmbus.md §2.5).
//!
//! [`PinnedDma`] maps a shared, populated, locked region — hugepages when
//! the system has them reserved, else normal pages — translates every
//! 4 KiB page to its Hyper-V PFN once through `/proc/self/pagemap`, and
//! manages it with the ordinary first-fit [`DmaPool`] (the virtio pool, over
//! a `GuestMemoryMmap` view of the region at address 0), so the client code
//! and [`crate::Transport::pool`] stay unchanged.
//!
//! **A [`DmaBuf::gpa`] from this pool is an offset into the region, not a
//! guest-physical address.** Put [`PinnedDma::gpa_range`] on the wire.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::pagemap::{HV_PAGE_SIZE, Pagemap, PagemapError, SELF_PAGEMAP};
use super::region::{MappedRegion, RegionError, host_page_size};
use crate::transport::dma::{DmaBuf, DmaError, DmaPool};

const HV_PAGE: usize = HV_PAGE_SIZE as usize;

#[derive(Debug, thiserror::Error)]
pub enum PinnedDmaError {
    #[error("DMA pool length must be non-zero")]
    ZeroLength,
    #[error("cannot determine the page size: {0}")]
    PageSize(std::io::Error),
    #[error("cannot map {len:#x} bytes of locked memory: RLIMIT_MEMLOCK too low (raise `ulimit -l` or run as root)")]
    MemlockLimit { len: usize },
    #[error("cannot map the DMA pool: {0}")]
    Map(RegionError),
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    #[error("cannot set up the pool: {0}")]
    Pool(#[from] DmaError),
    #[error("range [{addr:#x}, +{len:#x}) is empty, too long for a gpa_range, or outside the {pool_len:#x}-byte pool")]
    BadRange { addr: u64, len: usize, pool_len: usize },
    #[error("page {page} moved from PFN {was:#x} to {now:#x}: the pool is not pinned")]
    Moved { page: usize, was: u64, now: u64 },
}

/// Where and how [`PinnedDma::with_options`] allocates.
#[derive(Debug, Clone)]
pub struct PinnedDmaOptions<'a> {
    /// Try `MAP_HUGETLB` first (falls back to normal pages with a warning).
    pub hugepages: bool,
    pub pagemap: &'a Path,
}

impl Default for PinnedDmaOptions<'_> {
    fn default() -> Self {
        Self { hugepages: true, pagemap: Path::new(SELF_PAGEMAP) }
    }
}

/// One `gpa_range` of a GPA-direct packet: `byte_count` bytes starting
/// `byte_offset` into the first of `pfns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange<'a> {
    pub byte_offset: u32,
    pub byte_count: u32,
    pub pfns: &'a [u64],
}

/// Pinned, physically translated memory with a page allocator.
#[derive(Debug)]
pub struct PinnedDma {
    region: MappedRegion,
    pool: DmaPool,
    pfns: Arc<[u64]>,
    hugepages: bool,
    pagemap: Pagemap,
    page_size: u64,
}

/// The default hugepage size from `/proc/meminfo` (`Hugepagesize: 2048 kB`).
fn default_hugepage_size() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find_map(|l| l.strip_prefix("Hugepagesize:"))?;
    let kb: usize = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kb.checked_mul(1024)
}

fn map_error(len: usize, e: RegionError) -> PinnedDmaError {
    match &e {
        RegionError::Map { source: vm_memory::mmap::MmapRegionError::Mmap(io), .. }
            if io.raw_os_error() == Some(libc::EAGAIN) =>
        {
            PinnedDmaError::MemlockLimit { len }
        }
        _ => PinnedDmaError::Map(e),
    }
}

/// Shared anonymous memory, populated and locked; hugepages if asked and available.
fn allocate(len: usize, hugepages: bool, page_size: usize) -> Result<(MappedRegion, bool), PinnedDmaError> {
    let flags = libc::MAP_SHARED | libc::MAP_POPULATE | libc::MAP_LOCKED;
    if let Some(huge) = default_hugepage_size().filter(|_| hugepages) {
        let huge_len = len.div_ceil(huge) * huge;
        match MappedRegion::map_anonymous(huge_len, flags | libc::MAP_HUGETLB) {
            Ok(region) => return Ok((region, true)),
            Err(e) => log::warn!(
                "no {huge:#x}-byte hugepages for the {huge_len:#x}-byte DMA pool ({e}); using normal pages, which \
                 are locked but may still be migrated by the kernel (reserve hugepages via vm.nr_hugepages)"
            ),
        }
    }
    let len = len.div_ceil(page_size) * page_size;
    let region = MappedRegion::map_anonymous(len, flags).map_err(|e| map_error(len, e))?;
    Ok((region, false))
}

impl PinnedDma {
    /// At least `len` bytes (rounded up to the page or hugepage size) from
    /// `/proc/self/pagemap`, preferring hugepages. Needs CAP_SYS_ADMIN for
    /// the PFNs and enough RLIMIT_MEMLOCK (or CAP_IPC_LOCK).
    pub fn new(len: usize) -> Result<Self, PinnedDmaError> {
        Self::with_options(len, PinnedDmaOptions::default())
    }

    pub fn with_options(len: usize, opts: PinnedDmaOptions<'_>) -> Result<Self, PinnedDmaError> {
        if len == 0 {
            return Err(PinnedDmaError::ZeroLength);
        }
        let page_size = host_page_size().map_err(PinnedDmaError::PageSize)?;
        let (region, hugepages) = allocate(len, opts.hugepages, page_size)?;
        Self::from_region(region, hugepages, Pagemap::open(opts.pagemap)?, page_size as u64)
    }

    /// Touch every page, translate it, and put the pool on top.
    pub(crate) fn from_region(
        region: MappedRegion,
        hugepages: bool,
        pagemap: Pagemap,
        page_size: u64,
    ) -> Result<Self, PinnedDmaError> {
        for page in (0..region.len()).step_by(HV_PAGE) {
            region.write_bytes(page, &[0]).map_err(PinnedDmaError::Map)?;
        }
        let pfns: Arc<[u64]> = pagemap.hv_pfns(region.virt_addr(), region.len() / HV_PAGE, page_size)?.into();
        let view = GuestRegionMmap::with_arc(Arc::clone(region.mapping()), GuestAddress(0))
            .expect("a mapping's length fits in the address space");
        let mem = GuestMemoryMmap::from_regions(vec![view]).expect("one region cannot overlap");
        let pool = DmaPool::new(mem, GuestAddress(0), region.len() as u64)?;
        Ok(Self { region, pool, pfns, hugepages, pagemap, page_size })
    }

    /// The allocator; its buffers' `gpa()` are offsets into this region.
    pub fn pool(&self) -> &DmaPool {
        &self.pool
    }

    /// Whether the region is backed by hugepages.
    pub fn hugepages(&self) -> bool {
        self.hugepages
    }

    pub fn len(&self) -> usize {
        self.region.len()
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Hyper-V PFN of every 4 KiB page of the region, in order.
    pub fn pfns(&self) -> &[u64] {
        &self.pfns
    }

    /// The GPA range of `[addr, addr + len)`, where `addr` is a pool address
    /// (a [`DmaBuf::gpa`] plus an offset into the buffer).
    pub fn gpa_range_at(&self, addr: u64, len: usize) -> Result<GpaRange<'_>, PinnedDmaError> {
        let bad = || PinnedDmaError::BadRange { addr, len, pool_len: self.len() };
        let byte_count = u32::try_from(len).ok().filter(|&n| n > 0).ok_or_else(bad)?;
        let end = addr.checked_add(len as u64).filter(|&e| e <= self.len() as u64).ok_or_else(bad)?;
        let first = (addr / HV_PAGE_SIZE) as usize;
        let last = end.div_ceil(HV_PAGE_SIZE) as usize;
        Ok(GpaRange { byte_offset: (addr % HV_PAGE_SIZE) as u32, byte_count, pfns: &self.pfns[first..last] })
    }

    /// The GPA range of a whole buffer (its requested length, not the page slack).
    pub fn gpa_range(&self, buf: &DmaBuf) -> Result<GpaRange<'_>, PinnedDmaError> {
        self.gpa_range_at(buf.gpa().0, buf.len())
    }

    /// Re-read the pagemap and fail if any page's PFN changed (a debugging
    /// check that the memory really is pinned).
    pub fn verify_pinned(&self) -> Result<(), PinnedDmaError> {
        let now = self.pagemap.hv_pfns(self.region.virt_addr(), self.pfns.len(), self.page_size)?;
        match self.pfns.iter().zip(&now).position(|(a, b)| a != b) {
            Some(page) => Err(PinnedDmaError::Moved { page, was: self.pfns[page], now: now[page] }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "pinned_tests.rs"]
pub(crate) mod tests;
