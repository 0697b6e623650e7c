//! Hyper-V VMBus, the generic parts (`../shared/notes/vmbus.md`), with no knowledge of what a
//! channel carries: both vmblob's VSP and VSC, and the rigs' emulator, build on it.
//!
//! - [`packet`]: packet descriptors, in-band / completion / GPA-direct packets, total parsing.
//! - [`RingMem`]: one ring's control page and data area. [`FlatRingMem`] is a heap ring;
//!   [`MappedRingMem`] puts a ring inside a [`SharedMemory`] (guest RAM, the uio `txrx_rings`
//!   map), and [`ChannelRings`] splits a channel's allocation into its two rings.
//! - [`OutgoingRing`] writes packets with their trailers, batches them, and says when to signal;
//!   [`IncomingRing`] copies packets out, validates them against a hostile writer, and says when
//!   to signal back.
//! - [`RawChannel`] is one channel end as a value (its two rings and a [`ChannelSignal`]); the
//!   uio guest, the emulator and [`connected_pair`] all hand one out. [`Signal`] is the ring
//!   code's "wake the peer"; [`Doorbell`] an eventfd interrupt line.
//! - [`device`]: the device side of a bus ([`ChannelDevice`], [`HostChannel`]).
//!
//! Memory ordering follows Linux `ring_buffer.c`: full barriers (`fence(SeqCst)`) around the
//! Dekker-style index/mask and index/pending_send_sz handshakes, Acquire/Release on indices.
#![forbid(unsafe_code)]

mod channel;
mod control;
pub mod device;
mod doorbell;
mod incoming;
mod mapped;
mod outgoing;
pub mod packet;
mod ring_mem;
mod signal;

pub use channel::{
    AttachedChannel, ChannelEnded, ChannelPair, ChannelSignal, ChannelState, ChannelStatus, DoorbellSignal, RawChannel,
    connected_pair,
};
pub use control::{
    CONTROL_PAGE_SIZE, ControlWord, CorruptError, DESCRIPTOR_SIZE, FEATURE_PENDING_SEND_SIZE, LayoutError,
    RING_PAGE_SIZE, ReadError, RingError, TRAILER_SIZE, WriteError,
};
pub use device::{ChannelDevice, DeviceError, GuestRingMem, HostChannel, Offer};
pub use doorbell::Doorbell;
pub use incoming::IncomingRing;
pub use mapped::{ChannelRings, MappedRingMem, SharedMemory};
pub use outgoing::OutgoingRing;
pub use ring_mem::{FlatRingMem, RingMem};
pub use signal::{CountingSignal, EventFdSignal, Signal};
#[cfg(test)]
mod tests;
