//! A crash hook for end-to-end tests: `VMBLOB_FAULT=abort-before-record:N`
//! or `abort-after-record:N` makes the daemon SIGKILL itself (no completion
//! leaves, nothing is cleaned up, no core file) right after the N-th write
//! that committed, before or after its transaction record is written — the
//! moment a guest's answer is lost.

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable the daemon reads the hook from.
pub const ENV: &str = "VMBLOB_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The store committed; the record is not written.
    BeforeRecord,
    /// The store committed and the record is written; the answer is not sent.
    AfterRecord,
}

#[derive(Debug)]
pub struct CrashHook {
    point: CrashPoint,
    /// Committed writes still to pass before the crash.
    left: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ENV}={0:?}: expected abort-before-record:N or abort-after-record:N (N ≥ 1)")]
pub struct BadFault(pub String);

impl CrashHook {
    /// The hook `spec` describes (the value of [`ENV`]).
    pub fn parse(spec: &str) -> Result<Self, BadFault> {
        let bad = || BadFault(spec.to_owned());
        let (point, n) = spec.split_once(':').ok_or_else(bad)?;
        let point = match point {
            "abort-before-record" => CrashPoint::BeforeRecord,
            "abort-after-record" => CrashPoint::AfterRecord,
            _ => return Err(bad()),
        };
        let n: u64 = n.parse().ok().filter(|&n| n >= 1).ok_or_else(bad)?;
        Ok(Self { point, left: AtomicU64::new(n) })
    }

    /// The hook the environment asks for, if any.
    pub fn from_env() -> Result<Option<Self>, BadFault> {
        match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => {
                let hook = Self::parse(&v)?;
                log::warn!("{ENV}={v}: this daemon will kill itself on purpose (a test hook)");
                Ok(Some(hook))
            }
            _ => Ok(None),
        }
    }

    /// Called at `at` for each write that committed: aborts on the chosen one.
    pub fn reached(&self, at: CrashPoint) {
        if at == self.point && self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            log::error!("{ENV}: killing this daemon at {at:?} as asked");
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_what_it_documents() {
        let h = CrashHook::parse("abort-after-record:3").unwrap();
        assert_eq!((h.point, h.left.load(Ordering::Relaxed)), (CrashPoint::AfterRecord, 3));
        assert_eq!(CrashHook::parse("abort-before-record:1").unwrap().point, CrashPoint::BeforeRecord);
        for bad in ["abort-after-record:0", "abort-after-record", "explode:1", "abort-after-record:x"] {
            assert!(CrashHook::parse(bad).is_err(), "{bad}");
        }
    }
}
