//! A vhost-user frontend that plays Cloud Hypervisor's `--generic-vhost-user` device, so tests
//! and tools can drive a real vhost-user backend daemon without a VM.
//!
//! The guest side (a split-ring driver in this process) owns the rings in [`GuestRam`] and uses
//! the device's kick and call eventfds; [`VhostUserDevice`] does what the VMM does over the
//! socket: the handshake, config reads, arming and stopping rings, hang-up detection and
//! reconnection.
//!
//! Modules: `features` (what is offered and what was negotiated), `session` (the messages of
//! one connection), `disconnect` (hang-up watcher).

mod config;
mod deadline;
mod disconnect;
mod features;
mod session;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::info;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserInflight};
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use self::disconnect::DisconnectHandle;
use self::disconnect::DisconnectWatch;
pub use self::features::{
    DEVICE_SPECIFIC_FEATURES, Negotiated, OFFERED_PROTOCOL_FEATURES, REQUIRED_VIRTIO_FEATURES,
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, offered_protocol_features, offered_virtio_features,
};
use self::session::Link;
use crate::{Error, GuestRam, Result, Step};

/// Most queues a device may have: `SET_VRING_CALL`/`SET_VRING_KICK` carry the index in bits 0..=7.
pub const MAX_QUEUES: usize = 256;

/// Knobs of the frontend. `Default` mirrors Cloud Hypervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendOptions {
    /// How long [`VhostUserDevice::connect`] keeps retrying a missing or refusing socket (and a
    /// backend that hangs up mid-handshake). CH: 60 s.
    pub connect_timeout: Duration,
    /// The same bound for [`VhostUserDevice::reconnect`]. CH: `CONNECT_TIMEOUT`, 60 s.
    pub reconnect_timeout: Duration,
    /// Pause between attempts. CH: `RETRY_INTERVAL`, 100 ms.
    pub retry_interval: Duration,
    /// How long any one request waits for the backend's reply (`None`: forever, as CH).
    /// A backend that is stopped, or busy with another VMM (vmblob-vsp serves one connection
    /// at a time), then fails the request with [`Error::NoAnswer`] instead of hanging it.
    pub reply_timeout: Option<Duration>,
    /// Offer `VIRTIO_RING_F_EVENT_IDX` (CH always does). The guest driver must then maintain
    /// `used_event` and honour `avail_event` whenever [`Negotiated::event_idx`] says it was acked.
    pub event_idx: bool,
    /// Offer `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD` (CH and QEMU's vhost-user-blk do): when the
    /// backend acks it, [`VhostUserDevice::activate`] gets the backend's inflight region and
    /// every reconnect hands the same region to the new backend, which then completes the
    /// requests the old one had taken ([`VhostUserDevice::has_inflight`]).
    pub inflight: bool,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            connect_timeout: Duration::from_secs(60),
            reconnect_timeout: Duration::from_secs(60),
            retry_interval: Duration::from_millis(100),
            reply_timeout: Some(Duration::from_secs(30)),
            event_idx: true,
            inflight: true,
        }
    }
}

/// Where one split virtqueue lives in guest RAM, and where the backend resumes in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue index, below the device's queue count.
    pub index: usize,
    /// Ring size: a non-zero power of two, at most the backend's maximum.
    pub size: u16,
    /// Guest address of the descriptor table (16-byte aligned).
    pub desc: GuestAddress,
    /// Guest address of the avail ring (2-byte aligned).
    pub avail: GuestAddress,
    /// Guest address of the used ring (4-byte aligned).
    pub used: GuestAddress,
    /// The avail index the backend starts from (`SET_VRING_BASE`): 0 for a fresh ring, the
    /// driver's avail idx after a reconnect.
    pub base: u16,
}

/// One vhost-user device: the connection to a backend plus the per-queue kick and call eventfds.
///
/// Lifecycle, as CH's generic vhost-user device: [`connect`](Self::connect) (handshake),
/// [`get_config`](Self::get_config) any time, [`activate`](Self::activate) (arm rings),
/// [`stop`](Self::stop) (reset), and on a backend hang-up [`reconnect`](Self::reconnect).
pub struct VhostUserDevice {
    // Declared first so it is dropped (stopped and joined) before the socket closes: its
    // duplicate of the socket would otherwise keep the connection open.
    watch: Option<DisconnectWatch>,
    link: Link,
    socket_path: PathBuf,
    ram: GuestRam,
    num_queues: usize,
    opts: FrontendOptions,
    negotiated: Negotiated,
    kicks: Vec<Arc<EventFd>>,
    calls: Vec<Arc<EventFd>>,
    // Queues armed by the last activate/reconnect and not stopped since, in that order.
    active: Vec<usize>,
    hangup: DisconnectHandle,
    /// The backend's inflight region (GET_INFLIGHT_FD at the first activate), kept across
    /// reconnects as QEMU keeps it.
    inflight: Option<(VhostUserInflight, File)>,
}

