//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use vhost::vhost_user::{Error as VhostUserError, VhostUserProtocolFeatures};

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A vhost-user request the frontend sends, named as in the spec. Used to say which step of the
/// handshake or ring setup failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    SetOwner,
    GetFeatures,
    GetProtocolFeatures,
    SetProtocolFeatures,
    GetQueueNum,
    SetFeatures,
    SetMemTable,
    SetVringNum(usize),
    SetVringAddr(usize),
    SetVringBase(usize),
    SetVringCall(usize),
    SetVringKick(usize),
    SetVringEnable(usize),
    GetVringBase(usize),
    GetConfig,
    SetConfig,
    GetInflightFd,
    SetInflightFd,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, queue) = match *self {
            Step::SetOwner => ("SET_OWNER", None),
            Step::GetFeatures => ("GET_FEATURES", None),
            Step::GetProtocolFeatures => ("GET_PROTOCOL_FEATURES", None),
            Step::SetProtocolFeatures => ("SET_PROTOCOL_FEATURES", None),
            Step::GetQueueNum => ("GET_QUEUE_NUM", None),
            Step::SetFeatures => ("SET_FEATURES", None),
            Step::SetMemTable => ("SET_MEM_TABLE", None),
            Step::SetVringNum(q) => ("SET_VRING_NUM", Some(q)),
            Step::SetVringAddr(q) => ("SET_VRING_ADDR", Some(q)),
            Step::SetVringBase(q) => ("SET_VRING_BASE", Some(q)),
            Step::SetVringCall(q) => ("SET_VRING_CALL", Some(q)),
            Step::SetVringKick(q) => ("SET_VRING_KICK", Some(q)),
            Step::SetVringEnable(q) => ("SET_VRING_ENABLE", Some(q)),
            Step::GetVringBase(q) => ("GET_VRING_BASE", Some(q)),
            Step::GetConfig => ("GET_CONFIG", None),
            Step::SetConfig => ("SET_CONFIG", None),
            Step::GetInflightFd => ("GET_INFLIGHT_FD", None),
            Step::SetInflightFd => ("SET_INFLIGHT_FD", None),
        };
        match queue {
            Some(q) => write!(f, "VHOST_USER_{name} (queue {q})"),
            None => write!(f, "VHOST_USER_{name}"),
        }
    }
}

