//! The region's memory: a memfd the VSP creates for GET_INFLIGHT_FD, sealed
//! so that nobody can shrink it under a mapping (a shrunk shared mapping
//! faults with SIGBUS, not an error), and mapped with vm-memory's safe
//! `MmapRegion` when SET_INFLIGHT_FD brings it back.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, fcntl_get_seals, memfd_create};
use vm_memory::FileOffset;
use vm_memory::mmap::MmapRegion;

use super::layout::Geometry;
use super::{InflightError, QueueRegion};

/// A mapped inflight region.
pub struct InflightRegion {
    map: Arc<MmapRegion<()>>,
    geometry: Geometry,
}

impl InflightRegion {
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Queue `q`'s part of it.
    pub fn queue(&self, q: u16) -> Result<QueueRegion, InflightError> {
        QueueRegion::new(self.map.clone(), self.geometry, q)
    }
}

fn io(e: rustix::io::Errno) -> InflightError {
    InflightError::Memfd(e.into())
}

/// A zeroed region for `geometry` (every queue "not yet used", version 0),
/// sealed at its size.
pub fn create(geometry: Geometry) -> Result<OwnedFd, InflightError> {
    let fd = memfd_create("vmblob-inflight", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).map_err(io)?;
    let file = File::from(fd);
    file.set_len(geometry.size() as u64).map_err(InflightError::Memfd)?;
    fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL).map_err(io)?;
    Ok(file.into())
}

/// Map the region a frontend returned: `size` bytes at `offset` of `fd`,
/// which must hold `geometry` and be sealed against shrinking.
pub fn map(fd: OwnedFd, offset: u64, size: u64, geometry: Geometry) -> Result<InflightRegion, InflightError> {
    let need = geometry.size() as u64;
    // Not a memfd at all (EINVAL) counts as unsealed.
    if !fcntl_get_seals(&fd).is_ok_and(|s| s.contains(SealFlags::SHRINK)) {
        return Err(InflightError::Unsealed);
    }
    let file = File::from(fd);
    let have = file.metadata().map_err(InflightError::Memfd)?.len();
    if size < need || offset.checked_add(need).is_none_or(|end| end > have) {
        return Err(InflightError::FileTooSmall { have: have.min(size), need, offset });
    }
    let map = MmapRegion::from_file(FileOffset::new(file, offset), geometry.size()).map_err(InflightError::Map)?;
    Ok(InflightRegion { map: Arc::new(map), geometry })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_region_maps_back_with_every_queue_fresh() {
        let g = Geometry::new(2, 64).unwrap();
        let fd = create(g).unwrap();
        let again = fd.try_clone().unwrap();
        let region = map(fd, 0, g.size() as u64, g).unwrap();
        let q1 = region.queue(1).unwrap();
        assert_eq!(q1.recover(0, 64).unwrap().next_avail, None, "version 0: never used");
        q1.mark(9).unwrap();
        // The same memfd mapped again (the frontend's copy) sees the head.
        let region2 = map(again, 0, g.size() as u64, g).unwrap();
        assert_eq!(region2.queue(1).unwrap().recover(0, 64).unwrap().heads, vec![9]);
    }

    #[test]
    fn the_memfd_cannot_be_shrunk() {
        let g = Geometry::new(1, 16).unwrap();
        let file = File::from(create(g).unwrap());
        assert!(file.set_len(0).is_err());
    }

    #[test]
    fn unsealed_or_short_files_are_refused() {
        let g = Geometry::new(1, 16).unwrap();
        let plain: OwnedFd = tempfile::tempfile().unwrap().into();
        assert!(matches!(map(plain, 0, g.size() as u64, g), Err(InflightError::Unsealed)));
        let small = Geometry::new(1, 4).unwrap();
        assert!(matches!(map(create(small).unwrap(), 0, g.size() as u64, g), Err(InflightError::FileTooSmall { .. })));
        assert!(matches!(map(create(g).unwrap(), 0, 64, g), Err(InflightError::FileTooSmall { .. })));
        assert!(matches!(map(create(g).unwrap(), 4096, g.size() as u64, g), Err(InflightError::FileTooSmall { .. })));
    }
}
