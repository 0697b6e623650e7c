//! A real guest: QEMU (TCG) boots Debian's kernel with a busybox
//! initramfs, the vmblob queues reach `vmblob-vsp` through QEMU's
//! vhost-user frontend, and the guest's `vmblob` CLI drives the device with
//! the virtio-pci transport over `uio_pci_generic`
//! (notes/qemu-guest.md has the measurements behind every choice here).
//!
//! Prerequisites (`.ci/install-qemu` installs them): QEMU ≥ 10 with qboot,
//! busybox-static, apt (the kernel package is fetched into
//! `target/qemu-guest/`). Without them the tests say SKIPPED, unless
//! `VMBLOB_REQUIRE_QEMU=1` (CI sets it), where a missing piece fails.

pub mod cpio;
pub mod image;
pub mod kernel;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub use image::{GUEST_VMBLOB, Image};
pub use kernel::Kernel;
pub use vm::{Boot, GuestVm, VmOptions};

/// The host pieces a guest run needs.
#[derive(Debug)]
pub struct Rig {
    pub qemu: PathBuf,
    pub bios: PathBuf,
    pub busybox: PathBuf,
    pub kernel: Kernel,
    pub qemu_version: String,
}

const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// The rig, found (and the kernel fetched) once per test process.
pub fn rig() -> Result<&'static Rig, String> {
    static RIG: OnceLock<Result<Rig, String>> = OnceLock::new();
    RIG.get_or_init(find).as_ref().map_err(Clone::clone)
}

/// The rig, or `None` after saying loudly why the test is skipped; with
/// `VMBLOB_REQUIRE_QEMU=1` a missing rig fails the test instead.
pub fn rig_or_skip(test: &str) -> Option<&'static Rig> {
    match rig() {
        Ok(r) => Some(r),
        Err(why) if std::env::var_os("VMBLOB_REQUIRE_QEMU").is_some_and(|v| v == "1") => {
            panic!("{test}: the QEMU guest rig is required (VMBLOB_REQUIRE_QEMU=1) but {why}")
        }
        Err(why) => {
            eprintln!("\n**** SKIPPED {test}: {why} (run .ci/install-qemu as root) ****\n");
            None
        }
    }
}

fn find() -> Result<Rig, String> {
    let qemu = which("qemu-system-x86_64").ok_or("qemu-system-x86_64 is not installed")?;
    let out = Command::new(&qemu).arg("--version").stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    let qemu_version = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned();
    let major: u32 = qemu_version
        .split("version ")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("cannot read QEMU's version from {qemu_version:?}"))?;
    if major < 10 {
        return Err(format!("{qemu_version} is older than 10 (bookworm-backports has 10.0)"));
    }
    let bios = PathBuf::from(QBOOT);
    if !bios.is_file() {
        return Err(format!("{QBOOT} is missing"));
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_static(p))
        .ok_or("no static busybox (busybox-static)")?;
    let cache = crate::daemon::target_dir().join("qemu-guest");
    std::fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let kernel = kernel::fetch(&cache).map_err(|e| format!("cannot fetch the guest kernel: {e}"))?;
    Ok(Rig { qemu, bios, busybox, kernel, qemu_version })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A statically linked executable: `ldd` says so (a dynamic busybox would need its libraries).
fn is_static(p: &Path) -> bool {
    p.is_file()
        && Command::new("ldd").arg(p).stdin(Stdio::null()).output().is_ok_and(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
            text.contains("not a dynamic executable") || text.contains("statically linked")
        })
}

impl Rig {
    /// Write `image` as `dir/initramfs.cpio` and boot it against `socket`.
    pub fn boot(&self, dir: &Path, socket: &Path, image: &Image<'_>, options: &VmOptions) -> GuestVm {
        let initrd = dir.join("initramfs.cpio");
        std::fs::write(&initrd, image.build().expect("build the initramfs")).expect("write the initramfs");
        let boot =
            Boot { qemu: &self.qemu, bios: &self.bios, kernel: &self.kernel.vmlinuz, initrd: &initrd, socket, dir };
        GuestVm::boot(&boot, options)
    }

    /// An image with the rig's busybox and kernel modules.
    pub fn image<'a>(&'a self, vmblob: &'a Path, files: Vec<(String, Vec<u8>)>, script: String) -> Image<'a> {
        Image { busybox: &self.busybox, kernel: &self.kernel, vmblob, files, script }
    }
}
