//! The real `vmblob-vsp` binary: built once per test process, started on a
//! socket in a sandbox directory, stopped with SIGTERM or killed with SIGKILL.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the daemon may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd daemon may take to exit (it drains in-flight work).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the daemon binary, built on first use (same profile and target
/// directory as the running test executable). `VMBLOB_VSP_BIN` overrides it.
pub fn vsp_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("VMBLOB_VSP_BIN") {
            return PathBuf::from(p);
        }
        workspace_binary("vmblob-vsp")
    })
}

/// Path of the `vmblob` CLI, built on first use like [`vsp_binary`]; the same
/// build puts `vmblob-vsp` beside it, which its `demo` verb starts.
pub fn vmblob_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("vmblob"))
}

/// A binary (`vmblob-vsp`) or example (`examples/object_store`) of the
/// workspace, by its path under the profile directory, built on first use.
pub fn workspace_binary(relative: &str) -> PathBuf {
    let bin = build_workspace_binaries().join(relative);
    assert!(bin.exists(), "built {relative} not found at {}", bin.display());
    bin
}

/// The running executable's profile directory (`target/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test exe>
    let deps = exe.parent().expect("test executable has a directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") { deps.parent().unwrap() } else { deps };
    dir.to_owned()
}

/// The cargo target directory the running executable was built into; rigs
/// keep their caches (Azurite, the QEMU guest's kernel) under it.
pub fn target_dir() -> PathBuf {
    profile_dir().parent().expect("target directory").to_owned()
}

/// Builds every binary and example of the workspace, once per process, in the
/// running executable's profile; returns the profile directory.
///
/// Why all of them: `cargo test --workspace` resolves one feature set for the
/// whole workspace with the dev-dependencies' features on, and selecting the
/// examples makes `cargo build` resolve exactly that set too, so after the test
/// build this only links the two binaries. `cargo build -p vmblob-vsp` alone
/// resolves vmblob-vsp's own, smaller set and compiled tokio, object_store,
/// reqwest and the workspace's crates a second time (a third for `-p
/// vmblob-cli`), minutes of CI on two cores. The binaries behave the same
/// either way: the features only tests turn on (`test-util`, virtio-queue's
/// `test-utils`) add API that nothing in them calls.
fn build_workspace_binaries() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile_dir = profile_dir();
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile directory name").to_owned();
        let cargo = std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO")));
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.arg("build").arg("--manifest-path").arg(&manifest).args(["--workspace", "--bins", "--examples"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        // An explicit --target-dir keeps the binaries where we look for them,
        // with or without CARGO_TARGET_DIR.
        cmd.arg("--target-dir").arg(target_dir());
        let out = cmd.stdin(Stdio::null()).output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build --workspace --bins --examples failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir
    })
}

/// util-linux `setpriv`, if present.
pub(crate) fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"].iter().map(PathBuf::from).find(|p| {
                Command::new(p)
                    .arg("--help")
                    .stdout(Stdio::piped())
                    .output()
                    .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--pdeathsig"))
            })
        })
        .as_deref()
}

/// Which store the daemon serves from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded filesystem store in `<dir>/store`.
    Embedded,
    /// Azure Blob Storage (Azurite): `az://CONTAINER` at `endpoint`.
    Azure { endpoint: String, container: String },
    /// S3 (s3s-fs): `s3://BUCKET` at `endpoint`, credentials in the daemon's environment.
    S3 { endpoint: String, bucket: String },
}

/// Daemon flags (the defaults are the daemon's own, except the log level).
#[derive(Debug, Clone)]
pub struct VspOptions {
    pub store: StoreKind,
    pub queues: usize,
    pub queue_size: u16,
    pub max_inflight: Option<usize>,
    pub max_descriptors: Option<usize>,
    pub max_request_len: Option<u32>,
    pub drain_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub log_level: &'static str,
    /// Anything else, passed as is.
    pub extra: Vec<String>,
    /// Environment of the daemon's next lives (e.g. `VMBLOB_FAULT`).
    pub env: Vec<(String, String)>,
}

