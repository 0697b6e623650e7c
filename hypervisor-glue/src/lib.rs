//! What a hypervisor provides to vmblob's rigs and tests, without a VM: [`vmbus::emulator`], a
//! VMBus host that offers, opens, closes and rescinds a channel whose rings live in memfd guest
//! RAM, built on `vmblob-vmbus` and `vmblob-vhost-frontend`'s [`GuestRam`].
//!
//! Only rigs depend on this crate: `integration`, and `vsp`/`vsc` as a dev-dependency.
#![forbid(unsafe_code)]

pub mod vmbus;

pub use vmblob_vhost_frontend::GuestRam;
