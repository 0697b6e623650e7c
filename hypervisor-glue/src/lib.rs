//! What a hypervisor provides to vmblob, without a VM:
//!
//! - [`memory`]: guest RAM backed by a memfd, so a vhost-user backend can map it.
//!
//! `unsafe` is confined to [`memory`] (the `memfd_create` FFI call).
#![deny(unsafe_code)]

mod error;
pub mod memory;

pub use error::{Error, Result, Step};
pub use memory::GuestRam;
