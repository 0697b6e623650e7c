//! Finding VMBus devices in sysfs, binding them to `uio_hv_generic`, and
//! reading their uio memory maps (notes/vmbus.md §3.1–3.3).
//!
//! Every function takes the sysfs root (`/sys` on a real guest) so the tests
//! can run against a fake tree.
#![forbid(unsafe_code)]

use crate::transport::uio_sysfs::find_driver;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// The kernel driver that exposes VMBus channels to user space.
pub const UIO_DRIVER: &str = "uio_hv_generic";

/// How often `bind_uio` looks for the uio directory while waiting.
const BIND_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: expected {what}, found {text:?}")]
    Parse { path: PathBuf, what: &'static str, text: String },
    #[error("driver {UIO_DRIVER} is not loaded (no {0}); run `modprobe {UIO_DRIVER}`")]
    DriverNotLoaded(PathBuf),
    #[error("device {instance} has no uio node {timeout:?} after binding{}", bind_note(.bind_error))]
    BindTimeout { instance: String, timeout: Duration, bind_error: Option<String> },
    #[error("uio {uio} has no map {index} (maps present: {present})")]
    MissingMap { uio: String, index: usize, present: usize },
    #[error(
        "VMBus channel {instance} has no monitor, and uio_hv_generic serves such channels only since \
         Linux {min} (this kernel: {release}); use a newer guest kernel"
    )]
    KernelTooOld { instance: String, release: String, min: String },
}

fn bind_note(bind_error: &Option<String>) -> String {
    bind_error.as_ref().map(|e| format!(" (writing bind failed: {e})")).unwrap_or_default()
}

/// One VMBus device (primary channel) of the wanted class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmbusDevice {
    /// Instance GUID: the directory name under `bus/vmbus/devices`.
    pub instance: String,
    /// Primary channel relid (`id`).
    pub relid: u32,
    /// Monitor id, when the host allocated one (`monitor_id` is absent otherwise).
    pub monitor_id: Option<u8>,
    /// `uioN` when bound to `uio_hv_generic`.
    pub uio: Option<String>,
    /// Name of the bound driver, if any.
    pub driver: Option<String>,
}

/// One uio memory map (`class/uio/uioN/maps/mapK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UioMap {
    /// K: select the map with mmap offset `K * page_size`.
    pub index: usize,
    pub name: String,
    pub size: u64,
    /// The map's offset inside its first page (uio `offset`), not an mmap offset.
    pub offset: u64,
}

/// Lower-case GUID without braces or whitespace.
pub fn normalize_guid(text: &str) -> String {
    text.trim().trim_start_matches('{').trim_end_matches('}').to_ascii_lowercase()
}

fn read_trimmed(path: &Path) -> Result<String, SysfsError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| SysfsError::Read { path: path.to_owned(), source })
}

/// Like `read_trimmed`, but a missing file is `None`.
fn read_optional(path: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysfsError::Read { path: path.to_owned(), source }),
    }
}

/// Write an attribute the way `echo -n` does; the file must already exist (as in sysfs).
fn write_attr(path: &Path, value: &str) -> Result<(), SysfsError> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()))
        .map_err(|source| SysfsError::Write { path: path.to_owned(), source })
}

/// Parse a sysfs number: `0x`-prefixed hex, otherwise decimal.
fn parse_number(path: &Path, text: &str) -> Result<u64, SysfsError> {
    let bad = || SysfsError::Parse { path: path.to_owned(), what: "a number (decimal or 0x hex)", text: text.into() };
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| bad()),
        None => text.parse().map_err(|_| bad()),
    }
}

fn find_uio(dev_dir: &Path) -> Result<Option<String>, SysfsError> {
    crate::transport::uio_sysfs::find_uio(dev_dir).map_err(|(path, source)| SysfsError::Read { path, source })
}

fn devices_dir(root: &Path) -> PathBuf {
    root.join("bus/vmbus/devices")
}

fn driver_dir(root: &Path, driver: &str) -> PathBuf {
    root.join("bus/vmbus/drivers").join(driver)
}

/// Path of the character device for `uioN` (`/dev/uioN`).
pub fn dev_path(uio: &str) -> PathBuf {
    Path::new("/dev").join(uio)
}

/// Read one device directory (its class already matched).
fn read_device(dev_dir: &Path, instance: String) -> Result<VmbusDevice, SysfsError> {
    let id_path = dev_dir.join("id");
    let relid = parse_number(&id_path, &read_trimmed(&id_path)?)?;
    let relid = u32::try_from(relid).map_err(|_| SysfsError::Parse {
        path: id_path,
        what: "a 32-bit relid",
        text: relid.to_string(),
    })?;
    let mon_path = dev_dir.join("monitor_id");
    let monitor_id = match read_optional(&mon_path)? {
        None => None,
        Some(text) => Some(u8::try_from(parse_number(&mon_path, &text)?).map_err(|_| SysfsError::Parse {
            path: mon_path,
            what: "a monitor id below 256",
            text,
        })?),
    };
    Ok(VmbusDevice { instance, relid, monitor_id, uio: find_uio(dev_dir)?, driver: find_driver(dev_dir) })
}

