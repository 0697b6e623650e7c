//! `vmblob-bench`: see `docs/PERFORMANCE.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vmblob_integration::bench::{self, Config, PATHS};

/// vmblob against the fs store called directly, the REST path (object_store
/// to Azurite and s3s-fs over loopback) and this machine's limits.
#[derive(Parser, Debug)]
#[command(name = "vmblob-bench")]
struct Args {
    /// Small and short: a smoke run in well under a minute.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Timed repetitions per workload (default 5, quick 2).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per repetition of an ops or transfer workload.
    #[arg(long)]
    rep_secs: Option<f64>,
    /// GiB all readers of the many-reader workload read in one repetition.
    #[arg(long)]
    readers_gib: Option<f64>,
    /// Paths to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = PATHS.map(String::from))]
    paths: Vec<String>,
    /// Request queues of the daemon and the guest.
    #[arg(long, default_value_t = 2)]
    queues: usize,
    /// Guest busy-poll window in microseconds after a completion (0: interrupts only).
    #[arg(long, default_value_t = 50)]
    guest_poll_us: u64,
    /// Extra `vmblob-vsp` flag (repeatable), e.g. --vsp-arg=--poll-us=50.
    #[arg(long = "vsp-arg", allow_hyphen_values = true)]
    vsp_args: Vec<String>,
    /// vmblob GETs copy their bytes out of the DMA buffer into the caller's
    /// memory (`submit_get`/`get_opts`) instead of reading them in place
    /// (`submit_get_bytes`/`get_bytes`, the default).
    #[arg(long)]
    copy_out: bool,
    /// Run only the workloads whose label contains this text (e.g. "1 MiB Get").
    #[arg(long)]
    only: Option<String>,
    /// Directory for the stores (default: the system temporary directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// perf's control fifo: `enable` is written to it before each workload's
    /// timed repetitions and `disable` after them, for
    /// `perf record -D -1 --control fifo:CTL[,ACK]` (see docs/PERFORMANCE.md).
    #[arg(long, value_name = "CTL")]
    perf_ctl: Option<PathBuf>,
    /// perf's ack fifo (with --perf-ctl): wait for perf to act on each command.
    #[arg(long, value_name = "ACK", requires = "perf_ctl")]
    perf_ack: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = if args.quick { Config::quick() } else { Config::full() };
    if let Some(r) = args.reps {
        cfg.reps = r.max(1);
    }
    if let Some(s) = args.rep_secs {
        cfg.rep_time = Duration::from_secs_f64(s.max(0.01));
    }
    if let Some(g) = args.readers_gib {
        cfg.readers_total = (g * (1u64 << 30) as f64) as u64;
    }
    cfg.paths = args.paths;
    cfg.vmblob.queues = args.queues;
    cfg.vmblob.guest_poll = Duration::from_micros(args.guest_poll_us);
    cfg.vmblob.vsp_args = args.vsp_args;
    cfg.workdir = args.workdir;
    cfg.only = args.only;
    cfg.vmblob.copy_out = args.copy_out;
    cfg.perf_ctl = args.perf_ctl.map(|ctl| (ctl, args.perf_ack));
    let report = bench::run(&cfg);
    println!("{}", report.to_markdown());
    if let Some(path) = args.json {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    match report.failures() {
        0 => ExitCode::SUCCESS,
        n => {
            eprintln!("{n} workload(s) failed");
            ExitCode::FAILURE
        }
    }
}