impl VhostUserDevice {
    /// Connects to the backend at `socket` and negotiates, mirroring CH's
    /// `GenericVhostUser::new`:
    ///
    /// 1. connect, retrying a missing/refusing socket every `retry_interval` for up to
    ///    `connect_timeout` (CH `connect_vhost_user`, client mode);
    /// 2. `SET_OWNER`, `GET_FEATURES`; acked virtio features = backend ∩
    ///    [`offered_virtio_features`], so device-specific bits 0..=23 are dropped as in CH's
    ///    generic device. VERSION_1 and PROTOCOL_FEATURES are required;
    /// 3. `GET_PROTOCOL_FEATURES`, `SET_PROTOCOL_FEATURES`(backend ∩ CONFIG|MQ|REPLY_ACK|
    ///    CONFIGURE_MEM_SLOTS), then the `NEED_REPLY` header flag if REPLY_ACK was acked;
    /// 4. with MQ, `GET_QUEUE_NUM`: fewer queues than `num_queues` is an error (CH's
    ///    `BadQueueNum`);
    /// 5. `SET_FEATURES`, `SET_MEM_TABLE` with `ram`'s memfd.
    ///
    /// A backend that hangs up during the handshake is retried within the same window, as CH
    /// does since its reconnect rework.
    pub fn connect(socket: &Path, ram: &GuestRam, num_queues: usize, opts: FrontendOptions) -> Result<Self> {
        if num_queues == 0 || num_queues > MAX_QUEUES {
            return Err(Error::InvalidQueueCount(num_queues));
        }
        let new_fd = || EventFd::new(EFD_NONBLOCK).map(Arc::new).map_err(Error::EventFd);
        let kicks = (0..num_queues).map(|_| new_fd()).collect::<Result<Vec<_>>>()?;
        let calls = (0..num_queues).map(|_| new_fd()).collect::<Result<Vec<_>>>()?;
        let hangup = DisconnectHandle::new().map_err(Error::EventFd)?;

        let (link, negotiated) = session::connect_retrying(
            socket,
            num_queues,
            opts.connect_timeout,
            opts.retry_interval,
            opts.reply_timeout,
            |link| session::handshake(&mut link.frontend, ram, num_queues, opts.event_idx, opts.inflight, None),
        )?;
        info!(
            "vhost-user backend {} connected: features {:#x}, protocol features {:?}",
            socket.display(),
            negotiated.acked_features,
            negotiated.acked_protocol_features
        );
        let watch = DisconnectWatch::spawn(&link.socket, hangup.clone()).map_err(Error::Watcher)?;
        Ok(VhostUserDevice {
            watch: Some(watch),
            link,
            socket_path: socket.to_owned(),
            ram: ram.clone(),
            num_queues,
            opts,
            negotiated,
            kicks,
            calls,
            active: Vec::new(),
            hangup,
            inflight: None,
        })
    }

    /// What the handshake negotiated (the guest driver needs [`Negotiated::event_idx`]).
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Number of queues the device was created with.
    pub fn num_queues(&self) -> usize {
        self.num_queues
    }

