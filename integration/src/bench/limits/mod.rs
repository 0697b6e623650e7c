//! What this machine allows: memcpy bandwidth (the ceiling for large
//! transfers, which cost at least one copy), an eventfd ping-pong between
//! two threads (the floor for one kick plus one interrupt), and what handing
//! a request to a sleeping thread costs ([`handoff`]).

pub mod handoff;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

/// Single-thread memcpy bandwidth in GB/s for `size`-byte copies, copying
/// for about `budget` (at least a few times).
pub fn memcpy_gbps(size: usize, budget: Duration) -> f64 {
    let src = vec![0x5au8; size];
    let mut dst = vec![0u8; size];
    // Fault both buffers in before timing.
    dst.copy_from_slice(&src);
    let start = Instant::now();
    let mut copies = 0u64;
    while copies < 4 || start.elapsed() < budget {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
        copies += 1;
    }
    (copies * size as u64) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Round-trip times of `rounds` eventfd ping-pongs between two threads, each
/// side blocking in read(2) as an interrupt-driven waiter does.
pub fn eventfd_round_trips(rounds: usize) -> std::io::Result<Vec<Duration>> {
    let ping = Arc::new(EventFd::new(0)?);
    let pong = Arc::new(EventFd::new(0)?);
    let (p, q) = (ping.clone(), pong.clone());
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..rounds {
            p.read()?;
            q.write(1)?;
        }
        Ok(())
    });
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        ping.write(1)?;
        pong.read()?;
        out.push(t.elapsed());
    }
    echo.join().map_err(|_| std::io::Error::other("echo thread panicked"))??;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_pong_completes_every_round() {
        let rt = eventfd_round_trips(50).unwrap();
        assert_eq!(rt.len(), 50);
        assert!(rt.iter().all(|d| *d > Duration::ZERO));
    }

    #[test]
    fn memcpy_reports_a_positive_rate() {
        assert!(memcpy_gbps(4096, Duration::from_millis(5)) > 0.0);
    }
}
