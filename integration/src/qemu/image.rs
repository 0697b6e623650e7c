//! The guest's root: busybox with its applet links, the uio modules, the
//! host's own `vmblob` build with the shared libraries it links (so the
//! guest runs exactly the binary the suite tests, with no second build of
//! the dependency graph for a static target), data files, and an `/init`
//! that loads the modules, runs the test's script and powers off.

use std::path::Path;
use std::process::{Command, Stdio};

use super::cpio::Cpio;
use super::kernel::Kernel;

/// Where the guest finds the CLI.
pub const GUEST_VMBLOB: &str = "/bin/vmblob";

/// What goes into one initramfs besides the fixed parts.
pub struct Image<'a> {
    pub busybox: &'a Path,
    pub kernel: &'a Kernel,
    pub vmblob: &'a Path,
    /// Files placed as they are: (guest path, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// The test, a busybox `sh` script run by `/init`.
    pub script: String,
}

/// The markers `/init` prints on the serial console.
pub const MARK_UP: &str = "@@vmblob-guest up";
pub const MARK_EXIT: &str = "@@vmblob-guest exit";

const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=256m tmpfs /tmp
for m in /lib/vmblob-modules/*.ko; do insmod "$m" || echo "insmod $m failed"; done
# Locked DMA pages must not be moved by compaction (notes/qemu-guest.md).
echo 0 > /proc/sys/vm/compact_unevictable_allowed 2>/dev/null
echo "@@vmblob-guest up $(cut -d' ' -f1 /proc/uptime)"
sh /test.sh
echo "@@vmblob-guest exit $? $(cut -d' ' -f1 /proc/uptime)"
reboot -f
"#;

impl Image<'_> {
    /// The uncompressed cpio archive (the kernel takes it as it is).
    pub fn build(&self) -> Result<Vec<u8>, String> {
        let mut c = Cpio::default();
        let mut dirs = std::collections::BTreeSet::new();
        for d in ["/bin", "/dev", "/proc", "/sys", "/tmp", "/lib", "/lib/vmblob-modules", "/data"] {
            dirs.insert(d.to_owned());
            c.dir(d);
        }
        c.char_dev("/dev/console", 5, 1);
        c.file("/bin/busybox", 0o755, &read(self.busybox)?);
        for applet in applets(self.busybox)? {
            c.symlink(&format!("/bin/{applet}"), "busybox");
        }
        for (i, m) in self.kernel.modules.iter().enumerate() {
            c.file(&format!("/lib/vmblob-modules/{i}-{}", file_name(m)), 0o644, &read(m)?);
        }
        c.file(GUEST_VMBLOB, 0o755, &stripped(self.vmblob)?);
        for lib in shared_libraries(self.vmblob)? {
            let guest = lib.to_string_lossy().into_owned();
            for d in parents(&guest) {
                if dirs.insert(d.clone()) {
                    c.dir(&d);
                }
            }
            c.file(&guest, 0o755, &read(&lib)?);
        }
        for (path, data) in &self.files {
            c.file(path, 0o644, data);
        }
        c.file("/test.sh", 0o755, self.script.as_bytes());
        c.file("/init", 0o755, INIT.as_bytes());
        Ok(c.finish())
    }
}

/// `/a/b/c` → `/a`, `/a/b`.
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    (1..parts.len()).map(|n| format!("/{}", parts[..n].join("/"))).collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))
}

fn applets(busybox: &Path) -> Result<Vec<String>, String> {
    let out = Command::new(busybox).arg("--list").stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    if list.iter().any(|a| a == "sh") { Ok(list) } else { Err(format!("{} --list has no sh", busybox.display())) }
}

/// The binary without its debug sections (a debug build is ~85 MB with
/// them, ~15 MB without); as it is when `objcopy` is missing.
fn stripped(bin: &Path) -> Result<Vec<u8>, String> {
    let out = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin)
        .arg(out.path())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    read(if ok { out.path() } else { bin })
}

/// The shared objects `bin` loads, by `ldd` (the loader included).
fn shared_libraries(bin: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let out = Command::new("ldd").arg(bin).stdin(Stdio::null()).output().map_err(|e| format!("ldd: {e}"))?;
    if !out.status.success() {
        return Err(format!("ldd {} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.into())
        })
        .collect())
}
