//! The transport packet, byte-compatible with the seed's `az_blob_vsp_request`
//! (56 bytes) and `az_blob_vsp_response` (12 bytes): packed, little-endian.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned, little_endian::U32};

/// VMBus class GUID of the seed device, `{0590b792-db64-45cc-81db-b8d70c577c9e}`.
pub const VMBUS_CLASS_GUID: &str = "0590b792-db64-45cc-81db-b8d70c577c9e";
/// The same GUID in the on-wire (mixed-endian `guid_t`) byte order.
pub const VMBUS_CLASS_GUID_BYTES: [u8; 16] =
    [0x92, 0xb7, 0x90, 0x05, 0x64, 0xdb, 0xcc, 0x45, 0x81, 0xdb, 0xb8, 0xd7, 0x0c, 0x57, 0x7c, 0x9e];

/// `VSP_PROTOCOL_VERSION_V1`: the only transport version (the seed sends 0).
pub const TRANSPORT_VERSION: u32 = 0;
/// Page size of the seed's limits and of VMBus PFNs.
pub const PAGE_SIZE: u32 = 4096;
/// `AZ_BLOB_MAX_PAGES`.
pub const MAX_PAGES: u32 = 8192;
/// Each buffer, and all buffers together, are at most this long (32 MiB).
pub const MAX_BUFFER_LEN: u32 = PAGE_SIZE * MAX_PAGES;

pub const REQUEST_SIZE: usize = 56;
pub const RESPONSE_SIZE: usize = 12;

/// `az_blob_vsp_request_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum OperationType {
    /// A blob operation in the request buffer (the only one the seed sent).
    UserRequest = 0x100,
    /// Kept "for protocol completeness"; answered with `Unsupported`.
    RegisterBuffer = 0x101,
    DeregisterBuffer = 0x102,
}

impl OperationType {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0x100 => Some(Self::UserRequest),
            0x101 => Some(Self::RegisterBuffer),
            0x102 => Some(Self::DeregisterBuffer),
            _ => None,
        }
    }
}

/// VSC → VSP request header (`struct az_blob_vsp_request`, 56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct VspRequest {
    pub version: U32,
    pub timeout_ms: U32,
    pub data_buffer_offset: U32,
    pub data_buffer_length: U32,
    pub data_buffer_valid: U32,
    pub operation_type: U32,
    pub request_buffer_offset: U32,
    pub request_buffer_length: U32,
    pub response_buffer_offset: U32,
    pub response_buffer_length: U32,
    pub transaction_id: [u8; 16],
}

/// VSP → VSC response (`struct az_blob_vsp_response`, 12 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct VspResponse {
    /// Size of this structure (12); the seed never read it, we check it.
    pub length: U32,
    /// A status code (see `status`).
    pub error: U32,
    /// Bytes the VSP wrote into the response buffer.
    pub response_len: U32,
}

/// Why a transport header or response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("header is {0} bytes, expected {REQUEST_SIZE}")]
    WrongHeaderSize(usize),
    #[error("response is {0} bytes, expected {RESPONSE_SIZE}")]
    WrongResponseSize(usize),
    #[error("response length field is {0}, expected {RESPONSE_SIZE}")]
    BadResponseLength(u32),
    #[error("unsupported transport version {0}")]
    UnsupportedVersion(u32),
    #[error("unknown operation type {0:#x}")]
    UnknownOperation(u32),
    #[error("request or response length is zero")]
    EmptyBuffer,
    #[error("{which} buffer is {len} bytes, over the {MAX_BUFFER_LEN}-byte limit")]
    BufferTooLong { which: &'static str, len: u32 },
    #[error("data_valid {valid} exceeds data_length {length}")]
    ValidPastLength { valid: u32, length: u32 },
    #[error("buffers total {0} bytes, over the {MAX_BUFFER_LEN}-byte limit")]
    TotalTooLong(u64),
    #[error("the all-zero transaction id is reserved")]
    ZeroTransactionId,
}

impl VspRequest {
    /// Copy a header out of exactly 56 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TransportError> {
        Self::read_from_bytes(bytes).map_err(|_| TransportError::WrongHeaderSize(bytes.len()))
    }

    /// Check the seed's limits. Offsets are checked by the framing, which knows
    /// where the buffers lie.
    pub fn validate(&self) -> Result<OperationType, TransportError> {
        let version = self.version.get();
        if version != TRANSPORT_VERSION {
            return Err(TransportError::UnsupportedVersion(version));
        }
        let op = self.operation_type.get();
        let op = OperationType::from_u32(op).ok_or(TransportError::UnknownOperation(op))?;
        let (req, resp) = (self.request_buffer_length.get(), self.response_buffer_length.get());
        let (data, valid) = (self.data_buffer_length.get(), self.data_buffer_valid.get());
        if req == 0 || resp == 0 {
            return Err(TransportError::EmptyBuffer);
        }
        for (which, len) in [("request", req), ("response", resp), ("data", data)] {
            if len > MAX_BUFFER_LEN {
                return Err(TransportError::BufferTooLong { which, len });
            }
        }
        if valid > data {
            return Err(TransportError::ValidPastLength { valid, length: data });
        }
        let total = u64::from(req) + u64::from(resp) + u64::from(data);
        if total > u64::from(MAX_BUFFER_LEN) {
            return Err(TransportError::TotalTooLong(total));
        }
        if self.transaction_id == [0; 16] {
            return Err(TransportError::ZeroTransactionId);
        }
        Ok(op)
    }
}