/// Everything that can go wrong in guest memory setup and in the vhost-user frontend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- guest RAM ---
    /// The requested guest RAM size is zero or does not fit this address space.
    #[error("guest RAM size {0:#x} is zero or too large to map")]
    InvalidRamSize(u64),
    /// `memfd_create` failed.
    #[error("memfd_create for guest RAM failed: {0}")]
    MemfdCreate(#[source] io::Error),
    /// `ftruncate` on the memfd failed.
    #[error("sizing the guest RAM memfd failed: {0}")]
    MemfdResize(#[source] io::Error),
    /// Mapping the memfd failed.
    #[error("mapping guest RAM failed: {0}")]
    MapRam(#[source] vm_memory::mmap::FromRangesError),
    /// A guest RAM region could not be described for `SET_MEM_TABLE`.
    #[error("describing guest RAM for vhost-user failed: {0}")]
    RegionInfo(#[source] vhost::Error),

    // --- connection ---
    /// Connecting to the backend socket failed with an error that retrying will not fix.
    #[error("connecting to vhost-user socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The backend was not reachable (or kept hanging up during the handshake) for the whole
    /// retry window.
    #[error("vhost-user backend at {path} not usable within {timeout:?}; last error: {last}")]
    Timeout { path: PathBuf, timeout: Duration, last: Box<Error> },
    /// Duplicating the socket for the hang-up watcher, or starting its thread, failed.
    #[error("setting up the hang-up watcher failed: {0}")]
    Watcher(#[source] io::Error),
    /// Creating a kick or call eventfd failed.
    #[error("creating an eventfd failed: {0}")]
    EventFd(#[source] io::Error),

    // --- handshake and ring requests ---
    /// A vhost-user request failed (the backend refused it, or the socket broke).
    #[error("{step} failed: {source}")]
    Vhost {
        step: Step,
        #[source]
        source: vhost::Error,
    },
    /// The backend did not answer within `FrontendOptions::reply_timeout`. The connection is
    /// then out of step and is not used again.
    #[error(
        "the vhost-user backend did not answer {step} in time: it is stopped, or busy with another \
         connection (vmblob-vsp serves one VMM at a time)"
    )]
    NoAnswer { step: Step },
    /// The backend does not offer virtio features the frontend cannot work without.
    #[error("vhost-user backend lacks required virtio feature bits {missing:#x}")]
    MissingFeatures { missing: u64 },
    /// On reconnect, the new backend does not offer protocol features the old one negotiated.
    #[error("vhost-user backend lacks previously negotiated protocol features {missing:?}")]
    MissingProtocolFeatures { missing: VhostUserProtocolFeatures },
    /// The backend reports fewer queues than requested.
    #[error("vhost-user backend has {available} queue(s), {requested} requested")]
    NotEnoughQueues { requested: usize, available: u64 },
    /// Zero queues, or more than vhost-user can address.
    #[error("invalid number of queues: {0}")]
    InvalidQueueCount(usize),

    // --- queue configuration ---
    /// A queue index at or above the device's queue count.
    #[error("queue index {index} out of range (device has {num_queues} queues)")]
    InvalidQueueIndex { index: usize, num_queues: usize },
    /// The same queue listed twice in one call.
    #[error("queue {0} configured twice")]
    DuplicateQueue(usize),
    /// A split-ring size of zero or not a power of two.
    #[error("queue {index}: size {size} is not a non-zero power of two")]
    InvalidQueueSize { index: usize, size: u16 },
    /// A ring that does not lie inside one guest RAM region.
    #[error("queue {index}: {ring} at guest address {gpa:#x} is not inside guest RAM")]
    RingOutsideRam { index: usize, ring: &'static str, gpa: u64 },
    /// Reading the avail index from guest memory failed.
    #[error("queue {index}: reading the avail index failed: {source}")]
    AvailIndex {
        index: usize,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Kicking a queue's eventfd failed.
    #[error("queue {index}: kick failed: {source}")]
    Kick {
        index: usize,
        #[source]
        source: io::Error,
    },
    /// `GET_VRING_BASE` answered a value that is not a 16-bit ring index.
    #[error("queue {index}: backend returned vring base {base}, not a 16-bit index")]
    InvalidVringBase { index: usize, base: u32 },

    // --- config space ---
    /// Config space access without the CONFIG protocol feature.
    #[error("vhost-user backend did not negotiate VHOST_USER_PROTOCOL_F_CONFIG")]
    ConfigUnsupported,
    /// A config access of zero bytes or beyond the 4 KiB vhost-user config space.
    #[error("config access of {len} bytes at {offset:#x} is outside the vhost-user config space")]
    ConfigRange { offset: u32, len: u32 },
    /// The backend refused a config read (zero-size reply), e.g. beyond its config space.
    #[error("vhost-user backend refused to read {len} config bytes at {offset:#x}")]
    ConfigRefused { offset: u32, len: u32 },

    // --- messages the frontend exchanges itself ---
    /// Reading or writing the socket failed.
    #[error("{step}: socket I/O failed: {source}")]
    Socket {
        step: Step,
        #[source]
        source: io::Error,
    },
    /// The backend's reply violates the protocol.
    #[error("{step}: malformed reply from the backend: {reason}")]
    BadReply { step: Step, reason: &'static str },
}

impl Error {
    /// True when the error means the connection to the backend is gone (hang-up, reset, refused
    /// connection) rather than the backend refusing a request. This is the class of errors that
    /// Cloud Hypervisor answers by reconnecting (`is_transport_lost` in its `vhost_user/mod.rs`).
    pub fn is_transport_lost(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Vhost { source, .. } => vhost_error_is_transport_lost(source),
            Error::Socket { source, .. } => io_error_is_connection_lost(source),
            _ => false,
        }
    }
}

pub(crate) fn vhost_error_is_transport_lost(error: &vhost::Error) -> bool {
    match error {
        vhost::Error::VhostUserProtocol(e) => match e {
            VhostUserError::Disconnected
            | VhostUserError::PartialMessage
            | VhostUserError::SocketBroken(_)
            | VhostUserError::SocketConnect(_) => true,
            VhostUserError::SocketError(e) => io_error_is_connection_lost(e),
            _ => false,
        },
        vhost::Error::IOError(e) => io_error_is_connection_lost(e),
        _ => false,
    }
}

pub(crate) fn io_error_is_connection_lost(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}
