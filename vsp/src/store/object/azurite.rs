//! Azurite (Microsoft's Azure Storage emulator, from npm) for tests: started
//! on a free port with a temporary location, stopped on drop.
//!
//! Installed by `.ci/install-azurite` into `target/azurite`, which the first
//! test that needs it runs (one installer at a time, across test processes),
//! so `cargo test` works on a fresh machine. A test that needs it skips, with
//! a message, only when Node.js or npm is absent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::child_server::ChildServer;

/// The `azurite-blob` script `.ci/install-azurite` installs.
pub fn default_bin() -> PathBuf {
    workspace().join("target/azurite/node_modules/.bin/azurite-blob")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `.ci/install-azurite` unless `bin` is already there. Concurrent test
/// processes take turns on a lock file, so npm runs once and nobody starts a
/// half-installed Azurite.
fn install(bin: &Path) -> Result<(), String> {
    let target = workspace().join("target");
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let lock_path = target.join("azurite.install.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if bin.exists() {
        return Ok(());
    }
    eprintln!("Azurite is not installed: installing it with .ci/install-azurite (npm) ...");
    let script = workspace().join(".ci/install-azurite");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() || !bin.exists() {
        return Err(format!(
            "installing Azurite with {} failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// How long Azurite gets to start listening (it takes under a second here).
const READY_WITHIN: Duration = Duration::from_secs(60);

pub struct Azurite {
    /// Azurite under the watchdog that stops it if this process dies first.
    server: ChildServer,
}

fn present(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl Azurite {
    /// `Ok(None)` (with a message on stderr) when Node.js is absent, or when
    /// Azurite is not installed and npm, which would install it, is absent.
    /// Installs Azurite on first use (`VMBLOB_AZURITE` names another one).
    pub fn start() -> Result<Option<Self>, String> {
        if !present("node") {
            eprintln!("SKIPPED: Node.js is not installed, so Azurite cannot run; install node to run this test");
            return Ok(None);
        }
        let bin = match std::env::var_os("VMBLOB_AZURITE") {
            Some(path) => PathBuf::from(path),
            None => default_bin(),
        };
        if !bin.exists() {
            if std::env::var_os("VMBLOB_AZURITE").is_some() {
                return Err(format!("VMBLOB_AZURITE names {}, which does not exist", bin.display()));
            }
            if !present("npm") {
                eprintln!("SKIPPED: Azurite is not installed and npm is missing, so it cannot be; install npm");
                return Ok(None);
            }
            install(&bin)?;
        }
        let (port, location) = ChildServer::reserve("azurite")?;
        let mut command: Vec<OsString> = vec![bin.into(), "--blobHost".into(), "127.0.0.1".into()];
        command.extend(["--blobPort".into(), port.to_string().into(), "--location".into(), location.clone().into()]);
        command.extend(["--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry"].map(OsString::from));
        let server = ChildServer::start("azurite", (port, location), &command, None, READY_WITHIN)?;
        Ok(Some(Self { server }))
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Azurite's own process (the watchdog's child), e.g. to read its memory use.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.server_pid()
    }

    fn signal(&self, name: &str) {
        self.server.signal(name);
    }

    /// Stops the emulator (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused emulator run again.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// The blob endpoint, path-style with the emulator account.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port(), super::backend::EMULATOR_ACCOUNT)
    }

    /// A `--store` URL for a container of this Azurite (`az://CONTAINER`,
    /// to be used with `--azure-emulator --azure-endpoint ENDPOINT`).
    pub fn spec(&self, container: &str) -> super::backend::AzureSpec {
        super::backend::AzureSpec {
            container: container.to_owned(),
            prefix: String::new(),
            endpoint: Some(self.endpoint()),
            account: None,
            access_key: None,
            emulator: true,
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        // A paused emulator would not take the watchdog's SIGTERM.
        self.resume();
    }
}
