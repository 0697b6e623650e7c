//! Guest-physical addresses of pinned pool memory, for a PCI device.
//!
//! The pool ([`PinnedDma`]) is one virtual region whose 4 KiB pages have
//! the physical frames the pagemap reported once, at pinning. A range is one
//! device address only while its frames are consecutive; [`PhysMap::runs`]
//! cuts a buffer into such runs (each becomes a descriptor), so hugepages
//! give few long runs and 4 KiB pages at worst one per page.
#![forbid(unsafe_code)]

use std::sync::Arc;

use vm_memory::GuestAddress;

use crate::transport::pagemap::HV_PAGE_SIZE;
use crate::transport::pinned::PinnedDma;
use crate::transport::virtio::DeviceAddr;

const PAGE: u64 = HV_PAGE_SIZE;

/// Pool address -> guest-physical address.
#[derive(Debug, Clone)]
pub struct PhysMap {
    pfns: Arc<[u64]>,
}

impl PhysMap {
    pub fn new(dma: &PinnedDma) -> Self {
        Self { pfns: dma.pfns().into() }
    }

    #[cfg(test)]
    pub(crate) fn from_pfns(pfns: Vec<u64>) -> Self {
        Self { pfns: pfns.into() }
    }

    fn phys(&self, addr: u64) -> Option<u64> {
        let pfn = *self.pfns.get(usize::try_from(addr / PAGE).ok()?)?;
        pfn.checked_mul(PAGE).map(|p| p + addr % PAGE)
    }

    /// `[addr, addr + len)` as physically contiguous `(pool address, len)`
    /// runs, in order; `None` if any byte is outside the pool.
    pub fn runs(&self, addr: GuestAddress, len: u32) -> Option<Vec<(GuestAddress, u32)>> {
        let end = addr.0.checked_add(u64::from(len))?;
        if len == 0 || end > self.pfns.len() as u64 * PAGE {
            return None;
        }
        let mut runs = Vec::new();
        let (mut start, mut at) = (addr.0, addr.0);
        while at < end {
            let page_end = ((at / PAGE) + 1) * PAGE;
            let next = page_end.min(end);
            // The run continues into the next page only if its frame follows.
            let continues = next < end && self.phys(page_end)? == self.phys(page_end - 1)? + 1;
            if !continues {
                runs.push((GuestAddress(start), (next - start) as u32));
                start = next;
            }
            at = next;
        }
        Some(runs)
    }
}

impl DeviceAddr for PhysMap {
    fn device_addr(&self, addr: GuestAddress, len: u64) -> Option<u64> {
        let len32 = u32::try_from(len).ok()?;
        match self.runs(addr, len32)?.as_slice() {
            [_] => self.phys(addr.0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages 0-2 contiguous, 3 elsewhere, 4 right after 3, 5 before 4.
    fn map() -> PhysMap {
        PhysMap::from_pfns(vec![0x100, 0x101, 0x102, 0x900, 0x901, 0x500])
    }

    #[test]
    fn buffers_split_where_frames_jump() {
        let m = map();
        let runs = m.runs(GuestAddress(0x800), 0x4000).unwrap();
        assert_eq!(runs, vec![(GuestAddress(0x800), 0x2800), (GuestAddress(0x3000), 0x1800)]);
        assert_eq!(m.runs(GuestAddress(0x5000), 0x1000).unwrap(), vec![(GuestAddress(0x5000), 0x1000)]);
        assert_eq!(
            m.runs(GuestAddress(0x4fff), 2).unwrap(),
            vec![(GuestAddress(0x4fff), 1), (GuestAddress(0x5000), 1)]
        );
        assert_eq!(m.device_addr(GuestAddress(0x1234), 0x1000), Some(0x101234));
        assert_eq!(m.device_addr(GuestAddress(0x2800), 0x1000), None, "page 2 -> 3 jumps");
        assert_eq!(m.device_addr(GuestAddress(0x3ff0), 0x20), Some(0x900ff0));
    }

    #[test]
    fn ranges_outside_the_pool_are_refused() {
        let m = map();
        assert_eq!(m.runs(GuestAddress(0x5fff), 2), None);
        assert_eq!(m.runs(GuestAddress(0x6000), 1), None);
        assert_eq!(m.runs(GuestAddress(0), 0), None);
        assert_eq!(m.runs(GuestAddress(u64::MAX), 2), None);
        assert_eq!(m.device_addr(GuestAddress(0), 1 << 40), None);
    }
}
