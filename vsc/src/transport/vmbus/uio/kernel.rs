//! Which kernels' `uio_hv_generic` can serve a vmblob channel (notes/vmbus.md,
//! "Corrections from the kernel sources", §3.5).
//!
//! Before Linux 6.10 (all 6.1.y, the 5.4–6.6 LTS lines) `hv_uio_probe` refuses
//! a channel the host gave no monitor (`-ENOTSUPP`, "vmbus channel requires
//! hypercall"), and a write to `/dev/uioN` only clears the interrupt mask
//! instead of signalling the host. A channel without `monitor_id` on such a
//! kernel can therefore never work: say so at once, naming the kernel, rather
//! than after a bind timeout.
#![forbid(unsafe_code)]

use std::path::Path;

use super::sysfs::{SysfsError, VmbusDevice};

/// The first kernel whose `uio_hv_generic` binds channels without a monitor.
pub const MIN_FOR_UNMONITORED: (u32, u32) = (6, 10);

/// `ENOTSUPP` (kernel-internal 524), what the old probe returns through `bind`.
pub(super) const ENOTSUPP: i32 = 524;

/// A kernel release string (`uname -r`) and the version it starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRelease {
    pub text: String,
    /// `(major, minor)`, when the text starts with them.
    pub version: Option<(u32, u32)>,
}

impl KernelRelease {
    pub fn parse(text: &str) -> Self {
        let text = text.trim().to_owned();
        let mut parts = text.split(|c: char| !c.is_ascii_digit());
        let number = |p: Option<&str>| p.and_then(|s| s.parse::<u32>().ok());
        let version = number(parts.next()).zip(number(parts.next()));
        Self { text, version }
    }

    /// The running kernel's release (`/proc/sys/kernel/osrelease`), if readable.
    pub fn running() -> Option<Self> {
        std::fs::read_to_string(Path::new("/proc/sys/kernel/osrelease")).ok().map(|t| Self::parse(&t))
    }

    /// Whether its `uio_hv_generic` binds channels without a monitor; `None` if unknown.
    pub fn binds_unmonitored(&self) -> Option<bool> {
        self.version.map(|v| v >= MIN_FOR_UNMONITORED)
    }
}

/// Refuses, before any sysfs write, a channel the kernel cannot serve.
pub fn check_kernel(dev: &VmbusDevice, kernel: Option<&KernelRelease>) -> Result<(), SysfsError> {
    match kernel {
        Some(k) if dev.monitor_id.is_none() && k.binds_unmonitored() == Some(false) => Err(too_old(dev, &k.text)),
        _ => Ok(()),
    }
}

pub(super) fn too_old(dev: &VmbusDevice, release: &str) -> SysfsError {
    let (major, minor) = MIN_FOR_UNMONITORED;
    SysfsError::KernelTooOld {
        instance: dev.instance.clone(),
        release: release.to_owned(),
        min: format!("{major}.{minor}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(monitor_id: Option<u8>) -> VmbusDevice {
        VmbusDevice { instance: "inst".into(), relid: 5, monitor_id, uio: None, driver: None }
    }

    #[test]
    fn releases_parse_as_uname_prints_them() {
        assert_eq!(KernelRelease::parse("6.1.0-27-amd64\n").version, Some((6, 1)));
        assert_eq!(KernelRelease::parse("6.12.5-azure").version, Some((6, 12)));
        assert_eq!(KernelRelease::parse("5.15.0-1075-azure").version, Some((5, 15)));
        assert_eq!(KernelRelease::parse("garbage").version, None);
        assert_eq!(KernelRelease::parse("6").version, None);
    }

    #[test]
    fn a_channel_without_a_monitor_needs_6_10() {
        let old = KernelRelease::parse("6.1.0-27-amd64");
        let err = check_kernel(&dev(None), Some(&old)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("6.10") && msg.contains("6.1.0-27-amd64") && msg.contains("inst"), "{msg}");
        // A monitored channel binds on old kernels; new kernels bind either; unknown ones are tried.
        assert!(check_kernel(&dev(Some(3)), Some(&old)).is_ok());
        assert!(check_kernel(&dev(None), Some(&KernelRelease::parse("6.10.0"))).is_ok());
        assert!(check_kernel(&dev(None), Some(&KernelRelease::parse("6.12.5-azure"))).is_ok());
        assert!(check_kernel(&dev(None), Some(&KernelRelease::parse("custom"))).is_ok());
        assert!(check_kernel(&dev(None), None).is_ok());
    }
}
