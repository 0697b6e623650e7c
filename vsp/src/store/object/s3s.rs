//! s3s-fs (an S3 server over a directory, from crates.io) for the conformance
//! suite and the end-to-end tests: started on a free port over a temporary directory, one bucket per
//! subdirectory, killed when the test binary's static instance goes away
//! with the process (a watchdog shell, as for Azurite).
//!
//! Installed by `.ci/install-s3s-fs` (`cargo install`, a few minutes), which
//! CI runs. Without it the suite skips with a message, unless
//! `VMBLOB_REQUIRE_S3S=1` (CI) makes that a failure.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::child_server::ChildServer;

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

/// The credentials s3s-fs is started with.
pub const ACCESS_KEY: &str = "vmblob-test";
pub const SECRET_KEY: &str = "vmblob-test-secret";
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct S3sFs {
    /// s3s-fs under the watchdog that stops it if this process dies first.
    server: ChildServer,
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
        let (port, root) = ChildServer::reserve("s3s")?;
        let log = root.with_extension("log");
        let mut command: Vec<OsString> = vec![bin.into(), "--host".into(), "127.0.0.1".into()];
        command.extend(["--port".into(), port.to_string().into()]);
        command.extend(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY].map(OsString::from));
        command.push(root.clone().into());
        let server = ChildServer::start("s3s-fs", (port, root), &command, Some(log), READY_WITHIN)?;
        Ok(Some(Self { server }))
    }

    /// The endpoint a client (or `vmblob-vsp --s3-endpoint`) reaches it at.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port())
    }

    /// Create a new, empty bucket (s3s-fs: a subdirectory).
    pub fn create_bucket(&self, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.server.dir().join(name))
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
