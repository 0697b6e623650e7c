//! One queue's worker: pop a chain, admit it to the in-flight table, serve
//! it, post its completion, notify the guest when it asked to be.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmblob_protocol::framing::virtio::{ChainDescriptor, VirtioFrame};
use vmblob_protocol::sg::{sub_range, total_len};
use vmblob_protocol::transport::{REQUEST_SIZE, RESPONSE_SIZE, VspRequest};
use vmblob_protocol::{BlobError, Segment, VspResponse};
use zerocopy::IntoBytes;

use crate::engine::guest_io::{read_exact, write_all};
use crate::engine::{AdmitError, CancelToken, Engine, InflightTable, VirtioRequest};

pub struct QueueWorker {
    inflight: Arc<InflightTable<u16>>,
}

/// A popped chain, admitted or refused.
enum Popped {
    Admitted {
        head: u16,
        request: VirtioRequest,
        cancel: CancelToken,
    },
    /// Shape or header is bad: answer with this status if there is room.
    Malformed {
        head: u16,
        writable: Vec<Segment>,
        status: BlobError,
    },
}

impl QueueWorker {
    pub fn new(inflight: Arc<InflightTable<u16>>) -> Self {
        Self { inflight }
    }

    pub fn inflight(&self) -> &InflightTable<u16> {
        &self.inflight
    }

    pub fn process(
        &self,
        engine: &Engine,
        mem: &GuestMemoryMmap,
        vring: &VringRwLock,
        event_idx: bool,
        closing: &AtomicBool,
    ) -> io::Result<()> {
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            while !closing.load(Ordering::SeqCst)
                && let Some(popped) = self.pop(engine, mem, vring)
            {
                self.complete(engine, mem, vring, popped, event_idx)?;
            }
            // Closing: leave queued requests unpopped (never accepted, so the
            // guest fails them itself) instead of re-arming forever.
            // A stopped ring (GET_VRING_BASE) likewise: its entries wait for
            // the next start.
            let stopped = !vring.get_ref().get_queue().ready();
            if closing.load(Ordering::SeqCst)
                || stopped
                || !event_idx
                || !vring.enable_notification().map_err(io::Error::other)?
            {
                return Ok(());
            }
        }
    }

    /// Pop and admit under the vring lock: GET_VRING_BASE marks the ring not
    /// ready under the same lock, so a stop sees every admitted request.
    fn pop(&self, engine: &Engine, mem: &GuestMemoryMmap, vring: &VringRwLock) -> Option<Popped> {
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        if !queue.ready() {
            return None;
        }
        let chain = queue.pop_descriptor_chain(mem)?;
        let head = chain.head_index();
        let max = engine.limits().max_descriptors;
        // Collect at most max + 1 descriptors so the frame can refuse a long chain.
        let descs: Vec<ChainDescriptor> = chain
            .take(max + 1)
            .map(|d| ChainDescriptor { addr: d.addr().0, len: d.len(), writable: d.is_write_only() })
            .collect();
        // The writable segments only matter for a chain we refuse.
        let malformed = |status| {
            let writable = descs.iter().filter(|d| d.writable).map(|d| Segment { addr: d.addr, len: d.len }).collect();
            Some(Popped::Malformed { head, writable, status })
        };
        let frame = match VirtioFrame::new(descs.iter().copied(), max) {
            Ok(f) => f,
            Err(e) => {
                log::debug!("queue chain {head} refused: {e}");
                return malformed(BlobError::InvalidRequest);
            }
        };
        // The header is copied out of guest memory exactly once, here.
        let mut raw = [0u8; REQUEST_SIZE];
        let header = match read_exact(mem, &frame.header(), &mut raw).ok().and_then(|()| VspRequest::parse(&raw).ok()) {
            Some(h) => h,
            None => return malformed(BlobError::InvalidRequest),
        };
        match self.inflight.admit(head, header.timeout_ms.get()) {
            Ok(cancel) => Some(Popped::Admitted { head, request: VirtioRequest { frame, header }, cancel }),
            Err(AdmitError::Full) => malformed(BlobError::Busy),
            Err(AdmitError::Closed) => {
                // Not accepted: leave the chain in the ring for whoever runs
                // the device next; the guest fails it if nobody does.
                queue.go_to_previous_position();
                None
            }
            Err(AdmitError::Duplicate) => {
                // The device popped a head that is still in flight: the guest
                // reused it. The first keeps the only completion.
                log::warn!("guest reused in-flight head {head}; dropped");
                None
            }
        }
    }

    fn complete(
        &self,
        engine: &Engine,
        mem: &GuestMemoryMmap,
        vring: &VringRwLock,
        popped: Popped,
        event_idx: bool,
    ) -> io::Result<()> {
        let (head, writable, resp, admitted) = match popped {
            Popped::Admitted { head, request, cancel } => {
                let resp = engine.serve(mem, &request, &cancel);
                (head, request.frame.status(), resp, true)
            }
            Popped::Malformed { head, writable, status } => (head, writable, Engine::refused(status), false),
        };
        // Status segments: for an admitted request they are exact; for a
        // malformed chain, the last 12 writable bytes if there are that many.
        let status_segs = if admitted { writable } else { tail(&writable, RESPONSE_SIZE as u64) };
        let used_len = post_status(mem, &status_segs, &resp);
        let posted = vring.add_used(head, used_len).map_err(io::Error::other);
        // Retire the entry even if the guest broke its used ring, so a stop
        // never waits for a completion that was already attempted.
        if admitted && !self.inflight.complete(head) {
            log::error!("completion for head {head} not in flight");
        }
        posted?;
        if !event_idx || vring.needs_notification().map_err(io::Error::other)? {
            // A vanished frontend closes the call fd; the completion is in the
            // used ring regardless.
            if let Err(e) = vring.signal_used_queue() {
                log::debug!("signal failed: {e}");
            }
        }
        Ok(())
    }
}

/// The last `n` bytes of a segment list, or nothing if it is shorter.
fn tail(segs: &[Segment], n: u64) -> Vec<Segment> {
    let total = total_len(segs);
    if total < n { Vec::new() } else { sub_range(segs, total - n, n).unwrap_or_default() }
}

/// Write the 12-byte response; returns the used length to report (the
/// response's bytes plus the status, or 0 when nothing could be written).
fn post_status(mem: &GuestMemoryMmap, status: &[Segment], resp: &VspResponse) -> u32 {
    if status.is_empty() || write_all(mem, status, resp.as_bytes()).is_err() {
        return 0;
    }
    resp.response_len.get() + RESPONSE_SIZE as u32
}
