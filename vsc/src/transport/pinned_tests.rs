use std::os::unix::fs::FileExt;
use std::time::Duration;

use super::*;

const PRESENT: u64 = 1 << 63;
const PAGES: usize = 16;

/// A pool over a real anonymous mapping whose pagemap is a fake file saying page i is at PFN 0x1000 + 3 i.
pub(crate) fn fake_pool(pfn_of: impl Fn(usize) -> u64) -> (tempfile::NamedTempFile, PinnedDma) {
    let region = MappedRegion::map_anonymous(PAGES * HV_PAGE, libc::MAP_SHARED).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    let entries: Vec<u8> = (0..PAGES).flat_map(|i| pfn_of(i).to_le_bytes()).collect();
    file.as_file().write_all_at(&entries, region.virt_addr() / 4096 * 8).unwrap();
    let dma = PinnedDma::from_region(region, false, Pagemap::open(file.path()).unwrap(), 4096).unwrap();
    (file, dma)
}

/// Rewrite page `i`'s entry in a [`fake_pool`]'s pagemap: the kernel migrated it to `frame`.
pub(crate) fn move_page(pagemap: &tempfile::NamedTempFile, dma: &PinnedDma, i: usize, frame: u64) {
    let at = dma.region.virt_addr() / 4096 * 8 + i as u64 * 8;
    pagemap.as_file().write_all_at(&(PRESENT | frame).to_le_bytes(), at).unwrap();
}

pub(crate) fn spread(i: usize) -> u64 {
    PRESENT | (0x1000 + 3 * i as u64)
}

#[test]
fn buffers_map_to_their_pages_pfns() {
    let (_f, dma) = fake_pool(spread);
    assert_eq!((dma.len(), dma.pfns().len(), dma.hugepages()), (PAGES * HV_PAGE, PAGES, false));
    assert_eq!(dma.pfns()[..3], [0x1000, 0x1003, 0x1006]);

    let a = dma.pool().alloc(100).unwrap();
    let b = dma.pool().alloc(5000).unwrap(); // pages 1 and 2
    let r = dma.gpa_range(&b).unwrap();
    assert_eq!(r, GpaRange { byte_offset: 0, byte_count: 5000, pfns: &[0x1003, 0x1006] });
    assert_eq!(dma.gpa_range(&a).unwrap().pfns, &[0x1000]);

    // A sub-range straddling a page boundary: offset into the first page, both pages listed.
    let r = dma.gpa_range_at(b.gpa().0 + 4000, 200).unwrap();
    assert_eq!(r, GpaRange { byte_offset: 4000, byte_count: 200, pfns: &[0x1003, 0x1006] });
    let r = dma.gpa_range_at(b.gpa().0 + 4096, 904).unwrap();
    assert_eq!(r, GpaRange { byte_offset: 0, byte_count: 904, pfns: &[0x1006] });
    // The last byte of the pool.
    let r = dma.gpa_range_at((PAGES * HV_PAGE - 1) as u64, 1).unwrap();
    assert_eq!((r.byte_offset, r.pfns), (4095, &[0x1000 + 3 * (PAGES as u64 - 1)][..]));
}

#[test]
fn bad_ranges_are_rejected() {
    let (_f, dma) = fake_pool(spread);
    let end = (PAGES * HV_PAGE) as u64;
    for (addr, len) in [(0, 0), (end - 1, 2), (end, 1), (u64::MAX, 2), (0, usize::MAX)] {
        assert!(matches!(dma.gpa_range_at(addr, len), Err(PinnedDmaError::BadRange { .. })), "{addr:#x} {len}");
    }
}