impl VspResponse {
    pub fn new(error: u32, response_len: u32) -> Self {
        Self { length: U32::new(RESPONSE_SIZE as u32), error: U32::new(error), response_len: U32::new(response_len) }
    }

    /// Parse and check a response: exactly 12 bytes whose `length` says 12.
    pub fn parse(bytes: &[u8]) -> Result<Self, TransportError> {
        let r = Self::read_from_bytes(bytes).map_err(|_| TransportError::WrongResponseSize(bytes.len()))?;
        if r.length.get() != RESPONSE_SIZE as u32 {
            return Err(TransportError::BadResponseLength(r.length.get()));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_seed() {
        assert_eq!(size_of::<VspRequest>(), 56);
        assert_eq!(size_of::<VspResponse>(), 12);
        assert_eq!(offset_of!(VspRequest, version), 0);
        assert_eq!(offset_of!(VspRequest, timeout_ms), 4);
        assert_eq!(offset_of!(VspRequest, data_buffer_offset), 8);
        assert_eq!(offset_of!(VspRequest, data_buffer_length), 12);
        assert_eq!(offset_of!(VspRequest, data_buffer_valid), 16);
        assert_eq!(offset_of!(VspRequest, operation_type), 20);
        assert_eq!(offset_of!(VspRequest, request_buffer_offset), 24);
        assert_eq!(offset_of!(VspRequest, request_buffer_length), 28);
        assert_eq!(offset_of!(VspRequest, response_buffer_offset), 32);
        assert_eq!(offset_of!(VspRequest, response_buffer_length), 36);
        assert_eq!(offset_of!(VspRequest, transaction_id), 40);
        assert_eq!(offset_of!(VspResponse, length), 0);
        assert_eq!(offset_of!(VspResponse, error), 4);
        assert_eq!(offset_of!(VspResponse, response_len), 8);
    }

    fn good() -> VspRequest {
        VspRequest {
            operation_type: U32::new(0x100),
            request_buffer_length: U32::new(64),
            response_buffer_length: U32::new(4096),
            data_buffer_length: U32::new(8192),
            data_buffer_valid: U32::new(100),
            transaction_id: [7; 16],
            ..Default::default()
        }
    }

    #[test]
    fn little_endian_bytes() {
        let mut r = good();
        r.timeout_ms = U32::new(0x0102_0304);
        let b = r.as_bytes();
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(&b[20..24], &[0, 1, 0, 0]);
        assert_eq!(VspRequest::parse(b).unwrap(), r);
        assert_eq!(VspResponse::new(0x8007_0102, 5).as_bytes(), &[12, 0, 0, 0, 2, 1, 7, 0x80, 5, 0, 0, 0]);
    }

    #[test]
    fn seed_limits() {
        assert_eq!(good().validate(), Ok(OperationType::UserRequest));
        let mut r = good();
        r.request_buffer_length = U32::new(0);
        assert_eq!(r.validate(), Err(TransportError::EmptyBuffer));
        let mut r = good();
        r.response_buffer_length = U32::new(0);
        assert_eq!(r.validate(), Err(TransportError::EmptyBuffer));
        let mut r = good();
        r.data_buffer_valid = U32::new(8193);
        assert!(matches!(r.validate(), Err(TransportError::ValidPastLength { .. })));
        let mut r = good();
        r.data_buffer_length = U32::new(MAX_BUFFER_LEN + 1);
        assert!(matches!(r.validate(), Err(TransportError::BufferTooLong { which: "data", .. })));
        let mut r = good();
        r.data_buffer_length = U32::new(MAX_BUFFER_LEN);
        assert!(matches!(r.validate(), Err(TransportError::TotalTooLong(_))));
        let mut r = good();
        r.version = U32::new(1);
        assert_eq!(r.validate(), Err(TransportError::UnsupportedVersion(1)));
        let mut r = good();
        r.operation_type = U32::new(0x103);
        assert_eq!(r.validate(), Err(TransportError::UnknownOperation(0x103)));
        let mut r = good();
        r.transaction_id = [0; 16];
        assert_eq!(r.validate(), Err(TransportError::ZeroTransactionId));
        assert_eq!(VspRequest::parse(&[0; 55]), Err(TransportError::WrongHeaderSize(55)));
    }

    #[test]
    fn response_checks_length() {
        assert!(VspResponse::parse(VspResponse::new(0, 1).as_bytes()).is_ok());
        let mut bad = VspResponse::new(0, 1);
        bad.length = U32::new(0);
        assert_eq!(VspResponse::parse(bad.as_bytes()), Err(TransportError::BadResponseLength(0)));
        assert_eq!(VspResponse::parse(&[0; 11]), Err(TransportError::WrongResponseSize(11)));
    }

    #[test]
    fn guid_bytes_match_string() {
        // guid_t stores the first three groups little-endian.
        let g = VMBUS_CLASS_GUID_BYTES;
        let s = format!(
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9],
            g[10..].iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert_eq!(s, VMBUS_CLASS_GUID);
    }
}
