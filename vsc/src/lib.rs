//! The vmblob guest client (VSC): a [`BlobClient`] over a [`Transport`].
//!
//! Laid out along the data path: [`client`] (the API) → [`transport`] (the
//! [`Transport`] trait, the request table, DMA memory) → one module per
//! transport: virtio split queues over vhost-user
//! ([`VirtioTransport`], feature `vhost-user`: this process plays the VMM)
//! and VMBus rings through `uio_hv_generic` on a real guest
//! ([`VmbusTransport`]). [`objstore`] is an `object_store::ObjectStore` over
//! the client. The `vmblob` CLI is its own crate (`vsc/cli`).
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod objstore;
pub mod transport;

pub use client::{BlobClient, ClientOptions, Data, OpResult, PendingOp};
pub use error::ClientError;
pub use transport::dma;
pub use transport::virtio_pci::{CompletionMode, VirtioPciOptions, VirtioPciTransport};
#[cfg(feature = "vhost-user")]
pub use transport::virtio_vhost_user::{VirtioOptions, VirtioTransport};
pub use transport::vmbus::{VmbusOptions, VmbusTransport};
pub use transport::{Completion, OpBuffers, Transport};

/// CRC-64/NVME, the checksum the VSP computes for every write.
pub fn crc64(data: &[u8]) -> u64 {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    d.sum64()
}
