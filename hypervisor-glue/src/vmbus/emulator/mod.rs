//! A VMBus host for rigs: what a VMM with VMBus (Cloud Hypervisor would be) gives a guest and a
//! device, without a VM. See `docs/VMBUS_EMULATOR.md` for the guest-end API.
//!
//! - [`VmbusEmulator`] owns guest RAM, offers one channel (class = the vmblob GUID), lets the
//!   guest open it on rings it placed in guest RAM, and closes or rescinds it from any thread,
//!   then re-offers it.
//! - [`ChannelDevice`] is the device behind the channel (the VSP); it gets a [`HostChannel`] on
//!   open and must complete every pending request in its rescind hook before the guest sees the
//!   rescind.
//! - [`GuestBus`] / [`GuestChannel`] are the guest's side: offers, open, the two rings, signal
//!   the host, wait for interrupts, the rescind.
//! - [`Doorbell`] is an interrupt line (an eventfd) in either direction.
#![forbid(unsafe_code)]

mod guest;
mod lifecycle;
mod offer;

pub use guest::{GuestBus, GuestChannel, GuestError, Wakeup, page_buffer};
pub use lifecycle::{EmulatorError, OpenError, VmbusEmulator};
pub use offer::{EmulatorConfig, OpenParams};
// The device side the emulator hosts, re-exported for rigs.
pub use vmblob_vmbus::{
    ChannelDevice, ChannelState, ChannelStatus, DeviceError, Doorbell, GuestRingMem, HostChannel, Offer,
};

#[cfg(test)]
mod tests;
