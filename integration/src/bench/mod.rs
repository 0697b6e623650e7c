//! `vmblob-bench`: vmblob against the store called directly, against the REST
//! path (object_store over loopback to Azurite and s3s-fs), and against this
//! machine's limits, in one run (issue 7). See `docs/PERFORMANCE.md`.

pub mod limits;
pub mod paths;
pub mod perf_ctl;
pub mod report;
pub mod rss;
pub mod servers;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::paths::direct::DirectPath;
use self::paths::rest::RestPath;
use self::paths::vmblob::{VmblobOptions, VmblobPath};
use self::paths::{BenchPath, CHUNK, OpKind, OpsSample, OpsSpec, blob_name};
use self::perf_ctl::PerfControl;
use self::report::{Limits, Measured, Outcome, Report, Row};
use self::stats::{Spread, percentile_us};

/// Paths in the order they are run and shown.
pub const PATHS: [&str; 5] = ["vmblob", "direct", "handoff", "azurite", "s3s-fs"];

/// What to run and how long.
#[derive(Debug, Clone)]
pub struct Config {
    pub quick: bool,
    /// Timed repetitions per workload (after one warm-up).
    pub reps: usize,
    /// Length of one repetition of an ops or transfer workload.
    pub rep_time: Duration,
    /// Concurrent clients of the many-reader workload.
    pub readers: usize,
    /// Bytes all readers read together in one repetition.
    pub readers_total: u64,
    /// Distinct blobs an ops workload cycles through.
    pub ops_blobs: usize,
    /// Paths to run (names from [`PATHS`]).
    pub paths: Vec<String>,
    pub vmblob: VmblobOptions,
    /// Run only workloads whose label contains this (e.g. "1 MiB Get").
    pub only: Option<String>,
    /// Where stores live (default: a temporary directory).
    pub workdir: Option<PathBuf>,
    /// perf's control fifo and, optionally, its ack fifo (see [`perf_ctl`]).
    pub perf_ctl: Option<(PathBuf, Option<PathBuf>)>,
}

impl Config {
    pub fn full() -> Config {
        Config {
            quick: false,
            reps: 5,
            rep_time: Duration::from_secs(1),
            readers: 16,
            readers_total: 2 << 30,
            ops_blobs: 64,
            paths: PATHS.iter().map(|p| p.to_string()).collect(),
            vmblob: VmblobOptions {
                queues: 2,
                guest_poll: Duration::from_micros(50),
                vsp_args: Vec::new(),
                copy_out: false,
            },
            only: None,
            workdir: None,
            perf_ctl: None,
        }
    }

    /// Everything once, small: a smoke test that finishes in well under a minute.
    pub fn quick() -> Config {
        Config {
            quick: true,
            reps: 2,
            rep_time: Duration::from_millis(150),
            readers_total: 128 << 20,
            ops_blobs: 8,
            ..Config::full()
        }
    }
}

/// One workload shape.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    Ops { kind: OpKind, size: usize, qd: usize },
    Transfer { kind: OpKind, size: usize },
    Readers,
}

const SMALL: usize = 4 << 10;
const MEDIUM: usize = 1 << 20;
const LARGE: usize = 32 << 20;
/// Queue depth of the 1 MiB workloads (the target asks for >= 8).
const MEDIUM_QD: usize = 8;

pub fn workloads() -> Vec<Workload> {
    let mut w = Vec::new();
    for kind in [OpKind::Get, OpKind::Put] {
        for qd in [1, 32, 128] {
            w.push(Workload::Ops { kind, size: SMALL, qd });
        }
    }
    for kind in [OpKind::Get, OpKind::Put] {
        w.push(Workload::Ops { kind, size: MEDIUM, qd: MEDIUM_QD });
    }
    for kind in [OpKind::Get, OpKind::Put] {
        w.push(Workload::Transfer { kind, size: LARGE });
    }
    w.push(Workload::Readers);
    w
}

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s => format!("{} KiB", s >> 10),
    }
}

impl Workload {
    pub fn label(&self, cfg: &Config) -> String {
        match *self {
            Workload::Ops { kind, size, qd } => format!("{} {kind:?} QD{qd}", size_label(size)),
            Workload::Transfer { kind, size } => {
                format!(
                    "{} {kind:?} ({} x {} in flight)",
                    size_label(size),
                    size_label(CHUNK),
                    paths::TRANSFER_PARALLEL
                )
            }
            Workload::Readers => format!(
                "{} readers x {} MiB, {} ranges",
                cfg.readers,
                (cfg.readers_total / cfg.readers as u64) >> 20,
                size_label(CHUNK)
            ),
        }
    }

    pub fn unit(&self) -> &'static str {
        match self {
            Workload::Ops { size, .. } if *size < MEDIUM => "ops/s",
            _ => "GB/s",
        }
    }
}

