//! What the VSP advertises: virtio config space (Cloud Hypervisor masks device
//! feature bits 0–23, so capabilities cannot live there) and the body of the
//! GetDeviceConfig operation on VMBus (which has no config space).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ops::{DecodeError, MIN_OP_VERSION, OP_VERSION};

/// Default virtio device ID of the blob device. Virtio 1.3 assigns IDs
/// below 64; 2832 (0xB10) is far from that range and from any reserved
/// block, and 0x1040 + 2832 still fits a modern virtio-pci device ID. VMMs
/// take it as a parameter (`device_type=` in Cloud Hypervisor, `virtio-id=`
/// in QEMU), so a clash with a future assignment is a flag away.
pub const VIRTIO_DEVICE_ID: u16 = 2832;

/// `"VBCF"` as a little-endian u32.
pub const CONFIG_MAGIC: u32 = u32::from_le_bytes(*b"VBCF");

/// Capability bits in [`DeviceConfig::capabilities`].
pub mod caps {
    /// PutBlock / PutBlockList / GetBlockList.
    pub const BLOCKS: u64 = 1 << 0;
    /// If-Match / If-None-Match.
    pub const CONDITIONAL: u64 = 1 << 1;
    /// A replayed transaction id is answered from the first execution.
    pub const TXN_DEDUP: u64 = 1 << 2;
    /// Content-MD5 is checked and stored.
    pub const CONTENT_MD5: u64 = 1 << 3;
    /// CRC-64/NVME is computed for every write.
    pub const CONTENT_CRC64: u64 = 1 << 4;
    /// PutBlockList takes a CRC-64 per block and refuses a block whose CRC
    /// differs (a VSP without it refuses the CRC section as trailing bytes).
    pub const BLOCK_LIST_CRC64: u64 = 1 << 5;
    /// SetBlobMetadata / SetBlobProperties replace a blob's metadata or
    /// content type without rewriting it through the guest.
    pub const SET_PROPERTIES: u64 = 1 << 6;
    /// CopyBlob copies a blob inside the device.
    pub const COPY: u64 = 1 << 7;
    pub const ALL: u64 =
        BLOCKS | CONDITIONAL | TXN_DEDUP | CONTENT_MD5 | CONTENT_CRC64 | BLOCK_LIST_CRC64 | SET_PROPERTIES | COPY;
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
struct RawConfig {
    magic: U32,
    min_op_version: U16,
    max_op_version: U16,
    max_buffer_len: U32,
    max_data_len: U32,
    max_request_len: U32,
    max_segments: U32,
    max_inflight: U32,
    num_queues: U16,
    reserved0: U16,
    capabilities: U64,
    max_blob_size: U64,
    block_size_hint: U32,
    reserved: [u8; 12],
}

/// Device limits and capabilities (64 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    pub min_op_version: u16,
    pub max_op_version: u16,
    /// Longest request, response or data buffer.
    pub max_buffer_len: u32,
    /// Longest data buffer of one request.
    pub max_data_len: u32,
    /// Longest request buffer the VSP accepts.
    pub max_request_len: u32,
    /// Most descriptors in one virtio chain.
    pub max_segments: u32,
    /// Most requests in flight per queue.
    pub max_inflight: u32,
    pub num_queues: u16,
    pub capabilities: u64,
    pub max_blob_size: u64,
    /// The block size the VSP prefers for PutBlock.
    pub block_size_hint: u32,
}

