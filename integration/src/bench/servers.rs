//! The REST peers as child processes on loopback: Azurite (Azure Blob REST,
//! node) and s3s-fs (S3 REST, Rust), each on a free port with its data in a
//! directory of the bench's own.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
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

/// The workspace root (where `target/` lives).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Start Azurite's blob service with its data under `dir`.
pub fn start_azurite(dir: &Path) -> Result<Server, String> {
    let bin = find_binary(
        "VMBLOB_AZURITE",
        &[workspace_root().join("target/azurite/node_modules/.bin/azurite-blob")],
        "azurite-blob",
    )?;
    std::fs::create_dir_all(dir).map_err(|e| format!("azurite dir: {e}"))?;
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"]).arg(dir).args([
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]);
    spawn(cmd, port, "azurite", &dir.join("azurite.log"))
}

/// Start s3s-fs serving the directory `dir` (one bucket per subdirectory).
pub fn start_s3s_fs(dir: &Path) -> Result<Server, String> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let bin = find_binary("VMBLOB_S3S_FS", &[home.join(".cargo/bin/s3s-fs")], "s3s-fs")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("s3s-fs dir: {e}"))?;
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let log = dir.with_extension("log");
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
        .arg(dir);
    spawn(cmd, port, "s3s-fs", &log)
}

/// The Shared Key signature of a `Create Container` request (object_store
/// cannot create containers).
pub fn shared_key_create_container(container: &str, date: &str, version: &str) -> Result<String, String> {
    let key = BASE64.decode(AZURITE_KEY).map_err(|e| e.to_string())?;
    // VERB, eleven empty standard headers, the x-ms-* headers, the resource.
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{a}/{a}/{container}\nrestype:container",
        a = AZURITE_ACCOUNT
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(to_sign.as_bytes());
    Ok(format!("SharedKey {AZURITE_ACCOUNT}:{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// Create `container` on the Azurite at `port`.
pub async fn azurite_create_container(port: u16, container: &str) -> Result<(), String> {
    const VERSION: &str = "2021-08-06";
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let auth = shared_key_create_container(container, &date, VERSION)?;
    let url = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}/{container}?restype=container");
    let resp = reqwest::Client::new()
        .put(url)
        .header("x-ms-date", date)
        .header("x-ms-version", VERSION)
        .header("authorization", auth)
        .body("")
        .send()
        .await
        .map_err(|e| format!("create container: {e}"))?;
    match resp.status().as_u16() {
        201 | 409 => Ok(()),
        s => Err(format!("create container: HTTP {s}: {}", resp.text().await.unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_key_signature_is_stable() {
        let a = shared_key_create_container("bench", "Tue, 24 Nov 2026 16:00:00 GMT", "2021-08-06").unwrap();
        let b = shared_key_create_container("bench", "Tue, 24 Nov 2026 16:00:00 GMT", "2021-08-06").unwrap();
        let c = shared_key_create_container("bench", "Tue, 24 Nov 2026 16:00:01 GMT", "2021-08-06").unwrap();
        assert!(a.starts_with("SharedKey devstoreaccount1:"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // HMAC-SHA256 is 32 bytes: 44 base64 characters.
        assert_eq!(a.len(), "SharedKey devstoreaccount1:".len() + 44);
    }

    #[test]
    fn missing_binary_is_reported_not_ignored() {
        let e = find_binary("VMBLOB_NO_SUCH_ENV", &[PathBuf::from("/nonexistent/x")], "no-such-binary-xyz");
        assert!(e.unwrap_err().contains("no-such-binary-xyz not found"));
    }
}
