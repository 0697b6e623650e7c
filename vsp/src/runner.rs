//! Where both VSP faces run admitted requests: a pool of threads, and the one
//! guard that turns an engine panic into the request's single completion.
//!
//! The store is synchronous, so the pool is where requests overlap (a network
//! store blocks one thread per request in flight, not the ring). What a job
//! does with its response (post a used entry, write a VMBus completion) stays
//! with the transport.

use std::fmt::Display;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use vm_memory::GuestMemoryMmap;
use vmblob_protocol::{BlobError, VspResponse};

use crate::engine::{CancelToken, Engine, Frame};

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the pool; clones share it. The threads end when the last
/// handle is gone and the jobs queued before are done.
#[derive(Clone)]
pub struct Runner {
    jobs: Sender<Job>,
}

impl Runner {
    /// Start `workers` threads (at least one), named `{name}-{i}`.
    pub fn new(name: &str, workers: usize) -> io::Result<Self> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for i in 0..workers.max(1) {
            let queue = queue.clone();
            thread::Builder::new().name(format!("{name}-{i}")).spawn(move || run(queue))?;
        }
        Ok(Self { jobs })
    }

    /// Run `job` on a pool thread; on this thread if the pool is gone (so a
    /// request handed over is never dropped).
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        if let Err(e) = self.jobs.send(Box::new(job)) {
            log::error!("runner pool gone; running a request inline");
            (e.into_inner())();
        }
    }
}

fn run(queue: Receiver<Job>) {
    for job in queue {
        // A job completes its request on every path it owns (see `serve`); a
        // panic here is a bug in the transport, and must not also take the
        // thread (and the pool) with it.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            log::error!("runner job panicked");
        }
    }
}

/// Serve one admitted request. The engine never panics on guest input; if a
/// bug makes it, the request still gets its one completion: `Internal`.
pub fn serve(
    engine: &Engine,
    mem: &GuestMemoryMmap,
    frame: &impl Frame,
    cancel: &CancelToken,
    what: impl Display,
) -> VspResponse {
    catch_unwind(AssertUnwindSafe(|| engine.serve(mem, frame, cancel))).unwrap_or_else(|_| {
        log::error!("serving {what} panicked");
        Engine::refused(BlobError::Internal)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn jobs_overlap_and_a_panic_keeps_the_pool() {
        let pool = Runner::new("test-runner", 2).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let slow_done = done_tx.clone();
        pool.spawn(move || {
            gate_rx.recv().unwrap();
            slow_done.send("slow").unwrap();
        });
        pool.spawn(|| panic!("a buggy job"));
        pool.spawn(move || done_tx.send("fast").unwrap());
        // The second worker runs the fast job (after the panicking one) while
        // the first is blocked on the gate.
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok("fast"));
        gate_tx.send(()).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok("slow"));
    }

    #[test]
    fn threads_end_when_the_last_handle_is_gone() {
        struct OnExit(mpsc::Sender<()>);
        impl Drop for OnExit {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        thread_local!(static EXIT: std::cell::RefCell<Option<OnExit>> = const { std::cell::RefCell::new(None) });
        let pool = Runner::new("test-runner", 1).unwrap();
        let (exit_tx, exit_rx) = mpsc::channel();
        let (ran_tx, ran_rx) = mpsc::channel();
        pool.spawn(move || {
            EXIT.with(|e| *e.borrow_mut() = Some(OnExit(exit_tx)));
            ran_tx.send(()).unwrap();
        });
        ran_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let clone = pool.clone();
        drop(pool);
        assert!(exit_rx.recv_timeout(Duration::from_millis(100)).is_err(), "a handle is still alive");
        drop(clone);
        assert_eq!(exit_rx.recv_timeout(Duration::from_secs(10)), Ok(()), "the worker thread ended");
    }
}
