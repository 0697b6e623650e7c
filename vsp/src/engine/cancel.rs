//! Cancellation of one accepted request: by rescind (the channel went away)
//! or by its own `timeout_ms`. Store work polls the token between chunks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

const RUNNING: u8 = 0;
const RESCINDED: u8 = 1;
const TIMED_OUT: u8 = 2;

/// Why a request was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    Rescinded,
    TimedOut,
}

/// Shared between the in-flight table (which cancels) and the request's
/// execution (which checks).
#[derive(Debug, Clone)]
pub struct CancelToken {
    state: Arc<AtomicU8>,
    deadline: Option<Instant>,
}

impl CancelToken {
    pub fn new(deadline: Option<Instant>) -> Self {
        Self { state: Arc::new(AtomicU8::new(RUNNING)), deadline }
    }

    /// First reason wins; later calls change nothing.
    pub fn cancel(&self, reason: CancelReason) {
        let v = match reason {
            CancelReason::Rescinded => RESCINDED,
            CancelReason::TimedOut => TIMED_OUT,
        };
        let _ = self.state.compare_exchange(RUNNING, v, Ordering::AcqRel, Ordering::Acquire);
    }

    /// `Some(reason)` once cancelled; a passed deadline cancels as timed out.
    pub fn reason(&self) -> Option<CancelReason> {
        if self.state.load(Ordering::Acquire) == RUNNING && self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.cancel(CancelReason::TimedOut);
        }
        match self.state.load(Ordering::Acquire) {
            RESCINDED => Some(CancelReason::Rescinded),
            TIMED_OUT => Some(CancelReason::TimedOut),
            _ => None,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_reason_wins_and_deadline_expires() {
        let t = CancelToken::new(None);
        assert_eq!(t.reason(), None);
        t.cancel(CancelReason::Rescinded);
        t.cancel(CancelReason::TimedOut);
        assert_eq!(t.reason(), Some(CancelReason::Rescinded));
        let t = CancelToken::new(Some(Instant::now() + Duration::from_millis(20)));
        assert_eq!(t.reason(), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.reason(), Some(CancelReason::TimedOut));
    }
}
