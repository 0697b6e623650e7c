//! Pinned memory the host reads and writes by guest-physical address
//! (GPA-direct packets, notes/vmbus.md §2.5).
//!
//! [`PinnedDma`] maps a shared, populated, locked region of hugetlbfs pages,
//! translates every 4 KiB page to its Hyper-V PFN once through
//! `/proc/self/pagemap`, and manages it with the ordinary first-fit
//! [`DmaPool`] (the virtio pool, over a `GuestMemoryMmap` view of the region
//! at address 0), so the client code and [`crate::Transport::pool`] stay
//! unchanged.
//!
//! **Why hugepages, and why a re-check.** The host holds the PFNs for as long
//! as the pool lives. `MAP_LOCKED` keeps normal pages resident but not in
//! place: compaction, THP collapse and memory offlining migrate them, and the
//! host would then read and write someone else's memory. hugetlbfs pages are
//! not touched by compaction or THP (DPDK relies on the same), so without
//! them the pool is refused unless the caller opts into normal pages
//! ([`PinnedDmaOptions::allow_small_pages`]). Either way the transports call
//! [`PinnedDma::verify_if_due`] about once a second and take the device down
//! when a frame moved, so a move is caught rather than silently corrupting.
//!
//! **A [`DmaBuf::gpa`] from this pool is an offset into the region, not a
//! guest-physical address.** Put [`PinnedDma::gpa_range`] on the wire.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    #[error(
        "no hugepages for the {len:#x}-byte DMA pool: {why}. Reserve them (`sysctl vm.nr_hugepages=N` now, or \
         `hugepages=N` on the kernel command line), or allow normal 4 KiB pages (the CLI's --allow-4k-pages), \
         which stay locked but which the kernel may still migrate under the host's DMA"
    )]
    NoHugepages { len: usize, why: String },
}

/// Where and how [`PinnedDma::with_options`] allocates.
#[derive(Debug, Clone)]
pub struct PinnedDmaOptions<'a> {
    /// Fall back to locked normal pages when no hugepages are free (with a
    /// warning); without it the pool is refused ([`PinnedDmaError::NoHugepages`]).
    pub allow_small_pages: bool,
    pub pagemap: &'a Path,
}

impl Default for PinnedDmaOptions<'_> {
    fn default() -> Self {
        Self { allow_small_pages: false, pagemap: Path::new(SELF_PAGEMAP) }
    }
}

/// How often [`PinnedDma::verify_if_due`] re-reads the pagemap: reading the
/// 8-byte entries of a 64 MiB pool (128 KiB) once a second costs nothing.
pub const VERIFY_EVERY: Duration = Duration::from_secs(1);

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
    /// When the PFNs were last found unchanged.
    verified: Mutex<Instant>,
    verify_every: Duration,
}

/// The hugepage pool as `/proc/meminfo` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HugepageInfo {
    /// `Hugepagesize`, the default size `MAP_HUGETLB` takes, in bytes.
    pub size: usize,
    /// `HugePages_Total` (what vm.nr_hugepages reserved).
    pub total: u64,
    /// `HugePages_Free` less `HugePages_Rsvd` (promised to mappings not yet faulted in).
    pub free: u64,
}

impl HugepageInfo {
    /// `None` when the kernel has no hugetlbfs (no `Hugepagesize` line).
    pub(crate) fn parse(meminfo: &str) -> Option<Self> {
        let field = |name: &str| meminfo.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let kb: usize = field("Hugepagesize:")?.strip_suffix("kB")?.trim().parse().ok()?;
        let count = |name| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let free = count("HugePages_Free:").saturating_sub(count("HugePages_Rsvd:"));
        Some(Self { size: kb.checked_mul(1024)?, total: count("HugePages_Total:"), free })
    }

    fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/meminfo").ok()?)
    }

    /// Hugepages a pool of `len` bytes takes.
    pub(crate) fn pages_for(&self, len: usize) -> usize {
        len.div_ceil(self.size)
    }

    /// Why a pool of `len` bytes got none, with the `vm.nr_hugepages` that would do.
    pub(crate) fn shortfall(&self, len: usize, map_error: &str) -> String {
        let need = self.pages_for(len) as u64;
        format!(
            "it needs {need} free {} KiB hugepages and {} of {} are free ({map_error}); \
             vm.nr_hugepages={} would do",
            self.size >> 10,
            self.free,
            self.total,
            self.total + need.saturating_sub(self.free)
        )
    }
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

/// Shared anonymous memory, populated and locked: hugepages, or normal
/// pages when there are none and `allow_small_pages`.
fn allocate(len: usize, allow_small_pages: bool, page_size: usize) -> Result<(MappedRegion, bool), PinnedDmaError> {
    let flags = libc::MAP_SHARED | libc::MAP_POPULATE | libc::MAP_LOCKED;
    let why = match HugepageInfo::read() {
        Some(huge) => {
            let huge_len = huge.pages_for(len) * huge.size;
            match MappedRegion::map_anonymous(huge_len, flags | libc::MAP_HUGETLB) {
                Ok(region) => return Ok((region, true)),
                Err(e) => huge.shortfall(len, &e.to_string()),
            }
        }
        None => "the kernel has no hugetlbfs (no Hugepagesize in /proc/meminfo)".to_owned(),
    };
    if !allow_small_pages {
        return Err(PinnedDmaError::NoHugepages { len, why });
    }
    log::warn!(
        "DMA pool on normal 4 KiB pages as allowed ({why}): they are locked but the kernel may still migrate \
         them; their frames are re-checked every {VERIFY_EVERY:?} and the device is taken down if one moved"
    );
    if compaction_moves_locked_pages() {
        log::warn!(
            "vm.compact_unevictable_allowed is 1, so compaction may move these locked pages; \
             `sysctl vm.compact_unevictable_allowed=0` stops that"
        );
    }
    let len = len.div_ceil(page_size) * page_size;
    let region = MappedRegion::map_anonymous(len, flags).map_err(|e| map_error(len, e))?;
    Ok((region, false))
}

/// Whether compaction may migrate mlocked pages (Linux's default, 1).
fn compaction_moves_locked_pages() -> bool {
    std::fs::read_to_string("/proc/sys/vm/compact_unevictable_allowed").is_ok_and(|v| v.trim() == "1")
}

impl PinnedDma {
    /// At least `len` bytes (rounded up to the hugepage size) of hugepages,
    /// translated through `/proc/self/pagemap`. Needs reserved hugepages,
    /// CAP_SYS_ADMIN for the PFNs and enough RLIMIT_MEMLOCK (or CAP_IPC_LOCK).
    pub fn new(len: usize) -> Result<Self, PinnedDmaError> {
        Self::with_options(len, PinnedDmaOptions::default())
    }

    pub fn with_options(len: usize, opts: PinnedDmaOptions<'_>) -> Result<Self, PinnedDmaError> {
        if len == 0 {
            return Err(PinnedDmaError::ZeroLength);
        }
        let page_size = host_page_size().map_err(PinnedDmaError::PageSize)?;
        let (region, hugepages) = allocate(len, opts.allow_small_pages, page_size)?;
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
        let verified = Mutex::new(Instant::now());
        Ok(Self { region, pool, pfns, hugepages, pagemap, page_size, verified, verify_every: VERIFY_EVERY })
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

    /// How often [`PinnedDma::verify_if_due`] looks (default [`VERIFY_EVERY`]).
    pub fn set_verify_every(&mut self, every: Duration) {
        self.verify_every = every;
    }

    /// [`PinnedDma::verify_pinned`] when the last check is `verify_every`
    /// old; cheap otherwise. Callers poll it from their health checks.
    pub fn verify_if_due(&self) -> Result<(), PinnedDmaError> {
        {
            let mut at = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if at.elapsed() < self.verify_every {
                return Ok(());
            }
            *at = Instant::now();
        }
        self.verify_pinned()
    }

    /// Re-read the pagemap and fail if any page's PFN changed: the host
    /// would be reading and writing memory that is no longer the pool.
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
