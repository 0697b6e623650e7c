//! One connection to the backend: connecting with retries, the feature handshake, the memory
//! table and arming the rings. Free functions over a `vhost::vhost_user::Frontend`; the device
//! type in `mod.rs` holds the state.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::QueueConfig;
use super::features::{Negotiated, REQUIRED_VIRTIO_FEATURES, offered_protocol_features, offered_virtio_features};
use crate::error::io_error_is_connection_lost;
use crate::{Error, GuestRam, Result, Step};

/// A live connection: the frontend and our own handle on its socket (for the hang-up watcher and
/// for shutting the connection down).
pub(crate) struct Link {
    pub(crate) frontend: Frontend,
    pub(crate) socket: UnixStream,
}

/// Wraps a failed request's error with the step that failed.
pub(crate) fn failed(step: Step) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Vhost { step, source }
}

/// Connects to `path` and runs `init` on the new link, retrying both until `timeout` passes —
/// CH's `connect_vhost_user` (client mode): a missing socket file, a refused connection, or a
/// backend that hangs up during the handshake are retried every `interval`; any other failure
/// is returned at once.
pub(crate) fn connect_retrying<T>(
    path: &Path,
    max_queues: usize,
    timeout: Duration,
    interval: Duration,
    reply_timeout: Option<Duration>,
    mut init: impl FnMut(&mut Link) -> Result<T>,
) -> Result<(Link, T)> {
    let start = Instant::now();
    loop {
        let err = match UnixStream::connect(path) {
            Ok(stream) => {
                let socket = stream.try_clone().map_err(Error::Watcher)?;
                let mut link = Link { frontend: Frontend::from_stream(stream, max_queues as u64), socket };
                // A stopped backend, or one serving another VMM, must not hang the handshake.
                let watched = link.socket.try_clone().map_err(Error::Watcher)?;
                match super::deadline::bounded(&watched, reply_timeout, Step::SetOwner, || init(&mut link)) {
                    Ok(value) => return Ok((link, value)),
                    Err(e) if e.is_transport_lost() => e,
                    Err(e) => return Err(e),
                }
            }
            Err(e) if retryable_connect_error(&e) => Error::Connect { path: path.to_owned(), source: e },
            Err(e) => return Err(Error::Connect { path: path.to_owned(), source: e }),
        };
        if start.elapsed() >= timeout {
            return Err(Error::Timeout { path: path.to_owned(), timeout, last: Box::new(err) });
        }
        debug!("vhost-user backend at {} not ready ({err}); retrying", path.display());
        thread::sleep(interval.min(timeout.saturating_sub(start.elapsed())));
    }
}

fn retryable_connect_error(e: &io::Error) -> bool {
    // NotFound: the backend has not bound its socket yet. ConnectionRefused: bound but not
    // listening, or a stale socket file of a dead backend.
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted)
        || io_error_is_connection_lost(e)
}

/// The feature handshake, as CH's `negotiate_features_vhost_user` plus the queue-count check of
/// `GenericVhostUser::new`, then `SET_FEATURES` and `SET_MEM_TABLE` (CH sends those two at
/// activation, from `setup_vhost_user`; guest RAM is fixed here, so sending them at connect time
/// is equivalent and lets the device answer config reads before activation).
///
/// With `previous`, this is a reconnect: the backend must still offer everything negotiated
/// before, and exactly that is acked again (CH's `set_protocol_features_vhost_user` replays the
/// old acked sets), because the guest driver already runs with those features.
pub(crate) fn handshake(
    frontend: &mut Frontend,
    ram: &GuestRam,
    num_queues: usize,
    event_idx: bool,
    inflight: bool,
    previous: Option<&Negotiated>,
) -> Result<Negotiated> {
    frontend.set_owner().map_err(failed(Step::SetOwner))?;
    let backend_features = frontend.get_features().map_err(failed(Step::GetFeatures))?;

    let (want_features, required_features) = match previous {
        Some(p) => (p.acked_features, p.acked_features),
        None => (offered_virtio_features(event_idx), REQUIRED_VIRTIO_FEATURES),
    };
    let missing = required_features & !backend_features;
    if missing != 0 {
        return Err(Error::MissingFeatures { missing });
    }
    // Device-specific bits 0..=23 are never in `want_features`, so they are dropped here.
    let acked_features = want_features & backend_features;

    let backend_protocol_features = frontend.get_protocol_features().map_err(failed(Step::GetProtocolFeatures))?;
    let acked_protocol_features = match previous {
        Some(p) => {
            let missing = p.acked_protocol_features - backend_protocol_features;
            if !missing.is_empty() {
                return Err(Error::MissingProtocolFeatures { missing });
            }
            p.acked_protocol_features
        }
        None => offered_protocol_features(inflight) & backend_protocol_features,
    };
    frontend.set_protocol_features(acked_protocol_features).map_err(failed(Step::SetProtocolFeatures))?;
    // CH sets NEED_REPLY right after SET_PROTOCOL_FEATURES when REPLY_ACK was negotiated, so
    // every later request that has no reply of its own is acknowledged (and a refusal surfaces
    // as an error instead of a silently dropped connection).
    if acked_protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }

    // Without MQ, CH (and we) trust that the backend has the requested queues.
    let backend_queues = if acked_protocol_features.contains(VhostUserProtocolFeatures::MQ) {
        let available = frontend.get_queue_num().map_err(failed(Step::GetQueueNum))?;
        if (num_queues as u64) > available {
            return Err(Error::NotEnoughQueues { requested: num_queues, available });
        }
        Some(available)
    } else {
        None
    };

    frontend.set_features(acked_features).map_err(failed(Step::SetFeatures))?;
    frontend.set_mem_table(&ram.region_infos()).map_err(failed(Step::SetMemTable))?;

    Ok(Negotiated {
        backend_features,
        acked_features,
        backend_protocol_features,
        acked_protocol_features,
        backend_queues,
    })
}

