//! From the synchronous store calls to the async object store: a runtime the
//! store owns, cancellation by the request's token, and error mapping.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::future::{Either, select};
use tokio::runtime::{Handle, Runtime};

use crate::engine::CancelToken;
use crate::store::StoreError;
use crate::store::context::current_cancel;

/// How often a waiting call looks at its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(10);

pub(crate) struct Bridge {
    rt: Runtime,
    /// How long a cancelled request still waits for a commit already sent.
    commit_grace: Duration,
}

async fn cancelled(token: &CancelToken) {
    while !token.is_cancelled() {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

impl Bridge {
    pub fn new(worker_threads: usize, commit_grace: Duration) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("vmblob-objstore")
            .enable_all()
            .build()?;
        Ok(Self { rt, commit_grace })
    }

    pub fn handle(&self) -> &Handle {
        self.rt.handle()
    }

    fn enter_check() -> Result<(), StoreError> {
        // Blocking inside a runtime would stall (or panic) it.
        if Handle::try_current().is_ok() {
            return Err(StoreError::Remote("object store called from inside an async runtime".into()));
        }
        Ok(())
    }

    /// Runs `fut` to completion, or stops it with `Cancelled` as soon as the
    /// current request is cancelled (dropping an HTTP call aborts it).
    pub fn run<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        Self::enter_check()?;
        let token = current_cancel();
        self.rt.block_on(async {
            let Some(token) = token else { return fut.await };
            if token.is_cancelled() {
                return Err(StoreError::Cancelled);
            }
            match select(pin!(fut), pin!(cancelled(&token))).await {
                Either::Left((r, _)) => r,
                Either::Right(((), _)) => Err(StoreError::Cancelled),
            }
        })
    }

    /// Runs the request that makes a write visible. Once sent it is awaited
    /// even if the request is cancelled meanwhile (for at most the commit
    /// grace after the cancel): the guest then learns the true outcome
    /// instead of "rescinded" for a write that happened. If the grace runs
    /// out the outcome is unknown and the request reports `Cancelled`; a
    /// retry with the same transaction id is answered as a replay.
    pub fn commit<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        Self::enter_check()?;
        let token = current_cancel();
        let grace = self.commit_grace;
        self.rt.block_on(async {
            let Some(token) = token else { return fut.await };
            if token.is_cancelled() {
                return Err(StoreError::Cancelled);
            }
            let mut fut = pin!(fut);
            match select(fut.as_mut(), pin!(cancelled(&token))).await {
                Either::Left((r, _)) => r,
                Either::Right(((), _)) => tokio::time::timeout(grace, fut).await.unwrap_or(Err(StoreError::Cancelled)),
            }
        })
    }
}

/// An object-store failure as a store error; `NotFound` and precondition
/// failures are mapped by callers that know what was missing or raced.
pub(crate) fn store_err(e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    match e {
        E::Precondition { .. } | E::AlreadyExists { .. } | E::NotModified { .. } => StoreError::PreconditionFailed,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            log::error!("object store denied access: {e}");
            StoreError::Denied(e.to_string())
        }
        other => {
            log::warn!("object store failed: {other}");
            StoreError::Remote(other.to_string())
        }
    }
}

pub(crate) fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::engine::CancelReason;
    use crate::store::context::with_cancel;

    #[test]
    fn a_cancel_stops_a_waiting_call_and_a_commit_gets_its_grace() {
        let b = Bridge::new(1, Duration::from_millis(300)).unwrap();
        let token = CancelToken::new(None);
        let t2 = token.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t2.cancel(CancelReason::Rescinded);
        });
        let hang = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        };
        let r: Result<(), _> = with_cancel(&token, || b.run(hang));
        assert!(matches!(r, Err(StoreError::Cancelled)), "{r:?}");
        canceller.join().unwrap();
        // Already cancelled: a commit is not even started.
        let started = std::sync::atomic::AtomicBool::new(false);
        let r = with_cancel(&token, || {
            b.commit(async {
                started.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(1)
            })
        });
        assert!(matches!(r, Err(StoreError::Cancelled)) && !started.load(std::sync::atomic::Ordering::SeqCst));
        // Cancelled while in flight: a commit that finishes within the grace reports its result...
        let token = CancelToken::new(None);
        let t2 = token.clone();
        let slow_commit = async move {
            t2.cancel(CancelReason::Rescinded);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(7)
        };
        assert_eq!(with_cancel(&token, || b.commit(slow_commit)).unwrap(), 7);
        // ...and one that does not is given up after the grace.
        let token = CancelToken::new(None);
        let t2 = token.clone();
        let hung_commit = async move {
            t2.cancel(CancelReason::Rescinded);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(7)
        };
        assert!(matches!(with_cancel(&token, || b.commit(hung_commit)), Err(StoreError::Cancelled)));
    }

    #[test]
    fn errors_map_to_store_errors() {
        use object_store::Error as E;
        let src = || Box::<dyn std::error::Error + Send + Sync>::from("x");
        assert!(is_not_found(&E::NotFound { path: "p".into(), source: src() }));
        assert!(matches!(
            store_err(E::Precondition { path: "p".into(), source: src() }),
            StoreError::PreconditionFailed
        ));
        assert!(matches!(
            store_err(E::AlreadyExists { path: "p".into(), source: src() }),
            StoreError::PreconditionFailed
        ));
        assert!(matches!(store_err(E::Unauthenticated { path: "p".into(), source: src() }), StoreError::Denied(_)));
        assert!(matches!(store_err(E::PermissionDenied { path: "p".into(), source: src() }), StoreError::Denied(_)));
        assert!(matches!(store_err(E::Generic { store: "S3", source: src() }), StoreError::Remote(_)));
    }

    #[test]
    fn refuses_to_block_inside_a_runtime() {
        let b = Bridge::new(1, Duration::ZERO).unwrap();
        let outer = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = outer.block_on(async { b.run(async { Ok(()) }) });
        assert!(matches!(r, Err(StoreError::Remote(_))));
    }
}
