//! Issue 14's in-process storm: `kill -9` of the real daemon again and again
//! under a mixed load of 40 requests in flight on 2 queues, with the glue
//! frontend keeping the vhost-user inflight region across the restarts (as
//! QEMU's vhost-user-blk does). The guest must not notice: every request
//! completes once and without error, every acknowledged write reads back
//! with its bytes, and the restarted VSPs resubmitted what the dead ones had
//! taken.
//!
//! ```text
//! VMBLOB_CRASH_KILLS=100 cargo test -p vmblob-integration --test crash_survival -- --nocapture
//! ```
//! (8 kills by default, to keep the suite short.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmblob_integration::data::pattern;
use vmblob_integration::{Guest, GuestOptions, Sandbox, Vsp, VspOptions};
use vmblob_protocol::ops::Conditions;
use vmblob_vsc::{BlobClient, PutOptions};

const THREADS: u64 = 4;
/// Requests each thread keeps in flight: 40 on the two queues together.
const DEPTH: u64 = 10;
const LEN: usize = 48 << 10;

/// One load thread: rounds of DEPTH requests submitted at once (PutBlobs of
/// its own names, ranged GETs of the seed blob), then each waited for.
fn load(
    client: BlobClient,
    t: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    done: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let c = client.container("crash");
    let seed_blob = pattern(7, 0, LEN);
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut puts = Vec::new();
        let mut gets = Vec::new();
        for k in 0..DEPTH {
            if k % 2 == 0 {
                let name = format!("t{t}/n{k}");
                let seed = (t << 40) | (round << 8) | k;
                match c.blob(&name).submit_put(&pattern(seed, 0, LEN), PutOptions::default()) {
                    Ok(p) => puts.push((name, seed, p)),
                    Err(e) => errors.push(format!("submit put {name}: {e}")),
                }
            } else {
                match c.blob("seed").submit_get(0..LEN as u64, Conditions::none()) {
                    Ok(p) => gets.push(p),
                    Err(e) => errors.push(format!("submit get: {e}")),
                }
            }
        }
        for (name, seed, p) in puts {
            match p.wait() {
                Ok(_) => {
                    acked.lock().unwrap().insert(name, seed);
                }
                Err(e) => errors.push(format!("put {name} round {round}: {e}")),
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
        for p in gets {
            match p.wait() {
                Ok(got) if got.data == seed_blob => {}
                Ok(_) => errors.push(format!("get round {round}: other bytes")),
                Err(e) => errors.push(format!("get round {round}: {e}")),
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
        round += 1;
    }
    errors
}

/// What one storm saw.
struct Storm {
    errors: Vec<String>,
    resubmitted: usize,
}

/// `kills` SIGKILLs of the daemon under the load, the guest offering the inflight region or not.
fn storm(kills: usize, inflight: bool) -> Storm {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().queues(2));
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2).reconnect(true).inflight(inflight));
    g.container("crash").create().unwrap();
    g.container("crash").blob("seed").put(&pattern(7, 0, LEN)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (client, stop, acked, done) = (g.client.clone(), stop.clone(), acked.clone(), done.clone());
            std::thread::spawn(move || load(client, t, stop, acked, done))
        })
        .collect();
    let started = Instant::now();
    for k in 0..kills {
        // Let the load run, and the restarted VSP take requests, before the next kill.
        let before = done.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::Relaxed) < before + 2 * DEPTH as usize {
            assert!(Instant::now() < deadline, "kill {k}: the load made no progress after the restart");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20 + 37 * (k as u64 % 7)));
        vsp.kill();
        vsp.restart();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let ops = done.load(Ordering::Relaxed);
    let logs = vsp.logs();
    let resubmitted: usize = logs
        .lines()
        .filter_map(|l| l.split("inflight region: ").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    eprintln!(
        "crash storm (inflight {inflight}): {kills} kills in {:.1} s, {ops} requests, {} errors, {resubmitted} \
         resubmitted from the region, {} reconnects",
        started.elapsed().as_secs_f64(),
        errors.len(),
        g.transport.reconnects()
    );
    // Each request ended once either way: nothing is left pending.
    assert_eq!(g.transport.pending(), 0, "every request completed");
    assert_eq!(g.transport.reconnects(), kills, "each kill was one reconnect");
    // Every acknowledged write holds its bytes (no write lost, none replayed over a later one).
    for (name, seed) in acked.lock().unwrap().iter() {
        let got = g.container("crash").blob(name).get().unwrap();
        assert!(got == pattern(*seed, 0, LEN), "{name} does not hold its last acknowledged version");
    }
    Storm { errors, resubmitted }
}

#[test]
fn kill9_under_load_is_invisible_to_the_guest() {
    let kills: usize = std::env::var("VMBLOB_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let s = storm(kills, true);
    assert!(s.errors.is_empty(), "the guest saw errors:\n{}", s.errors.join("\n"));
    assert!(s.resubmitted > 0, "some kill caught requests in flight");
}

/// A frontend without the region: requests in flight at a crash fail, cleanly
/// and once (the outcome of a write is unknown, a read was rescinded), and the
/// device comes back.
#[test]
fn without_the_inflight_region_a_crash_fails_what_was_in_flight_cleanly() {
    let s = storm(3, false);
    assert!(!s.errors.is_empty(), "the kills caught requests in flight");
    assert_eq!(s.resubmitted, 0, "nothing to resubmit without a region");
    for e in &s.errors {
        assert!(e.contains("outcome unknown") || e.contains("rescinded"), "not a clean failure: {e}");
    }
}
