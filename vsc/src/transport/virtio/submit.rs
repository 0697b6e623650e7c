//! What every virtio transport does to submit a request, whatever carries its queues (vhost-user
//! in process, or a PCI device from inside a guest): check the buffers against their lengths,
//! drop a data buffer the direction does not use, lay the chain out in the device's order, and
//! post it, waiting for ring space until the request's submit deadline.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use vm_memory::GuestAddress;
use vmblob_protocol::framing::virtio::canonical_offsets;
use vmblob_protocol::transport::{REQUEST_SIZE, RESPONSE_SIZE};
use vmblob_protocol::{DataDirection, VspResponse};
use zerocopy::IntoBytes;

use super::{QueueError, SplitQueue};
use crate::error::{ClientError, ProtocolError};
use crate::transport::table::RequestTable;
use crate::transport::{Completion, OpBuffers, SubmitDeadline, check_response};

/// One queue's ring and which request each posted chain head belongs to.
pub(crate) struct QueueState {
    pub ring: SplitQueue,
    /// Chain head -> request id.
    pub heads: HashMap<u16, u64>,
    /// Submitters waiting for ring space: a reaper notifies the queue's
    /// condvar (a futex call each time with std's) only when there are any.
    pub space_waiters: u32,
}

impl QueueState {
    pub fn new(ring: SplitQueue) -> Self {
        QueueState { ring, heads: HashMap::new(), space_waiters: 0 }
    }
}

/// Checks `b`, writes its header (canonical offsets, data lengths cleared when the direction
/// carries no data) and hands each buffer of its chain to `push` in the device's order:
/// header + request (readable), PUT data (readable), response (writable), GET data
/// (writable), the 12-byte status (writable). `push` places a buffer as the transport must
/// (as is, or split where physical memory jumps).
pub(crate) fn lay_out_chain(
    b: &mut OpBuffers,
    mut push: impl FnMut(GuestAddress, u32, bool) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let req_len = b.header.request_buffer_length.get();
    let resp_len = b.header.response_buffer_length.get();
    let data_len = b.header.data_buffer_length.get();
    if b.request.len() < REQUEST_SIZE + req_len as usize || b.response.len() < resp_len as usize + RESPONSE_SIZE {
        return Err(ClientError::InvalidBuffers("buffers smaller than their lengths"));
    }
    let data = match (&b.data, b.dir) {
        (Some(d), DataDirection::ToHost | DataDirection::ToGuest) if data_len > 0 => {
            if d.len() < data_len as usize {
                return Err(ClientError::InvalidBuffers("data buffer smaller than its length"));
            }
            Some((d.gpa(), data_len))
        }
        _ => {
            b.header.data_buffer_length = 0.into();
            b.header.data_buffer_valid = 0.into();
            None
        }
    };
    canonical_offsets(&mut b.header, b.dir);
    b.request.write_at(0, b.header.as_bytes())?;
    let (req, resp) = (b.request.gpa(), b.response.gpa());
    push(req, REQUEST_SIZE as u32 + req_len, false)?;
    if let (Some((gpa, len)), DataDirection::ToHost) = (data, b.dir) {
        push(gpa, len, false)?;
    }
    push(resp, resp_len, true)?;
    if let (Some((gpa, len)), DataDirection::ToGuest) = (data, b.dir) {
        push(gpa, len, true)?;
    }
    push(GuestAddress(resp.0 + u64::from(resp_len)), RESPONSE_SIZE as u32, true)
}

/// Posts `chain` for the registered request `id` on one queue, waiting (in slices, woken by
/// `space`) while the ring is full; `kick` notifies the device when the ring says so. On any
/// failure the request is withdrawn from `table`, so its buffers go back to the caller's pool:
/// `Rescinded` once the request is no longer pending (a rescind and maybe a reconnect freed
/// it), the deadline's error when the ring stayed full past it, or the queue's error.
pub(crate) fn post_chain(
    table: &RequestTable<OpBuffers, Completion>,
    id: u64,
    deadline: Option<SubmitDeadline>,
    state: &Mutex<QueueState>,
    space: &Condvar,
    chain: &[(GuestAddress, u32, bool)],
    kick: impl Fn(),
) -> Result<(), ClientError> {
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    let failed = loop {
        // This request, not a global flag: a rescind and a reconnect may both have happened
        // since `register`, freeing its buffers (the reconnect resets the ring under this lock,
        // after the rescind, so holding it we see that rescind).
        if table.rescinded_since(id) {
            break ClientError::Rescinded;
        }
        match st.ring.add_chain(chain) {
            Ok(head) => {
                st.heads.insert(head, id);
                let needs_kick = st.ring.needs_kick();
                // The kick is a syscall: not under the lock the reaper pops with.
                drop(st);
                if needs_kick {
                    kick();
                }
                return Ok(());
            }
            Err(QueueError::Full { .. }) => {
                if let Some(d) = deadline.filter(|d| d.passed()) {
                    break d.error();
                }
                // Counted under the lock the reaper frees descriptors under: either it freed
                // them before `add_chain` above or it sees this waiter.
                st.space_waiters += 1;
                st = space.wait_timeout(st, Duration::from_millis(50)).unwrap_or_else(PoisonError::into_inner).0;
                st.space_waiters -= 1;
            }
            Err(e) => break e.into(),
        }
    };
    drop(st);
    table.withdraw(id);
    Err(failed)
}

/// Turns a used entry into the caller's completion: the device wrote at least the status, and
/// the status it wrote fits the request.
pub(crate) fn finish(b: OpBuffers, used_len: u32) -> Result<Completion, ClientError> {
    if (used_len as usize) < RESPONSE_SIZE {
        return Err(ProtocolError::UsedLength(used_len).into());
    }
    let mut raw = [0u8; RESPONSE_SIZE];
    let at = b.header.response_buffer_length.get() as usize;
    b.response.read_at(at, &mut raw)?;
    let response = VspResponse::parse(&raw)?;
    check_response(&response, &b)?;
    Ok(Completion { response, buffers: b })
}