#[test]
fn buffers_read_and_write_the_mapped_memory() {
    let (_f, dma) = fake_pool(spread);
    let mut buf = dma.pool().alloc(3 * HV_PAGE).unwrap();
    let data: Vec<u8> = (0..3 * HV_PAGE).map(|i| (i % 251) as u8).collect();
    buf.write_at(0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    buf.read_at(0, &mut back).unwrap();
    assert_eq!(back, data);
    // Same bytes through the region, at the buffer's pool offset.
    let mut direct = vec![0u8; 16];
    dma.region.read_bytes(buf.gpa().0 as usize + 4096, &mut direct).unwrap();
    assert_eq!(direct, data[4096..4096 + 16]);
    drop(buf);
    assert_eq!(dma.pool().free_bytes(), dma.pool().capacity());
}

#[test]
fn pfn_zero_without_privilege_is_a_clear_error() {
    let region = MappedRegion::map_anonymous(4 * HV_PAGE, libc::MAP_SHARED).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    let entries: Vec<u8> = (0..4).flat_map(|_| PRESENT.to_le_bytes()).collect(); // present, PFN hidden
    file.as_file().write_all_at(&entries, region.virt_addr() / 4096 * 8).unwrap();
    let err = PinnedDma::from_region(region, false, Pagemap::open(file.path()).unwrap(), 4096).unwrap_err();
    assert!(matches!(err, PinnedDmaError::Pagemap(PagemapError::NoPfn { .. })), "{err}");
    assert!(err.to_string().contains("CAP_SYS_ADMIN"));
}

#[test]
fn a_moved_page_fails_verification() {
    let (file, dma) = fake_pool(spread);
    dma.verify_pinned().unwrap();
    file.as_file().write_all_at(&(PRESENT | 0x9999).to_le_bytes(), dma.region.virt_addr() / 4096 * 8 + 5 * 8).unwrap();
    let err = dma.verify_pinned().unwrap_err();
    assert!(matches!(err, PinnedDmaError::Moved { page: 5, was: 0x100f, now: 0x9999 }), "{err}");
}

/// `verify_if_due` re-reads the pagemap only once its interval has passed,
/// and then catches the move; the transports poll it from their health checks.
#[test]
fn the_periodic_check_catches_a_move_once_due() {
    let (file, mut dma) = fake_pool(spread);
    dma.set_verify_every(Duration::from_secs(3600));
    move_page(&file, &dma, 2, 0x7777);
    // Checked at construction, so not due: the pagemap is not read.
    dma.verify_if_due().unwrap();
    dma.set_verify_every(Duration::ZERO);
    let err = dma.verify_if_due().unwrap_err();
    assert!(matches!(err, PinnedDmaError::Moved { page: 2, was: 0x1006, now: 0x7777 }), "{err}");
}

const MEMINFO: &str = "MemTotal:       24555720 kB\nHugePages_Total:      20\nHugePages_Free:       12\n\
HugePages_Rsvd:        4\nHugePages_Surp:        0\nHugepagesize:       2048 kB\nHugetlb:           40960 kB\n";

#[test]
fn meminfo_gives_the_hugepage_size_and_what_is_free() {
    let info = HugepageInfo::parse(MEMINFO).unwrap();
    assert_eq!(info, HugepageInfo { size: 2 << 20, total: 20, free: 8 }, "free less reserved");
    assert_eq!(info.pages_for(64 << 20), 32);
    assert_eq!(info.pages_for((64 << 20) + 1), 33);
    assert_eq!(HugepageInfo::parse("MemTotal: 1 kB\n"), None, "no hugetlbfs");
    assert_eq!(HugepageInfo::parse("Hugepagesize: lots\n"), None);
    let none_reserved = HugepageInfo::parse("Hugepagesize:    1048576 kB\n").unwrap();
    assert_eq!(none_reserved, HugepageInfo { size: 1 << 30, total: 0, free: 0 });
}

/// The refusal says how many pages the pool needs and what to set.
#[test]
fn the_shortfall_names_the_pages_and_the_setting() {
    let info = HugepageInfo::parse(MEMINFO).unwrap();
    let why = info.shortfall(64 << 20, "Cannot allocate memory");
    assert!(why.contains("needs 32 free 2048 KiB hugepages and 8 of 20 are free"), "{why}");
    assert!(why.contains("vm.nr_hugepages=44"), "20 reserved + the 24 missing: {why}");
    let err = PinnedDmaError::NoHugepages { len: 64 << 20, why };
    let msg = err.to_string();
    assert!(msg.contains("--allow-4k-pages") && msg.contains("hugepages=N"), "{msg}");
}

/// On this machine: hugepages when reserved, else the refusal (or, allowed,
/// normal pages); as root real PFNs, else the clear errors.
#[test]
fn real_pool_from_proc_self_pagemap() {
    assert!(matches!(PinnedDma::new(0), Err(PinnedDmaError::ZeroLength)));
    let free = HugepageInfo::read().map_or(0, |h| h.free as usize * h.size);
    for allow_small_pages in [false, true] {
        let opts = PinnedDmaOptions { allow_small_pages, ..PinnedDmaOptions::default() };
        match PinnedDma::with_options(100_000, opts) {
            Ok(dma) => {
                eprintln!(
                    "real pool: {:#x} bytes, hugepages {}, pfns {:x?}..",
                    dma.len(),
                    dma.hugepages(),
                    &dma.pfns()[..2]
                );
                assert!(dma.len() >= 100_000 && dma.len().is_multiple_of(HV_PAGE));
                if dma.hugepages() {
                    assert!(dma.len().is_multiple_of(HugepageInfo::read().unwrap().size));
                } else {
                    assert!(allow_small_pages, "normal pages only when allowed");
                }
                assert_eq!(dma.pfns().len(), dma.len() / HV_PAGE);
                assert!(dma.pfns().iter().all(|&p| p != 0));
                let mut sorted = dma.pfns().to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), dma.pfns().len(), "every page has its own frame");
                let mut buf = dma.pool().alloc(10_000).unwrap();
                buf.write_at(9_990, b"0123456789").unwrap();
                let mut out = [0u8; 10];
                buf.read_at(9_990, &mut out).unwrap();
                assert_eq!(&out, b"0123456789");
                assert_eq!(dma.gpa_range(&buf).unwrap().pfns.len(), 3);
                dma.verify_pinned().unwrap();
            }
            Err(e @ PinnedDmaError::NoHugepages { .. }) => {
                assert!(!allow_small_pages && free < 100_000, "refused with {free} bytes of hugepages free: {e}");
                eprintln!("no hugepages here, refused as it should be: {e}");
            }
            Err(e @ (PinnedDmaError::Pagemap(PagemapError::NoPfn { .. }) | PinnedDmaError::MemlockLimit { .. })) => {
                eprintln!("real pool unavailable here (accepted): {e}");
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
