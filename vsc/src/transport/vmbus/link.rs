//! The transport's view of the current channel, under one lock.

use std::collections::HashSet;
use std::sync::Arc;

use vmblob_vmbus::{OutgoingRing, RingMem};

use vmblob_vmbus::RawChannel;

/// A channel that is open and believed healthy.
pub(super) struct Live {
    pub channel: RawChannel,
    pub out: OutgoingRing<Arc<dyn RingMem>>,
    /// Requestor ids sent on this channel and not completed yet: the only
    /// ids a completion may carry.
    pub sent: HashSet<u64>,
}

impl Live {
    pub fn new(channel: RawChannel, out: OutgoingRing<Arc<dyn RingMem>>) -> Self {
        Self { channel, out, sent: HashSet::new() }
    }
}

pub(super) struct Link {
    /// `None` while rescinded (waiting for the re-offer), failed, or closed.
    pub live: Option<Live>,
    /// Counts channels opened; a stale thread compares it to its own.
    pub generation: u64,
    /// `close` was called: no channel is installed again.
    pub closed: bool,
    /// Requests the device accepts at once (its config's `max_inflight`).
    pub max_inflight: usize,
}

impl Default for Link {
    fn default() -> Self {
        // Until the config is known only the GetDeviceConfig request is sent.
        Self { live: None, generation: 0, closed: false, max_inflight: 1 }
    }
}
