//! A PCI function in sysfs: finding virtio functions, binding one to
//! `uio_pci_generic` (`driver_override` + `drivers_probe`), its BAR lengths
//! (`resource`), its configuration space (`config`) and its BAR files
//! (`resourceN`).
//!
//! Every function takes the sysfs root (`/sys` on a real guest) so the tests
//! run against a fake tree.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::caps::{CONFIG_SPACE, VIRTIO_VENDOR};
use crate::transport::region::{MappedRegion, RegionError};
use crate::transport::uio_sysfs::find_driver;

/// The kernel driver that hands a PCI function to user space.
pub const UIO_PCI_DRIVER: &str = "uio_pci_generic";

/// PCI command register and the bits the driver owns.
pub const COMMAND: u64 = 0x04;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

const BIND_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum PciSysfsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: expected {what}, found {text:?}")]
    Parse { path: PathBuf, what: &'static str, text: String },
    #[error("driver {UIO_PCI_DRIVER} is not loaded (no {0}); run `modprobe {UIO_PCI_DRIVER}`")]
    DriverNotLoaded(PathBuf),
    #[error("{bdf} has no uio node {timeout:?} after binding")]
    BindTimeout { bdf: String, timeout: Duration },
    #[error("cannot map BAR {bar} of {bdf}: {source}")]
    Map { bdf: String, bar: u8, source: RegionError },
}

impl PciSysfsError {
    /// Whether the error says the function is gone (hot-unplugged): its
    /// sysfs files vanish or answer ENODEV.
    pub fn is_removal(&self) -> bool {
        match self {
            Self::Read { source, .. } | Self::Write { source, .. } => {
                source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ENODEV)
            }
            _ => false,
        }
    }
}

/// One PCI function of the virtio vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Bus/device/function, e.g. `0000:00:03.0`: the directory name.
    pub bdf: String,
    pub vendor: u16,
    pub device: u16,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// `uioN` when bound to uio.
    pub uio: Option<String>,
}

fn read_trimmed(path: &Path) -> Result<String, PciSysfsError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| PciSysfsError::Read { path: path.to_owned(), source })
}

/// Write an attribute the way `echo -n` does; the file must exist (as in sysfs).
fn write_attr(path: &Path, value: &str) -> Result<(), PciSysfsError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()))
        .map_err(|source| PciSysfsError::Write { path: path.to_owned(), source })
}

fn parse_hex(path: &Path, text: &str) -> Result<u64, PciSysfsError> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    u64::from_str_radix(digits, 16).map_err(|_| PciSysfsError::Parse {
        path: path.to_owned(),
        what: "a hex number",
        text: text.into(),
    })
}

fn read_id(path: &Path) -> Result<u16, PciSysfsError> {
    let text = read_trimmed(path)?;
    let v = parse_hex(path, &text)?;
    u16::try_from(v).map_err(|_| PciSysfsError::Parse { path: path.to_owned(), what: "a 16-bit id", text })
}

fn find_uio(dev_dir: &Path) -> Result<Option<String>, PciSysfsError> {
    crate::transport::uio_sysfs::find_uio(dev_dir).map_err(|(path, source)| PciSysfsError::Read { path, source })
}

pub fn devices_dir(root: &Path) -> PathBuf {
    root.join("bus/pci/devices")
}

pub fn device_dir(root: &Path, bdf: &str) -> PathBuf {
    devices_dir(root).join(bdf)
}

/// Read one function's ids, driver and uio node.
pub fn read_function(root: &Path, bdf: &str) -> Result<PciFunction, PciSysfsError> {
    let dir = device_dir(root, bdf);
    Ok(PciFunction {
        bdf: bdf.to_owned(),
        vendor: read_id(&dir.join("vendor"))?,
        device: read_id(&dir.join("device"))?,
        driver: find_driver(&dir),
        uio: find_uio(&dir)?,
    })
}

/// Every function of vendor 0x1af4, sorted by BDF (whatever its device id:
/// that depends on the VMM). Entries without a readable `vendor` are skipped.
pub fn find_virtio_functions(root: &Path) -> Result<Vec<PciFunction>, PciSysfsError> {
    let dir = devices_dir(root);
    let entries = fs::read_dir(&dir).map_err(|source| PciSysfsError::Read { path: dir.clone(), source })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PciSysfsError::Read { path: dir.clone(), source })?;
        let Ok(bdf) = entry.file_name().into_string() else { continue };
        match read_id(&entry.path().join("vendor")) {
            Ok(VIRTIO_VENDOR) => found.push(read_function(root, &bdf)?),
            Ok(_) => {}
            Err(e) => log::debug!("skipping {bdf}: {e}"),
        }
    }
    found.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    Ok(found)
}

