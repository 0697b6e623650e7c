//! What the host offers (`OFFERCHANNEL`) and what the guest asks for when it opens
//! (`OPENCHANNEL` with its ring GPADL), with the checks a VMM makes on the latter.

use vmblob_vmbus::{CONTROL_PAGE_SIZE, LayoutError, RING_PAGE_SIZE};

/// How the emulator offers its channel.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub instance_id: String,
    /// `child_relid` of the first offer; each re-offer takes the next.
    pub first_relid: u32,
    /// Largest ring (control page + data) a guest may open, each direction.
    pub max_ring_size: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            instance_id: "b10b0000-0000-4000-8000-000000000001".into(),
            first_relid: 15,
            max_ring_size: 64 << 20,
        }
    }
}

/// Where the guest put its rings: one allocation at `ring_gpa`, the guest→host ("send") ring
/// first, the host→guest ("receive") ring right after it, as Linux `vmbus_open` lays them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenParams {
    pub ring_gpa: u64,
    /// Guest→host ring size, control page included.
    pub send_ring_size: usize,
    /// Host→guest ring size, control page included.
    pub recv_ring_size: usize,
}

impl OpenParams {
    /// Both rings of `ring_size` bytes (what uio_hv_generic does) at `ring_gpa`.
    pub fn symmetric(ring_gpa: u64, ring_size: usize) -> Self {
        OpenParams { ring_gpa, send_ring_size: ring_size, recv_ring_size: ring_size }
    }

    /// Bytes of guest RAM the rings take.
    pub fn total_size(&self) -> Option<u64> {
        (self.send_ring_size as u64).checked_add(self.recv_ring_size as u64)
    }

    /// The VMM's checks: page-aligned base, ring sizes a multiple of the page between two pages
    /// and `max_ring_size`, the whole allocation inside `ram_size` bytes of guest RAM.
    pub(crate) fn check(&self, ram_size: u64, max_ring_size: usize) -> Result<(), LayoutError> {
        if !self.ring_gpa.is_multiple_of(RING_PAGE_SIZE as u64) {
            return Err(LayoutError::Misaligned(self.ring_gpa));
        }
        for size in [self.send_ring_size, self.recv_ring_size] {
            if size < CONTROL_PAGE_SIZE + RING_PAGE_SIZE || !size.is_multiple_of(RING_PAGE_SIZE) || size > max_ring_size
            {
                return Err(LayoutError::RingSize(size));
            }
        }
        let out_of_ram = LayoutError::OutOfBounds { base: self.ring_gpa, size: self.send_ring_size };
        let total = self.total_size().ok_or(out_of_ram.clone())?;
        match self.ring_gpa.checked_add(total) {
            Some(end) if end <= ram_size => Ok(()),
            _ => Err(LayoutError::OutOfBounds {
                base: self.ring_gpa,
                size: usize::try_from(total).unwrap_or(usize::MAX),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn accepts_page_aligned_rings_inside_ram() {
        assert_eq!(OpenParams::symmetric(0x1000, 0x4000).check(0x9000, MAX), Ok(()));
        let p = OpenParams { ring_gpa: 0, send_ring_size: 0x2000, recv_ring_size: 0x3000 };
        assert_eq!(p.check(0x5000, MAX), Ok(()));
    }

    #[test]
    fn refuses_bad_placements_and_sizes() {
        assert_eq!(OpenParams::symmetric(0x800, 0x4000).check(1 << 30, MAX), Err(LayoutError::Misaligned(0x800)));
        assert_eq!(OpenParams::symmetric(0, 0x1000).check(1 << 30, MAX), Err(LayoutError::RingSize(0x1000)));
        assert_eq!(OpenParams::symmetric(0, 0x2800).check(1 << 30, MAX), Err(LayoutError::RingSize(0x2800)));
        assert_eq!(
            OpenParams::symmetric(0, MAX + 0x1000).check(1 << 30, MAX),
            Err(LayoutError::RingSize(MAX + 0x1000))
        );
        let p = OpenParams { ring_gpa: 0, send_ring_size: 0x2000, recv_ring_size: 0 };
        assert_eq!(p.check(1 << 30, MAX), Err(LayoutError::RingSize(0)));
        assert!(matches!(
            OpenParams::symmetric(0x1000, 0x4000).check(0x8fff, MAX),
            Err(LayoutError::OutOfBounds { .. })
        ));
        let top = 0xffff_ffff_ffff_f000_u64;
        assert!(matches!(
            OpenParams::symmetric(top, 0x4000).check(u64::MAX, MAX),
            Err(LayoutError::OutOfBounds { .. })
        ));
    }
}
