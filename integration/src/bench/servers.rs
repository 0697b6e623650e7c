//! s3s-fs (the S3 REST peer) as a child process on loopback, on a free port with
//! its data in a directory of the bench's own. Azurite comes from the
//! object-store tests' rig (`vmblob_vsp::store::object::azurite`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials s3s-fs is started with.
pub const S3_ACCESS_KEY: &str = "vmblob-bench";
pub const S3_SECRET_KEY: &str = "vmblob-bench-secret";

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Wait until `port` accepts a connection, failing early if the child exits.
fn wait_ready(child: &mut Child, port: u16, what: &str) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start with {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} not listening on {port} within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(mut cmd: Command, port: u16, what: &str, log: &Path) -> Result<Server, String> {
    let log = std::fs::File::create(log).map_err(|e| format!("{what} log: {e}"))?;
    let err_log = log.try_clone().map_err(|e| format!("{what} log: {e}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    if let Err(e) = wait_ready(&mut child, port, what) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(Server { child, port })
}

/// The first of `candidates` that exists, else `name` found on `PATH`.
fn find_binary(env: &str, candidates: &[PathBuf], name: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates.iter().chain(on_path.iter()).find(|p| p.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        format!("{name} not found (set {env}, put it on PATH, or install it at {})", tried.join(" or "))
    })
}

/// Start s3s-fs serving the directory `dir` (one bucket per subdirectory).
pub fn start_s3s_fs(dir: &Path) -> Result<Server, String> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    // Where `.ci/install-s3s-fs` puts it, then where a plain `cargo install` does.
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/s3s-fs/bin/s3s-fs");
    let bin = find_binary("VMBLOB_S3S_FS", &[installed, home.join(".cargo/bin/s3s-fs")], "s3s-fs")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("s3s-fs dir: {e}"))?;
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let log = dir.with_extension("log");
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
        .arg(dir);
    spawn(cmd, port, "s3s-fs", &log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_is_reported_not_ignored() {
        let e = find_binary("VMBLOB_NO_SUCH_ENV", &[PathBuf::from("/nonexistent/x")], "no-such-binary-xyz");
        assert!(e.unwrap_err().contains("no-such-binary-xyz not found"));
    }
}