/// Bind `bdf` to `uio_pci_generic` and return its `uioN` once the node
/// appears (waiting up to `timeout`): `driver_override`, unbind the current
/// driver, `drivers_probe`. A function bound to uio already is returned as is.
pub fn bind_uio(root: &Path, bdf: &str, timeout: Duration) -> Result<String, PciSysfsError> {
    let dir = device_dir(root, bdf);
    if find_driver(&dir).as_deref() == Some(UIO_PCI_DRIVER)
        && let Some(uio) = find_uio(&dir)?
    {
        return Ok(uio);
    }
    let drv = root.join("bus/pci/drivers").join(UIO_PCI_DRIVER);
    if !drv.is_dir() {
        return Err(PciSysfsError::DriverNotLoaded(drv));
    }
    write_attr(&dir.join("driver_override"), UIO_PCI_DRIVER)?;
    if let Some(current) = find_driver(&dir).filter(|d| d != UIO_PCI_DRIVER) {
        log::info!("unbinding {bdf} from {current}");
        write_attr(&root.join("bus/pci/drivers").join(&current).join("unbind"), bdf)?;
    }
    write_attr(&root.join("bus/pci/drivers_probe"), bdf)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(uio) = find_uio(&dir)? {
            return Ok(uio);
        }
        if Instant::now() >= deadline {
            return Err(PciSysfsError::BindTimeout { bdf: bdf.to_owned(), timeout });
        }
        std::thread::sleep(BIND_POLL);
    }
}

/// BAR lengths from `resource` (one `start end flags` line per resource;
/// an all-zero line is an absent BAR).
pub fn bar_lengths(root: &Path, bdf: &str) -> Result<[u64; 6], PciSysfsError> {
    let path = device_dir(root, bdf).join("resource");
    let text = read_trimmed(&path)?;
    let mut lens = [0u64; 6];
    for (i, line) in text.lines().take(6).enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [start, end, _flags] = fields[..] else {
            return Err(PciSysfsError::Parse { path, what: "`start end flags`", text: line.into() });
        };
        let (start, end) = (parse_hex(&path, start)?, parse_hex(&path, end)?);
        lens[i] = match (start, end) {
            (0, 0) => 0,
            (s, e) if e >= s => e - s + 1,
            _ => return Err(PciSysfsError::Parse { path, what: "end >= start", text: line.into() }),
        };
    }
    Ok(lens)
}

/// Whether `bdf` has left the bus (hot-unplugged, or on its way out): its
/// sysfs directory is gone, or its config space reads all ones or ENODEV.
pub fn is_gone(root: &Path, bdf: &str) -> bool {
    if !device_dir(root, bdf).exists() {
        return true;
    }
    match ConfigSpace::open(root, bdf).and_then(|c| c.read_u16(0)) {
        Ok(vendor) => vendor == 0xffff,
        Err(e) => e.is_removal(),
    }
}

/// The function's configuration space through sysfs `config`.
#[derive(Debug)]
pub struct ConfigSpace {
    file: File,
    path: PathBuf,
}

impl ConfigSpace {
    pub fn open(root: &Path, bdf: &str) -> Result<Self, PciSysfsError> {
        let path = device_dir(root, bdf).join("config");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| PciSysfsError::Read { path: path.clone(), source })?;
        Ok(Self { file, path })
    }

    /// The standard 256 bytes (header and capabilities).
    pub fn read_all(&self) -> Result<Vec<u8>, PciSysfsError> {
        let mut buf = vec![0u8; CONFIG_SPACE];
        self.file.read_exact_at(&mut buf, 0).map_err(|source| self.read_err(source))?;
        Ok(buf)
    }

    pub fn read_u16(&self, offset: u64) -> Result<u16, PciSysfsError> {
        let mut b = [0u8; 2];
        self.file.read_exact_at(&mut b, offset).map_err(|source| self.read_err(source))?;
        Ok(u16::from_le_bytes(b))
    }

    /// A 2-byte write is one 16-bit config cycle.
    pub fn write_u16(&self, offset: u64, value: u16) -> Result<(), PciSysfsError> {
        self.file
            .write_all_at(&value.to_le_bytes(), offset)
            .map_err(|source| PciSysfsError::Write { path: self.path.clone(), source })
    }

    /// Read-modify-write of the command register. The kernel's INTx handler
    /// sets INTx-disable concurrently; losing that race re-raises a pending
    /// interrupt, which is harmless.
    pub fn update_command(&self, set: u16, clear: u16) -> Result<u16, PciSysfsError> {
        let old = self.read_u16(COMMAND)?;
        let new = (old | set) & !clear;
        if new != old {
            self.write_u16(COMMAND, new)?;
        }
        Ok(new)
    }

    fn read_err(&self, source: io::Error) -> PciSysfsError {
        PciSysfsError::Read { path: self.path.clone(), source }
    }
}

/// Map `len` bytes of BAR `bar` through `resourceN` (shared, read-write).
pub fn map_bar(root: &Path, bdf: &str, bar: u8, len: u64) -> Result<MappedRegion, PciSysfsError> {
    let path = device_dir(root, bdf).join(format!("resource{bar}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| PciSysfsError::Read { path: path.clone(), source })?;
    let map_err = |source| PciSysfsError::Map { bdf: bdf.to_owned(), bar, source };
    let len =
        usize::try_from(len).map_err(|_| map_err(RegionError::OutOfBounds { offset: 0, len: 0, region_len: 0 }))?;
    MappedRegion::map_file(&file, 0, len).map_err(map_err)
}

#[cfg(test)]
#[path = "sysfs_tests.rs"]
mod tests;