/// All VMBus devices whose `class_id` is `class_guid` (braces and case do
/// not matter), sorted by instance. Devices without a readable `class_id` are
/// skipped; a matching device with malformed attributes is an error.
pub fn find_devices(sysfs_root: &Path, class_guid: &str) -> Result<Vec<VmbusDevice>, SysfsError> {
    let want = normalize_guid(class_guid);
    let dir = devices_dir(sysfs_root);
    let entries = fs::read_dir(&dir).map_err(|source| SysfsError::Read { path: dir.clone(), source })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SysfsError::Read { path: dir.clone(), source })?;
        let Ok(instance) = entry.file_name().into_string() else { continue };
        let dev_dir = entry.path();
        match fs::read_to_string(dev_dir.join("class_id")) {
            Ok(class) if normalize_guid(&class) == want => found.push(read_device(&dev_dir, instance)?),
            Ok(_) => {}
            Err(e) => log::debug!("skipping {}: class_id: {e}", dev_dir.display()),
        }
    }
    found.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(found)
}

/// Bind `dev` to `uio_hv_generic` and return its `uioN` once the node
/// appears (waiting up to `timeout`).
///
/// Uses `driver_override` when the device has it, else registers the
/// device's class with the driver's `new_id`; then unbinds the current
/// driver and writes the instance to the driver's `bind`. A device already
/// bound to uio is returned as is. Needs root on a real system.
pub fn bind_uio(sysfs_root: &Path, dev: &VmbusDevice, timeout: Duration) -> Result<String, SysfsError> {
    let dev_dir = devices_dir(sysfs_root).join(&dev.instance);
    if find_driver(&dev_dir).as_deref() == Some(UIO_DRIVER)
        && let Some(uio) = find_uio(&dev_dir)?
    {
        return Ok(uio);
    }
    let uio_drv = driver_dir(sysfs_root, UIO_DRIVER);
    if !uio_drv.is_dir() {
        return Err(SysfsError::DriverNotLoaded(uio_drv));
    }

    let override_path = dev_dir.join("driver_override");
    if override_path.exists() {
        write_attr(&override_path, UIO_DRIVER)?;
    } else {
        let class = read_trimmed(&dev_dir.join("class_id"))?;
        // EEXIST when the class is already registered: fine. new_id may bind at once.
        if let Err(e) = write_attr(&uio_drv.join("new_id"), &normalize_guid(&class)) {
            log::debug!("{e} (ignored: the id may already be registered)");
        }
    }

    let current = find_driver(&dev_dir);
    if let Some(current) = current.as_deref().filter(|&d| d != UIO_DRIVER) {
        write_attr(&driver_dir(sysfs_root, current).join("unbind"), &dev.instance)?;
    }
    // With new_id the driver may have claimed the device already (bind then fails with EBUSY/ENODEV):
    // only the uio node appearing counts, the bind error is reported if it never does.
    let bind_error = match find_driver(&dev_dir).as_deref() {
        Some(UIO_DRIVER) => None,
        _ => match write_attr(&uio_drv.join("bind"), &dev.instance) {
            // The pre-6.10 probe's refusal of a channel without a monitor: it will never bind.
            Err(SysfsError::Write { source, .. }) if source.raw_os_error() == Some(super::kernel::ENOTSUPP) => {
                let release = super::kernel::KernelRelease::running().map_or_else(|| "unknown".into(), |k| k.text);
                return Err(super::kernel::too_old(dev, &release));
            }
            r => r.err().map(|e| e.to_string()),
        },
    };

    let deadline = Instant::now() + timeout;
    loop {
        if let Some(uio) = find_uio(&dev_dir)? {
            return Ok(uio);
        }
        if Instant::now() >= deadline {
            return Err(SysfsError::BindTimeout { instance: dev.instance.clone(), timeout, bind_error });
        }
        thread::sleep(BIND_POLL);
    }
}

/// The memory maps of `uio` (`<root>/class/uio/<uio>/maps/map0..`), in index
/// order. Sizes and offsets are hex with `0x`.
pub fn read_maps(sysfs_root: &Path, uio: &str) -> Result<Vec<UioMap>, SysfsError> {
    let maps_dir = sysfs_root.join("class/uio").join(uio).join("maps");
    let mut maps = Vec::new();
    for index in 0.. {
        let dir = maps_dir.join(format!("map{index}"));
        if !dir.is_dir() {
            break;
        }
        let size_path = dir.join("size");
        let size = parse_number(&size_path, &read_trimmed(&size_path)?)?;
        let offset_path = dir.join("offset");
        let offset = match read_optional(&offset_path)? {
            Some(text) => parse_number(&offset_path, &text)?,
            None => 0,
        };
        maps.push(UioMap { index, name: read_optional(&dir.join("name"))?.unwrap_or_default(), size, offset });
    }
    if maps.is_empty() {
        return Err(SysfsError::MissingMap { uio: uio.to_owned(), index: 0, present: 0 });
    }
    Ok(maps)
}

#[cfg(test)]
#[path = "sysfs_tests.rs"]
mod tests;
