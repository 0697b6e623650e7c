//! The bench's results: one markdown table (plus limits and latencies) and
//! the same as JSON, every figure also as a ratio to same-run baselines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::limits::handoff::Handoff;
use super::paths::OpKind;
use super::stats::Spread;
use super::{Config, PATHS, Workload};

#[derive(Debug, Serialize)]
pub struct Limits {
    /// Single-thread memcpy bandwidth by copy size.
    pub memcpy_gbps: Vec<(String, f64)>,
    pub eventfd_rtt_p50_us: f64,
    pub eventfd_rtt_p99_us: f64,
    /// Kick of a thread sleeping on an eventfd, the kicker spinning for the answer.
    pub idle_wake_p50_us: f64,
    pub idle_wake_p99_us: f64,
    /// The 1 MiB GET QD8 shape as bare `pread`s, on the callers' threads and handed off.
    pub handoff: Option<Handoff>,
}

impl Limits {
    fn memcpy(&self, size_label: &str) -> Option<f64> {
        self.memcpy_gbps.iter().find(|(s, _)| s == size_label).map(|(_, g)| *g)
    }
}

#[derive(Debug, Serialize)]
pub struct Measured {
    /// ops/s or GB/s (the row's unit), over the repetitions.
    pub rate: Spread,
    pub wall_s: Option<Spread>,
    /// Median over repetitions of each repetition's percentile.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Peak RSS of the serving process during the repetitions.
    pub server_peak_rss_mib: Option<f64>,
    /// CPU the serving process used, in % of one core, during the repetitions.
    pub server_cpu_pct: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Measured(Measured),
    NotAvailable { reason: String },
    Failed { error: String },
}

