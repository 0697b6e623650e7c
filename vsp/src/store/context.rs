//! The cancel token of the request a store call serves.
//!
//! The engine runs each request synchronously on one worker thread and wraps
//! the store call in [`with_cancel`]; stores that wait on the network read the
//! token with [`current_cancel`] and race their calls against it. Stores that
//! only touch local memory or disk ignore it: their `DataSource`/`DataSink`
//! already see cancellation between chunks.

use std::cell::RefCell;

use crate::engine::CancelToken;

thread_local! {
    static CURRENT: RefCell<Option<CancelToken>> = const { RefCell::new(None) };
}

/// Restores the previous token even if the store call panics.
struct Restore(Option<CancelToken>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// Runs `f` (a store call) with `token` as the current request's cancel token.
pub fn with_cancel<R>(token: &CancelToken, f: impl FnOnce() -> R) -> R {
    let prev = CURRENT.with(|c| c.borrow_mut().replace(token.clone()));
    let _restore = Restore(prev);
    f()
}

/// The token of the request being served on this thread, if any.
pub fn current_cancel() -> Option<CancelToken> {
    CURRENT.with(|c| c.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CancelReason;

    #[test]
    fn token_is_scoped_to_the_call() {
        assert!(current_cancel().is_none());
        let t = CancelToken::new(None);
        with_cancel(&t, || {
            let seen = current_cancel().expect("token inside the call");
            t.cancel(CancelReason::Rescinded);
            assert!(seen.is_cancelled(), "same token, not a copy of its state");
            let inner = CancelToken::new(None);
            with_cancel(&inner, || assert!(!current_cancel().unwrap().is_cancelled()));
            assert!(current_cancel().unwrap().is_cancelled(), "outer token restored");
        });
        assert!(current_cancel().is_none());
    }
}
