//! The per-container gate between blob writes and a container delete.
//!
//! Writes pass the gate shared; `DeleteContainer` (and `CreateContainer`, and
//! the janitor's removal of a dead container's leftovers) close it. Both
//! waits stop when the request is cancelled: a write holding the gate can be
//! a multipart upload minutes long, and a delete holding it is a listing and
//! removal of a whole container, so an uncancellable wait on either side
//! would hold a rescind past its drain bound. A waiting close keeps new
//! writes out, so a stream of writes cannot starve a delete.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::engine::CancelToken;
use crate::store::StoreError;

/// How often a waiter looks at its cancel token.
const RECHECK: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct State {
    writers: usize,
    closed: bool,
    closers_waiting: usize,
}

#[derive(Debug, Default)]
pub(super) struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

/// A write's pass; the gate stays open for others.
pub(super) struct Pass<'a>(&'a Gate);

/// The gate held closed: no write is inside, none can enter.
pub(super) struct Closed<'a>(&'a Gate);

impl Gate {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `ready` holds, giving up with `Cancelled` once `cancel` is.
    fn wait_until<'a>(
        &'a self,
        mut s: MutexGuard<'a, State>,
        cancel: Option<&CancelToken>,
        ready: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'a, State>, StoreError> {
        while !ready(&s) {
            if cancel.is_some_and(|c| c.is_cancelled()) {
                return Err(StoreError::Cancelled);
            }
            s = self.changed.wait_timeout(s, RECHECK).unwrap_or_else(PoisonError::into_inner).0;
        }
        Ok(s)
    }

    /// Enters as a write: waits while the gate is closed or a close waits.
    pub fn pass(&self, cancel: Option<&CancelToken>) -> Result<Pass<'_>, StoreError> {
        let mut s = self.wait_until(self.state(), cancel, |s| !s.closed && s.closers_waiting == 0)?;
        s.writers += 1;
        Ok(Pass(self))
    }

    /// Closes the gate once every write inside has left.
    pub fn close(&self, cancel: Option<&CancelToken>) -> Result<Closed<'_>, StoreError> {
        let mut s = self.state();
        s.closers_waiting += 1;
        let waited = self.wait_until(s, cancel, |s| !s.closed && s.writers == 0);
        let mut s = match waited {
            Ok(s) => s,
            Err(e) => {
                let mut s = self.state();
                s.closers_waiting -= 1;
                drop(s);
                // Writes held back by this close may go on.
                self.changed.notify_all();
                return Err(e);
            }
        };
        s.closers_waiting -= 1;
        s.closed = true;
        Ok(Closed(self))
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.state().writers -= 1;
        self.0.changed.notify_all();
    }
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.state().closed = false;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::engine::CancelReason;

    /// Waits (bounded) for `h` to finish; a wait that ignores its cancel fails here, not hangs.
    fn finished_soon<T>(h: &std::thread::ScopedJoinHandle<'_, T>) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        h.is_finished()
    }

    #[test]
    fn a_close_waits_for_writes_and_gives_up_when_cancelled() {
        let gate = Gate::default();
        let token = CancelToken::new(None);
        std::thread::scope(|s| {
            let write = gate.pass(None).unwrap();
            let closer = s.spawn(|| gate.close(Some(&token)).map(|_| ()));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!closer.is_finished(), "a close waits while a write is inside");
            token.cancel(CancelReason::Rescinded);
            let done = finished_soon(&closer);
            drop(write);
            assert!(done, "the close ignored its cancel");
            assert!(matches!(closer.join().unwrap(), Err(StoreError::Cancelled)));
        });
        // The cancelled close left nothing behind: writes pass, a close succeeds.
        drop(gate.pass(None).unwrap());
        drop(gate.close(None).unwrap());
    }

    #[test]
    fn a_write_waits_for_a_close_and_gives_up_when_cancelled() {
        let gate = Gate::default();
        let token = CancelToken::new(None);
        std::thread::scope(|s| {
            let closed = gate.close(None).unwrap();
            let writer = s.spawn(|| gate.pass(Some(&token)).map(|_| ()));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!writer.is_finished(), "a write waits while the gate is closed");
            token.cancel(CancelReason::Rescinded);
            let done = finished_soon(&writer);
            drop(closed);
            assert!(done, "the write ignored its cancel");
            assert!(matches!(writer.join().unwrap(), Err(StoreError::Cancelled)));
        });
        drop(gate.pass(None).unwrap());
    }

    #[test]
    fn a_waiting_close_keeps_new_writes_out() {
        let gate = Gate::default();
        std::thread::scope(|s| {
            let first = gate.pass(None).unwrap();
            let closer = s.spawn(|| gate.close(None).map(|_| ()));
            while gate.state().closers_waiting == 0 {
                std::thread::yield_now();
            }
            let late = s.spawn(|| gate.pass(None).map(|_| ()));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!late.is_finished(), "a write slipped in ahead of a waiting close");
            drop(first);
            closer.join().unwrap().unwrap();
            late.join().unwrap().unwrap();
        });
    }
}