impl DeviceConfig {
    pub const SIZE: usize = 64;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let raw = RawConfig {
            magic: CONFIG_MAGIC.into(),
            min_op_version: self.min_op_version.into(),
            max_op_version: self.max_op_version.into(),
            max_buffer_len: self.max_buffer_len.into(),
            max_data_len: self.max_data_len.into(),
            max_request_len: self.max_request_len.into(),
            max_segments: self.max_segments.into(),
            max_inflight: self.max_inflight.into(),
            num_queues: self.num_queues.into(),
            reserved0: 0.into(),
            capabilities: self.capabilities.into(),
            max_blob_size: self.max_blob_size.into(),
            block_size_hint: self.block_size_hint.into(),
            reserved: [0; 12],
        };
        let mut out = [0u8; Self::SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let raw = RawConfig::read_from_bytes(b).map_err(|_| DecodeError::Truncated)?;
        if raw.magic.get() != CONFIG_MAGIC {
            return Err(DecodeError::BadMagic(raw.magic.get()));
        }
        let c = Self {
            min_op_version: raw.min_op_version.get(),
            max_op_version: raw.max_op_version.get(),
            max_buffer_len: raw.max_buffer_len.get(),
            max_data_len: raw.max_data_len.get(),
            max_request_len: raw.max_request_len.get(),
            max_segments: raw.max_segments.get(),
            max_inflight: raw.max_inflight.get(),
            num_queues: raw.num_queues.get(),
            capabilities: raw.capabilities.get(),
            max_blob_size: raw.max_blob_size.get(),
            block_size_hint: raw.block_size_hint.get(),
        };
        // The device's range must overlap ours.
        if c.min_op_version > c.max_op_version || c.max_op_version < MIN_OP_VERSION || c.min_op_version > OP_VERSION {
            return Err(DecodeError::UnsupportedVersion(c.min_op_version));
        }
        Ok(c)
    }

    /// The op version to speak with this device: the newest in both ranges
    /// (`from_bytes` refused configs whose range misses ours).
    pub fn op_version(&self) -> u16 {
        self.max_op_version.min(OP_VERSION)
    }

    /// Bytes `[offset, offset + len)` of the config space, for GET_CONFIG; out
    /// of range reads yield only what exists.
    pub fn read(&self, offset: u32, len: u32) -> Vec<u8> {
        let all = self.to_bytes();
        let start = (offset as usize).min(Self::SIZE);
        let end = start.saturating_add(len as usize).min(Self::SIZE);
        all[start..end].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    fn sample() -> DeviceConfig {
        DeviceConfig {
            min_op_version: 1,
            max_op_version: 1,
            max_buffer_len: 32 << 20,
            max_data_len: (32 << 20) - 8192,
            max_request_len: 4 << 20,
            max_segments: 1024,
            max_inflight: 256,
            num_queues: 2,
            capabilities: caps::ALL,
            max_blob_size: 1 << 40,
            block_size_hint: 4 << 20,
        }
    }

    #[test]
    fn layout_is_pinned() {
        assert_eq!(size_of::<RawConfig>(), DeviceConfig::SIZE);
        assert_eq!(offset_of!(RawConfig, max_buffer_len), 8);
        assert_eq!(offset_of!(RawConfig, num_queues), 28);
        assert_eq!(offset_of!(RawConfig, capabilities), 32);
        assert_eq!(offset_of!(RawConfig, max_blob_size), 40);
        assert_eq!(offset_of!(RawConfig, block_size_hint), 48);
        let b = sample().to_bytes();
        assert_eq!(&b[0..4], b"VBCF");
        assert_eq!(DeviceConfig::from_bytes(&b), Ok(sample()));
    }

    #[test]
    fn partial_reads_and_bad_input() {
        let c = sample();
        assert_eq!(c.read(0, 4), b"VBCF");
        assert_eq!(c.read(60, 100).len(), 4);
        assert!(c.read(1000, 4).is_empty());
        assert!(DeviceConfig::from_bytes(&[0; 63]).is_err());
        assert!(DeviceConfig::from_bytes(&[0; 64]).is_err());
        // A range that misses ours is refused; one that overlaps it agrees
        // on the newest version in both.
        let mut bad = c;
        bad.min_op_version = OP_VERSION + 1;
        bad.max_op_version = OP_VERSION + 2;
        assert!(DeviceConfig::from_bytes(&bad.to_bytes()).is_err());
        bad.min_op_version = 0;
        bad.max_op_version = 0;
        assert!(DeviceConfig::from_bytes(&bad.to_bytes()).is_err());
        let versions = |min, max| DeviceConfig { min_op_version: min, max_op_version: max, ..c };
        assert_eq!(DeviceConfig::from_bytes(&versions(1, 1).to_bytes()).unwrap().op_version(), 1);
        assert_eq!(DeviceConfig::from_bytes(&versions(1, 9).to_bytes()).unwrap().op_version(), OP_VERSION);
        assert_eq!(DeviceConfig::from_bytes(&versions(2, 2).to_bytes()).unwrap().op_version(), 2);
    }
}
