//! Peak resident memory of a server process, per workload: reset the
//! high-water mark before, read it after.

/// Reset `pid`'s peak RSS (VmHWM) to its current RSS.
pub fn reset_peak(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// `pid`'s peak RSS in KiB since start or the last [`reset_peak`].
pub fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_hwm(&status)
}

fn parse_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds `pid` has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (stat.contains(')')).then(|| crate::cpu_time_of(pid).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_high_water_mark() {
        assert_eq!(parse_hwm("Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    4242 kB\nVmRSS:\t 10 kB\n"), Some(4242));
        assert_eq!(parse_hwm("VmRSS:\t 10 kB\n"), None);
        let me = std::process::id();
        // A 256 MiB buffer dwarfs what concurrent tests allocate meanwhile.
        let big = vec![1u8; 256 << 20];
        let with_big = peak_kib(me).unwrap();
        assert!(with_big >= 256 << 10, "peak {with_big} KiB with a 256 MiB buffer touched");
        drop(std::hint::black_box(big));
        reset_peak(me).unwrap();
        let after = peak_kib(me).unwrap();
        assert!(after + (128 << 10) < with_big, "reset peak {after} KiB, before {with_big} KiB");
    }
}
