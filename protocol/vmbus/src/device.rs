//! The device side of a bus: what a VMBus host (a VMM, or the rigs' emulator) hands a device
//! when the guest opens its channel, and the hooks the device implements. A device (the VSP)
//! depends on this, never on a particular bus.

use vm_memory::GuestMemoryMmap;

use crate::{MappedRingMem, RawChannel};

/// One offer of a channel. A re-offer after a rescind is a new device to the guest: a new
/// `generation` and `relid`, the same class and instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Device class (`if_type`), lower-case like sysfs `class_id` without braces.
    pub class_id: String,
    /// Device instance (`if_instance`), like sysfs `device_id` without braces.
    pub instance_id: String,
    /// `child_relid` of this offer.
    pub relid: u32,
    /// Counts offers from 1; tells a re-offer from the offer the guest last saw.
    pub generation: u64,
}

/// A ring inside guest RAM, as both ends of an emulated channel see it.
pub type GuestRingMem = MappedRingMem<GuestMemoryMmap>;

/// A device's error refusing an open; the guest sees it as a failed `OPENCHANNEL_RESULT`.
pub type DeviceError = Box<dyn std::error::Error + Send + Sync>;

/// The device behind the channel (the VSP). The bus calls the hooks one at a time, never
/// concurrently, from whichever thread opens, closes or rescinds. A hook must not call back into
/// the bus's lifecycle methods (they wait for the hook).
pub trait ChannelDevice: Send + Sync {
    /// The guest opened the channel: start serving `channel`. An error refuses the open.
    fn on_open(&self, channel: HostChannel) -> Result<(), DeviceError>;

    /// The host rescinds the channel. Before returning, complete every pending request (write
    /// its completion into the host→guest ring and signal) and stop touching the rings and guest
    /// memory. Only then does the bus tear the channel down and show the guest the rescind.
    fn on_rescind(&self, offer: &Offer);

    /// The guest closed the channel (or the bus is going away). Before returning, stop
    /// touching the rings and guest memory; the guest may reuse them right after.
    fn on_close(&self, offer: &Offer);
}

/// The host's end of an open channel, as the bus hands it to the device. The host→guest ring
/// announces `pending_send_sz` support; the device owns the rings from here (attach an
/// [`IncomingRing`](crate::IncomingRing) and an [`OutgoingRing`](crate::OutgoingRing)).
#[derive(Debug)]
pub struct HostChannel {
    pub offer: Offer,
    /// Guest RAM: every GPA a packet names is an address in it.
    pub memory: GuestMemoryMmap,
    /// `incoming` is the guest→host ring, `outgoing` the host→guest ring; the signal interrupts
    /// the guest and sleeps until the guest signals (`wake_self` wakes that sleep).
    pub channel: RawChannel,
}

impl HostChannel {
    /// Guest memory, for serving requests.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}
