//! Virtual-to-physical translation through `/proc/self/pagemap`: one
//! little-endian u64 per virtual page (index = vaddr / page size); bit 63 =
//! present, bits 0–54 = page frame number. The kernel reports PFN 0 to
//! readers without CAP_SYS_ADMIN (Linux ≥ 4.2).
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The running process's page map.
pub const SELF_PAGEMAP: &str = "/proc/self/pagemap";
/// VMBus PFNs count 4 KiB pages whatever the guest page size.
pub const HV_PAGE_SIZE: u64 = 4096;

const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {path} at {offset:#x}: {source}")]
    Read { path: PathBuf, offset: u64, source: io::Error },
    #[error("page at {vaddr:#x} is not present in memory (swapped out or never touched)")]
    NotPresent { vaddr: u64 },
    #[error(
        "{path} shows PFN 0 for the present page at {vaddr:#x}: reading physical addresses needs CAP_SYS_ADMIN \
         (run the VSC as root)"
    )]
    NoPfn { path: PathBuf, vaddr: u64 },
    #[error("virtual address {vaddr:#x} or page size {page_size:#x} is not 4 KiB aligned")]
    Unaligned { vaddr: u64, page_size: u64 },
}

/// An open pagemap file (the real one, or a fake in tests).
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    path: PathBuf,
}

impl Pagemap {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PagemapError> {
        let path = path.as_ref().to_owned();
        let file = File::open(&path).map_err(|source| PagemapError::Open { path: path.clone(), source })?;
        Ok(Self { file, path })
    }

    /// Hyper-V page numbers (4 KiB units) of the `count` 4 KiB pages from
    /// `vaddr`, for a process whose page size is `page_size`. Every page must
    /// be present with a real PFN.
    pub fn hv_pfns(&self, vaddr: u64, count: usize, page_size: u64) -> Result<Vec<u64>, PagemapError> {
        if !vaddr.is_multiple_of(HV_PAGE_SIZE) || !page_size.is_multiple_of(HV_PAGE_SIZE) || page_size == 0 {
            return Err(PagemapError::Unaligned { vaddr, page_size });
        }
        if count == 0 {
            return Ok(Vec::new());
        }
        let first = vaddr / page_size;
        let last = (vaddr + (count as u64 - 1) * HV_PAGE_SIZE) / page_size;
        let mut raw = vec![0u8; (last - first + 1) as usize * 8];
        let offset = first * 8;
        self.file.read_exact_at(&mut raw, offset).map_err(|source| PagemapError::Read {
            path: self.path.clone(),
            offset,
            source,
        })?;
        let entry = |page: u64| {
            let at = (page - first) as usize * 8;
            u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"))
        };
        (0..count as u64)
            .map(|i| {
                let va = vaddr + i * HV_PAGE_SIZE;
                let e = entry(va / page_size);
                if e & PRESENT == 0 {
                    return Err(PagemapError::NotPresent { vaddr: va });
                }
                let pfn = e & PFN_MASK;
                if pfn == 0 {
                    return Err(PagemapError::NoPfn { path: self.path.clone(), vaddr: va });
                }
                Ok(pfn * (page_size / HV_PAGE_SIZE) + (va % page_size) / HV_PAGE_SIZE)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// A sparse fake pagemap with `entries` written at the index of `vaddr` (page size `page`).
    fn fake(vaddr: u64, page: u64, entries: &[u64]) -> (tempfile::NamedTempFile, Pagemap) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        file.as_file().write_all_at(&bytes, vaddr / page * 8).unwrap();
        let map = Pagemap::open(file.path()).unwrap();
        (file, map)
    }

    const VA: u64 = 0x7f12_3456_0000;

    #[test]
    fn present_pages_translate_and_flag_bits_are_ignored() {
        let soft_dirty = 1 << 55;
        let exclusive = 1 << 56;
        let (_f, map) =
            fake(VA, 4096, &[PRESENT | 0x1234, PRESENT | soft_dirty | exclusive | 0x99, PRESENT | PFN_MASK]);
        assert_eq!(map.hv_pfns(VA, 3, 4096).unwrap(), [0x1234, 0x99, PFN_MASK]);
        assert_eq!(map.hv_pfns(VA + 4096, 1, 4096).unwrap(), [0x99]);
        assert!(map.hv_pfns(VA, 0, 4096).unwrap().is_empty());
    }

    #[test]
    fn absent_page_and_pfn_zero_are_errors() {
        let swapped = 1 << 62 | 0x5555;
        let (_f, map) = fake(VA, 4096, &[PRESENT | 7, swapped, PRESENT]);
        let err = map.hv_pfns(VA, 2, 4096).unwrap_err();
        assert!(matches!(err, PagemapError::NotPresent { vaddr } if vaddr == VA + 4096), "{err}");
        let err = map.hv_pfns(VA + 2 * 4096, 1, 4096).unwrap_err();
        assert!(matches!(err, PagemapError::NoPfn { vaddr, .. } if vaddr == VA + 2 * 4096), "{err}");
        assert!(err.to_string().contains("CAP_SYS_ADMIN"), "{err}");
    }

    #[test]
    fn larger_host_pages_split_into_hyperv_pages() {
        // 64 KiB host pages: one pagemap entry covers 16 Hyper-V pages.
        let (_f, map) = fake(VA, 0x10000, &[PRESENT | 0x10, PRESENT | 0x30]);
        let pfns = map.hv_pfns(VA + 0xe000, 4, 0x10000).unwrap();
        assert_eq!(pfns, [0x10 * 16 + 14, 0x10 * 16 + 15, 0x30 * 16, 0x30 * 16 + 1]);
    }

    #[test]
    fn bad_input_and_short_file() {
        let (_f, map) = fake(VA, 4096, &[PRESENT | 1]);
        assert!(matches!(map.hv_pfns(VA + 1, 1, 4096), Err(PagemapError::Unaligned { .. })));
        assert!(matches!(map.hv_pfns(VA, 1, 0), Err(PagemapError::Unaligned { .. })));
        assert!(matches!(map.hv_pfns(VA, 2, 4096), Err(PagemapError::Read { .. })), "past the end of the file");
        assert!(matches!(Pagemap::open("/nonexistent/pagemap"), Err(PagemapError::Open { .. })));
    }
}
