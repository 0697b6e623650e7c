//! Client errors: what a caller of `BlobClient` sees.

use vmblob_protocol::BlobError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The VSP answered with a non-success status.
    #[error("{error}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Blob { error: BlobError, message: String },
    /// The device went away (rescind, backend exit, disconnect) before the
    /// request completed, or is not connected now.
    #[error("device rescinded")]
    Rescinded,
    /// The VSP's answer broke the protocol (short, malformed, wrong op).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The request cannot be expressed (too large for the device's limits).
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The VSP status, if this error is one.
    pub fn blob_error(&self) -> Option<BlobError> {
        match self {
            ClientError::Blob { error, .. } => Some(*error),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.blob_error(), Some(BlobError::BlobNotFound | BlobError::ContainerNotFound))
    }
}

impl From<BlobError> for ClientError {
    fn from(error: BlobError) -> Self {
        ClientError::Blob { error, message: String::new() }
    }
}
