//! What a hypervisor provides to vmblob, without a VM:
//!
//! - [`memory`]: guest RAM backed by a memfd, so a vhost-user backend can map it;
//! - [`vhost_frontend`]: a vhost-user frontend that behaves like Cloud Hypervisor's generic
//!   vhost-user device (handshake, config space, rings, hang-up detection, reconnect);
//! - [`vmbus`]: the Hyper-V VMBus ring buffer (both ends) and [`vmbus::emulator`], a VMBus host
//!   that offers, opens, closes and rescinds a channel whose rings live in [`GuestRam`].
//!
//! `unsafe` is confined to [`memory`] (the `memfd_create` FFI call).
#![deny(unsafe_code)]

mod error;
pub mod memory;
pub mod vhost_frontend;
pub mod vmbus;

pub use error::{Error, Result, Step};
pub use memory::GuestRam;
pub use vhost_frontend::{DisconnectHandle, FrontendOptions, Negotiated, QueueConfig, VhostUserDevice};
