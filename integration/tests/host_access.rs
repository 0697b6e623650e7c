//! Who may reach a guest's data on the host: one daemon per store root, a private store and
//! socket, and socket paths that are not sockets left alone.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vmblob_integration::{Guest, GuestOptions, Vsp, VspOptions, bounded, vsp_binary};

/// Runs `vmblob-vsp` with `args` and expects it to give up on its own.
fn run_vsp(args: &[&str]) -> Output {
    let mut cmd = Command::new(vsp_binary());
    cmd.args(args).stdin(Stdio::null());
    bounded(Duration::from_secs(20), "vmblob-vsp exits by itself", move || cmd.output().unwrap())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn a_second_daemon_on_one_store_is_refused_and_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Vsp::start(dir.path(), VspOptions::default());
    let pid = first.pid().expect("first daemon runs");
    let other_socket = dir.path().join("second.sock");
    let out = run_vsp(&["--socket-path", other_socket.to_str().unwrap(), "--store", first.store().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second daemon started: {stderr}");
    assert!(stderr.contains(&format!("in use by another vmblob-vsp (pid {pid})")), "{stderr}");
    // It touched nothing of the first one's: that one still serves.
    let guest = Guest::connect(first.socket(), GuestOptions::default());
    guest.client.container("still-mine").create().expect("the first daemon still serves");
}

#[test]
fn store_and_socket_are_private_to_the_daemons_user() {
    let dir = tempfile::tempdir().unwrap();
    let vsp = Vsp::start(dir.path(), VspOptions::default());
    assert_eq!(mode(vsp.socket()), 0o600, "socket");
    assert_eq!(mode(vsp.store()), 0o700, "store root");
    let guest = Guest::connect(vsp.socket(), GuestOptions::default());
    let boxed = guest.client.container("box");
    boxed.create().unwrap();
    boxed.blob("secret").put(b"guest data").unwrap();
    for entry in walk(vsp.store()) {
        let m = mode(&entry);
        assert_eq!(m & 0o077, 0, "{} is mode {m:o}", entry.display());
    }
}

#[test]
fn a_store_root_other_users_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("vsp.sock");
    let out = run_vsp(&["--socket-path", socket.to_str().unwrap(), "--store", store.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("writable by all users"), "{stderr}");
}

#[test]
fn a_socket_path_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("precious");
    std::fs::write(&file, b"keep me").unwrap();
    let store = dir.path().join("store");
    let out = run_vsp(&["--socket-path", file.to_str().unwrap(), "--store", store.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
