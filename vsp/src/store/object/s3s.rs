//! s3s-fs (an S3 server over a directory, from crates.io) for the conformance
//! suite and the end-to-end tests: started on a free port over a temporary directory, one bucket per
//! subdirectory, killed when the test binary's static instance goes away
//! with the process (a watchdog shell, as for Azurite).
//!
//! Installed by `.ci/install-s3s-fs` (`cargo install`, a few minutes), which
//! CI runs. Without it the suite skips with a message, unless
//! `VMBLOB_REQUIRE_S3S=1` (CI) makes that a failure.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

/// The credentials s3s-fs is started with.
pub const ACCESS_KEY: &str = "vmblob-test";
pub const SECRET_KEY: &str = "vmblob-test-secret";
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct S3sFs {
    watchdog: Child,
    port: u16,
    root: PathBuf,
}

/// Where `.ci/install-s3s-fs` puts the binary, then `~/.cargo/bin`, then `PATH`.
fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VMBLOB_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let mut candidates = vec![workspace.join("target/s3s-fs/bin/s3s-fs"), home.join(".cargo/bin/s3s-fs")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("s3s-fs")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

impl S3sFs {
    /// `Ok(None)`, with a message, when s3s-fs is not installed and not required.
    pub fn start() -> Result<Option<Self>, String> {
        let Some(bin) = find() else {
            if std::env::var_os("VMBLOB_REQUIRE_S3S").is_some_and(|v| v == "1") {
                return Err("VMBLOB_REQUIRE_S3S=1 but s3s-fs is not installed (run .ci/install-s3s-fs)".into());
            }
            eprintln!(
                "SKIPPED: s3s-fs is not installed; .ci/install-s3s-fs installs it (cargo install, a few minutes)"
            );
            return Ok(None);
        };
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let root = std::env::temp_dir().join(format!("vmblob-s3s-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let log = root.with_extension("log");
        // The server must not outlive the test binary, which never drops a static.
        let script = r#"
            "$1" --host 127.0.0.1 --port "$2" --access-key "$5" --secret-key "$6" "$3" >"$7" 2>&1 &
            s=$!
            trap 'kill $s 2>/dev/null; wait $s; rm -rf "$3"; exit 0' TERM INT
            while kill -0 "$4" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.5; done
            kill $s 2>/dev/null
            wait $s
            rm -rf "$3"
        "#;
        let watchdog = Command::new("sh")
            .args(["-c", script, "s3s-watchdog"])
            .arg(&bin)
            .arg(port.to_string())
            .arg(&root)
            .arg(std::process::id().to_string())
            .args([ACCESS_KEY, SECRET_KEY])
            .arg(&log)
            .stdin(Stdio::null())
            // The shell's own "Terminated" when it stops the server; the server logs to `log`.
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut me = Self { watchdog, port, root };
        let start = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = me.watchdog.try_wait() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("s3s-fs exited before listening: {status}\n{said}"));
            }
            if start.elapsed() > READY_WITHIN {
                return Err(format!("s3s-fs did not listen on port {port} within {READY_WITHIN:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(me))
    }

    /// The endpoint a client (or `vmblob-vsp --s3-endpoint`) reaches it at.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a new, empty bucket (s3s-fs: a subdirectory).
    pub fn create_bucket(&self, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.root.join(name))
    }

    /// The environment `AmazonS3Builder::from_env` (the daemon's) reads these credentials from.
    pub fn credentials_env() -> [(&'static str, &'static str); 3] {
        [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY), ("AWS_REGION", "us-east-1")]
    }

    /// A new, empty bucket (s3s-fs: a subdirectory) as an object_store
    /// backend, configured as `S3Spec::build` configures one for a custom
    /// endpoint (path-style requests, plain HTTP on loopback).
    pub fn bucket(&self, name: &str) -> Arc<dyn ObjectStore> {
        self.create_bucket(name).expect("create the bucket directory");
        let backend = AmazonS3Builder::new()
            .with_bucket_name(name)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("an S3 client for s3s-fs");
        Arc::new(backend)
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        // SIGTERM: the watchdog's trap stops the server and removes the data.
        let _ = Command::new("kill").arg(self.watchdog.id().to_string()).status();
        let _ = self.watchdog.wait();
    }
}
