//! A write whose answer dies with the daemon: the client asks again with the
//! same transaction id once the daemon is back and returns the real result;
//! if it never comes back, the caller is told the outcome is unknown.
//! `VMBLOB_FAULT` makes the daemon SIGKILL itself right after the N-th
//! committed write (PROTOCOL.md §11.2, §11.3).

use std::process::{Command, Stdio};
use std::time::Duration;

use vmblob_integration::data::{crc64, pattern};
use vmblob_integration::{Guest, GuestOptions, Sandbox, Vsp, VspOptions, vmblob_binary};
use vmblob_vsc::{BlobHandle, ClientError};

/// Long enough for a restart; the tests never wait it out except where the
/// daemon stays down (there it is short).
const RECONNECTING: Duration = Duration::from_secs(20);

fn guest(vsp: &Vsp, timeout_ms: u32) -> Guest {
    let mut o = GuestOptions::default().reconnect(true);
    o.client.timeout_ms = timeout_ms;
    Guest::connect(vsp.socket(), o)
}

/// A daemon that kills itself at `fault`; the guest made container `box` (write 1).
fn crashing(sb: &Sandbox, fault: &str, timeout_ms: u32) -> (Vsp, Guest) {
    let vsp = Vsp::start(&sb.dir, VspOptions::default().env("VMBLOB_FAULT", fault));
    let g = guest(&vsp, timeout_ms);
    g.container("box").create().unwrap();
    (vsp, g)
}

/// Wait for the daemon to kill itself, then start it again without the fault.
fn restart_after_crash(vsp: &mut Vsp) {
    let status = vsp.wait_exit(RECONNECTING).unwrap_or_else(|| panic!("the fault fired\n{}", vsp.logs()));
    assert!(!status.success(), "{status}");
    vsp.options_mut().env.clear();
    vsp.restart();
}

fn put_in_thread(blob: BlobHandle, data: Vec<u8>) -> std::thread::JoinHandle<Result<u64, ClientError>> {
    std::thread::spawn(move || blob.put(&data).map(|w| w.content_crc64))
}

fn put_survives(fault: &str) {
    let sb = Sandbox::new();
    let (mut vsp, g) = crashing(&sb, fault, 20_000);
    let data = pattern(7, 0, 300_000);
    let put = put_in_thread(g.container("box").blob("b"), data.clone());
    restart_after_crash(&mut vsp);
    let crc = put.join().unwrap().unwrap_or_else(|e| panic!("the put's answer was lost, not its result: {e}"));
    assert_eq!(crc, crc64(&data));
    assert_eq!(g.container("box").blob("b").get().unwrap(), data);
}

#[test]
fn a_put_answered_from_the_record_after_the_daemon_died_before_answering() {
    put_survives("abort-after-record:2");
}

#[test]
fn a_put_whose_record_died_with_the_daemon_is_recognised_by_the_store() {
    put_survives("abort-before-record:2");
}

#[test]
fn a_delete_whose_answer_was_lost_is_not_reported_as_not_found() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default().env("VMBLOB_FAULT", "abort-after-record:3"));
    let mut vsp = vsp;
    let g = guest(&vsp, 20_000);
    g.container("box").create().unwrap();
    g.container("box").blob("gone").put(b"x").unwrap();
    let blob = g.container("box").blob("gone");
    let delete = std::thread::spawn(move || blob.delete());
    restart_after_crash(&mut vsp);
    delete.join().unwrap().expect("the replayed delete answers its first result, not BlobNotFound");
    assert!(g.container("box").blob("gone").properties().unwrap_err().is_not_found());
}

#[test]
fn a_daemon_that_never_comes_back_leaves_the_outcome_unknown() {
    let sb = Sandbox::new();
    let (mut vsp, g) = crashing(&sb, "abort-after-record:2", 1_500);
    let put = put_in_thread(g.container("box").blob("b"), pattern(8, 0, 1000));
    assert!(vsp.wait_exit(RECONNECTING).is_some(), "the fault fired");
    let e = put.join().unwrap().unwrap_err();
    assert!(matches!(e, ClientError::OutcomeUnknown { .. }), "{e:?}");
    assert!(e.to_string().contains("outcome unknown"), "{e}");
}

#[test]
fn the_cli_exits_6_when_a_put_outcome_is_unknown() {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().env("VMBLOB_FAULT", "abort-after-record:2"));
    let file = sb.dir.join("f");
    std::fs::write(&file, b"payload").unwrap();
    let vmblob = |args: &[&str]| {
        let mut cmd = Command::new(vmblob_binary());
        cmd.env_remove("VMBLOB_SOCKET").args(["--quiet", "--timeout-ms", "2000", "--socket"]).arg(vsp.socket());
        cmd.args(args).stdin(Stdio::null()).output().expect("run vmblob")
    };
    assert_eq!(vmblob(&["mb", "box"]).status.code(), Some(0));
    let out = vmblob(&["put", file.to_str().unwrap(), "box/f"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("outcome unknown"), "{err}");
    assert!(vsp.wait_exit(RECONNECTING).is_some());
}
