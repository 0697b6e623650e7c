use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::SeqCst;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

const RING: usize = 0x4000; // per direction: 4 KiB control + 12 KiB data

fn map(index: usize, name: &str, size: u64) -> UioMap {
    UioMap { index, name: name.into(), size, offset: 0 }
}

fn standard_maps() -> Vec<UioMap> {
    vec![map(0, "txrx_rings", 2 * RING as u64), map(1, "int_page", 0x1000), map(2, "monitor_page", 0x1000)]
}

/// A regular file standing in for `/dev/uioN`: map K lives at file offset K * page size,
/// so (unlike a real device) the maps overlap in the file; each check reads its own bytes.
fn fake_uio(maps: &[UioMap]) -> tempfile::NamedTempFile {
    let page = host_page_size().unwrap() as u64;
    let len = maps.iter().map(|m| m.index as u64 * page + m.size).max().unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(len).unwrap();
    file
}

fn read_u32_at(file: &File, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, offset).unwrap();
    u32::from_le_bytes(b)
}

const IDS: ChannelIds = ChannelIds { relid: 37, monitor_id: None };

#[test]
fn rings_are_the_two_halves_of_map0() {
    let maps = standard_maps();
    let fake = fake_uio(&maps);
    fake.as_file().write_all_at(&0x1111_1111u32.to_le_bytes(), 0).unwrap(); // TX write_index
    fake.as_file().write_all_at(&0x2222_2222u32.to_le_bytes(), RING as u64 + 4).unwrap(); // RX read_index
    let dev = UioDevice::open(fake.path(), &maps, IDS).unwrap();

    assert_eq!(dev.ring_size(), RING);
    let (tx, rx) = (dev.tx_ring(), dev.rx_ring());
    assert_eq!((tx.len(), rx.len()), (RING, RING));
    assert_eq!(tx.load_u32(0, SeqCst).unwrap(), 0x1111_1111);
    assert_eq!(rx.load_u32(4, SeqCst).unwrap(), 0x2222_2222);
    rx.store_u32(8, 1, SeqCst).unwrap(); // RX interrupt_mask
    rx.write_bytes(RING - 5, b"tail!").unwrap();
    assert!(rx.write_bytes(RING - 4, b"tail!").is_err(), "RX ends at the end of map 0");
    assert_eq!(read_u32_at(fake.as_file(), RING as u64 + 8), 1);
    let mut tail = [0u8; 5];
    fake.as_file().read_exact_at(&mut tail, 2 * RING as u64 - 5).unwrap();
    assert_eq!(&tail, b"tail!");
    assert!(dev.monitor_page().is_none(), "no monitor id: map 2 is not mapped");
    assert_eq!(dev.int_page().len(), 0x1000);
}

#[test]
fn signal_host_sets_the_send_bitmap_bit_then_writes_one() {
    let maps = standard_maps();
    let fake = fake_uio(&maps);
    let page = host_page_size().unwrap() as u64;
    let dev = UioDevice::open(fake.path(), &maps, IDS).unwrap();
    dev.signal_host().unwrap();
    // relid 37: word 1 of the send bitmap, bit 5; the receive half is untouched.
    assert_eq!(read_u32_at(fake.as_file(), page + 2048 + 4), 1 << 5);
    assert_eq!(read_u32_at(fake.as_file(), page + 37 / 8), 0, "receive bitmap untouched");
    // The fake file records the write(1u32) at file position 0.
    assert_eq!(read_u32_at(fake.as_file(), 0), 1);
    dev.signal_host().unwrap();
    assert_eq!(read_u32_at(fake.as_file(), page + 2048 + 4), 1 << 5, "bits are ORed, idempotent");
    dev.unmask_interrupts().unwrap();
    assert_eq!(fs::metadata(fake.path()).unwrap().len(), 2 * RING as u64, "writes do not grow the fake");
}

#[test]
fn a_monitored_channel_is_signalled_by_its_bits_alone() {
    let maps = standard_maps();
    let fake = fake_uio(&maps);
    let page = host_page_size().unwrap() as u64;
    let ids = ChannelIds { relid: 3, monitor_id: Some(70) };
    let dev = UioDevice::open(fake.path(), &maps, ids).unwrap();
    assert_eq!(dev.monitor_page().unwrap().len(), 0x1000);
    dev.signal_host().unwrap();
    // monitor 70: trigger_group[2].pending at 8 + 16, bit 6.
    assert_eq!(read_u32_at(fake.as_file(), 2 * page + 24), 1 << 6);
    assert_eq!(read_u32_at(fake.as_file(), page + 2048), 1 << 3);
    // As the kernel does: no write(1) for a monitored channel (the fake records one at offset 0).
    assert_eq!(read_u32_at(fake.as_file(), 0), 0, "a monitored channel is signalled without a write");
}

