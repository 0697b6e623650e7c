//! The guest kernel: Debian's own `linux-image-*-amd64` package, fetched
//! with `apt-get download` (no root needed) and partly unpacked with `dpkg-deb`
//! into a cache under the target directory. Its uio and uio_pci_generic
//! drivers are plain modules, which the guest's init loads with `insmod`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `uio.ko` then `uio_pci_generic.ko`, in load order.
    pub modules: Vec<PathBuf>,
    pub package: String,
}

/// The kernel in `cache`, fetched first if it is not there.
pub fn fetch(cache: &Path) -> Result<Kernel, String> {
    let package = current_package()?;
    let dir = cache.join(&package);
    if let Some(k) = find(&dir, &package) {
        return Ok(k);
    }
    let work = cache.join(format!(".{package}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    run(Command::new("apt-get").args(["download", "-q", &package]).current_dir(&work))?;
    let deb = std::fs::read_dir(&work)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
    let root = work.join("root");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    // Only the kernel and the two modules, not the package's ~400 MB of modules.
    let release = package.trim_start_matches("linux-image-");
    let uio = format!("./lib/modules/{release}/kernel/drivers/uio");
    let script = format!(
        "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" ./boot/vmlinuz-{release} {uio}/uio.ko {uio}/uio_pci_generic.ko"
    );
    run(Command::new("sh").args(["-c", &script, "sh"]).arg(&deb).arg(&root))?;
    let _ = std::fs::remove_file(&deb);
    // Whoever renames first wins; a loser's copy is the same package.
    match std::fs::rename(&root, &dir) {
        Ok(()) => {}
        Err(_) if dir.exists() => {}
        Err(e) => return Err(format!("rename to {}: {e}", dir.display())),
    }
    let _ = std::fs::remove_dir_all(&work);
    find(&dir, &package).ok_or_else(|| format!("{package}: no vmlinuz or uio modules in the package"))
}

/// The package `linux-image-amd64` points at today (`linux-image-6.1.0-N-amd64`).
fn current_package() -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("apt-cache: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64") && !p.contains(['<', ' ']))
        .map(str::to_owned)
        .ok_or_else(|| "apt-cache depends linux-image-amd64 names no kernel package".to_owned())
}

fn find(dir: &Path, package: &str) -> Option<Kernel> {
    let release = package.strip_prefix("linux-image-")?;
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    let uio = dir.join("lib/modules").join(release).join("kernel/drivers/uio");
    let modules = vec![uio.join("uio.ko"), uio.join("uio_pci_generic.ko")];
    (vmlinuz.is_file() && modules.iter().all(|m| m.is_file())).then(|| Kernel {
        vmlinuz,
        modules,
        package: package.to_owned(),
    })
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}
