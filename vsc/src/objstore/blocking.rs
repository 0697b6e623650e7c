//! Running the blocking `BlobClient` off the caller's executor.

use super::error::ObjStoreError;

/// Run `f` on a thread that may block: tokio's blocking pool inside a tokio
/// runtime, otherwise a thread of its own (any other executor). The caller's
/// task only awaits the answer. Dropping the future does not cancel `f`: a
/// request already handed to the device still runs to its completion.
pub(crate) async fn run<T, F>(f: F) -> Result<T, ObjStoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ObjStoreError> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt.spawn_blocking(f).await.map_err(|e| ObjStoreError::Worker(e.to_string()))?,
        Err(_) => {
            let (tx, rx) = futures::channel::oneshot::channel();
            std::thread::Builder::new()
                .name("vmblob-objstore".into())
                .spawn(move || {
                    let _ = tx.send(f());
                })
                .map_err(|e| ObjStoreError::Worker(e.to_string()))?;
            rx.await.map_err(|_| ObjStoreError::Worker("worker thread ended without an answer".into()))?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_inside_tokio_on_another_thread() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let caller = std::thread::current().id();
        let worker = rt.block_on(run(|| Ok(std::thread::current().id()))).unwrap();
        assert_ne!(worker, caller, "the blocking call left the runtime thread");
    }

    #[test]
    fn runs_without_tokio_on_another_thread() {
        let caller = std::thread::current().id();
        let worker = futures::executor::block_on(run(|| Ok(std::thread::current().id()))).unwrap();
        assert_ne!(worker, caller);
    }

    #[test]
    fn a_panicking_worker_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r: Result<(), _> = rt.block_on(run(|| panic!("boom")));
        assert!(matches!(r, Err(ObjStoreError::Worker(_))));
        let r: Result<(), _> = futures::executor::block_on(run(|| panic!("boom")));
        assert!(matches!(r, Err(ObjStoreError::Worker(_))));
    }
}