impl Default for VspOptions {
    fn default() -> Self {
        Self {
            store: StoreKind::Embedded,
            queues: 2,
            queue_size: 256,
            max_inflight: None,
            max_descriptors: None,
            max_request_len: None,
            drain_timeout_ms: None,
            max_connections: None,
            log_level: "info",
            extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl VspOptions {
    pub fn queues(mut self, n: usize) -> Self {
        self.queues = n;
        self
    }

    pub fn store(mut self, store: StoreKind) -> Self {
        self.store = store;
        self
    }

    /// Set `key=value` in the daemon's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn store_args(&self, dir: &Path) -> Vec<String> {
        match &self.store {
            StoreKind::Embedded => vec!["--store".into(), dir.display().to_string()],
            StoreKind::Azure { endpoint, container } => vec![
                "--store".into(),
                format!("az://{container}"),
                "--azure-emulator".into(),
                "--azure-endpoint".into(),
                endpoint.clone(),
            ],
            StoreKind::S3 { endpoint, bucket } => {
                vec!["--store".into(), format!("s3://{bucket}"), "--s3-endpoint".into(), endpoint.clone()]
            }
        }
    }

    /// What the store needs in the daemon's environment (S3 credentials).
    fn store_env(&self) -> Vec<(&'static str, &'static str)> {
        match self.store {
            StoreKind::S3 { .. } => vmblob_vsp::store::object::s3s::S3sFs::credentials_env().to_vec(),
            _ => Vec::new(),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--queues".to_owned(),
            self.queues.to_string(),
            "--queue-size".to_owned(),
            self.queue_size.to_string(),
            "--log-level".to_owned(),
            self.log_level.to_owned(),
        ];
        let opt = |a: &mut Vec<String>, flag: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(flag.to_owned());
                a.push(v);
            }
        };
        opt(&mut a, "--max-inflight", self.max_inflight.map(|v| v.to_string()));
        opt(&mut a, "--max-descriptors", self.max_descriptors.map(|v| v.to_string()));
        opt(&mut a, "--max-request-len", self.max_request_len.map(|v| v.to_string()));
        opt(&mut a, "--drain-timeout-ms", self.drain_timeout_ms.map(|v| v.to_string()));
        opt(&mut a, "--max-connections", self.max_connections.map(|v| v.to_string()));
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// One `vmblob-vsp` daemon and the files it uses: `<dir>/vsp.sock`,
/// `<dir>/store/` (the embedded store; an Azure store is remote) and
/// `<dir>/vsp-<n>.log` (stderr of its n-th life).
///
/// It can be stopped and started again on the same socket and store. Drop
/// kills it (and, when the test is failing, prints its logs). Start and
/// restart it on the test's own thread: where `setpriv` exists the daemon is
/// SIGKILLed when the thread that spawned it ends.
pub struct Vsp {
    dir: PathBuf,
    socket: PathBuf,
    store: PathBuf,
    options: VspOptions,
    child: Option<Child>,
    lives: usize,
}

impl Vsp {
    /// Start a daemon whose socket, store and logs live in `dir` (created if
    /// needed).
    pub fn start(dir: &Path, options: VspOptions) -> Vsp {
        std::fs::create_dir_all(dir).expect("create daemon directory");
        let mut vsp = Vsp {
            dir: dir.to_owned(),
            socket: dir.join("vsp.sock"),
            store: dir.join("store"),
            options,
            child: None,
            lives: 0,
        };
        vsp.restart();
        vsp
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn store(&self) -> &Path {
        &self.store
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The flags and environment the next [`Vsp::restart`] uses.
    pub fn options_mut(&mut self) -> &mut VspOptions {
        &mut self.options
    }

    /// The log files of every life so far.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        (0..self.lives).map(|i| self.dir.join(format!("vsp-{i}.log"))).collect()
    }

    /// Everything the daemon wrote to stderr, all lives.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.log_paths().iter().enumerate() {
            let mut s = String::new();
            let _ = File::open(p).and_then(|mut f| f.read_to_string(&mut s));
            out.push_str(&format!("--- vmblob-vsp life {i} ({}) ---\n{s}", p.display()));
        }
        out
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start the daemon again (it must not be running) on the same socket
    /// and store; waits (bounded) until the socket exists.
    pub fn restart(&mut self) {
        assert!(!self.is_running(), "vmblob-vsp is still running");
        // A stale socket from a killed daemon would look like readiness.
        let _ = std::fs::remove_file(&self.socket);
        let log_path = self.dir.join(format!("vsp-{}.log", self.lives));
        let log = File::create(&log_path).expect("create daemon log");
        self.lives += 1;
        // setpriv --pdeathsig: the daemon dies with the thread that started
        // it, so a test harness that is itself killed leaves no daemon behind.
        let mut cmd = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(vsp_binary());
                c
            }
            None => Command::new(vsp_binary()),
        };
        let child = cmd
            .arg("--socket-path")
            .arg(&self.socket)
            .args(self.options.store_args(&self.store))
            .args(self.options.args())
            .envs(self.options.store_env())
            .envs(self.options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn vmblob-vsp");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.socket.exists() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("vmblob-vsp exited at start with {status}\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "vmblob-vsp did not create its socket in {START_TIMEOUT:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU time (user + system) the daemon has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.pid().expect("vmblob-vsp was started"))
    }

    /// Send a signal by name (`STOP`, `CONT`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("vmblob-vsp was started");
        let st = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("run kill");
        assert!(st.success(), "kill -{name} {pid} failed");
    }

    /// SIGTERM, then wait (bounded) for the exit; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.pid().expect("vmblob-vsp was started");
        let st = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().expect("run kill");
        assert!(st.success() || !self.is_running(), "kill -TERM {pid} failed");
        self.wait_exit(STOP_TIMEOUT).unwrap_or_else(|| {
            let _ = self.child.as_mut().map(Child::kill);
            panic!("vmblob-vsp did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}", self.logs())
        })
    }

    /// SIGKILL (a crash) and reap it.
    pub fn kill(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("vmblob-vsp was started");
        let _ = child.kill();
        let status = self.wait_exit(Duration::from_secs(10)).expect("SIGKILLed daemon exits");
        assert!(status.signal() == Some(9) || status.code().is_some(), "unexpected status {status}");
        status
    }

    /// Wait at most `limit` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vsp {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
pub fn cpu_time_of(pid: u32) -> Duration {
    static TICKS: OnceLock<u64> = OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    Duration::from_millis((f[11] + f[12]) * 1000 / ticks)
}
