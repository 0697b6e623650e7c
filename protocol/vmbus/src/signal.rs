//! How one end of a channel wakes the other. The host emulator and the uio guest signal
//! differently (an eventfd, `write(fd, 1)` on `/dev/uioN` plus the int_page bit); the rings
//! only say *when* to signal.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Wakes the peer of a channel. One signal covers both rings: the woken side re-examines both.
pub trait Signal: Send + Sync {
    fn signal(&self);
}

impl<T: Signal + ?Sized> Signal for Arc<T> {
    fn signal(&self) {
        (**self).signal()
    }
}

impl<T: Signal + ?Sized> Signal for &T {
    fn signal(&self) {
        (**self).signal()
    }
}

/// A signal that increments an eventfd, for a peer polling the fd.
#[derive(Debug)]
pub struct EventFdSignal {
    fd: EventFd,
}

impl EventFdSignal {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(EventFdSignal { fd: EventFd::new(EFD_NONBLOCK)? })
    }

    /// Signals through an existing eventfd (e.g. one registered with a KVM irqfd).
    pub fn from_event_fd(fd: EventFd) -> Self {
        EventFdSignal { fd }
    }

    /// The fd to poll.
    pub fn event_fd(&self) -> &EventFd {
        &self.fd
    }

    /// Consumes the pending signals: their count, or `WouldBlock` if there are none.
    pub fn take(&self) -> io::Result<u64> {
        self.fd.read()
    }
}

impl Signal for EventFdSignal {
    fn signal(&self) {
        if let Err(e) = self.fd.write(1) {
            log::warn!("vmbus: signalling the peer's eventfd failed: {e}");
        }
    }
}

/// A signal that counts, and lets a thread sleep until the count moves. For tests.
#[derive(Debug, Default)]
pub struct CountingSignal {
    count: Mutex<u64>,
    changed: Condvar,
    total: AtomicU64,
}

impl CountingSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Signals so far.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Sleeps until the count differs from `seen` and returns it, or `None` after `timeout`.
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        while *count == seen {
            let left = deadline.checked_duration_since(Instant::now())?;
            count = self.changed.wait_timeout(count, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        Some(*count)
    }
}

impl Signal for CountingSignal {
    fn signal(&self) {
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count += 1;
        self.total.store(*count, Ordering::SeqCst);
        self.changed.notify_all();
    }
}
