//! Status codes carried in `VspResponse::error` and their typed Rust errors.
//!
//! Codes are HRESULT-shaped like the seed's host timeout (`0x80070102`):
//! `HRESULT_FROM_WIN32(code)` where a Win32 code says the same thing.

/// The success status.
pub const SUCCESS: u32 = 0;

/// Every non-success status the VSP can return, as a typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum BlobError {
    /// The request outlived its `timeout_ms`; its store effect was rolled back.
    #[error("request timed out in the host")]
    Timeout,
    #[error("container not found")]
    ContainerNotFound,
    #[error("blob not found")]
    BlobNotFound,
    #[error("already exists")]
    AlreadyExists,
    /// An If-Match / If-None-Match condition did not hold.
    #[error("precondition failed")]
    PreconditionFailed,
    /// A malformed header, chain, packet or operation.
    #[error("invalid request")]
    InvalidRequest,
    /// A container, blob, metadata or block name broke the naming rules.
    #[error("invalid name")]
    InvalidName,
    /// A byte range starting past the end of the blob.
    #[error("invalid range")]
    InvalidRange,
    /// A buffer, blob, block list or metadata set over its limit.
    #[error("too large")]
    TooLarge,
    /// The response buffer cannot hold even the smallest answer.
    #[error("response buffer too small")]
    BufferTooSmall,
    /// Unknown transport version, operation type or op version.
    #[error("not supported")]
    Unsupported,
    /// Content-MD5 or CRC64 supplied by the guest did not match the data.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// PutBlockList named a block that is not staged or committed.
    #[error("invalid block list")]
    InvalidBlockList,
    /// A read's If-None-Match named the blob's current ETag (Azure's 304):
    /// the reader's copy is current; no data or properties come back.
    #[error("not modified")]
    NotModified,
    /// A lease operation the blob's lease does not allow (Azure's 409
    /// LeaseAlreadyPresent, LeaseIdMismatchWithLeaseOperation and the like;
    /// op version 3). A blob operation refused by a lease is
    /// `PreconditionFailed`, as Azure's 412 LeaseIdMissing is.
    #[error("lease conflict")]
    LeaseConflict,
    /// The channel went away (rescind, reset, disconnect) before the request committed.
    #[error("request aborted: channel rescinded")]
    Rescinded,
    /// A limit on in-flight work was reached; retry later.
    #[error("busy")]
    Busy,
    /// The store failed (I/O error, remote store unreachable).
    #[error("store I/O error")]
    Io,
    #[error("internal error")]
    Internal,
    /// A status this build does not know.
    #[error("unknown status {0:#010x}")]
    Unknown(u32),
}

/// (code, error) pairs; the single source for both directions of the mapping.
const CODES: &[(u32, BlobError)] = &[
    (0x8007_0102, BlobError::Timeout),
    (0x8007_0003, BlobError::ContainerNotFound),
    (0x8007_0002, BlobError::BlobNotFound),
    (0x8007_00B7, BlobError::AlreadyExists),
    (0x8007_139F, BlobError::PreconditionFailed),
    (0x8007_0057, BlobError::InvalidRequest),
    (0x8007_007B, BlobError::InvalidName),
    (0x8007_0026, BlobError::InvalidRange),
    (0x8007_00DF, BlobError::TooLarge),
    (0x8007_007A, BlobError::BufferTooSmall),
    (0x8007_0032, BlobError::Unsupported),
    (0x8007_0017, BlobError::ChecksumMismatch),
    (0x8007_000D, BlobError::InvalidBlockList),
    // Win32 has no "not modified": a customer HRESULT (bit 29) with HTTP's 304.
    (0xA000_0130, BlobError::NotModified),
    (0x8007_0021, BlobError::LeaseConflict),
    (0x8007_04D3, BlobError::Rescinded),
    (0x8007_00AA, BlobError::Busy),
    (0x8007_045D, BlobError::Io),
    (0x8000_FFFF, BlobError::Internal),
];

impl BlobError {
    /// The wire code of this error.
    pub fn code(self) -> u32 {
        if let BlobError::Unknown(c) = self {
            return c;
        }
        CODES.iter().find(|(_, e)| *e == self).map(|(c, _)| *c).unwrap_or(0x8000_FFFF)
    }

    /// The error for a wire code; `None` for [`SUCCESS`].
    pub fn from_code(code: u32) -> Option<BlobError> {
        if code == SUCCESS {
            return None;
        }
        Some(CODES.iter().find(|(c, _)| *c == code).map(|(_, e)| *e).unwrap_or(BlobError::Unknown(code)))
    }

    /// All known (non-`Unknown`) errors, for tests and documentation.
    pub fn all() -> impl Iterator<Item = BlobError> {
        CODES.iter().map(|(_, e)| *e)
    }
}

/// `Ok(())` for success, the typed error otherwise.
pub fn check(code: u32) -> Result<(), BlobError> {
    match BlobError::from_code(code) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for e in BlobError::all() {
            assert!(seen.insert(e.code()), "duplicate code for {e:?}");
            assert_eq!(BlobError::from_code(e.code()), Some(e));
            assert_ne!(e.code(), SUCCESS);
        }
        assert_eq!(BlobError::from_code(0), None);
        assert_eq!(BlobError::from_code(0x1234), Some(BlobError::Unknown(0x1234)));
        assert_eq!(BlobError::Unknown(0x1234).code(), 0x1234);
    }

    #[test]
    fn seed_timeout_code_is_kept() {
        assert_eq!(BlobError::Timeout.code(), 0x8007_0102);
        assert_eq!(check(0x8007_0102), Err(BlobError::Timeout));
        assert_eq!(check(0), Ok(()));
    }
}
