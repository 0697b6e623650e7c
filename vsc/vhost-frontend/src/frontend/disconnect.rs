//! Backend hang-up detection.
//!
//! Cloud Hypervisor registers the vhost-user socket in its device epoll loop with `EPOLLHUP`
//! (`HUP_CONNECTION_EVENT` in `vhost_user/mod.rs`) and reconnects when it fires. Here a small
//! thread waits on a duplicate of the socket for `EPOLLRDHUP`/`EPOLLHUP` and raises a
//! [`DisconnectHandle`] that the guest client polls (its eventfd, next to the call fds) or waits
//! on, so it can fail in-flight requests instead of waiting for completions that never come.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

struct Shared {
    disconnected: Mutex<bool>,
    changed: Condvar,
    event: EventFd,
}

/// The connection state of one [`VhostUserDevice`](super::VhostUserDevice), shareable with the
/// guest client's threads. It stays the same object across reconnects.
#[derive(Clone)]
pub struct DisconnectHandle {
    shared: Arc<Shared>,
}

impl DisconnectHandle {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(DisconnectHandle {
            shared: Arc::new(Shared {
                disconnected: Mutex::new(false),
                changed: Condvar::new(),
                event: EventFd::new(EFD_NONBLOCK)?,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, bool> {
        // The flag is a plain bool: a panic elsewhere cannot leave it half-written.
        self.shared.disconnected.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True from the moment the backend's hang-up is seen until a successful reconnect.
    pub fn is_disconnected(&self) -> bool {
        *self.state()
    }

    /// Blocks until the backend hangs up or `timeout` passes; returns whether it hung up.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut down = self.state();
        while !*down {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            down = self.shared.changed.wait_timeout(down, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }

    /// Blocks until the backend hangs up.
    pub fn wait(&self) {
        let mut down = self.state();
        while !*down {
            down = self.shared.changed.wait(down).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A non-blocking eventfd that becomes readable when the backend hangs up, for the client's
    /// epoll set next to the call fds. It is written once per hang-up and drained on reconnect;
    /// treat readability as a hint and check [`is_disconnected`](Self::is_disconnected).
    pub fn event_fd(&self) -> &EventFd {
        &self.shared.event
    }

    pub(crate) fn raise(&self) {
        let mut down = self.state();
        if !*down {
            *down = true;
            if let Err(e) = self.shared.event.write(1) {
                // Only fails if the counter would overflow; waiters still see the flag.
                error!("signalling vhost-user hang-up eventfd: {e}");
            }
            self.shared.changed.notify_all();
        }
    }

    pub(crate) fn clear(&self) {
        let mut down = self.state();
        *down = false;
        // Drain; EAGAIN just means nobody wrote since the last drain.
        let _ = self.shared.event.read();
    }
}

/// The watcher thread for one connection. Dropping it stops and joins the thread.
pub(crate) struct DisconnectWatch {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

const TOKEN_SOCKET: u64 = 0;
const TOKEN_STOP: u64 = 1;

impl DisconnectWatch {
    /// Starts watching `socket` (a duplicate is taken; the caller keeps its own) and raises
    /// `handle` on hang-up.
    pub(crate) fn spawn(socket: &UnixStream, handle: DisconnectHandle) -> io::Result<Self> {
        let socket = socket.try_clone()?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        // Only hang-up conditions: replies on the socket are for the frontend to read, so
        // EPOLLIN must not wake us. EPOLLHUP and EPOLLERR are always reported.
        epoll.ctl(
            ControlOperation::Add,
            socket.as_raw_fd(),
            EpollEvent::new(EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR, TOKEN_SOCKET),
        )?;
        epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_STOP))?;
        let thread = thread::Builder::new().name("vmblob-vu-hup".into()).spawn(move || watch(epoll, socket, handle))?;
        Ok(DisconnectWatch { stop, thread: Some(thread) })
    }
}

fn watch(epoll: Epoll, socket: UnixStream, handle: DisconnectHandle) {
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Cannot watch any more; say so rather than leave the client waiting forever.
                error!("vhost-user hang-up watcher: epoll_wait failed: {e}");
                handle.raise();
                return;
            }
        };
        let events = events.get(..n).unwrap_or_default();
        if events.iter().any(|e| e.data() == TOKEN_STOP) {
            return;
        }
        if events.iter().any(|e| e.data() == TOKEN_SOCKET) {
            debug!("vhost-user backend hung up (socket fd {})", socket.as_raw_fd());
            handle.raise();
            return;
        }
    }
}

impl Drop for DisconnectWatch {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            error!("stopping the vhost-user hang-up watcher: {e}");
            return; // Joining would hang; let the thread go.
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("vhost-user hang-up watcher panicked");
        }
    }
}
