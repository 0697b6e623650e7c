//! s3s-fs for the end-to-end suite: one server per test process (started on
//! first use), a fresh bucket per daemon, and [`all_stores!`](crate::all_stores)
//! to run one test body against the embedded store, Azurite and s3s-fs.
//!
//! `.ci/install-s3s-fs` installs it (CI does, and requires it with
//! `VMBLOB_REQUIRE_S3S=1`); without it the s3s-fs half of a test is skipped
//! with a message.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub use vmblob_vsp::store::object::s3s::S3sFs;

use crate::daemon::StoreKind;

/// The process's s3s-fs, `None` when it is not installed (and not required).
pub fn shared() -> Option<&'static S3sFs> {
    static S3S: OnceLock<Option<S3sFs>> = OnceLock::new();
    S3S.get_or_init(|| S3sFs::start().unwrap_or_else(|e| panic!("{e}"))).as_ref()
}

/// A store on a new, empty bucket of the shared s3s-fs, or `None` with a
/// message when s3s-fs is not installed.
pub fn fresh_store() -> Option<StoreKind> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let Some(s3) = shared() else {
        eprintln!("SKIPPED against s3s-fs: not installed (.ci/install-s3s-fs installs it)");
        return None;
    };
    let bucket = format!("e2e-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    s3.create_bucket(&bucket).expect("create the bucket");
    Some(StoreKind::S3 { endpoint: s3.endpoint(), bucket })
}

/// End-to-end cases s3s-fs cannot serve, for a reason of its own (real S3
/// has no such limit): it names a key's metadata file after the whole key in
/// base64, which exceeds a file name's 255 bytes for keys over ~190 bytes,
/// and a staged block's key (`.vmblob/staged/<container>/<name hash>/<id>`,
/// 48-byte ids in hex) is longer. The store conformance suite stages blocks
/// on s3s-fs with short ids.
pub const NOT_ON_S3S_FS: &[&str] = &["blocks_stream_and_block_lists", "max_blob_size_is_advertised_and_enforced"];

/// `all_stores!(a, b)`: [`both_stores!`](crate::both_stores) plus `s3s::a`, `s3s::b`
/// against s3s-fs.
#[macro_export]
macro_rules! all_stores {
    ($($case:ident),* $(,)?) => {
        $crate::both_stores!($($case),*);
        mod s3s {
            $(
                #[test]
                fn $case() {
                    if $crate::s3s::NOT_ON_S3S_FS.contains(&stringify!($case)) {
                        return eprintln!("SKIPPED on s3s-fs: block ids make keys too long for its metadata files");
                    }
                    if let Some(store) = $crate::s3s::fresh_store() {
                        super::$case(store);
                    }
                }
            )*
        }
    };
}
