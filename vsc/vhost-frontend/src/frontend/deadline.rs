//! A deadline for control-plane round trips. The vhost crate retries a timed-out socket read
//! forever (EAGAIN is `SocketRetry`), so a socket timeout cannot bound a request; instead a
//! watchdog shuts the connection down when an operation outlives its deadline, which fails the
//! blocked read, and the error becomes [`Error::NoAnswer`].

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Error, Result, Step};

/// Runs `f`, the requests of one operation on `socket`'s connection, within `limit` (`None`:
/// no limit). Past it the connection is shut down (a late reply would otherwise be read as the
/// answer to the next request) and the operation fails with `NoAnswer`.
pub(crate) fn bounded<T>(
    socket: &UnixStream,
    limit: Option<Duration>,
    fallback: Step,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    // A limit too large to add to now is no limit.
    let Some(deadline) = limit.and_then(|l| Instant::now().checked_add(l)) else { return f() };
    let watched = socket.try_clone().map_err(Error::Watcher)?;
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let fired = Arc::new(AtomicBool::new(false));
    let (d, fire) = (done.clone(), fired.clone());
    let watchdog = thread::Builder::new()
        .name("vhost-deadline".into())
        .spawn(move || {
            let (lock, cv) = &*d;
            let mut finished = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while !*finished {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    fire.store(true, Ordering::SeqCst);
                    let _ = watched.shutdown(std::net::Shutdown::Both);
                    return;
                }
                finished = cv.wait_timeout(finished, left).unwrap_or_else(PoisonError::into_inner).0;
            }
        })
        .map_err(Error::Watcher)?;
    // Set even if `f` panics, so the watchdog never shuts a connection that outlived it.
    struct Finished(Arc<(Mutex<bool>, Condvar)>);
    impl Drop for Finished {
        fn drop(&mut self) {
            *self.0.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.0.1.notify_all();
        }
    }
    let finished = Finished(done);
    let result = f();
    drop(finished);
    // A deadline that passed just after `f` returned Ok shut the connection: the hang-up
    // watcher reports it, and the next request reconnects.
    let _ = watchdog.join();
    match result {
        Err(e) if fired.load(Ordering::SeqCst) => Err(Error::NoAnswer { step: step_of(&e).unwrap_or(fallback) }),
        other => other,
    }
}

fn step_of(e: &Error) -> Option<Step> {
    match e {
        Error::Vhost { step, .. } | Error::Socket { step, .. } | Error::BadReply { step, .. } => Some(*step),
        Error::NoAnswer { step } => Some(*step),
        _ => None,
    }
}