#[test]
fn maps_are_validated() {
    let fake = fake_uio(&standard_maps());
    let open = |maps: &[UioMap], ids| UioDevice::open(fake.path(), maps, ids);
    let mut maps = standard_maps();
    maps[1].name = "monitor_page".into();
    assert!(matches!(open(&maps, IDS), Err(UioError::WrongMap { index: 1, .. })));
    assert!(matches!(open(&standard_maps()[..1], IDS), Err(UioError::MissingMap { index: 1, .. })));
    let with_monitor = ChannelIds { relid: 1, monitor_id: Some(1) };
    assert!(matches!(open(&standard_maps()[..2], with_monitor), Err(UioError::MissingMap { index: 2, .. })));
    for size in [0x3000, 2 * RING as u64 + 0x1000, 0x5000] {
        let mut maps = standard_maps();
        maps[0].size = size;
        assert!(matches!(open(&maps, IDS), Err(UioError::BadMapSize { index: 0, .. })), "{size:#x}");
    }
    let mut maps = standard_maps();
    maps[1].size = 0x800;
    assert!(matches!(open(&maps, IDS), Err(UioError::BadMapSize { index: 1, .. })));
    let relid = |relid| ChannelIds { relid, monitor_id: None };
    assert!(matches!(open(&standard_maps(), relid(16384)), Err(UioError::RelidOutOfRange(16384))));
    assert!(open(&standard_maps(), relid(16383)).is_ok(), "last bit of the 2 KiB send bitmap");
    let monitor = |id| ChannelIds { relid: 1, monitor_id: Some(id) };
    assert!(matches!(open(&standard_maps(), monitor(128)), Err(UioError::MonitorIdOutOfRange(128))));
    assert!(open(&standard_maps(), monitor(127)).is_ok());
    let missing = UioDevice::open(Path::new("/nonexistent/uio0"), &standard_maps(), IDS);
    assert!(matches!(missing, Err(UioError::Open { .. })));
}

#[test]
fn open_vmbus_reads_maps_from_sysfs() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = VmbusDevice { instance: "x".into(), relid: 1, monitor_id: None, uio: None, driver: None };
    assert!(matches!(UioDevice::open_vmbus(tmp.path(), &dev), Err(UioError::Open { .. })), "not bound");
    let dev = VmbusDevice { uio: Some("uio0".into()), ..dev };
    assert!(matches!(UioDevice::open_vmbus(tmp.path(), &dev), Err(UioError::Sysfs(_))), "no maps");
}

fn socket_interrupt() -> (UioInterrupt, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    (UioInterrupt::new(File::from(OwnedFd::from(ours))), peer)
}

#[test]
fn wait_returns_the_count_times_out_and_signal_writes_one() {
    let (irq, mut peer) = socket_interrupt();
    let start = Instant::now();
    assert_eq!(irq.wait(Some(Duration::from_millis(50))).unwrap(), None);
    assert!(start.elapsed() >= Duration::from_millis(50) && start.elapsed() < Duration::from_secs(5));
    assert_eq!(irq.wait(Some(Duration::ZERO)).unwrap(), None);

    peer.write_all(&7u32.to_ne_bytes()).unwrap();
    assert_eq!(irq.wait(Some(Duration::from_secs(5))).unwrap(), Some(7));

    irq.signal().unwrap();
    let mut got = [0u8; 4];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(u32::from_ne_bytes(got), 1);

    // A blocked waiter (no timeout) wakes when the "host" interrupts.
    let waker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        peer.write_all(&8u32.to_ne_bytes()).unwrap();
        peer
    });
    let start = Instant::now();
    assert_eq!(irq.wait(None).unwrap(), Some(8));
    assert!(start.elapsed() >= Duration::from_millis(90));
    let _peer = waker.join().unwrap();
    assert!(!irq.rescind_watch().is_rescinded());
}

#[test]
fn closed_peer_is_a_rescind_and_sticks() {
    let (irq, peer) = socket_interrupt();
    let watch = irq.rescind_watch();
    drop(peer);
    assert!(matches!(irq.wait(Some(Duration::from_secs(5))), Err(UioError::Rescinded)));
    assert!(watch.is_rescinded());
    assert!(matches!(irq.signal(), Err(UioError::Rescinded)), "no more I/O after a rescind");
    assert!(matches!(irq.wait(None), Err(UioError::Rescinded)), "fails fast, does not block");
}

#[test]
fn pollerr_without_data_is_a_rescind() {
    // The write end of a pipe whose reader is gone polls as EPOLLERR only, like uio after hv_uio_rescind.
    let (reader, writer) = io::pipe().unwrap();
    let irq = UioInterrupt::new(File::from(OwnedFd::from(writer)));
    drop(reader);
    assert!(matches!(irq.wait(Some(Duration::from_secs(5))), Err(UioError::Rescinded)));
    assert!(irq.rescind_watch().is_rescinded());
}

#[test]
fn eio_enodev_and_a_writes_einval_classify_as_rescind() {
    assert!(matches!(classify_io_error("read", io::Error::from_raw_os_error(libc::EIO)), UioError::Rescinded));
    assert!(matches!(classify_io_error("write", io::Error::from_raw_os_error(libc::ENODEV)), UioError::Rescinded));
    // A write to an unregistered device (6.11+) answers EINVAL.
    assert!(matches!(classify_io_error("write", io::Error::from_raw_os_error(libc::EINVAL)), UioError::Rescinded));
    let other = classify_io_error("read", io::Error::from_raw_os_error(libc::EINVAL));
    assert!(matches!(other, UioError::Io { op: "read", .. }), "{other}");
    let other = classify_io_error("read", io::Error::other("no errno"));
    assert!(matches!(other, UioError::Io { .. }));
}

#[test]
fn only_4k_pages_are_supported() {
    assert_eq!(super::supported_page_size(4096).unwrap(), 4096);
    let err = super::supported_page_size(65536).unwrap_err();
    assert!(matches!(err, UioError::UnsupportedPageSize(65536)));
    assert!(err.to_string().contains("4 KiB pages only"), "{err}");
}
