//! The daemon loop: one VMM connection at a time on one listening socket, a
//! fresh backend per connection, completion of in-flight requests before the
//! guest memory is released, and a clean exit on SIGTERM/SIGINT.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::{BlobBackend, QueueOptions};
use super::inflight::InflightSlot;
use crate::engine::Engine;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {path}: {source}")]
    Listen { path: String, source: std::io::Error },
    #[error("socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("cannot start the executor pool: {0}")]
    Executor(std::io::Error),
    #[error("cannot create the vhost-user daemon: {0}")]
    CreateDaemon(vhost_user_backend::Error),
    #[error("cannot accept a connection: {0}")]
    Accept(vhost::vhost_user::Error),
    #[error("vhost-user tap: {0}")]
    Tap(#[from] super::wire::TapError),
    #[error("event loop: {0}")]
    Poll(#[from] std::io::Error),
}

/// Asks the daemon to stop: wakes the accept wait and breaks the current
/// connection. Clone it into a signal handler thread.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

struct ShutdownInner {
    requested: AtomicBool,
    wake: EventFd,
    current: Mutex<Option<(ShutdownHandle, Arc<BlobBackend>)>>,
}

impl Shutdown {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(ShutdownInner {
                requested: AtomicBool::new(false),
                wake: EventFd::new(EFD_NONBLOCK)?,
                current: Mutex::new(None),
            }),
        })
    }

    pub fn request(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        let _ = self.inner.wake.write(1);
        let current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((handle, backend)) = current {
            // Answer (or, with an inflight region, finish) accepted requests
            // before the guest sees the hang-up.
            let done = backend.shut_down();
            if done.rescinded > 0 {
                log::info!("shutdown: completed {} in-flight requests", done.rescinded);
            }
            if done.finished > 0 || done.left_in_region > 0 {
                log::info!(
                    "shutdown: {} in-flight requests finished, {} left in the inflight region for the next VSP",
                    done.finished,
                    done.left_in_region
                );
            }
            handle.shutdown();
        }
    }

    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    fn set_current(&self, h: Option<(ShutdownHandle, Arc<BlobBackend>)>) {
        *self.inner.current.lock().unwrap_or_else(|e| e.into_inner()) = h;
        // A request that raced with connecting still breaks this connection.
        if self.is_requested() {
            self.request();
        }
    }
}

/// Wait until the listener has a pending connection (`true`) or shutdown was
/// requested (`false`).
fn wait_for_connection(listener: &Listener, shutdown: &Shutdown) -> std::io::Result<bool> {
    let epoll = Epoll::new()?;
    epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), EpollEvent::new(EventSet::IN, 1))?;
    epoll.ctl(ControlOperation::Add, shutdown.inner.wake.as_raw_fd(), EpollEvent::new(EventSet::IN, 2))?;
    let mut events = [EpollEvent::default(); 2];
    loop {
        if shutdown.is_requested() {
            return Ok(false);
        }
        match epoll.wait(-1, &mut events) {
            Ok(n) => {
                if events[..n].iter().any(|e| e.data() == 1) && !shutdown.is_requested() {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where the daemon listens, and who may connect.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    pub path: PathBuf,
    /// A group allowed to connect (mode 0660); `None`: the daemon's user only (0600).
    pub group: Option<u32>,
}

/// The socket's path, removed when the daemon stops serving.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Creates the listening socket, owner-only (or for `group`). It is bound and
/// listening under a temporary name, given its mode, and only then renamed to
/// `path`: a VMM (or a test) that sees the path can connect at once. Bound in
/// place, the path existed a moment before `listen(2)`, and a connect in that
/// moment was refused.
fn listen(socket: &SocketOptions) -> Result<(Listener, SocketFile), DaemonError> {
    let path = &socket.path;
    let err = |source: std::io::Error| DaemonError::Socket { path: path.display().to_string(), source };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            let what = if m.is_dir() { "a directory" } else { "not a socket" };
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{what}; not replacing it"),
            )));
        }
        _ => {}
    }
    let name = path.file_name().ok_or_else(|| err(std::io::Error::other("no file name")))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".binding-{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let _ = std::fs::remove_file(&temp);
    let bound = std::os::unix::net::UnixListener::bind(&temp)
        .map_err(|source| DaemonError::Listen { path: path.display().to_string(), source })?;
    let placed = (|| {
        let mode = if socket.group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = socket.group {
            std::os::unix::fs::chown(&temp, None, Some(gid))?;
        }
        // Replaces a stale socket of an earlier daemon (checked above to be a socket).
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(err(e));
    }
    Ok((Listener::from(bound), SocketFile(path.clone())))
}

/// Serve VMM connections on `socket` until shutdown. `max_connections` bounds
/// how many are served (None: forever).
pub fn serve(
    socket: &SocketOptions,
    engine: Arc<Engine>,
    queues: &QueueOptions,
    shutdown: &Shutdown,
    max_connections: Option<usize>,
) -> Result<(), DaemonError> {
    let (listener, _socket_file) = listen(socket)?;
    let mut served = 0usize;
    while max_connections.is_none_or(|m| served < m) && wait_for_connection(&listener, shutdown)? {
        // A connection that went away before the accept is not one.
        let Some(vmm) = listener.accept().map_err(DaemonError::Accept)? else { continue };
        served += 1;
        // The inflight region this connection's frontend sets (SET_INFLIGHT_FD, answered by the tap).
        let inflight = Arc::new(InflightSlot::default());
        let backend =
            Arc::new(BlobBackend::new(engine.clone(), queues, inflight.clone()).map_err(DaemonError::Executor)?);
        let mut daemon =
            VhostUserDaemon::new("vmblob-vsp".into(), backend.clone(), GuestMemoryAtomic::new(GuestMemoryMmap::new()))
                .map_err(DaemonError::CreateDaemon)?;
        // Every message passes the tap (trace log, ring-address guard) on its way to the backend.
        let queue_count = u16::try_from(queues.queues).unwrap_or(u16::MAX);
        let tap = super::wire::splice(vmm, inflight, queue_count, |private| daemon.start(private))?;
        log::info!("VMM connected (connection {served})");
        shutdown.set_current(daemon.shutdown_handle().map(|h| (h, backend.clone())));
        let result = daemon.wait();
        shutdown.set_current(None);
        match result {
            Ok(()) => log::info!("VMM disconnected"),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => log::info!("VMM disconnected"),
            Err(e) => log::warn!("connection ended: {e}"),
        }
        // The frontend is gone but the guest memory is still mapped: finish
        // every accepted request (rescinded unless committed) first.
        let n = backend.close();
        if n > 0 {
            log::info!("completed {n} in-flight requests after disconnect");
        }
        // Dropping the daemon signals the workers' exit events and joins them.
        drop(tap);
        drop(daemon);
    }
    Ok(())
}
