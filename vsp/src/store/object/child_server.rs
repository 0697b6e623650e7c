//! A test server (Azurite, s3s-fs) as a child process: on a free loopback
//! port over its own temporary directory, run by a watchdog shell that stops
//! it and removes the directory when this handle is dropped, or when the
//! test process dies first (a test binary never drops its static instances).

use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `$4…` in the background and watches it and process `$2`; stops it
/// and removes `$1` on TERM or when either is gone. Output goes to `$3`, or
/// stdout is dropped when `$3` is empty.
const WATCHDOG: &str = r#"
    dir=$1; parent=$2; log=$3; shift 3
    if [ -n "$log" ]; then "$@" >"$log" 2>&1 & else "$@" >/dev/null & fi
    s=$!
    trap 'kill $s 2>/dev/null; wait $s; rm -rf "$dir"; exit 0' TERM INT
    while kill -0 "$parent" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.5; done
    kill $s 2>/dev/null
    wait $s
    rm -rf "$dir"
"#;

pub struct ChildServer {
    name: &'static str,
    watchdog: Child,
    port: u16,
    dir: PathBuf,
    log: Option<PathBuf>,
}

impl ChildServer {
    /// A free port and a fresh directory named after both, for `start`.
    pub fn reserve(name: &'static str) -> Result<(u16, PathBuf), String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let dir = std::env::temp_dir().join(format!("vmblob-{name}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok((port, dir))
    }

    /// Run `command` (which serves `port` over `dir`, from [`Self::reserve`])
    /// under the watchdog and wait until the port accepts. With `log` the
    /// server's output goes there and is quoted if it exits early; without,
    /// its stderr is the test's.
    pub fn start(
        name: &'static str,
        (port, dir): (u16, PathBuf),
        command: &[OsString],
        log: Option<PathBuf>,
        ready_within: Duration,
    ) -> Result<Self, String> {
        let log_arg = log.as_deref().map_or_else(OsString::new, |p| p.as_os_str().to_owned());
        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, &format!("{name}-watchdog")])
            .arg(&dir)
            .arg(std::process::id().to_string())
            .arg(log_arg)
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // With a log, only the shell's own "Terminated" would come here.
            .stderr(if log.is_some() { Stdio::null() } else { Stdio::inherit() })
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let mut me = Self { name, watchdog, port, dir, log };
        me.wait_listening(ready_within)?;
        Ok(me)
    }

    fn wait_listening(&mut self, within: Duration) -> Result<(), String> {
        let start = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if let Ok(Some(status)) = self.watchdog.try_wait() {
                let said = self.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
                return Err(format!("{} exited before listening: {status}\n{said}", self.name));
            }
            if start.elapsed() > within {
                return Err(format!("{} did not listen on port {} within {within:?}", self.name, self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (removed when it stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's own process (the watchdog's child).
    #[cfg(any(test, feature = "test-util"))]
    pub fn server_pid(&self) -> Option<u32> {
        let w = self.watchdog.id();
        let children = std::fs::read_to_string(format!("/proc/{w}/task/{w}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// Send the server `signal` (a `kill` name: STOP, CONT).
    #[cfg(any(test, feature = "test-util"))]
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.server_pid() {
            let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // SIGTERM: the watchdog's trap stops the server and removes the directory.
        let _ = Command::new("kill").arg(self.watchdog.id().to_string()).status();
        let _ = self.watchdog.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
