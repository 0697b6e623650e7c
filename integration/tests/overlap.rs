//! Requests on one queue overlap: a slow request does not hold up fast ones,
//! completions come back out of order and each reaches its own caller, and a
//! stop drains requests that sit inside executors.
//!
//! `measure_round_trips` (ignored) prints 4 KiB GET round trips at queue depth
//! 1 and 32 through the real daemon, beside an eventfd ping-pong between two
//! threads (the floor for one kick and one interrupt):
//!
//!     cargo test --release -p vmblob-integration --test overlap -- --ignored --nocapture

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use vmblob_integration::ops::submit_get;
use vmblob_integration::{Guest, GuestOptions, Sandbox, Vsp, VspOptions};
use vmm_sys_util::eventfd::EventFd;

/// Median and 99th percentile of `samples`.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// Round trips between two threads blocking on eventfds.
fn eventfd_ping_pong(rounds: usize) -> Duration {
    let (ping, pong) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
    let (ping2, pong2) = (ping.try_clone().unwrap(), pong.try_clone().unwrap());
    let peer = std::thread::spawn(move || {
        for _ in 0..rounds {
            ping2.read().unwrap();
            pong2.write(1).unwrap();
        }
    });
    let start = Instant::now();
    for _ in 0..rounds {
        ping.write(1).unwrap();
        pong.read().unwrap();
    }
    let took = start.elapsed();
    peer.join().unwrap();
    took / rounds as u32
}

/// 4 KiB GETs with `depth` in flight from one thread; returns ops/s and,
/// at depth 1, the per-op latencies.
fn get_4k(g: &Guest, depth: usize, ops: usize) -> (f64, Vec<Duration>) {
    let mut inflight = VecDeque::with_capacity(depth);
    let mut lat = Vec::with_capacity(ops);
    let start = Instant::now();
    for _ in 0..ops {
        if inflight.len() == depth {
            let (t0, op): (Instant, _) = inflight.pop_front().unwrap();
            let r: vmblob_vsc::PendingOp = op;
            r.wait().unwrap();
            lat.push(t0.elapsed());
        }
        inflight.push_back((Instant::now(), submit_get(&g.client, "bench", "4k", 4096).unwrap()));
    }
    for (t0, op) in inflight {
        op.wait().unwrap();
        lat.push(t0.elapsed());
    }
    (ops as f64 / start.elapsed().as_secs_f64(), lat)
}

#[test]
#[ignore = "measurement, not a test: run with --release --ignored --nocapture"]
fn measure_round_trips() {
    let floor = eventfd_ping_pong(20_000);
    println!("eventfd ping-pong round trip: {:.1} us", floor.as_secs_f64() * 1e6);
    let poll_us: u64 = std::env::var("POLL_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut extra: Vec<String> =
        std::env::var("VSP_ARGS").unwrap_or_default().split_whitespace().map(Into::into).collect();
    let sb = Sandbox::new();
    let mut opts = VspOptions::default().queues(1);
    opts.extra.append(&mut extra);
    let vsp = Vsp::start(&sb.dir, opts);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().poll(Duration::from_micros(poll_us)));
    g.create_container("bench").unwrap();
    g.put("bench", "4k", &vec![7u8; 4096]).unwrap();
    get_4k(&g, 1, 2_000);
    for depth in [1usize, 32] {
        let before = vsp.cpu_time();
        let (ops_s, mut lat) = get_4k(&g, depth, 20_000);
        let cpu = vsp.cpu_time() - before;
        let (p50, p99) = percentiles(&mut lat);
        println!(
            "4 KiB GET QD{depth:<3} {ops_s:>9.0} ops/s  p50 {:>7.1} us  p99 {:>7.1} us  (client poll {poll_us} us, vsp cpu {cpu:?})",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
}
