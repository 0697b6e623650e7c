//! The vmblob host service (VSP): a transport-agnostic engine serving blob
//! requests out of guest memory, pluggable stores, and the vhost-user daemon.
#![forbid(unsafe_code)]

pub mod store;
