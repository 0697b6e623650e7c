//! An interrupt line: an eventfd one side rings and the other sleeps on (a KVM irqfd towards the
//! guest, the hypercall signal towards the host).

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::Signal;

/// One direction's interrupt. Clones share the eventfd: any clone rings, any clone waits.
#[derive(Clone)]
pub struct Doorbell {
    inner: Arc<Inner>,
}

struct Inner {
    fd: EventFd,
    epoll: Epoll,
}

impl fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doorbell").field("fd", &self.inner.fd.as_raw_fd()).finish()
    }
}

impl Doorbell {
    /// A fresh, unrung doorbell.
    pub fn new() -> io::Result<Self> {
        let fd = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), EpollEvent::new(EventSet::IN, 0))?;
        Ok(Doorbell { inner: Arc::new(Inner { fd, epoll }) })
    }

    /// Rings it. Never blocks; rings coalesce until the waiter takes them.
    pub fn ring(&self) {
        if let Err(e) = self.inner.fd.write(1) {
            log::warn!("vmbus: ringing a doorbell failed: {e}");
        }
    }

    /// The eventfd, for a caller that polls it itself.
    pub fn event_fd(&self) -> &EventFd {
        &self.inner.fd
    }

    /// Takes the rings so far without sleeping: their count, 0 if none.
    pub fn take(&self) -> io::Result<u64> {
        match self.inner.fd.read() {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Sleeps until rung or `timeout` (`None`: forever) passes, then takes the rings: their
    /// count, 0 on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<u64> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut events = [EpollEvent::default(); 1];
        loop {
            let rings = self.take()?;
            if rings > 0 {
                return Ok(rings);
            }
            let ms = match (timeout, deadline) {
                (None, _) | (Some(_), None) => -1,
                (Some(_), Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(0);
                    }
                    i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
                }
            };
            match self.inner.epoll.wait(ms, &mut events) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Signal for Doorbell {
    fn signal(&self) {
        self.ring()
    }
}
