use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use vmblob_protocol::transport::VMBUS_CLASS_GUID;

use super::*;

const OTHER_CLASS: &str = "f8615163-df3e-46c5-913f-f2d2f965ed0e";
const A: &str = "11111111-2222-3333-4444-555555555555";
const B: &str = "22222222-2222-3333-4444-555555555555";
const C: &str = "33333333-2222-3333-4444-555555555555";

struct FakeDev<'a> {
    instance: &'a str,
    class: &'a str,
    id: &'a str,
    monitor: Option<&'a str>,
    driver: Option<&'a str>,
    uio: Option<&'a str>,
    driver_override: bool,
}

impl<'a> FakeDev<'a> {
    fn new(instance: &'a str, class: &'a str, id: &'a str) -> Self {
        Self { instance, class, id, monitor: None, driver: None, uio: None, driver_override: true }
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn add_driver(root: &Path, name: &str) -> PathBuf {
    let dir = root.join("bus/vmbus/drivers").join(name);
    for attr in ["bind", "unbind", "new_id"] {
        write(&dir.join(attr), "");
    }
    dir
}

fn add_device(root: &Path, d: &FakeDev) -> PathBuf {
    let dir = root.join("bus/vmbus/devices").join(d.instance);
    write(&dir.join("class_id"), &format!("{}\n", d.class));
    write(&dir.join("device_id"), &format!("{{{}}}\n", d.instance));
    write(&dir.join("id"), &format!("{}\n", d.id));
    if let Some(m) = d.monitor {
        write(&dir.join("monitor_id"), &format!("{m}\n"));
    }
    if d.driver_override {
        write(&dir.join("driver_override"), "(null)\n");
    }
    if let Some(drv) = d.driver {
        symlink(add_driver(root, drv), dir.join("driver")).unwrap();
    }
    if let Some(uio) = d.uio {
        fs::create_dir_all(dir.join("uio").join(uio)).unwrap();
    }
    dir
}

fn add_map(root: &Path, uio: &str, k: usize, name: &str, size: &str) {
    let dir = root.join("class/uio").join(uio).join("maps").join(format!("map{k}"));
    write(&dir.join("name"), &format!("{name}\n"));
    write(&dir.join("size"), &format!("{size}\n"));
    write(&dir.join("addr"), "0xffff9c6a40000000\n");
    write(&dir.join("offset"), "0x0\n");
}

#[test]
fn finds_devices_of_the_class_with_and_without_braces() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let upper = format!("{{{}}}", VMBUS_CLASS_GUID.to_uppercase());
    add_device(root, &FakeDev { monitor: Some("3"), driver: Some("hv_foo"), ..FakeDev::new(B, &upper, "14") });
    add_device(
        root,
        &FakeDev { uio: Some("uio2"), driver: Some(UIO_DRIVER), ..FakeDev::new(A, VMBUS_CLASS_GUID, "9") },
    );
    add_device(root, &FakeDev::new(C, OTHER_CLASS, "2"));
    // A device directory without class_id (not ours) is skipped.
    fs::create_dir_all(root.join("bus/vmbus/devices/not-a-device")).unwrap();

    let found = find_devices(root, &format!("{{{VMBUS_CLASS_GUID}}}")).unwrap();
    assert_eq!(
        found,
        vec![
            VmbusDevice {
                instance: A.into(),
                relid: 9,
                monitor_id: None,
                uio: Some("uio2".into()),
                driver: Some(UIO_DRIVER.into()),
            },
            VmbusDevice {
                instance: B.into(),
                relid: 14,
                monitor_id: Some(3),
                uio: None,
                driver: Some("hv_foo".into())
            },
        ]
    );
    assert_eq!(find_devices(root, OTHER_CLASS).unwrap().len(), 1);
    assert!(find_devices(root, "00000000-0000-0000-0000-000000000000").unwrap().is_empty());
    assert!(matches!(find_devices(&root.join("nope"), VMBUS_CLASS_GUID), Err(SysfsError::Read { .. })));
}

#[test]
fn malformed_attributes_of_a_matching_device_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    add_device(tmp.path(), &FakeDev::new(A, VMBUS_CLASS_GUID, "seven"));
    let err = find_devices(tmp.path(), VMBUS_CLASS_GUID).unwrap_err();
    assert!(matches!(&err, SysfsError::Parse { text, .. } if text == "seven"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    add_device(tmp.path(), &FakeDev { monitor: Some("300"), ..FakeDev::new(A, VMBUS_CLASS_GUID, "1") });
    assert!(matches!(find_devices(tmp.path(), VMBUS_CLASS_GUID), Err(SysfsError::Parse { .. })));
}

#[test]
fn bind_with_driver_override_waits_for_the_uio_node() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dev_dir = add_device(root, &FakeDev { driver: Some("hv_foo"), ..FakeDev::new(A, VMBUS_CLASS_GUID, "5") });
    let uio_drv = add_driver(root, UIO_DRIVER);
    let dev = find_devices(root, VMBUS_CLASS_GUID).unwrap().remove(0);

    // The "kernel" creates the node a little later.
    let late = {
        let dir = dev_dir.join("uio/uio7");
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(150));
            fs::create_dir_all(dir).unwrap();
        })
    };
    let start = Instant::now();
    let uio = bind_uio(root, &dev, Duration::from_secs(10)).unwrap();
    late.join().unwrap();
    assert_eq!(uio, "uio7");
    assert!(start.elapsed() >= Duration::from_millis(150) && start.elapsed() < Duration::from_secs(5));
    assert_eq!(fs::read_to_string(dev_dir.join("driver_override")).unwrap(), UIO_DRIVER);
    let old = root.join("bus/vmbus/drivers/hv_foo");
    assert_eq!(fs::read_to_string(old.join("unbind")).unwrap(), A);
    assert_eq!(fs::read_to_string(uio_drv.join("bind")).unwrap(), A);
    assert_eq!(fs::read_to_string(uio_drv.join("new_id")).unwrap(), "", "override path leaves new_id alone");
}

