//! The guest end of the glue's VMBus emulator (a rig's "Hyper-V") as a
//! [`GuestChannel`] / [`ChannelSource`]: rings at the bottom of guest RAM,
//! the DMA pool above them, GPAs that are guest RAM offsets.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestAddress;
use vmblob_glue::vmbus::emulator::{self, GuestBus, GuestError, GuestRingMem, OpenError, OpenParams};
use vmblob_protocol::framing::vmbus::PageBuffer;
use vmblob_vmbus::RingMem;

use vmblob_vsc::dma::{DmaPool, PAGE_SIZE};
use vmblob_vsc::transport::vmbus::{ChannelError, ChannelSource, GuestChannel, identity_page_buffer};

/// An open emulated channel; dropping it closes it (the host stops touching
/// guest memory before the close returns).
pub struct EmulatedChannel {
    ch: emulator::GuestChannel,
    outgoing: Arc<GuestRingMem>,
    incoming: Arc<GuestRingMem>,
}

impl EmulatedChannel {
    pub fn new(ch: emulator::GuestChannel) -> Self {
        let (outgoing, incoming) = (Arc::new(ch.outgoing_ring()), Arc::new(ch.incoming_ring()));
        Self { ch, outgoing, incoming }
    }
}

impl Drop for EmulatedChannel {
    fn drop(&mut self) {
        if let Err(e) = self.ch.close() {
            log::debug!("closing the emulated channel: {e}");
        }
    }
}

fn guest_error(e: GuestError) -> ChannelError {
    match e {
        GuestError::Rescinded => ChannelError::Rescinded,
        e => ChannelError::Other(e.to_string()),
    }
}

impl GuestChannel for EmulatedChannel {
    fn outgoing(&self) -> Arc<dyn RingMem> {
        self.outgoing.clone()
    }

    fn incoming(&self) -> Arc<dyn RingMem> {
        self.incoming.clone()
    }

    fn signal_host(&self) -> Result<(), ChannelError> {
        self.ch.signal_host().map_err(guest_error)
    }

    fn wait_interrupt(&self, timeout: Duration) -> Result<bool, ChannelError> {
        match self.ch.wait_interrupt(Some(timeout)).map_err(guest_error)? {
            emulator::Wakeup::Interrupt { .. } => Ok(true),
            emulator::Wakeup::Timeout => Ok(false),
        }
    }

    fn is_rescinded(&self) -> bool {
        self.ch.is_rescinded()
    }
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

    fn open(&self, timeout: Duration) -> Result<Option<Arc<dyn GuestChannel>>, ChannelError> {
        let Some(offer) = self.bus.wait_offer(None, timeout) else { return Ok(None) };
        match self.bus.open(&offer, self.rings) {
            Ok(ch) => Ok(Some(Arc::new(EmulatedChannel::new(ch)))),
            // Rescinded (and maybe re-offered) in between: look again.
            Err(OpenError::NotOffered | OpenError::StaleOffer { .. }) => Ok(None),
            Err(e) => Err(ChannelError::Other(format!("open: {e}"))),
        }
    }
}
