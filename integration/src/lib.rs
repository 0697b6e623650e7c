//! The end-to-end rig: the real `vmblob-vsp` daemon ([`daemon`]), a guest
//! with the real client stack ([`guest`]), a raw and possibly hostile guest
//! ([`raw`]), deterministic test data ([`data`]), and an in-process VMBus
//! rig (emulator, VSP service, VMBus guest: [`vmbus`]).
//!
//! Every wait here is bounded: a broken daemon or client fails a test with a
//! message, it never hangs the suite.
#![forbid(unsafe_code)]

pub mod azurite;
pub mod bench;
pub mod daemon;
pub mod data;
pub mod differential;
pub mod emulated;
pub mod guest;
pub mod ops;
pub mod qemu;
pub mod raw;
pub mod s3s;
pub mod vmbus;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use daemon::{StoreKind, Vsp, VspOptions, cpu_time_of, vmblob_binary, vsp_binary, workspace_binary};
pub use guest::{Guest, GuestOptions, expect_status, is_rescinded, is_transport_failure, status_of};

/// Run `f` on its own thread and wait at most `limit` for it; panics with
/// `what` on timeout (the thread is left behind, the test fails).
pub fn bounded<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("bounded: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn bounded thread");
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no result within {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => panic!("{what}: thread ended without a result"),
        },
    }
}

/// Poll `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh temporary directory with a nested sandbox `<tmp>/outer/inner/rig`
/// for a daemon: anything that escapes the store by a few `..` still lands
/// inside `<tmp>`, where [`files_under`] can see it.
pub struct Sandbox {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let root = tempfile::Builder::new().prefix("vmblob-e2e-").tempdir().expect("tempdir");
        let dir = root.path().join("outer").join("inner").join("rig");
        std::fs::create_dir_all(&dir).expect("create sandbox");
        Sandbox { root, dir }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// Every file, directory, socket or link below `root` (not following links),
/// as paths relative to `root`, sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Only the daemon's own files (socket, logs, store) exist in the sandbox of
/// `vsp`, everything else lies under its store, and no path in the store has
/// an `etc` component (the escape the hostile tests try).
pub fn assert_nothing_outside_store(sb: &Sandbox, vsp: &Vsp) {
    let root = sb.root.path();
    let rel = |p: &Path| p.strip_prefix(root).expect("daemon files live in the sandbox").to_path_buf();
    let store = rel(vsp.store());
    let mut allowed: Vec<PathBuf> =
        vec!["outer".into(), "outer/inner".into(), rel(vsp.dir()), rel(vsp.socket()), store.clone()];
    allowed.extend(vsp.log_paths().iter().map(|p| rel(p)));
    let stray: Vec<PathBuf> =
        files_under(root).into_iter().filter(|p| !allowed.contains(p) && !p.starts_with(&store)).collect();
    assert!(stray.is_empty(), "created outside the store: {stray:?}");
    let etc: Vec<PathBuf> =
        files_under(vsp.store()).into_iter().filter(|p| p.components().any(|c| c.as_os_str() == "etc")).collect();
    assert!(etc.is_empty(), "escape attempts left traces in the store: {etc:?}");
}
