//! The vmblob wire format, shared by the host (VSP) and guest (VSC) halves.
//!
//! - [`transport`]: the seed-compatible 56-byte request and 12-byte response;
//! - [`ops`]: blob operations inside the request and response buffers;
//! - [`status`]: status codes and their typed errors;
//! - [`names`]: Azure naming rules;
//! - [`framing`]: one request as a virtio descriptor chain or a VMBus packet;
//! - [`config`]: what the VSP advertises;
//! - [`checksum`]: CRC-64/NVME, computed by both halves.
//!
//! Pure and total: no I/O, and every decoder answers arbitrary bytes with a
//! value or a typed error. `docs/PROTOCOL.md` is the byte-level spec.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod config;
pub mod framing;
pub mod names;
pub mod ops;
pub mod sg;
pub mod status;
pub mod transport;
mod wire;

pub use config::DeviceConfig;
pub use names::{BlobName, BlockId, ContainerName};
pub use ops::{DataDirection, OpCode, OpRequest, OpResponse};
pub use sg::Segment;
pub use status::BlobError;
pub use transport::{VspRequest, VspResponse};
