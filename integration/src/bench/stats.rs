//! Medians, spreads and latency percentiles over repetitions.

use std::time::Duration;

use serde::Serialize;

/// The median of a set of repetitions and how far they spread.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub reps: usize,
}

impl Spread {
    /// `None` for no samples (a path that could not run).
    pub fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Spread { median: median_sorted(&s), min: s[0], max: s[s.len() - 1], reps: s.len() })
    }

    /// (max - min) / median, in percent: how noisy the figure is.
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 { 0.0 } else { (self.max - self.min) / self.median * 100.0 }
    }
}

fn median_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// The `p`-th percentile (0..=100, nearest rank) of `lat`, in microseconds.
pub fn percentile_us(lat: &mut [Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    lat.sort_unstable();
    let rank = ((p / 100.0) * lat.len() as f64).ceil().max(1.0) as usize;
    lat[rank.min(lat.len()) - 1].as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.reps), (2.5, 1.0, 10.0, 4));
        assert_eq!(Spread::of(&[4.0, 2.0, 9.0]).unwrap().median, 4.0);
        assert!(Spread::of(&[]).is_none());
        assert!((Spread::of(&[1.0, 3.0]).unwrap().spread_pct() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut lat: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&mut lat, 50.0), 50.0);
        assert_eq!(percentile_us(&mut lat, 99.0), 99.0);
        assert_eq!(percentile_us(&mut lat, 100.0), 100.0);
        assert_eq!(percentile_us(&mut [], 50.0), 0.0);
    }
}
