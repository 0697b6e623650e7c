//! The CLI's errors and the exit code of each: scripts branch on the code,
//! so it follows the kind of failure (the `ClientError` variant), never its text.

use vmblob_protocol::BlobError;
use vmblob_vsc::ClientError;
use vmblob_vsc::transport::virtio_pci::PciError;

/// Exit codes a script can rely on (README "The CLI").
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const UNAVAILABLE: u8 = 5;
    /// A write was sent, the device went away before answering and did not
    /// come back in time: it may or may not have been applied.
    pub const OUTCOME_UNKNOWN: u8 = 6;
    /// A conditional read found the caller's copy current (Azure's 304).
    pub const NOT_MODIFIED: u8 = 7;
    /// The container does not exist (`NOT_FOUND` is for a blob).
    pub const CONTAINER_NOT_FOUND: u8 = 8;
    /// An If-Match condition failed (Azure's 412; `CONFLICT` is its 409).
    pub const CONDITION_FAILED: u8 = 9;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// The daemon `vmblob demo` starts did not come up.
    #[error("{0}")]
    Daemon(String),
    /// A check of the CLI's own failed.
    #[error("{0}")]
    Failed(&'static str),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Daemon(_) => exit::UNAVAILABLE,
            CliError::Failed(_) | CliError::Io(_) => exit::FAILED,
            CliError::Client(e) => client_exit_code(e),
        }
    }
}

fn status_exit_code(error: BlobError) -> u8 {
    match error {
        BlobError::BlobNotFound => exit::NOT_FOUND,
        BlobError::ContainerNotFound => exit::CONTAINER_NOT_FOUND,
        BlobError::NotModified => exit::NOT_MODIFIED,
        BlobError::AlreadyExists | BlobError::LeaseConflict => exit::CONFLICT,
        BlobError::PreconditionFailed => exit::CONDITION_FAILED,
        BlobError::Rescinded | BlobError::Busy | BlobError::Timeout => exit::UNAVAILABLE,
        BlobError::InvalidName | BlobError::InvalidRequest => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// The exit code of a client failure, by kind.
pub fn client_exit_code(e: &ClientError) -> u8 {
    use ClientError as E;
    match e {
        E::Status { error, .. } => status_exit_code(*error),
        // Another writer's upload of the name committed first: a conflict, like a failed condition.
        E::Superseded { .. } => exit::CONFLICT,
        // The device is gone, not answering, or out of buffers for now: try again later.
        E::OutcomeUnknown { .. } => exit::OUTCOME_UNKNOWN,
        E::Rescinded | E::Timeout { .. } | E::ResourceExhausted { .. } => exit::UNAVAILABLE,
        E::Queue(_) | E::Channel(_) | E::Ring(_) | E::Frontend(_) | E::Setup(_) => exit::UNAVAILABLE,
        // No vmblob PCI function (none offered, or it was unplugged): unavailable, like a rescind.
        E::Pci(PciError::NoDevice | PciError::Removed { .. }) => exit::UNAVAILABLE,
        // What the caller asked for cannot be sent.
        E::InvalidName { .. } | E::TooLarge { .. } | E::ShortSource { .. } | E::InvalidOptions(_) => exit::USAGE,
        E::InvalidBuffers(_) | E::Protocol(_) | E::Decode(_) | E::Response(_) | E::Dma(_) | E::Io(_) => exit::FAILED,
        _ => exit::FAILED,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vmblob_vsc::ProtocolError;

    use super::*;

    fn code(e: ClientError) -> u8 {
        CliError::from(e).exit_code()
    }

    #[test]
    fn dma_pool_exhaustion_is_a_resource_error_not_a_usage_error() {
        let e = ClientError::ResourceExhausted { len: 8 << 20, waited: Duration::from_secs(60) };
        assert_eq!(code(e), exit::UNAVAILABLE);
    }

    #[test]
    fn client_errors_map_to_exit_codes_by_kind() {
        let status = |error| ClientError::Status { error, message: String::new() };
        assert_eq!(code(status(BlobError::BlobNotFound)), exit::NOT_FOUND);
        assert_eq!(code(status(BlobError::ContainerNotFound)), exit::CONTAINER_NOT_FOUND);
        assert_eq!(code(status(BlobError::AlreadyExists)), exit::CONFLICT);
        assert_eq!(code(status(BlobError::PreconditionFailed)), exit::CONDITION_FAILED);
        assert_eq!(code(status(BlobError::NotModified)), exit::NOT_MODIFIED);
        assert_eq!(code(status(BlobError::LeaseConflict)), exit::CONFLICT);
        assert_eq!(code(status(BlobError::Busy)), exit::UNAVAILABLE);
        assert_eq!(code(status(BlobError::InvalidName)), exit::USAGE);
        assert_eq!(code(status(BlobError::Io)), exit::FAILED);
        assert_eq!(code(ClientError::Superseded { message: String::new() }), exit::CONFLICT);
        assert_eq!(code(ClientError::Rescinded), exit::UNAVAILABLE);
        assert_eq!(code(ClientError::OutcomeUnknown { op: vmblob_protocol::OpCode::PutBlob }), 6);
        assert_eq!(code(ClientError::Timeout { waiting_for: "a completion", after: Duration::from_secs(1) }), 5);
        assert_eq!(code(ClientError::InvalidName { kind: "blob", name: "../x".into() }), exit::USAGE);
        assert_eq!(code(ClientError::TooLarge { what: "data buffer bytes", len: 2, max: 1 }), exit::USAGE);
        assert_eq!(code(ProtocolError::EmptySuccess.into()), exit::FAILED);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(code(ClientError::Io(refused)), exit::FAILED);
        assert_eq!(CliError::Usage("x".into()).exit_code(), exit::USAGE);
    }
}
