//! A guest with the real client stack: `VirtioTransport` (VMM + split-queue
//! driver in this process) under a `BlobClient`.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vmblob_protocol::BlobError;
use vmblob_vsc::{BlobClient, ClientError, ClientOptions, VirtioOptions, VirtioTransport};

/// How a test guest connects.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    pub queues: usize,
    pub queue_size: u16,
    pub ram_size: u64,
    pub reconnect: bool,
    /// Offer the vhost-user inflight region (the frontend's default, as QEMU's blk and CH):
    /// with `reconnect`, a VSP crash then pauses the guest's requests instead of failing them.
    pub inflight: bool,
    /// Busy-poll window after a completion (zero: interrupts only).
    pub poll: Duration,
    pub client: ClientOptions,
}

impl Default for GuestOptions {
    fn default() -> Self {
        Self {
            queues: 1,
            queue_size: 256,
            ram_size: 256 << 20,
            reconnect: false,
            inflight: true,
            poll: Duration::ZERO,
            // Short enough that the client's own backstop (timeout + 10 s)
            // would end a wedged wait well inside the suite's budget.
            client: ClientOptions { timeout_ms: 20_000, ..ClientOptions::default() },
        }
    }
}

impl GuestOptions {
    pub fn queues(mut self, n: usize) -> Self {
        self.queues = n;
        self
    }
    pub fn poll(mut self, window: Duration) -> Self {
        self.poll = window;
        self
    }

    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }
    pub fn inflight(mut self, on: bool) -> Self {
        self.inflight = on;
        self
    }
    pub fn block_size(mut self, bytes: u32) -> Self {
        self.client.block_size = bytes;
        self
    }
}

/// A connected guest. Derefs to its [`BlobClient`]; keeps the transport for
/// `sever_connection` and `pending`.
pub struct Guest {
    pub transport: Arc<VirtioTransport>,
    pub client: BlobClient,
}

impl Guest {
    pub fn connect(socket: &Path, opts: GuestOptions) -> Guest {
        Self::try_connect(socket, opts).unwrap_or_else(|e| panic!("guest cannot connect to {}: {e}", socket.display()))
    }

    pub fn try_connect(socket: &Path, opts: GuestOptions) -> Result<Guest, ClientError> {
        let mut v = VirtioOptions::new(socket);
        v.queues = opts.queues;
        v.queue_size = opts.queue_size;
        v.ram_size = opts.ram_size;
        v.reconnect = opts.reconnect;
        v.poll = opts.poll;
        v.frontend.connect_timeout = Duration::from_secs(10);
        v.frontend.inflight = opts.inflight;
        // Kept across a hang-up as long as the requests' own timeout.
        if opts.client.timeout_ms != 0 {
            v.hold_for = Duration::from_millis(opts.client.timeout_ms.into());
        }
        let transport = Arc::new(VirtioTransport::connect(v)?);
        let config = transport.device_config();
        let client = BlobClient::new(transport.clone(), config, opts.client);
        Ok(Guest { transport, client })
    }
}

impl Deref for Guest {
    type Target = BlobClient;
    fn deref(&self) -> &BlobClient {
        &self.client
    }
}

/// The VSP status of an error, panicking with the error if it is not one.
pub fn status_of(e: &ClientError) -> BlobError {
    e.blob_error().unwrap_or_else(|| panic!("expected a VSP status, got {e:?}"))
}

/// Whether the error says the request was rescinded: by the client (device
/// gone) or by the VSP (status Rescinded).
pub fn is_rescinded(e: &ClientError) -> bool {
    matches!(e, ClientError::Rescinded | ClientError::Status { error: BlobError::Rescinded, .. })
}

/// Whether the error is the transport failing under the request (the
/// connection broke, the rings refused it, nothing came back in time): what a
/// crash of the device looks like besides a rescind.
pub fn is_transport_failure(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Timeout { .. }
            | ClientError::OutcomeUnknown { .. }
            | ClientError::Frontend(_)
            | ClientError::Queue(_)
            | ClientError::Dma(_)
            | ClientError::Setup(_)
    )
}

/// Assert that `r` failed with the VSP status `want`.
#[track_caller]
pub fn expect_status<T>(r: Result<T, ClientError>, want: BlobError) {
    match r {
        Err(e) => assert_eq!(e.blob_error(), Some(want), "expected status {want:?}, got {e:?}"),
        Ok(_) => panic!("expected status {want:?}, got success"),
    }
}