    /// The backend's socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Reads `len` bytes of the device config space at `offset` with `VHOST_USER_GET_CONFIG`,
    /// as CH's generic device's `read_config` does. Unlike CH (which returns 0xff bytes without
    /// the CONFIG feature and panics on failure), both cases are errors here; a read the backend
    /// refuses is [`Error::ConfigRefused`]. The exchange bypasses `Frontend::get_config`, which
    /// hangs on a refusal (see `config.rs`).
    pub fn get_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        self.require_config()?;
        let socket = &self.link.socket;
        deadline::bounded(socket, self.opts.reply_timeout, Step::GetConfig, || config::get_config(socket, offset, len))
    }

    /// Writes the device config space with `VHOST_USER_SET_CONFIG` (flag WRITABLE, as CH's
    /// `write_config`).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.require_config()?;
        let Link { frontend, socket } = &mut self.link;
        deadline::bounded(socket, self.opts.reply_timeout, Step::SetConfig, || {
            frontend.set_config(offset, VhostUserConfigFlags::WRITABLE, data).map_err(session::failed(Step::SetConfig))
        })
    }

    fn require_config(&self) -> Result<()> {
        if self.negotiated.has_protocol_features(VhostUserProtocolFeatures::CONFIG) {
            Ok(())
        } else {
            Err(Error::ConfigUnsupported)
        }
    }

    /// Arms the given queues, as CH's `setup_vhost_user`: `SET_VRING_NUM` for all, then per
    /// queue `SET_VRING_ADDR` (frontend VAs of the rings in guest RAM), `SET_VRING_BASE`(base),
    /// `SET_VRING_CALL`, `SET_VRING_KICK`, then `SET_VRING_ENABLE(1)` for all.
    ///
    /// Queues already armed are re-armed; [`stop`](Self::stop) stops exactly the queues of the
    /// last `activate`/`reconnect`.
    pub fn activate(&mut self, queues: &[QueueConfig]) -> Result<()> {
        session::validate_queues(queues, self.num_queues, &self.ram)?;
        self.share_inflight(queues)?;
        let Link { frontend, socket } = &mut self.link;
        deadline::bounded(socket, self.opts.reply_timeout, Step::SetVringNum(0), || {
            session::arm_rings(frontend, &self.ram, queues, &self.kicks, &self.calls)
        })?;
        self.active = queues.iter().map(|q| q.index).collect();
        Ok(())
    }

    /// With INFLIGHT_SHMFD acked: the first time, GET_INFLIGHT_FD for every queue at the largest
    /// ring size (QEMU's vhost-user-blk asks once, before its first vring set-up), then
    /// SET_INFLIGHT_FD so the backend uses the region.
    fn share_inflight(&mut self, queues: &[QueueConfig]) -> Result<()> {
        if !self.negotiated.has_protocol_features(VhostUserProtocolFeatures::INFLIGHT_SHMFD) {
            return Ok(());
        }
        let Link { frontend, socket } = &mut self.link;
        if self.inflight.is_none() {
            let want = VhostUserInflight {
                mmap_size: 0,
                mmap_offset: 0,
                num_queues: self.num_queues as u16,
                queue_size: queues.iter().map(|q| q.size).max().unwrap_or(0),
            };
            let got = deadline::bounded(socket, self.opts.reply_timeout, Step::GetInflightFd, || {
                frontend.get_inflight_fd(&want).map_err(session::failed(Step::GetInflightFd))
            })?;
            self.inflight = Some(got);
        }
        let Some((info, file)) = &self.inflight else { return Ok(()) };
        deadline::bounded(socket, self.opts.reply_timeout, Step::SetInflightFd, || {
            frontend.set_inflight_fd(info, file.as_raw_fd()).map_err(session::failed(Step::SetInflightFd))
        })
    }

    /// Whether the backend keeps an inflight region this device holds: a backend that crashes
    /// and comes back then completes the requests the old one had taken, so the guest driver
    /// must keep them pending (and its rings as they are) across the reconnect.
    pub fn has_inflight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Stops the armed queues, as CH's `reset_vhost_user`: per queue `SET_VRING_ENABLE(0)` then
    /// `GET_VRING_BASE`. Returns the backend's next avail index per queue, in the order the
    /// queues were passed to the last `activate`/`reconnect`.
    ///
    /// The backend drops its kick and call fds for a stopped ring; [`activate`](Self::activate)
    /// hands them over again.
    pub fn stop(&mut self) -> Result<Vec<u16>> {
        let Link { frontend, socket } = &mut self.link;
        let bases = deadline::bounded(socket, self.opts.reply_timeout, Step::GetVringBase(0), || {
            session::stop_rings(frontend, &self.active)
        })?;
        self.active.clear();
        Ok(bases)
    }

    /// The eventfd the guest driver writes to notify the backend of new buffers in `queue`
    /// (CH: the queue's ioeventfd). Stable across reconnects.
    pub fn kick_fd(&self, queue: usize) -> Option<Arc<EventFd>> {
        self.kicks.get(queue).cloned()
    }

    /// The eventfd the backend writes when it has used buffers of `queue` (CH: the queue's
    /// irqfd). Non-blocking; stable across reconnects.
    pub fn call_fd(&self, queue: usize) -> Option<Arc<EventFd>> {
        self.calls.get(queue).cloned()
    }

    /// The hang-up state, shareable with the guest client's threads; the same handle across
    /// reconnects.
    pub fn disconnect_handle(&self) -> DisconnectHandle {
        self.hangup.clone()
    }

    /// True once the backend hung up, until a successful [`reconnect`](Self::reconnect).
    pub fn is_disconnected(&self) -> bool {
        self.hangup.is_disconnected()
    }

    /// Reconnects after a backend hang-up, as CH's `VhostUserEpollHandler::reconnect` does on
    /// `EPOLLHUP`: drop the old connection, connect to the same socket path (retrying for up to
    /// `reconnect_timeout`, CH 60 s), redo the handshake re-acking the features negotiated
    /// before, resend the memory table, then re-arm `queues` with the same kick and call
    /// eventfds at the given bases, and kick any queue whose avail index is ahead of its base.
    /// A transport failure anywhere in that sequence restarts it, as in CH.
    ///
    /// The caller passes each queue's current avail index as `base`, so requests the guest
    /// client already failed when it saw the hang-up are not replayed. CH does the same when
    /// neither INFLIGHT_SHMFD nor IN_ORDER is negotiated (it then resumes at the avail index);
    /// with IN_ORDER and no inflight fd it would instead rewind each base to the used index and
    /// let the new backend replay everything not yet completed. This frontend offers neither.
    ///
    /// May also be called while connected, which forces a new connection. On failure the
    /// device stays disconnected and `reconnect` may be called again.
    pub fn reconnect(&mut self, queues: &[QueueConfig]) -> Result<()> {
        self.reconnect_with(queues, &mut || {})
    }

    /// As [`reconnect`](Self::reconnect), running `before_arm` after the new backend has
    /// answered the handshake and before any ring is armed. A daemon that serves one connection
    /// at a time has by then finished the old one, so the driver can take the old backend's late
    /// completions and reset its rings to its own view (a backend reloads the used index from the
    /// ring) without racing either backend.
    pub fn reconnect_with(&mut self, queues: &[QueueConfig], before_arm: &mut dyn FnMut()) -> Result<()> {
        session::validate_queues(queues, self.num_queues, &self.ram)?;
        self.reconnect_then(&mut || {
            before_arm();
            queues.to_vec()
        })
    }

    /// As [`reconnect_with`](Self::reconnect_with), with the queues (and so their bases) taken
    /// from `before_arm` once the old backend is done: a driver keeping its requests across the
    /// reconnect ([`has_inflight`](Self::has_inflight)) restarts each ring at its used index,
    /// as QEMU does, which only then is final. The inflight region, if any, is handed to the new
    /// backend (SET_INFLIGHT_FD) before any ring is armed.
    pub fn reconnect_then(&mut self, before_arm: &mut dyn FnMut() -> Vec<QueueConfig>) -> Result<()> {
        // Stop watching before closing, so the hang-up we cause is not reported twice.
        self.watch = None;
        // shutdown() acts on the connection, not just this fd: the old backend sees a hang-up
        // even though the frontend still holds its own descriptor until it is replaced.
        let _ = self.link.socket.shutdown(std::net::Shutdown::Both);
        self.hangup.raise();
        self.active.clear();

        let previous = self.negotiated;
        let (ram, kicks, calls, num_queues) = (&self.ram, &self.kicks, &self.calls, self.num_queues);
        let inflight = &self.inflight;
        let mut armed = Vec::new();
        let (link, negotiated) = session::connect_retrying(
            &self.socket_path,
            num_queues,
            self.opts.reconnect_timeout,
            self.opts.retry_interval,
            self.opts.reply_timeout,
            |link| {
                // `event_idx` is ignored with `previous`: the old acked set is replayed.
                let negotiated =
                    session::handshake(&mut link.frontend, ram, num_queues, false, false, Some(&previous))?;
                if let Some((info, file)) = inflight {
                    link.frontend
                        .set_inflight_fd(info, file.as_raw_fd())
                        .map_err(session::failed(Step::SetInflightFd))?;
                }
                let queues = before_arm();
                session::validate_queues(&queues, num_queues, ram)?;
                session::arm_rings(&mut link.frontend, ram, &queues, kicks, calls)?;
                armed = queues;
                Ok(negotiated)
            },
        )?;

        self.link = link;
        self.negotiated = negotiated;
        self.active = armed.iter().map(|q| q.index).collect();
        // Clear before watching, so a hang-up of the new backend cannot be wiped out.
        self.hangup.clear();
        match DisconnectWatch::spawn(&self.link.socket, self.hangup.clone()) {
            Ok(watch) => self.watch = Some(watch),
            Err(e) => {
                // Unwatched, the client could wait forever on a dead backend: report down.
                self.hangup.raise();
                return Err(Error::Watcher(e));
            }
        }
        session::kick_pending(&self.ram, &armed, &self.kicks)?;
        info!("vhost-user backend {} reconnected", self.socket_path.display());
        Ok(())
    }
}
