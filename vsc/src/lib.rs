//! The vmblob guest client (VSC): a [`BlobClient`] over a [`Transport`].
//!
//! Transports: virtio split queues over vhost-user ([`VirtioTransport`]) and
//! VMBus rings, through `uio_hv_generic` on a real guest ([`VmbusTransport`]).
//! Everything above the transport (the request table, the client, the CLI)
//! is shared.
#![forbid(unsafe_code)]

pub mod client;
pub mod dma;
pub mod error;
pub mod objstore;
mod stream;
pub mod table;
pub mod transport;
pub mod virtio;
pub mod virtio_transport;
pub mod vmbus;
pub mod vmbus_transport;

pub use client::{BlobClient, ClientOptions, Data, OpResult, PendingOp};
pub use error::ClientError;
pub use transport::{Completion, OpBuffers, Transport};
pub use virtio_transport::{VirtioOptions, VirtioTransport};
pub use vmbus_transport::{VmbusOptions, VmbusTransport};

/// CRC-64/NVME, the checksum the VSP computes for every write.
pub fn crc64(data: &[u8]) -> u64 {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    d.sum64()
}
pub mod cli;