impl Outcome {
    fn measured(&self) -> Option<&Measured> {
        match self {
            Outcome::Measured(m) => Some(m),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub unit: &'static str,
    /// By path name.
    pub results: BTreeMap<String, Outcome>,
    /// vmblob's figure over each baseline.
    pub ratios: BTreeMap<String, f64>,
    #[serde(skip)]
    shape: Workload,
}

impl Row {
    pub fn new(workload: String, unit: &'static str, shape: Workload) -> Row {
        Row { workload, unit, results: BTreeMap::new(), ratios: BTreeMap::new(), shape }
    }

    fn rate(&self, path: &str) -> Option<f64> {
        self.results.get(path)?.measured().map(|m| m.rate.median)
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    pub reps: usize,
    pub rep_time_s: f64,
    pub vmblob_queues: usize,
    pub guest_poll_us: u128,
    pub vsp_args: Vec<String>,
    pub vmblob_copy_out: bool,
    pub cores: usize,
    pub kernel: String,
    /// /proc/loadavg when the run started and ended: other work on the
    /// machine skews every figure.
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub limits: Limits,
    pub rows: Vec<Row>,
    pub elapsed_s: f64,
}

impl Report {
    pub fn new(cfg: &Config, limits: Limits, rows: Vec<Row>) -> Report {
        Report {
            quick: cfg.quick,
            reps: cfg.reps,
            rep_time_s: cfg.rep_time.as_secs_f64(),
            vmblob_queues: cfg.vmblob.queues,
            guest_poll_us: cfg.vmblob.guest_poll.as_micros(),
            vsp_args: cfg.vmblob.vsp_args.clone(),
            vmblob_copy_out: cfg.vmblob.copy_out,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            loadavg_start: String::new(),
            loadavg_end: loadavg(),
            limits,
            rows,
            elapsed_s: 0.0,
        }
    }

    /// Fill every row's ratios from the figures of the same run.
    pub fn compute_ratios(&mut self) {
        let qd1: BTreeMap<String, f64> = self
            .rows
            .iter()
            .filter_map(|r| match r.shape {
                Workload::Ops { kind, size, qd: 1 } => Some((format!("{kind:?}{size}"), r.rate("vmblob")?)),
                _ => None,
            })
            .collect();
        for row in &mut self.rows {
            let Some(v) = row.rate("vmblob") else { continue };
            let mut ratios = BTreeMap::new();
            if let Some(d) = row.rate("direct").filter(|d| *d > 0.0) {
                ratios.insert("vs direct".to_owned(), v / d);
            }
            if let Some(h) = row.rate("handoff").filter(|h| *h > 0.0) {
                ratios.insert("vs hand-off".to_owned(), v / h);
            }
            let best_rest = ["azurite", "s3s-fs"]
                .iter()
                .filter_map(|p| row.rate(p))
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
            if let Some(b) = best_rest.filter(|b| *b > 0.0) {
                ratios.insert("vs best REST".to_owned(), v / b);
            }
            match row.shape {
                Workload::Ops { kind, size, qd } if row.unit == "ops/s" => {
                    if qd == 1 {
                        let p50 = row.results.get("vmblob").and_then(|o| o.measured()).and_then(|m| m.p50_us);
                        if let Some(p50) = p50.filter(|_| self.limits.eventfd_rtt_p50_us > 0.0) {
                            ratios.insert("p50 vs eventfd RTT".to_owned(), p50 / self.limits.eventfd_rtt_p50_us);
                        }
                        if let Some(p50) =
                            p50.filter(|_| matches!(kind, OpKind::Get) && self.limits.idle_wake_p50_us > 0.0)
                        {
                            ratios.insert("p50 vs idle wake".to_owned(), p50 / self.limits.idle_wake_p50_us);
                        }
                    } else if let Some(base) = qd1.get(&format!("{kind:?}{size}")).filter(|b| **b > 0.0) {
                        ratios.insert("vs QD1".to_owned(), v / base);
                    }
                }
                Workload::Ops { size, .. } | Workload::Transfer { size, .. } => {
                    if let Some(m) = self.limits.memcpy(&super::size_label(size)) {
                        ratios.insert("vs memcpy".to_owned(), v / m);
                    }
                }
                Workload::Readers => {
                    if let Some(m) = self.limits.memcpy(&super::size_label(super::CHUNK)) {
                        ratios.insert("vs memcpy".to_owned(), v / m);
                    }
                }
            }
            row.ratios = ratios;
        }
    }

    /// Workloads that failed on a path that did start (a broken path, not a
    /// missing one).
    pub fn failures(&self) -> usize {
        self.rows.iter().flat_map(|r| r.results.values()).filter(|o| matches!(o, Outcome::Failed { .. })).count()
    }

    /// The report as markdown tables.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let mode = if self.quick { "quick" } else { "full" };
        let _ = writeln!(
            s,
            "vmblob-bench ({mode}): {} cores, kernel {}, {} reps x {:.2} s, vmblob queues {}, guest poll {} us, \
             vsp args [{}], GET bytes {}, {:.0} s in all; load average at start {}, at end {}\n",
            self.cores,
            self.kernel,
            self.reps,
            self.rep_time_s,
            self.vmblob_queues,
            self.guest_poll_us,
            self.vsp_args.join(" "),
            if self.vmblob_copy_out { "copied out" } else { "read in place" },
            self.elapsed_s,
            self.loadavg_start,
            self.loadavg_end
        );
        let _ = writeln!(s, "| limit | value |\n| --- | --- |");
        for (size, g) in &self.limits.memcpy_gbps {
            let _ = writeln!(s, "| memcpy {size} (1 thread) | {g:.2} GB/s |");
        }
        let _ = writeln!(
            s,
            "| eventfd ping-pong RTT | p50 {:.1} us, p99 {:.1} us |",
            self.limits.eventfd_rtt_p50_us, self.limits.eventfd_rtt_p99_us
        );
        let _ = writeln!(
            s,
            "| idle wake (eventfd kick of a sleeping thread, kicker spinning) | p50 {:.1} us, p99 {:.1} us |",
            self.limits.idle_wake_p50_us, self.limits.idle_wake_p99_us
        );
        if let Some(h) = self.limits.handoff {
            let _ = writeln!(
                s,
                "| 1 MiB pread x{}: own threads / handed to {} sleeping threads | {:.2} / {:.2} GB/s ({:.2}x) |",
                super::MEDIUM_QD,
                h.servers,
                h.own_threads_gbps,
                h.handed_off_gbps,
                h.handed_off_gbps / h.own_threads_gbps
            );
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "| workload | unit | {} | vmblob vs direct | vmblob vs hand-off | vs best REST | vs limit | VSP peak RSS |",
            PATHS.join(" | ")
        );
        let _ = writeln!(s, "|{}", " --- |".repeat(PATHS.len() + 7));
        let mut notes: BTreeMap<String, String> = BTreeMap::new();
        for row in &self.rows {
            let cells: Vec<String> = PATHS.iter().map(|p| rate_cell(row, p, &mut notes)).collect();
            let ratio = |k: &str| row.ratios.get(k).map_or("–".to_owned(), |r| format!("{r:.2}x"));
            let limits: Vec<String> = ["vs memcpy", "p50 vs idle wake", "p50 vs eventfd RTT", "vs QD1"]
                .iter()
                .filter_map(|k| row.ratios.get(*k).map(|r| format!("{r:.2}x {}", k.trim_start_matches("vs "))))
                .collect();
            let limit = if limits.is_empty() { "–".to_owned() } else { limits.join(", ") };
            let rss = row
                .results
                .get("vmblob")
                .and_then(|o| o.measured())
                .and_then(|m| m.server_peak_rss_mib)
                .map_or("–".to_owned(), |m| format!("{m:.0} MiB"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {limit} | {rss} |",
                row.workload,
                row.unit,
                cells.join(" | "),
                ratio("vs direct"),
                ratio("vs hand-off"),
                ratio("vs best REST")
            );
        }
        let _ = writeln!(s, "\nLatency (p50 / p99, us; median over repetitions):\n");
        let _ = writeln!(s, "| workload | {} |\n|{}", PATHS.join(" | "), " --- |".repeat(PATHS.len() + 1));
        for row in self.rows.iter().filter(|r| r.unit == "ops/s") {
            let cells: Vec<String> = PATHS
                .iter()
                .map(|p| match row.results.get(*p).and_then(|o| o.measured()) {
                    Some(Measured { p50_us: Some(a), p99_us: Some(b), .. }) => format!("{a:.0} / {b:.0}"),
                    _ => "–".to_owned(),
                })
                .collect();
            let _ = writeln!(s, "| {} | {} |", row.workload, cells.join(" | "));
        }
        if !notes.is_empty() {
            let _ = writeln!(s);
            for (k, v) in notes {
                let _ = writeln!(s, "- {k}: {v}");
            }
        }
        s
    }
}

/// The three load averages.
pub fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn rate_cell(row: &Row, path: &str, notes: &mut BTreeMap<String, String>) -> String {
    match row.results.get(path) {
        None => "–".to_owned(),
        Some(Outcome::NotAvailable { reason }) => {
            notes.insert(path.to_string(), format!("not available: {reason}"));
            "n/a".to_owned()
        }
        Some(Outcome::Failed { error }) => {
            notes.insert(format!("{path}, {}", row.workload), format!("failed: {error}"));
            "FAILED".to_owned()
        }
        Some(Outcome::Measured(m)) => {
            let value =
                if row.unit == "ops/s" { format!("{:.0}", m.rate.median) } else { format!("{:.2}", m.rate.median) };
            let spread = format!("±{:.0}%", m.rate.spread_pct() / 2.0);
            match (&row.shape, &m.wall_s) {
                (Workload::Readers, Some(w)) => format!("{value} {spread} ({:.2} s)", w.median),
                _ => format!("{value} {spread}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rate: f64, p50: f64) -> Outcome {
        Outcome::Measured(Measured {
            rate: Spread::of(&[rate]).unwrap(),
            wall_s: None,
            p50_us: Some(p50),
            p99_us: Some(p50 * 2.0),
            server_peak_rss_mib: None,
            server_cpu_pct: None,
        })
    }

    fn row(shape: Workload, unit: &'static str, results: Vec<(&str, Outcome)>) -> Row {
        let mut r = Row::new(format!("{shape:?}"), unit, shape);
        r.results = results.into_iter().map(|(p, o)| (p.to_owned(), o)).collect();
        r
    }

    #[test]
    fn ratios_come_from_the_same_run() {
        let limits = Limits {
            memcpy_gbps: vec![("1 MiB".into(), 10.0)],
            eventfd_rtt_p50_us: 5.0,
            eventfd_rtt_p99_us: 9.0,
            idle_wake_p50_us: 10.0,
            idle_wake_p99_us: 30.0,
            handoff: Some(Handoff { servers: 2, own_threads_gbps: 20.0, handed_off_gbps: 8.0 }),
        };
        let get = |qd| Workload::Ops { kind: OpKind::Get, size: 4096, qd };
        let rows = vec![
            row(
                get(1),
                "ops/s",
                vec![
                    ("vmblob", measured(1000.0, 20.0)),
                    ("direct", measured(4000.0, 1.0)),
                    ("handoff", measured(2000.0, 8.0)),
                ],
            ),
            row(
                get(32),
                "ops/s",
                vec![
                    ("vmblob", measured(6000.0, 50.0)),
                    ("azurite", measured(100.0, 1.0)),
                    ("s3s-fs", measured(300.0, 1.0)),
                ],
            ),
            row(
                Workload::Ops { kind: OpKind::Get, size: 1 << 20, qd: 8 },
                "GB/s",
                vec![("vmblob", measured(4.0, 0.0)), ("azurite", Outcome::NotAvailable { reason: "gone".into() })],
            ),
        ];
        let mut r = Report::new(&Config::quick(), limits, rows);
        r.compute_ratios();
        let ratio = |i: usize, k: &str| r.rows[i].ratios.get(k).copied();
        assert_eq!(ratio(0, "vs direct"), Some(0.25));
        assert_eq!(ratio(0, "p50 vs eventfd RTT"), Some(4.0));
        assert_eq!(ratio(0, "p50 vs idle wake"), Some(2.0));
        assert_eq!(ratio(1, "vs QD1"), Some(6.0));
        assert_eq!(ratio(1, "vs best REST"), Some(20.0));
        assert_eq!(ratio(2, "vs memcpy"), Some(0.4));
        assert_eq!(ratio(0, "vs hand-off"), Some(0.5));
        assert_eq!(ratio(1, "vs hand-off"), None, "no hand-off figure in that row");
        assert_eq!(ratio(2, "vs best REST"), None);
        assert_eq!(r.failures(), 0);
        let md = r.to_markdown();
        assert!(md.contains("azurite: not available: gone"), "{md}");
        r.rows[2].results.insert("direct".into(), Outcome::Failed { error: "boom".into() });
        assert_eq!(r.failures(), 1);
    }
}
