//! Azurite for the end-to-end suite: one emulator per test process (started
//! on first use, stopped when the process ends), a fresh Azure container per
//! daemon, and [`both_stores!`](crate::both_stores) to run one test body
//! against the embedded store and against Azurite.
//!
//! The first test that needs it installs it (`.ci/install-azurite`, one
//! installer at a time). Without Node.js, or without Azurite and npm, the
//! Azurite half of a test is skipped with a message.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub use vmblob_vsp::store::object::azurite::Azurite;

use crate::daemon::StoreKind;

/// The process's Azurite, `None` when Node.js is absent.
pub fn shared() -> Option<&'static Azurite> {
    static AZURITE: OnceLock<Option<Azurite>> = OnceLock::new();
    AZURITE.get_or_init(|| Azurite::start().unwrap_or_else(|e| panic!("{e}"))).as_ref()
}

/// A store on a new, empty Azure container of the shared Azurite (the
/// daemon creates it), or `None` with a message when Node.js is absent.
pub fn fresh_store() -> Option<StoreKind> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let Some(az) = shared() else {
        eprintln!("SKIPPED against Azurite: Node.js (or npm, to install Azurite) is not installed");
        return None;
    };
    let container = format!("e2e-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    Some(StoreKind::Azure { endpoint: az.endpoint(), container })
}

/// `both_stores!(a, b)` turns `fn a(store: StoreKind)` into two tests,
/// `embedded::a` and `azurite::a`.
#[macro_export]
macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $case() {
                    super::$case($crate::daemon::StoreKind::Embedded);
                }
            )*
        }
        mod azurite {
            $(
                #[test]
                fn $case() {
                    if let Some(store) = $crate::azurite::fresh_store() {
                        super::$case(store);
                    }
                }
            )*
        }
    };
}