#[test]
fn bind_without_driver_override_registers_new_id() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let class = format!("{{{}}}", VMBUS_CLASS_GUID.to_uppercase());
    let dev_dir = add_device(root, &FakeDev { driver_override: false, ..FakeDev::new(A, &class, "5") });
    let uio_drv = add_driver(root, UIO_DRIVER);
    fs::create_dir_all(dev_dir.join("uio/uio0")).unwrap(); // appears at once
    let dev = VmbusDevice { uio: None, ..find_devices(root, VMBUS_CLASS_GUID).unwrap().remove(0) };
    assert_eq!(bind_uio(root, &dev, Duration::from_secs(1)).unwrap(), "uio0");
    assert_eq!(fs::read_to_string(uio_drv.join("new_id")).unwrap(), VMBUS_CLASS_GUID);
    assert_eq!(fs::read_to_string(uio_drv.join("bind")).unwrap(), A, "unbound device: no unbind, just bind");
    assert!(!dev_dir.join("driver_override").exists());
}

#[test]
fn bind_errors_are_bounded_and_precise() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    add_device(root, &FakeDev::new(A, VMBUS_CLASS_GUID, "5"));
    let dev = find_devices(root, VMBUS_CLASS_GUID).unwrap().remove(0);
    assert!(matches!(bind_uio(root, &dev, Duration::from_secs(1)), Err(SysfsError::DriverNotLoaded(_))));

    let uio_drv = add_driver(root, UIO_DRIVER);
    fs::remove_file(uio_drv.join("bind")).unwrap(); // writing bind fails; the node never appears
    let start = Instant::now();
    let err = bind_uio(root, &dev, Duration::from_millis(100)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    match &err {
        SysfsError::BindTimeout { instance, bind_error: Some(_), .. } => assert_eq!(instance, A),
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("writing bind failed"), "{err}");
}

#[test]
fn already_bound_device_is_returned_without_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dev_dir = add_device(
        root,
        &FakeDev { driver: Some(UIO_DRIVER), uio: Some("uio3"), ..FakeDev::new(A, VMBUS_CLASS_GUID, "5") },
    );
    let dev = find_devices(root, VMBUS_CLASS_GUID).unwrap().remove(0);
    assert_eq!(bind_uio(root, &dev, Duration::ZERO).unwrap(), "uio3");
    assert_eq!(fs::read_to_string(dev_dir.join("driver_override")).unwrap(), "(null)\n");
}

#[test]
fn reads_maps_in_index_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    add_map(root, "uio0", 0, "txrx_rings", "0x202000");
    add_map(root, "uio0", 1, "int_page", "0x1000");
    add_map(root, "uio0", 2, "monitor_page", "0x1000");
    let maps = read_maps(root, "uio0").unwrap();
    let got: Vec<_> = maps.iter().map(|m| (m.index, m.name.as_str(), m.size, m.offset)).collect();
    assert_eq!(got, [(0, "txrx_rings", 0x20_2000, 0), (1, "int_page", 0x1000, 0), (2, "monitor_page", 0x1000, 0)]);
    assert!(matches!(read_maps(root, "uio9"), Err(SysfsError::MissingMap { index: 0, .. })));
}

#[test]
fn bad_hex_in_a_map_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    add_map(tmp.path(), "uio0", 0, "txrx_rings", "0xzz");
    let err = read_maps(tmp.path(), "uio0").unwrap_err();
    assert!(matches!(&err, SysfsError::Parse { text, .. } if text == "0xzz"), "{err}");
    add_map(tmp.path(), "uio0", 0, "txrx_rings", "0x");
    assert!(matches!(read_maps(tmp.path(), "uio0"), Err(SysfsError::Parse { .. })));
    add_map(tmp.path(), "uio0", 0, "txrx_rings", "4096");
    assert_eq!(read_maps(tmp.path(), "uio0").unwrap()[0].size, 4096, "decimal is accepted too");
}

#[test]
fn guid_normalisation() {
    assert_eq!(normalize_guid(" {0590B792-DB64-45CC-81DB-B8D70C577C9E}\n"), VMBUS_CLASS_GUID);
    assert_eq!(dev_path("uio4"), Path::new("/dev/uio4"));
}
