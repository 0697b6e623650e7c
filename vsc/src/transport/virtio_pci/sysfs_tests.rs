use std::os::unix::fs::symlink;

use super::*;
use crate::transport::virtio_pci::caps::tests::Config;
use crate::transport::virtio_pci::device::{DeviceError, PciDevice};
use crate::transport::virtio_pci::tests_support::FakeTree;

fn tree() -> FakeTree {
    FakeTree::new(&Config::standard())
}

#[test]
fn finds_virtio_functions_whatever_their_device_id() {
    let t = tree();
    let other = t.root().join("bus/pci/devices/0000:00:01.0");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("vendor"), "0x8086\n").unwrap();
    let broken = t.root().join("bus/pci/devices/0000:00:02.0");
    fs::create_dir_all(&broken).unwrap(); // no vendor file: skipped
    let ch = t.root().join("bus/pci/devices/0000:00:05.0");
    fs::create_dir_all(ch.join("uio/uio3")).unwrap();
    fs::write(ch.join("vendor"), "0x1af4").unwrap();
    fs::write(ch.join("device"), "0x1b50").unwrap();
    fs::create_dir_all(t.root().join("bus/pci/drivers/uio_pci_generic")).unwrap();
    symlink(t.root().join("bus/pci/drivers/uio_pci_generic"), ch.join("driver")).unwrap();
    let found = find_virtio_functions(t.root()).unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].bdf.as_str(), found[0].device, found[0].driver.as_deref()), ("0000:00:03.0", 0x1042, None));
    assert_eq!(found[1].device, 0x1b50);
    assert_eq!((found[1].driver.as_deref(), found[1].uio.as_deref()), (Some(UIO_PCI_DRIVER), Some("uio3")));
}

#[test]
fn binding_overrides_unbinds_probes_and_waits_for_the_uio_node() {
    let t = tree();
    let dev = t.dev_dir();
    let blk = t.root().join("bus/pci/drivers/virtio-pci");
    fs::create_dir_all(&blk).unwrap();
    fs::write(blk.join("unbind"), "").unwrap();
    symlink(&blk, dev.join("driver")).unwrap();
    let d = dev.clone();
    let kernel = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        fs::create_dir_all(d.join("uio/uio7")).unwrap();
    });
    assert_eq!(bind_uio(t.root(), fake_bdf(), Duration::from_secs(5)).unwrap(), "uio7");
    kernel.join().unwrap();
    assert_eq!(fs::read_to_string(dev.join("driver_override")).unwrap(), UIO_PCI_DRIVER);
    assert_eq!(fs::read_to_string(blk.join("unbind")).unwrap(), fake_bdf());
    assert_eq!(fs::read_to_string(t.root().join("bus/pci/drivers_probe")).unwrap(), fake_bdf());

    fs::remove_dir_all(dev.join("uio")).unwrap();
    let err = bind_uio(t.root(), fake_bdf(), Duration::from_millis(30)).unwrap_err();
    assert!(matches!(err, PciSysfsError::BindTimeout { .. }), "{err}");
    fs::remove_dir_all(t.root().join("bus/pci/drivers/uio_pci_generic")).unwrap();
    let err = bind_uio(t.root(), fake_bdf(), Duration::from_millis(30)).unwrap_err();
    assert!(matches!(err, PciSysfsError::DriverNotLoaded(_)), "{err}");
}

fn fake_bdf() -> &'static str {
    crate::transport::virtio_pci::tests_support::BDF
}

#[test]
fn bar_lengths_come_from_resource() {
    let t = tree();
    let lens = bar_lengths(t.root(), fake_bdf()).unwrap();
    assert_eq!(lens, [0, 0, 0, 0, 0x4000, 0]);
    fs::write(t.dev_dir().join("resource"), "0x1000 0x0fff 0x0\n").unwrap();
    assert!(matches!(bar_lengths(t.root(), fake_bdf()), Err(PciSysfsError::Parse { .. })));
    fs::write(t.dev_dir().join("resource"), "garbage\n").unwrap();
    assert!(matches!(bar_lengths(t.root(), fake_bdf()), Err(PciSysfsError::Parse { .. })));
}

#[test]
fn opening_enables_the_function_and_maps_the_structures() {
    let t = tree();
    let dev = PciDevice::open(t.root(), fake_bdf(), None).unwrap();
    assert_eq!(t.command() & (CMD_MEMORY | CMD_BUS_MASTER), CMD_MEMORY | CMD_BUS_MASTER);
    // Registers land in the resource4 file at the capabilities' offsets.
    let bar = File::open(t.dev_dir().join("resource4")).unwrap();
    dev.notify.write16(8, 0xabcd).unwrap();
    let mut b = [0u8; 2];
    bar.read_exact_at(&mut b, 0x3008).unwrap();
    assert_eq!(u16::from_le_bytes(b), 0xabcd);
    fs::OpenOptions::new().write(true).open(t.dev_dir().join("resource4")).unwrap().write_all_at(&[3], 0x1000).unwrap();
    assert_eq!(dev.isr.read8(0).unwrap(), 3);
    assert!(dev.isr.read8(1).is_ok() && dev.isr.read8(0x1000).is_err(), "the window ends with its structure");
    let mut cfg = [0u8; 8];
    dev.device_cfg.read_bytes(0, &mut cfg).unwrap();
    assert_eq!(&cfg[..4], b"VBCF");
    assert_eq!(super::super::find_devices(t.root()).unwrap().len(), 1);
}

#[test]
fn a_function_without_the_magic_is_not_vmblob() {
    let t = tree();
    fs::OpenOptions::new()
        .write(true)
        .open(t.dev_dir().join("resource4"))
        .unwrap()
        .write_all_at(b"virt", 0x2000)
        .unwrap();
    let err = PciDevice::open(t.root(), fake_bdf(), None).unwrap_err();
    assert!(matches!(err, DeviceError::NotVmblob { .. }), "{err}");
    assert!(super::super::find_devices(t.root()).unwrap().is_empty());
    let mut c = Config::standard();
    c.0[0x34] = 0x20;
    fs::write(t.dev_dir().join("config"), &c.0).unwrap();
    assert!(matches!(PciDevice::open(t.root(), fake_bdf(), None), Err(DeviceError::Caps { .. })));
}

#[test]
fn functions_bound_to_other_drivers_are_not_probed() {
    let t = tree();
    let blk = t.root().join("bus/pci/drivers/virtio-pci");
    fs::create_dir_all(&blk).unwrap();
    symlink(&blk, t.dev_dir().join("driver")).unwrap();
    assert!(super::super::find_devices(t.root()).unwrap().is_empty());
    assert_eq!(t.command() & CMD_BUS_MASTER, 0, "not touched");
}

#[test]
fn removal_shows_in_the_error() {
    let t = tree();
    let cfg = ConfigSpace::open(t.root(), fake_bdf()).unwrap();
    let err = read_function(t.root(), "0000:00:09.0").unwrap_err();
    assert!(err.is_removal(), "{err}");
    assert_eq!(cfg.read_u16(0).unwrap(), 0x1af4);
}

#[test]
fn a_function_is_gone_when_its_directory_goes_or_config_reads_all_ones() {
    let t = tree();
    assert!(!is_gone(t.root(), fake_bdf()));
    assert!(is_gone(t.root(), "0000:00:09.0"), "no such directory");
    let cfg = ConfigSpace::open(t.root(), fake_bdf()).unwrap();
    cfg.write_u16(0, 0xffff).unwrap();
    assert!(is_gone(t.root(), fake_bdf()), "config space of a removed function reads all ones");
}
