//! Where the device sees driver memory.
//!
//! The split-queue driver reads and writes its rings through a
//! `GuestMemoryMmap` in *pool addresses* (the DMA pool's own address space)
//! and checks every buffer against it. What goes into a descriptor's `addr`
//! and into the ring address registers is a *device address*: the same value
//! for the in-process vhost-user transport (the pool is the guest RAM), a
//! guest-physical address for a PCI device on `uio_pci_generic`. A
//! [`DeviceAddr`] turns one into the other.

use std::fmt::Debug;

use vm_memory::GuestAddress;

pub trait DeviceAddr: Send + Sync + Debug {
    /// The device address of the pool range `[addr, addr + len)`, or `None`
    /// when the device does not see it as one contiguous range (the caller
    /// must split the buffer) or it is outside the mapped memory.
    fn device_addr(&self, addr: GuestAddress, len: u64) -> Option<u64>;
}

/// Pool addresses are device addresses (vhost-user: the VMM shares the RAM).
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl DeviceAddr for Identity {
    fn device_addr(&self, addr: GuestAddress, len: u64) -> Option<u64> {
        addr.0.checked_add(len).map(|_| addr.0)
    }
}