/// Run everything `cfg` asks for and return the report.
pub fn run(cfg: &Config) -> Report {
    let started = Instant::now();
    let loadavg_start = report::loadavg();
    let tmp = tempfile::Builder::new()
        .prefix("vmblob-bench-")
        .tempdir_in(cfg.workdir.clone().unwrap_or_else(std::env::temp_dir));
    let tmp = match tmp {
        Ok(t) => t,
        Err(e) => panic!("cannot create the bench directory: {e}"),
    };
    let mut perf = cfg.perf_ctl.as_ref().map(|(ctl, ack)| match PerfControl::open(ctl, ack.as_deref()) {
        Ok(p) => p,
        Err(e) => panic!("cannot open perf's control fifo {}: {e}", ctl.display()),
    });
    eprintln!("measuring this machine's limits ...");
    let limits = measure_limits(cfg, &tmp.path().join("limits"));
    let workloads: Vec<Workload> = workloads()
        .into_iter()
        .filter(|w| cfg.only.as_ref().is_none_or(|o| w.label(cfg).contains(o.as_str())))
        .collect();
    let mut rows: Vec<Row> = workloads.iter().map(|w| Row::new(w.label(cfg), w.unit(), *w)).collect();
    for name in &cfg.paths {
        let dir = tmp.path().join(name);
        eprintln!("[{:5.1}s] {name}: starting, storing fixtures ...", started.elapsed().as_secs_f64());
        let path: Result<Box<dyn BenchPath>, String> = match name.as_str() {
            "vmblob" => VmblobPath::start(&dir, &cfg.vmblob).map(|p| Box::new(p) as _).map_err(|e| e.to_string()),
            "direct" => DirectPath::open(&dir, None).map(|p| Box::new(p) as _).map_err(|e| e.to_string()),
            // The same store behind sleeping threads (limits::handoff), its
            // callers polling at QD1 for as long as the guest does.
            "handoff" => {
                DirectPath::open(&dir, Some(cfg.vmblob.guest_poll)).map(|p| Box::new(p) as _).map_err(|e| e.to_string())
            }
            "azurite" => RestPath::azurite().map(|p| Box::new(p) as _).map_err(|e| e.to_string()),
            "s3s-fs" => RestPath::s3s_fs(&dir).map(|p| Box::new(p) as _).map_err(|e| e.to_string()),
            other => Err(format!("unknown path {other:?}")),
        };
        let path = match path {
            Ok(p) => p,
            Err(reason) => {
                eprintln!("path {name}: not available: {reason}");
                for row in &mut rows {
                    row.results.insert(name.clone(), Outcome::NotAvailable { reason: reason.clone() });
                }
                continue;
            }
        };
        let fixtures = setup_fixtures(path.as_ref(), cfg);
        for (w, row) in workloads.iter().zip(rows.iter_mut()) {
            let outcome = match &fixtures {
                Err(e) => Outcome::Failed { error: format!("set-up: {e}") },
                Ok(()) => {
                    eprintln!("[{:5.1}s] {name}: {}", started.elapsed().as_secs_f64(), row.workload);
                    match measure(path.as_ref(), w, cfg, &mut perf) {
                        Ok(m) => Outcome::Measured(m),
                        Err(e) => Outcome::Failed { error: e.to_string() },
                    }
                }
            };
            if let Outcome::Failed { error } = &outcome {
                eprintln!("path {name}: {}: FAILED: {error}", row.workload);
            }
            row.results.insert(name.clone(), outcome);
        }
        drop(path);
        // Free the page cache the path's files hold before the next path runs.
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mut report = Report::new(cfg, limits, rows);
    report.loadavg_start = loadavg_start;
    report.compute_ratios();
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}

fn measure_limits(cfg: &Config, dir: &Path) -> Limits {
    let budget = if cfg.quick { Duration::from_millis(30) } else { Duration::from_millis(300) };
    let memcpy_gbps =
        [SMALL, MEDIUM, CHUNK, LARGE].iter().map(|&s| (size_label(s), limits::memcpy_gbps(s, budget))).collect();
    let rounds = if cfg.quick { 2_000 } else { 20_000 };
    let (eventfd_rtt_p50_us, eventfd_rtt_p99_us) = match limits::eventfd_round_trips(rounds) {
        Ok(mut rt) => (percentile_us(&mut rt, 50.0), percentile_us(&mut rt, 99.0)),
        Err(e) => {
            eprintln!("eventfd ping-pong failed: {e}");
            (f64::NAN, f64::NAN)
        }
    };
    let (idle_wake_p50_us, idle_wake_p99_us) = match limits::handoff::idle_wake_times(rounds) {
        Ok(mut t) => (percentile_us(&mut t, 50.0), percentile_us(&mut t, 99.0)),
        Err(e) => {
            eprintln!("idle wake measurement failed: {e}");
            (f64::NAN, f64::NAN)
        }
    };
    // One server thread per core: the fewest that can use the whole machine.
    let servers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let handoff = limits::handoff::handoff_reads(dir, MEDIUM, MEDIUM_QD, servers, budget * 4)
        .inspect_err(|e| eprintln!("hand-off measurement failed: {e}"))
        .ok();
    Limits { memcpy_gbps, eventfd_rtt_p50_us, eventfd_rtt_p99_us, idle_wake_p50_us, idle_wake_p99_us, handoff }
}

/// Bytes of each reader's blob.
fn reader_blob_size(cfg: &Config) -> u64 {
    (cfg.readers_total / cfg.readers.max(1) as u64).div_ceil(CHUNK as u64) * CHUNK as u64
}

fn reader_blobs(cfg: &Config) -> Vec<String> {
    (0..cfg.readers).map(|i| format!("reader-{i}")).collect()
}

/// Store what the GET workloads read.
fn setup_fixtures(path: &dyn BenchPath, cfg: &Config) -> paths::Result<()> {
    for size in [SMALL, MEDIUM] {
        let data = crate::data::pattern(size as u64, 0, size);
        for i in 0..cfg.ops_blobs {
            path.store_blob(&blob_name('g', size, i), &data)?;
        }
    }
    path.store_blob(&blob_name('g', LARGE, 0), &crate::data::pattern(7, 0, LARGE))?;
    let reader_data = crate::data::pattern(16, 0, reader_blob_size(cfg) as usize);
    for blob in reader_blobs(cfg) {
        path.store_blob(&blob, &reader_data)?;
    }
    Ok(())
}

/// Warm up, then run `cfg.reps` repetitions; the server's peak RSS and CPU
/// time (and perf's samples, with `--perf-ctl`) cover the repetitions only.
fn measure(
    path: &dyn BenchPath,
    w: &Workload,
    cfg: &Config,
    perf: &mut Option<PerfControl>,
) -> paths::Result<Measured> {
    let warm = (cfg.rep_time / 4).max(Duration::from_millis(20));
    let reps = if matches!(w, Workload::Readers) { cfg.reps.min(3) } else { cfg.reps };
    let data = match *w {
        Workload::Ops { size, .. } | Workload::Transfer { size, .. } => crate::data::pattern(size as u64 + 1, 0, size),
        Workload::Readers => Vec::new(),
    };
    if !matches!(w, Workload::Readers) {
        run_once(path, w, cfg, &data, warm)?;
    }
    let pid = path.server_pid();
    if let Some(pid) = pid {
        let _ = rss::reset_peak(pid);
    }
    let cpu_before = pid.and_then(rss::cpu_seconds);
    let mut rates = Vec::with_capacity(reps);
    let mut walls = Vec::with_capacity(reps);
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut total_wall = 0.0;
    if let Some(p) = perf {
        p.enable()?;
    }
    let timed = (0..reps).map(|_| run_once(path, w, cfg, &data, cfg.rep_time)).collect::<Vec<_>>();
    if let Some(p) = perf {
        p.disable()?;
    }
    for result in timed {
        let (rate, wall, mut lat) = result?;
        rates.push(rate);
        walls.push(wall);
        total_wall += wall;
        if !lat.is_empty() {
            p50.push(percentile_us(&mut lat, 50.0));
            p99.push(percentile_us(&mut lat, 99.0));
        }
    }
    let server_cpu_pct = match (cpu_before, pid.and_then(rss::cpu_seconds)) {
        (Some(a), Some(b)) if total_wall > 0.0 => Some((b - a) / total_wall * 100.0),
        _ => None,
    };
    Ok(Measured {
        rate: Spread::of(&rates).unwrap_or(Spread { median: 0.0, min: 0.0, max: 0.0, reps: 0 }),
        wall_s: Spread::of(&walls),
        p50_us: Spread::of(&p50).map(|s| s.median),
        p99_us: Spread::of(&p99).map(|s| s.median),
        server_peak_rss_mib: pid.and_then(rss::peak_kib).map(|k| k as f64 / 1024.0),
        server_cpu_pct,
    })
}

/// One repetition: (rate in the workload's unit, wall seconds, latencies).
fn run_once(
    path: &dyn BenchPath,
    w: &Workload,
    cfg: &Config,
    data: &[u8],
    duration: Duration,
) -> paths::Result<(f64, f64, Vec<std::time::Duration>)> {
    match *w {
        Workload::Ops { kind, size, qd } => {
            let spec = OpsSpec { kind, size, qd, duration, blobs: cfg.ops_blobs };
            let OpsSample { ops, wall, latencies } = path.ops(&spec, data)?;
            let secs = wall.as_secs_f64().max(1e-9);
            let rate = if size < MEDIUM { ops as f64 / secs } else { (ops * size as u64) as f64 / secs / 1e9 };
            Ok((rate, secs, latencies))
        }
        Workload::Transfer { kind, size } => {
            let blob = match kind {
                OpKind::Get => blob_name('g', size, 0),
                OpKind::Put => blob_name('p', size, 0),
            };
            let start = Instant::now();
            let (mut busy, mut n) = (0.0, 0u64);
            while n == 0 || start.elapsed() < duration {
                busy += path.transfer(kind, &blob, data)?.as_secs_f64();
                n += 1;
            }
            Ok(((n * size as u64) as f64 / busy.max(1e-9) / 1e9, busy, Vec::new()))
        }
        Workload::Readers => {
            let size = reader_blob_size(cfg);
            let wall = path.readers(&reader_blobs(cfg), size, CHUNK)?.as_secs_f64().max(1e-9);
            Ok(((size * cfg.readers as u64) as f64 / wall / 1e9, wall, Vec::new()))
        }
    }
}
