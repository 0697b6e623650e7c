//! What the uio-based guest transports (VMBus over `uio_hv_generic`, virtio-pci over
//! `uio_pci_generic`) read alike in sysfs: which driver a device is bound to, and its `uioN`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the driver the device's `driver` symlink points at.
pub(crate) fn find_driver(dev_dir: &Path) -> Option<String> {
    let target = fs::read_link(dev_dir.join("driver")).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

/// The first `uioN` entry under `<device>/uio/` (`None`: not bound to uio); on a read error,
/// the directory that failed.
pub(crate) fn find_uio(dev_dir: &Path) -> Result<Option<String>, (PathBuf, io::Error)> {
    let dir = dev_dir.join("uio");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err((dir, source)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.strip_prefix("uio").is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}
