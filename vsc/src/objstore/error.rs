//! What can go wrong between `object_store` and the device, and how each
//! failure becomes an `object_store::Error`.

use vmblob_protocol::BlobError;

use crate::error::ClientError;

/// The `store` name in `object_store::Error::Generic`.
pub(crate) const STORE: &str = "vmblob";

/// A failure of one object-store operation on the guest side.
#[derive(Debug, thiserror::Error)]
pub enum ObjStoreError {
    /// The path cannot name a blob (protocol naming rules, `docs/PROTOCOL.md` §7).
    #[error("path {path:?} cannot be a blob name: {reason}")]
    InvalidBlobName { path: String, reason: &'static str },
    /// A listed blob name that `object_store::path::Path` does not accept.
    #[error("blob {name:?} has no object_store path: {source}")]
    UnrepresentableName { name: String, source: object_store::path::Error },
    /// An attribute the protocol has no field for.
    #[error("attribute {0} has no field in the vmblob protocol")]
    UnsupportedAttribute(String),
    /// A content type or metadata entry the protocol refuses.
    #[error("attribute {attribute}: {reason}")]
    InvalidAttribute { attribute: String, reason: String },
    /// `PutMode::Update` without an ETag: the device has no versions to match.
    #[error("a conditional update needs an ETag")]
    MissingETag,
    #[error("ETag {0:?} cannot be sent to the device")]
    InvalidETag(String),
    /// The device keeps no object versions.
    #[error("object versions are not supported")]
    VersionsUnsupported,
    #[error("{0}")]
    InvalidRange(String),
    /// `complete` before every part's upload finished.
    #[error("part {0} was not uploaded")]
    MissingPart(usize),
    #[error("invalid multipart upload id {0:?}")]
    InvalidUploadId(String),
    #[error("invalid part id {0:?}")]
    InvalidPartId(String),
    #[error("delimiter {0:?}: at most {max} bytes of text", max = vmblob_protocol::ops::MAX_DELIMITER)]
    InvalidDelimiter(String),
    #[error("more than {max} {what} in one upload")]
    TooManyBlocks { what: &'static str, max: usize },
    /// The object was replaced between two reads of one transfer.
    #[error("the object changed during the transfer")]
    Changed,
    /// A blocking worker died (panicked) before answering.
    #[error("blocking worker failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How a failed If-Match / If-None-Match reads for the operation at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnPrecondition {
    Precondition,
    /// A create (If-None-Match `*`) found the object there.
    AlreadyExists,
    /// A read's If-None-Match matched.
    NotModified,
}

impl ObjStoreError {
    pub(crate) fn status(&self) -> Option<BlobError> {
        match self {
            ObjStoreError::Client(c) => c.blob_error(),
            _ => None,
        }
    }

    /// The `object_store` error for a failure on `path`.
    pub(crate) fn into_os(self, path: &str, on_precondition: OnPrecondition) -> object_store::Error {
        use object_store::Error as E;
        let path = path.to_owned();
        match (self.status(), self) {
            (_, ObjStoreError::UnrepresentableName { source, .. }) => E::InvalidPath { source },
            (_, ObjStoreError::UnsupportedAttribute(a)) => {
                E::NotImplemented { operation: format!("writing attribute {a}"), implementer: "VmblobStore".into() }
            }
            // A header or condition the device's op version has no field for.
            (_, ObjStoreError::Client(ClientError::NeedsVersion(n))) => {
                E::NotImplemented { operation: n.to_string(), implementer: "this vmblob device".into() }
            }
            (_, e @ (ObjStoreError::InvalidBlobName { .. } | ObjStoreError::VersionsUnsupported)) => {
                E::NotSupported { source: Box::new(e) }
            }
            (Some(BlobError::BlobNotFound | BlobError::ContainerNotFound), e) => {
                E::NotFound { path, source: Box::new(e) }
            }
            (Some(BlobError::AlreadyExists), e) => E::AlreadyExists { path, source: Box::new(e) },
            (Some(BlobError::NotModified), e) => E::NotModified { path, source: Box::new(e) },
            (Some(BlobError::PreconditionFailed), e) => match on_precondition {
                OnPrecondition::Precondition => E::Precondition { path, source: Box::new(e) },
                OnPrecondition::AlreadyExists => E::AlreadyExists { path, source: Box::new(e) },
                OnPrecondition::NotModified => E::NotModified { path, source: Box::new(e) },
            },
            (Some(BlobError::Unsupported), e) => E::NotSupported { source: Box::new(e) },
            (_, e) => E::Generic { store: STORE, source: Box::new(e) },
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::Error as E;

    use super::*;

    fn status(error: BlobError) -> ObjStoreError {
        ObjStoreError::Client(ClientError::Status { error, message: "from the device".into() })
    }

    #[test]
    fn statuses_map_to_object_store_errors() {
        let os = |e, on| status(e).into_os("a/b", on);
        assert!(
            matches!(os(BlobError::BlobNotFound, OnPrecondition::Precondition), E::NotFound { path, .. } if path == "a/b")
        );
        assert!(matches!(os(BlobError::ContainerNotFound, OnPrecondition::Precondition), E::NotFound { .. }));
        assert!(matches!(os(BlobError::AlreadyExists, OnPrecondition::Precondition), E::AlreadyExists { .. }));
        assert!(matches!(os(BlobError::PreconditionFailed, OnPrecondition::Precondition), E::Precondition { .. }));
        assert!(matches!(os(BlobError::PreconditionFailed, OnPrecondition::AlreadyExists), E::AlreadyExists { .. }));
        assert!(matches!(os(BlobError::PreconditionFailed, OnPrecondition::NotModified), E::NotModified { .. }));
        // What a VSP answers since it speaks Azure's 304 and 409 itself.
        assert!(matches!(os(BlobError::NotModified, OnPrecondition::Precondition), E::NotModified { .. }));
        assert!(matches!(os(BlobError::AlreadyExists, OnPrecondition::Precondition), E::AlreadyExists { .. }));
        assert!(matches!(os(BlobError::Unsupported, OnPrecondition::Precondition), E::NotSupported { .. }));
        for other in [BlobError::Busy, BlobError::Io, BlobError::Rescinded, BlobError::Timeout, BlobError::InvalidRange]
        {
            assert!(matches!(os(other, OnPrecondition::Precondition), E::Generic { store: STORE, .. }), "{other:?}");
        }
    }

    #[test]
    fn generic_errors_keep_their_source() {
        let e = ObjStoreError::Client(ClientError::Rescinded).into_os("x", OnPrecondition::Precondition);
        let E::Generic { source, .. } = e else { panic!("expected Generic, got {e:?}") };
        let inner = source.downcast_ref::<ObjStoreError>().expect("source is an ObjStoreError");
        assert!(matches!(inner, ObjStoreError::Client(ClientError::Rescinded)));
    }

    #[test]
    fn local_failures_map_to_their_kind() {
        let bad = ObjStoreError::InvalidBlobName { path: "a\\b".into(), reason: "backslash" };
        assert!(matches!(bad.into_os("a\\b", OnPrecondition::Precondition), E::NotSupported { .. }));
        let attr = ObjStoreError::UnsupportedAttribute("Cache-Control".into());
        assert!(matches!(attr.into_os("x", OnPrecondition::Precondition), E::NotImplemented { .. }));
        let parse = object_store::path::Path::parse("a//b").unwrap_err();
        let unrep = ObjStoreError::UnrepresentableName { name: "a//b".into(), source: parse };
        assert!(matches!(unrep.into_os("x", OnPrecondition::Precondition), E::InvalidPath { .. }));
        assert!(matches!(ObjStoreError::MissingPart(3).into_os("x", OnPrecondition::Precondition), E::Generic { .. }));
    }
}
