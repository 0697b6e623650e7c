//! An opened `/dev/uioN` of `uio_hv_generic`: the mapped rings, the
//! interrupt page, interrupts and signalling, rescind (notes/vmbus.md §3.3–3.8).
//!
//! Opening the device opens the VMBus channel and re-initialises both ring
//! headers; the channel closes when the last reference to the file goes,
//! which includes every mapping (every [`MappedRegion`] clone).
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::sysfs::{self, SysfsError, UioMap, VmbusDevice};
use crate::transport::region::{MappedRegion, RegionError, host_page_size};

/// Map names and sizes of a primary channel (§3.3).
pub const RINGS_MAP: (usize, &str) = (0, "txrx_rings");
pub const INT_PAGE_MAP: (usize, &str) = (1, "int_page");
pub const MONITOR_PAGE_MAP: (usize, &str) = (2, "monitor_page");
/// Hyper-V page: ring control pages and the interrupt/monitor pages use it.
const HV_PAGE: usize = 4096;
/// Guest-to-host ("send") event bitmap inside the interrupt page.
pub const INT_PAGE_SEND_OFFSET: usize = 2048;
/// `hv_monitor_page.trigger_group[g].pending` is at `8 + 8 * g`; there are 4 groups.
const MONITOR_TRIGGER_GROUPS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum UioError {
    #[error("the VMBus channel was rescinded (the host removed the device)")]
    Rescinded,
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("uio map {index} missing (want {name:?})")]
    MissingMap { index: usize, name: &'static str },
    #[error("uio map {index} is {found:?}, want {name:?}")]
    WrongMap { index: usize, name: &'static str, found: String },
    #[error("uio map {index} ({name}) has unusable size {size:#x}: {why}")]
    BadMapSize { index: usize, name: &'static str, size: u64, why: &'static str },
    #[error("relid {0} does not fit the interrupt page's send bitmap")]
    RelidOutOfRange(u32),
    #[error("monitor id {0} is beyond the monitor page's trigger groups")]
    MonitorIdOutOfRange(u8),
    #[error("cannot determine the page size: {0}")]
    PageSize(io::Error),
    #[error(
        "this guest's pages are {0} bytes: the VMBus transport supports 4 KiB pages only (a 64 KiB-page \
         kernel pads the ring control page to its page size)"
    )]
    UnsupportedPageSize(usize),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error("{op} on the uio fd moved {got} bytes, not 4")]
    ShortIo { op: &'static str, got: usize },
    #[error("{op} on the uio fd failed: {source}")]
    Io { op: &'static str, source: io::Error },
}

/// Map an fd error to `Rescinded` when it means the device is gone: uio
/// answers EIO after `hv_uio_rescind`; once the device is unregistered (6.11+)
/// a `write` answers EINVAL (our writes are always the 4 bytes uio wants, so
/// EINVAL means nothing else there); ENODEV is treated the same defensively.
pub fn classify_io_error(op: &'static str, source: io::Error) -> UioError {
    match source.raw_os_error() {
        Some(libc::EIO | libc::ENODEV) => UioError::Rescinded,
        Some(libc::EINVAL) if op == "write" => UioError::Rescinded,
        _ => UioError::Io { op, source },
    }
}

/// The guest page size, if the ring layout this transport reads is the one the kernel maps
/// with it: 4 KiB. On a 64 KiB-page guest (arm64) the kernel pads each ring's control page
/// to 64 KiB, which this transport does not support: refused clearly rather than misread.
pub fn supported_page_size(page: usize) -> Result<usize, UioError> {
    if page == HV_PAGE { Ok(page) } else { Err(UioError::UnsupportedPageSize(page)) }
}

/// Cheap, cloneable view of whether the channel has been rescinded.
#[derive(Debug, Clone, Default)]
pub struct RescindWatch(Arc<AtomicBool>);

impl RescindWatch {
    pub fn is_rescinded(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The uio fd's interrupt side: 4-byte `read` = wait for the event counter,
/// 4-byte `write(1)` = unmask and (unmonitored channels) signal the host.
///
/// The fd should be non-blocking; waits go through epoll. After a rescind
/// every call fails fast with [`UioError::Rescinded`].
#[derive(Debug)]
pub struct UioInterrupt {
    file: File,
    epoll: OnceLock<Epoll>,
    rescinded: RescindWatch,
}

impl UioInterrupt {
    pub fn new(file: File) -> Self {
        Self { file, epoll: OnceLock::new(), rescinded: RescindWatch::default() }
    }

    pub fn rescind_watch(&self) -> RescindWatch {
        self.rescinded.clone()
    }

    fn check_live(&self) -> Result<(), UioError> {
        if self.rescinded.is_rescinded() { Err(UioError::Rescinded) } else { Ok(()) }
    }

    fn fail<T>(&self, err: UioError) -> Result<T, UioError> {
        if matches!(err, UioError::Rescinded) {
            self.rescinded.set();
        }
        Err(err)
    }

    /// Created on first wait, so a fake device (a regular file, not pollable) can still be mapped and signalled.
    fn epoll(&self) -> Result<&Epoll, UioError> {
        if let Some(epoll) = self.epoll.get() {
            return Ok(epoll);
        }
        let epoll = Epoll::new().map_err(|source| UioError::Io { op: "epoll_create", source })?;
        epoll
            .ctl(ControlOperation::Add, self.file.as_raw_fd(), EpollEvent::new(EventSet::IN, 0))
            .map_err(|source| UioError::Io { op: "epoll_ctl", source })?;
        let _ = self.epoll.set(epoll); // a racing thread's epoll is just as good
        Ok(self.epoll.get().expect("set above"))
    }

    /// Wait up to `timeout` (`None`: forever) for an interrupt. Returns the
    /// uio event count, or `None` on timeout. POLLERR/POLLHUP, EIO and end of
    /// file mean the channel was rescinded.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<u32>, UioError> {
        self.check_live()?;
        let epoll = self.epoll()?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut events = [EpollEvent::default(); 1];
        loop {
            let ms = match (timeout, deadline) {
                (None, _) | (Some(_), None) => -1,
                (Some(_), Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
                }
            };
            let n = match epoll.wait(ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(UioError::Io { op: "epoll_wait", source }),
            };
            if n == 0 {
                if ms == 0 {
                    return Ok(None);
                }
                continue; // woke early; the recomputed timeout decides
            }
            let ready = events[0].event_set();
            if ready.contains(EventSet::IN) {
                match self.read_count() {
                    Ok(Some(count)) => return Ok(Some(count)),
                    Ok(None) => continue, // another waiter took it
                    Err(e) => return self.fail(e),
                }
            }
            if ready.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                return self.fail(UioError::Rescinded);
            }
        }
    }

    /// One 4-byte read; `None` when nothing is pending (EAGAIN).
    fn read_count(&self) -> Result<Option<u32>, UioError> {
        let mut buf = [0u8; 4];
        loop {
            return match (&self.file).read(&mut buf) {
                Ok(4) => Ok(Some(u32::from_ne_bytes(buf))),
                Ok(0) => Err(UioError::Rescinded),
                Ok(got) => Err(UioError::ShortIo { op: "read", got }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(classify_io_error("read", e)),
            };
        }
    }

    /// `write(1u32)`: unmask the primary channel's interrupt and, for a
    /// channel without a monitor, have the kernel signal the host.
    pub fn signal(&self) -> Result<(), UioError> {
        self.check_live()?;
        loop {
            return match (&self.file).write(&1u32.to_ne_bytes()) {
                Ok(4) => Ok(()),
                Ok(got) => Err(UioError::ShortIo { op: "write", got }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => self.fail(classify_io_error("write", e)),
            };
        }
    }
}

/// Which bits signal the host for this channel (from sysfs `id`, `monitor_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelIds {
    pub relid: u32,
    pub monitor_id: Option<u8>,
}

/// An opened primary channel: rings, interrupt page, (monitor page), fd.
#[derive(Debug)]
pub struct UioDevice {
    rings: MappedRegion,
    int_page: MappedRegion,
    monitor_page: Option<MappedRegion>,
    ids: ChannelIds,
    irq: UioInterrupt,
}

fn find_map<'a>(maps: &'a [UioMap], (index, name): (usize, &'static str)) -> Result<&'a UioMap, UioError> {
    let map = maps.iter().find(|m| m.index == index).ok_or(UioError::MissingMap { index, name })?;
    if map.name != name {
        return Err(UioError::WrongMap { index, name, found: map.name.clone() });
    }
    Ok(map)
}

fn map_len(map: &UioMap, name: &'static str, min: usize) -> Result<usize, UioError> {
    let bad = |why| UioError::BadMapSize { index: map.index, name, size: map.size, why };
    let len = usize::try_from(map.size).map_err(|_| bad("larger than the address space"))?;
    if len < min {
        return Err(bad("too small"));
    }
    Ok(len)
}

impl UioDevice {
    /// Open `/dev/uioN` of `dev` (bound to uio already) with its maps from sysfs.
    pub fn open_vmbus(sysfs_root: &Path, dev: &VmbusDevice) -> Result<Self, UioError> {
        let uio = dev.uio.as_deref().ok_or_else(|| UioError::Open {
            path: dev.instance.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "device is not bound to uio_hv_generic"),
        })?;
        let maps = sysfs::read_maps(sysfs_root, uio)?;
        Self::open(&sysfs::dev_path(uio), &maps, ChannelIds { relid: dev.relid, monitor_id: dev.monitor_id })
    }

    /// Open `dev_path` (non-blocking, read-write) and map its rings and pages.
    pub fn open(dev_path: &Path, maps: &[UioMap], ids: ChannelIds) -> Result<Self, UioError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dev_path)
            .map_err(|source| UioError::Open { path: dev_path.display().to_string(), source })?;
        Self::from_file(file, maps, ids)
    }

    /// Map the regions of an already opened uio file. Map K is at mmap
    /// offset `K * page_size`; sizes come from `maps`, never from constants.
    pub fn from_file(file: File, maps: &[UioMap], ids: ChannelIds) -> Result<Self, UioError> {
        if ids.relid as usize / 32 * 4 + 4 > HV_PAGE - INT_PAGE_SEND_OFFSET {
            return Err(UioError::RelidOutOfRange(ids.relid));
        }
        if let Some(m) = ids.monitor_id.filter(|&m| usize::from(m) / 32 >= MONITOR_TRIGGER_GROUPS) {
            return Err(UioError::MonitorIdOutOfRange(m));
        }
        let page = supported_page_size(host_page_size().map_err(UioError::PageSize)?)? as u64;
        let map_at = |map: &UioMap, len| MappedRegion::map_file(&file, map.index as u64 * page, len);

        let rings = find_map(maps, RINGS_MAP)?;
        let rings_len = map_len(rings, RINGS_MAP.1, 4 * HV_PAGE)?;
        if !rings_len.is_multiple_of(2 * HV_PAGE) {
            return Err(UioError::BadMapSize {
                index: rings.index,
                name: RINGS_MAP.1,
                size: rings.size,
                why: "not two page-multiple halves",
            });
        }
        let int_page = find_map(maps, INT_PAGE_MAP)?;
        let int_len = map_len(int_page, INT_PAGE_MAP.1, HV_PAGE)?;
        let monitor_page = match ids.monitor_id {
            Some(_) => {
                let map = find_map(maps, MONITOR_PAGE_MAP)?;
                Some(map_at(map, map_len(map, MONITOR_PAGE_MAP.1, HV_PAGE)?)?)
            }
            None => None,
        };
        Ok(Self {
            rings: map_at(rings, rings_len)?,
            int_page: map_at(int_page, int_len)?,
            monitor_page,
            ids,
            irq: UioInterrupt::new(file),
        })
    }

    pub fn ids(&self) -> ChannelIds {
        self.ids
    }

    /// Bytes per ring direction (control page + data) = map 0 size / 2.
    pub fn ring_size(&self) -> usize {
        self.rings.len() / 2
    }

    /// Guest-to-host ring: first half of map 0 (control page, then data).
    pub fn tx_ring(&self) -> MappedRegion {
        self.rings.subregion(0, self.ring_size()).expect("first half is inside the map")
    }

    /// Host-to-guest ring: second half of map 0.
    pub fn rx_ring(&self) -> MappedRegion {
        self.rings.subregion(self.ring_size(), self.ring_size()).expect("second half is inside the map")
    }

    /// Map 1, the global interrupt page (recv bitmap, send bitmap at +2048).
    pub fn int_page(&self) -> &MappedRegion {
        &self.int_page
    }

    /// Map 2, mapped only for a channel with a monitor id.
    pub fn monitor_page(&self) -> Option<&MappedRegion> {
        self.monitor_page.as_ref()
    }

    pub fn interrupt(&self) -> &UioInterrupt {
        &self.irq
    }

    pub fn rescind_watch(&self) -> RescindWatch {
        self.irq.rescind_watch()
    }

    /// See [`UioInterrupt::wait`].
    pub fn wait_interrupt(&self, timeout: Option<Duration>) -> Result<Option<u32>, UioError> {
        self.irq.wait(timeout)
    }

    /// `write(1)` without setting event bits: re-enable the interrupt.
    pub fn unmask_interrupts(&self) -> Result<(), UioError> {
        self.irq.signal()
    }

    /// Signal the host: set bit `relid % 32` of send-bitmap word `relid / 32`
    /// (int page + 2048); for a monitored channel also the monitor's
    /// `trigger_group[id / 32].pending` bit `id % 32` (as Linux does); then
    /// `write(1)`. Call only when the ring protocol says the host needs it.
    pub fn signal_host(&self) -> Result<(), UioError> {
        self.irq.check_live()?;
        let ChannelIds { relid, monitor_id } = self.ids;
        let word = INT_PAGE_SEND_OFFSET + relid as usize / 32 * 4;
        self.int_page.fetch_or_u32(word, 1 << (relid % 32), Ordering::SeqCst)?;
        if let (Some(id), Some(page)) = (monitor_id, &self.monitor_page) {
            // As the kernel's vmbus_setevent: a monitored channel is signalled by the
            // trigger bit alone (the host polls the monitor page); no write(1), which
            // on newer kernels takes a global mutex per signal.
            page.fetch_or_u32(8 + 8 * (usize::from(id) / 32), 1 << (id % 32), Ordering::SeqCst)?;
            return Ok(());
        }
        // No monitor: the write has the kernel signal the host (a hypercall, 6.10+).
        self.irq.signal()
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
