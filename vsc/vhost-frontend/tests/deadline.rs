//! A backend that never answers (stopped, or busy with another VMM) fails requests within the
//! reply timeout instead of hanging them. (Teardown against a stopped real daemon is tested
//! end to end in `integration/tests/cli.rs`.)

mod common;

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::RAM_SIZE;
use vmblob_vhost_frontend::{Error, FrontendOptions, GuestRam, VhostUserDevice};

fn opts(reply: Duration) -> FrontendOptions {
    FrontendOptions {
        connect_timeout: Duration::from_secs(5),
        reconnect_timeout: Duration::from_secs(5),
        retry_interval: Duration::from_millis(20),
        reply_timeout: Some(reply),
        event_idx: true,
        inflight: true,
    }
}

#[test]
fn a_backend_that_accepts_and_never_answers_fails_the_handshake_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    // Accepted by the kernel's backlog and never read: what a SIGSTOPped daemon looks like.
    let _listener = UnixListener::bind(&path).unwrap();
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let start = Instant::now();
    let err =
        VhostUserDevice::connect(&path, &ram, 1, opts(Duration::from_millis(300))).err().expect("no backend answered");
    let took = start.elapsed();
    assert!(matches!(err, Error::NoAnswer { .. }), "{err}");
    assert!(err.to_string().contains("one VMM at a time"), "{err}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "took {took:?}");
}
