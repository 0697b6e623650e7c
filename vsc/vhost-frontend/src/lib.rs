//! The VMM half of vhost-user, in-process: what the VSC's in-process virtio transport needs to
//! reach a vhost-user backend (`vmblob-vsp`) without a VM, and what rigs use to play one.
//!
//! - [`memory`]: guest RAM backed by a memfd, so a vhost-user backend can map it;
//! - [`frontend`]: a vhost-user frontend that behaves like Cloud Hypervisor's generic
//!   vhost-user device (handshake, config space, rings, hang-up detection, reconnect).
//!
//! It knows nothing of vmblob. `unsafe` is confined to [`memory`] (the `memfd_create` FFI call).
#![deny(unsafe_code)]

mod error;
pub mod frontend;
pub mod memory;

pub use error::{Error, Result, Step};
pub use frontend::{DisconnectHandle, FrontendOptions, Negotiated, QueueConfig, VhostUserDevice};
pub use memory::GuestRam;
