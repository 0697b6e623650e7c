//! The vmblob guest client (VSC): a [`BlobClient`] over a [`Transport`].
//!
//! ```no_run
//! # fn demo(client: vmblob_vsc::BlobClient) -> Result<(), vmblob_vsc::ClientError> {
//! use vmblob_vsc::{ListBlobsOptions, PutOptions};
//! let photos = client.container("photos");
//! photos.create()?;
//! let cat = photos.blob("2024/cat.jpg");
//! let opts = PutOptions { content_type: "image/jpeg".into(), ..PutOptions::default() };
//! cat.put_opts(b"...", opts)?;
//! assert_eq!(cat.get()?, b"...");
//! for item in photos.list_blobs(ListBlobsOptions::prefix("2024/")).items() {
//!     println!("{:?}", item?);
//! }
//! # Ok(()) }
//! ```
//!
//! Laid out along the data path: [`client`] (the API) → [`transport`] (the
//! [`Transport`] trait, the request table, DMA memory) → one module per
//! transport: virtio split queues over vhost-user
//! ([`VirtioTransport`], feature `vhost-user`: this process plays the VMM)
//! and VMBus rings through `uio_hv_generic` on a real guest
//! ([`VmbusTransport`]). [`objstore`] is an `object_store::ObjectStore` over
//! the client. The `vmblob` CLI is its own crate (`vsc/cli`).
// `unsafe` is allowed in one module only: reading a completed DMA buffer in
// place (`transport::dma::view`).
#![deny(unsafe_code)]

pub mod client;
pub mod error;
pub mod objstore;
pub mod transport;

pub use client::{
    BlobBytes, BlobClient, BlobContent, BlobHandle, BlockUploader, ClientOptions, ContainerClient, CopyOptions,
    CreateContainerOptions, Data, GetOptions, Items, ListBlobsOptions, ListContainersOptions, OpResult, Page, Pages,
    Pending, PendingOp, PutOptions, StagedBlocks,
};
pub use error::{ClientError, ProtocolError};
pub use transport::dma;
pub use transport::virtio_pci::{CompletionMode, VirtioPciOptions, VirtioPciTransport};
#[cfg(feature = "vhost-user")]
pub use transport::virtio_vhost_user::{VirtioOptions, VirtioTransport};
pub use transport::vmbus::{VmbusOptions, VmbusTransport};
pub use transport::{Completion, OpBuffers, Transport};
/// CRC-64/NVME, the checksum the VSP computes for every write.
pub use vmblob_protocol::checksum::{Crc64, crc64};
pub use vmblob_protocol::names::BlockId;
/// Types of the operations' answers and conditions, from the wire format.
pub use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobWritten, BlockInfo, BlockListType, Conditions, ContainerEntry,
    ContainerProperties, ETag, ListedBlock, Metadata,
};