/// Checks queue configs against the device before anything is sent.
pub(crate) fn validate_queues(queues: &[QueueConfig], num_queues: usize, ram: &GuestRam) -> Result<()> {
    let mut seen = vec![false; num_queues];
    for q in queues {
        let slot = seen.get_mut(q.index).ok_or(Error::InvalidQueueIndex { index: q.index, num_queues })?;
        if std::mem::replace(slot, true) {
            return Err(Error::DuplicateQueue(q.index));
        }
        if !q.size.is_power_of_two() {
            return Err(Error::InvalidQueueSize { index: q.index, size: q.size });
        }
        ring_host_addresses(q, ram)?;
    }
    Ok(())
}

/// Frontend VAs of the three rings, each checked to lie inside guest RAM (CH's
/// `get_host_address_range`). Sizes include the event-index words, which exist whether or not
/// EVENT_IDX is used.
fn ring_host_addresses(q: &QueueConfig, ram: &GuestRam) -> Result<(u64, u64, u64)> {
    let n = u64::from(q.size);
    let locate = |ring: &'static str, gpa: GuestAddress, len: u64| {
        ram.host_address_range(gpa, len).ok_or(Error::RingOutsideRam { index: q.index, ring, gpa: gpa.raw_value() })
    };
    Ok((
        locate("descriptor table", q.desc, 16 * n)?,
        locate("avail ring", q.avail, 6 + 2 * n)?,
        locate("used ring", q.used, 6 + 8 * n)?,
    ))
}

/// Arms the rings in CH's `setup_vhost_user` order: `SET_VRING_NUM` for every queue first (some
/// backends size themselves from it), then per queue `SET_VRING_ADDR`, `SET_VRING_BASE`,
/// `SET_VRING_CALL`, `SET_VRING_KICK`, and finally `SET_VRING_ENABLE(1)` for all.
pub(crate) fn arm_rings(
    frontend: &mut Frontend,
    ram: &GuestRam,
    queues: &[QueueConfig],
    kicks: &[Arc<EventFd>],
    calls: &[Arc<EventFd>],
) -> Result<()> {
    for q in queues {
        frontend.set_vring_num(q.index, q.size).map_err(failed(Step::SetVringNum(q.index)))?;
    }
    for q in queues {
        let (desc, avail, used) = ring_host_addresses(q, ram)?;
        let config = VringConfigData {
            queue_max_size: q.size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: desc,
            used_ring_addr: used,
            avail_ring_addr: avail,
            log_addr: None,
        };
        frontend.set_vring_addr(q.index, &config).map_err(failed(Step::SetVringAddr(q.index)))?;
        frontend.set_vring_base(q.index, q.base).map_err(failed(Step::SetVringBase(q.index)))?;
        let (call, kick) = fds_for(q.index, kicks, calls)?;
        frontend.set_vring_call(q.index, call).map_err(failed(Step::SetVringCall(q.index)))?;
        frontend.set_vring_kick(q.index, kick).map_err(failed(Step::SetVringKick(q.index)))?;
    }
    for q in queues {
        frontend.set_vring_enable(q.index, true).map_err(failed(Step::SetVringEnable(q.index)))?;
    }
    Ok(())
}

fn fds_for<'a>(
    index: usize,
    kicks: &'a [Arc<EventFd>],
    calls: &'a [Arc<EventFd>],
) -> Result<(&'a EventFd, &'a EventFd)> {
    let out_of_range = || Error::InvalidQueueIndex { index, num_queues: kicks.len().min(calls.len()) };
    Ok((calls.get(index).ok_or_else(out_of_range)?, kicks.get(index).ok_or_else(out_of_range)?))
}

/// After a reconnect, kicks every queue whose avail index is ahead of the base the backend was
/// given, as CH's `reinitialize_vhost_user` does for the rings it rewinds: the new backend then
/// looks at the ring even if it ignores buffers posted before it was enabled.
pub(crate) fn kick_pending(ram: &GuestRam, queues: &[QueueConfig], kicks: &[Arc<EventFd>]) -> Result<()> {
    for q in queues {
        let avail_idx = ram
            .memory()
            .load::<u16>(q.avail.unchecked_add(2), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|source| Error::AvailIndex { index: q.index, source })?;
        if avail_idx != q.base {
            let kick =
                kicks.get(q.index).ok_or(Error::InvalidQueueIndex { index: q.index, num_queues: kicks.len() })?;
            if let Err(source) = kick.write(1) {
                warn!("kicking queue {} after reconnect failed: {source}", q.index);
                return Err(Error::Kick { index: q.index, source });
            }
        }
    }
    Ok(())
}

/// CH's `reset_vhost_user`: per queue `SET_VRING_ENABLE(0)` then `GET_VRING_BASE`, which stops
/// the ring and answers the backend's next avail index.
pub(crate) fn stop_rings(frontend: &mut Frontend, queues: &[usize]) -> Result<Vec<u16>> {
    let mut bases = Vec::with_capacity(queues.len());
    for &index in queues {
        frontend.set_vring_enable(index, false).map_err(failed(Step::SetVringEnable(index)))?;
        let base = frontend.get_vring_base(index).map_err(failed(Step::GetVringBase(index)))?;
        // The reply is a u32 from the backend; a ring index is 16 bits.
        bases.push(u16::try_from(base).map_err(|_| Error::InvalidVringBase { index, base })?);
    }
    Ok(bases)
}
