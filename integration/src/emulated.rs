//! The guest end of the glue's VMBus emulator (a rig's "Hyper-V") as a
//! `RawChannel` / [`ChannelSource`]: rings at the bottom of guest RAM,
//! the DMA pool above them, GPAs that are guest RAM offsets.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestAddress;
use vmblob_glue::vmbus::emulator::{self, GuestBus, OpenError, OpenParams};
use vmblob_protocol::framing::vmbus::PageBuffer;
use vmblob_vmbus::{ChannelEnded, ChannelSignal, RawChannel};

use vmblob_vsc::dma::{DmaPool, PAGE_SIZE};
use vmblob_vsc::transport::vmbus::{ChannelError, ChannelSource, identity_page_buffer};

/// The emulated channel's signal; dropping the last copy closes the channel
/// (the host stops touching guest memory before the close returns).
struct Closing {
    ch: emulator::GuestChannel,
    signal: Arc<dyn ChannelSignal>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Err(e) = self.ch.close() {
            log::debug!("closing the emulated channel: {e}");
        }
    }
}

impl ChannelSignal for Closing {
    fn signal_peer(&self) -> Result<(), ChannelEnded> {
        self.signal.signal_peer()
    }
    fn wait(&self, timeout: Option<Duration>) -> Result<bool, ChannelEnded> {
        self.signal.wait(timeout)
    }
    fn is_rescinded(&self) -> bool {
        self.signal.is_rescinded()
    }
}

/// The emulator's open channel as the one channel value, closing on drop.
pub fn closing_channel(ch: emulator::GuestChannel) -> RawChannel {
    let raw = ch.channel();
    RawChannel { signal: Arc::new(Closing { ch, signal: raw.signal }), ..raw }
}

/// The emulator's bus with the guest's memory plan.
pub struct EmulatedSource {
    bus: GuestBus,
    pool: DmaPool,
    rings: OpenParams,
}

impl EmulatedSource {
    /// Rings of `ring_size` bytes per direction at GPA 0, the DMA pool in
    /// the rest of guest RAM.
    pub fn new(bus: GuestBus, ring_size: usize) -> Result<Self, ChannelError> {
        let rings = OpenParams::symmetric(0, ring_size);
        let ram = bus.ram();
        let base = rings
            .total_size()
            .map(|n| n.div_ceil(PAGE_SIZE) * PAGE_SIZE)
            .filter(|&n| n < ram.size())
            .ok_or_else(|| ChannelError::Other(format!("rings of {ring_size:#x} bytes do not fit guest RAM")))?;
        let pool = DmaPool::new(ram.memory().clone(), GuestAddress(base), ram.size() - base)
            .map_err(|e| ChannelError::Other(e.to_string()))?;
        Ok(Self { bus, pool, rings })
    }
}

impl ChannelSource for EmulatedSource {
    fn pool(&self) -> &DmaPool {
        &self.pool
    }

    fn page_buffer(&self, addr: GuestAddress, len: usize) -> Result<PageBuffer, ChannelError> {
        identity_page_buffer(addr, len)
    }

    fn open(&self, timeout: Duration) -> Result<Option<RawChannel>, ChannelError> {
        let Some(offer) = self.bus.wait_offer(None, timeout) else { return Ok(None) };
        match self.bus.open(&offer, self.rings) {
            Ok(ch) => Ok(Some(closing_channel(ch))),
            // Rescinded (and maybe re-offered) in between: look again.
            Err(OpenError::NotOffered | OpenError::StaleOffer { .. }) => Ok(None),
            Err(e) => Err(ChannelError::Other(format!("open: {e}"))),
        }
    }
}
