//! The real guest's channel: a `uio_hv_generic` device ([`UioDevice`]) as a
//! `RawChannel` (map 0's halves as rings, the device as its signal), and
//! sysfs discovery plus [`PinnedDma`] as its [`ChannelSource`].
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;
use vmblob_protocol::framing::vmbus::PageBuffer;
use vmblob_vmbus::{ChannelEnded, ChannelSignal, MappedRingMem, RawChannel, SharedMemory};

use super::device::{UioDevice, UioError};
use super::isolation::{self, Isolation};
use super::kernel::{KernelRelease, check_kernel};
use super::sysfs::{UIO_DRIVER, bind_uio, find_devices};
use crate::transport::dma::DmaPool;
use crate::transport::pinned::PinnedDma;
use crate::transport::region::MappedRegion;
use crate::transport::vmbus::channel::{ChannelError, ChannelSource, pinned_page_buffer};

/// How often [`UioChannelSource::open`] looks for an offer.
const OFFER_POLL: Duration = Duration::from_millis(50);

/// The ring code checks every range before using it, so these accesses stay
/// inside the window; should one not, a load reads an impossible index
/// (`u32::MAX`, refused as corruption) and a read yields zeros: the channel
/// fails cleanly instead of panicking.
impl SharedMemory for MappedRegion {
    fn contains(&self, off: u64, len: u64) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len() as u64)
    }
    fn load_u32(&self, off: u64, order: Ordering) -> u32 {
        usize::try_from(off).ok().and_then(|o| MappedRegion::load_u32(self, o, order).ok()).unwrap_or(u32::MAX)
    }
    fn store_u32(&self, off: u64, value: u32, order: Ordering) {
        if let Ok(o) = usize::try_from(off) {
            let _ = MappedRegion::store_u32(self, o, value, order);
        }
    }
    fn read(&self, off: u64, buf: &mut [u8]) {
        if usize::try_from(off).map_err(|_| ()).and_then(|o| self.read_bytes(o, buf).map_err(|_| ())).is_err() {
            buf.fill(0);
        }
    }
    fn write(&self, off: u64, buf: &[u8]) {
        if let Ok(o) = usize::try_from(off) {
            let _ = self.write_bytes(o, buf);
        }
    }
}

/// An opened primary channel's signal: `write(1)` on `/dev/uioN` to wake the
/// host, the uio fd to sleep on, EIO for the rescind.
pub struct UioChannel {
    dev: UioDevice,
}

impl UioChannel {
    /// The channel value over `dev`: TX and RX halves of map 0 as rings.
    pub fn open(dev: UioDevice) -> Result<RawChannel, ChannelError> {
        let size = dev.ring_size();
        let outgoing = Arc::new(MappedRingMem::new(dev.tx_ring(), 0, size)?);
        let incoming = Arc::new(MappedRingMem::new(dev.rx_ring(), 0, size)?);
        Ok(RawChannel { incoming, outgoing, signal: Arc::new(UioChannel { dev }) })
    }

    pub fn device(&self) -> &UioDevice {
        &self.dev
    }
}

fn ended(e: UioError) -> ChannelEnded {
    match e {
        UioError::Rescinded => ChannelEnded::Rescinded,
        e => ChannelEnded::Io(std::io::Error::other(e)),
    }
}

fn uio_error(e: UioError) -> ChannelError {
    match e {
        UioError::Rescinded => ChannelError::Rescinded,
        e => ChannelError::Uio(e),
    }
}

impl ChannelSignal for UioChannel {
    fn signal_peer(&self) -> Result<(), ChannelEnded> {
        self.dev.signal_host().map_err(ended)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool, ChannelEnded> {
        self.dev.wait_interrupt(timeout).map(|n| n.is_some()).map_err(ended)
    }

    // `unmask` stays the default no-op: the RX ring's interrupt_mask in the
    // mapping is the switch, and `write(1)` would also signal the host on
    // current kernels (vmbus.md §3.5), which Hyper-V may throttle.

    fn is_rescinded(&self) -> bool {
        self.dev.rescind_watch().is_rescinded()
    }
}

/// Devices of one class under a sysfs root, bound to uio on demand, with a
/// pinned DMA pool that outlives every channel.
pub struct UioChannelSource {
    sysfs_root: PathBuf,
    class_guid: String,
    dma: PinnedDma,
    bind_timeout: Duration,
    /// The running kernel, which decides what `uio_hv_generic` can bind.
    kernel: Option<KernelRelease>,
    /// An isolated guest's kernel drops vmblob's offers (see [`isolation`]).
    isolation: Option<Isolation>,
}

impl UioChannelSource {
    pub fn new(sysfs_root: impl Into<PathBuf>, class_guid: &str, dma: PinnedDma) -> Self {
        Self {
            sysfs_root: sysfs_root.into(),
            class_guid: class_guid.into(),
            dma,
            bind_timeout: Duration::from_secs(5),
            kernel: KernelRelease::running(),
            isolation: isolation::running(),
        }
    }

    /// As if the guest ran with `isolation` (tests; the default is read from CPUID).
    pub fn with_isolation(mut self, isolation: Option<Isolation>) -> Self {
        self.isolation = isolation;
        self
    }

    pub fn dma(&self) -> &PinnedDma {
        &self.dma
    }

    /// Open the first device of the class, binding it first if needed;
    /// `None` while there is none (not offered yet, or rescinded).
    fn try_open(&self) -> Result<Option<RawChannel>, ChannelError> {
        let Some(mut dev) = find_devices(&self.sysfs_root, &self.class_guid)?.into_iter().next() else {
            // Not yet offered, or never: an isolated guest's kernel drops the offer.
            return match self.isolation {
                Some(i) => Err(ChannelError::NeverOffered(isolation::no_offer_reason(i))),
                None => Ok(None),
            };
        };
        if dev.uio.is_none() || dev.driver.as_deref() != Some(UIO_DRIVER) {
            check_kernel(&dev, self.kernel.as_ref())?;
            dev.uio = Some(bind_uio(&self.sysfs_root, &dev, self.bind_timeout)?);
        }
        let uio = UioDevice::open_vmbus(&self.sysfs_root, &dev).map_err(uio_error)?;
        UioChannel::open(uio).map(Some)
    }
}

impl ChannelSource for UioChannelSource {
    fn pool(&self) -> &DmaPool {
        self.dma.pool()
    }

    fn page_buffer(&self, addr: GuestAddress, len: usize) -> Result<PageBuffer, ChannelError> {
        pinned_page_buffer(&self.dma, addr, len)
    }

    fn open(&self, timeout: Duration) -> Result<Option<RawChannel>, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ch) = self.try_open()? {
                return Ok(Some(ch));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            std::thread::sleep(left.min(OFFER_POLL));
        }
    }

    /// `hv_uio_rescind` unregisters the device right after it notifies,
    /// which frees the ring pages under the still-mapped region.
    fn rings_outlive_rescind(&self) -> bool {
        false
    }

    fn check_pinned(&self) -> Result<(), ChannelError> {
        Ok(self.dma.verify_if_due()?)
    }
}
