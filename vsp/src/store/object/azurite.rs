//! Azurite (Microsoft's Azure Storage emulator, from npm) for tests: started
//! on a free port with a temporary location, stopped on drop.
//!
//! Installed by `.ci/install-azurite` into `target/azurite`, which the first
//! test that needs it runs (one installer at a time, across test processes),
//! so `cargo test` works on a fresh machine. A test that needs it skips, with
//! a message, only when Node.js or npm is absent.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    /// The shell that runs Azurite and kills it if this process dies first.
    watchdog: Child,
    port: u16,
    location: PathBuf,
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
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let location = std::env::temp_dir().join(format!("vmblob-azurite-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&location).map_err(|e| format!("{}: {e}", location.display()))?;
        // Azurite is a node process tree; a static (never dropped) instance
        // must not outlive the test binary, so a shell watches our pid.
        let script = r#"
            "$1" --blobHost 127.0.0.1 --blobPort "$2" --location "$3" --silent --skipApiVersionCheck --loose --disableTelemetry &
            a=$!
            trap 'kill $a 2>/dev/null; wait $a; rm -rf "$3"; exit 0' TERM INT
            while kill -0 "$4" 2>/dev/null && kill -0 $a 2>/dev/null; do sleep 0.5; done
            kill $a 2>/dev/null
            wait $a
            rm -rf "$3"

        "#;
        let watchdog = Command::new("sh")
            .args(["-c", script, "azurite-watchdog"])
            .arg(&bin)
            .arg(port.to_string())
            .arg(&location)
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut me = Self { watchdog, port, location };
        let start = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = me.watchdog.try_wait() {
                return Err(format!("Azurite exited before listening: {status}"));
            }
            if start.elapsed() > READY_WITHIN {
                return Err(format!("Azurite did not listen on port {port} within {READY_WITHIN:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(me))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Azurite's own process (the watchdog's child), e.g. to read its memory use.
    pub fn server_pid(&self) -> Option<u32> {
        let w = self.watchdog.id();
        let children = std::fs::read_to_string(format!("/proc/{w}/task/{w}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    fn signal(&self, name: &str) {
        if let Some(pid) = self.server_pid() {
            let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
        }
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
        format!("http://127.0.0.1:{}/{}", self.port, super::backend::EMULATOR_ACCOUNT)
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
        self.resume();
        let _ = Command::new("kill").arg(self.watchdog.id().to_string()).status();
        let _ = self.watchdog.wait();
        let _ = std::fs::remove_dir_all(&self.location);
    }
}
