use std::sync::atomic::Ordering::SeqCst;

use vmblob_protocol::framing::vmbus::{encode_completion, encode_inband};
use vmblob_vmbus::{IncomingRing, OutgoingRing, ReadError};

use super::*;
use crate::transport::pinned::tests::{fake_pool, move_page, spread};
use crate::transport::region::host_page_size;
use crate::transport::vmbus::ChannelSource;
use crate::transport::vmbus::uio::channel::UioChannel;
use crate::transport::vmbus::uio::device::{ChannelIds, UioDevice};
use crate::transport::vmbus::uio::{UioChannelSource, UioMap};

#[test]
fn identity_pages_are_gpa_page_numbers() {
    let pb = identity_page_buffer(GuestAddress(0x1_0ff0), 0x20).unwrap();
    assert_eq!(pb, PageBuffer { first_page_offset: 0xff0, len: 0x20, pfns: vec![0x10, 0x11] });
    let pb = identity_page_buffer(GuestAddress(0x2000), 0x1000).unwrap();
    assert_eq!(pb.pfns, vec![2], "a page-aligned page is one PFN");
    assert!(matches!(identity_page_buffer(GuestAddress(0x2000), 0), Err(ChannelError::BadBuffer { .. })));
    assert!(identity_page_buffer(GuestAddress(u64::MAX - 4), 16).is_err());
}

#[test]
fn pinned_pages_are_the_pools_pfns() {
    let (_pagemap, dma) = fake_pool(spread);
    let _first = dma.pool().alloc(100).unwrap();
    let buf = dma.pool().alloc(5000).unwrap(); // pool pages 1 and 2
    let pb = pinned_page_buffer(&dma, GuestAddress(buf.gpa().0 + 56), 4096).unwrap();
    assert_eq!(pb, PageBuffer { first_page_offset: 56, len: 4096, pfns: vec![0x1003, 0x1006] });
    assert!(pinned_page_buffer(&dma, GuestAddress(dma.len() as u64 - 8), 16).is_err(), "past the pool");
}

const RING: usize = 0x4000;

/// The uio channel's rings are the halves of map 0 as the host lays them
/// out: what the guest writes lands in the TX half, what the host writes in
/// the RX half is what the guest reads.
#[test]
fn uio_channel_rings_are_the_halves_of_map0() {
    let maps = vec![
        UioMap { index: 0, name: "txrx_rings".into(), size: 2 * RING as u64, offset: 0 },
        UioMap { index: 1, name: "int_page".into(), size: 0x1000, offset: 0 },
    ];
    let page = host_page_size().unwrap() as u64;
    let fake = tempfile::NamedTempFile::new().unwrap();
    fake.as_file().set_len((2 * RING as u64).max(page + 0x1000)).unwrap();
    let dev = UioDevice::open(fake.path(), &maps, ChannelIds { relid: 5, monitor_id: None }).unwrap();
    let (region, rx_region) = (dev.tx_ring(), dev.rx_ring());
    let ch = UioChannel::open(dev).unwrap();
    assert!(!ch.signal.is_rescinded());

    let mut tx = OutgoingRing::new(ch.outgoing.clone()).unwrap();
    let packet = encode_inband(9, false, b"guest to host");
    tx.write(&packet).unwrap();
    tx.commit_write();
    assert_eq!(region.load_u32(0, SeqCst).unwrap() as usize, packet.len() + 8, "TX write_index");
    let mut head = [0u8; 24];
    region.read_bytes(4096, &mut head).unwrap();
    assert_eq!(head[..], packet[..24], "TX data starts after its control page");

    // The host's completion, written straight into the RX half.
    let completion = encode_completion(9, &[1, 2, 3, 4, 5, 6, 7, 8]);
    rx_region.write_bytes(4096, &completion).unwrap();
    rx_region.store_u32(0, (completion.len() + 8) as u32, SeqCst).unwrap();
    let mut rx = IncomingRing::new(ch.incoming.clone()).unwrap();
    assert_eq!(rx.read().unwrap(), completion);
    assert_eq!(rx.read(), Err(ReadError::Empty));
}

#[test]
fn uio_source_without_a_device_reports_no_offer() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bus/vmbus/devices")).unwrap();
    let (_pagemap, dma) = fake_pool(spread);
    let source =
        UioChannelSource::new(root.path(), vmblob_protocol::transport::VMBUS_CLASS_GUID, dma).with_isolation(None);
    assert!(source.open(std::time::Duration::from_millis(30)).unwrap().is_none());
    assert!(!source.rings_outlive_rescind(), "hv_uio_rescind frees the rings: nothing is reaped after it");
    let pb = source.page_buffer(GuestAddress(0), 10).unwrap();
    assert_eq!(pb.pfns, vec![0x1000]);
}

/// The uio source re-checks the pool's frames for the channel thread: a
/// moved page is an error (the thread then closes the transport for good).
#[test]
fn uio_source_reports_a_moved_pool_page() {
    let root = tempfile::tempdir().unwrap();
    let (pagemap, mut dma) = fake_pool(spread);
    dma.set_verify_every(std::time::Duration::ZERO);
    move_page(&pagemap, &dma, 3, 0x4242);
    let source = UioChannelSource::new(root.path(), vmblob_protocol::transport::VMBUS_CLASS_GUID, dma);
    let err = source.check_pinned().unwrap_err();
    assert!(matches!(err, ChannelError::Dma(PinnedDmaError::Moved { page: 3, now: 0x4242, .. })), "{err}");
}

/// An isolated (SEV-SNP/TDX) guest's kernel drops vmblob's offer, so with
/// no device in sysfs the source says why at once instead of waiting out
/// the open timeout.
#[test]
fn an_isolated_guest_is_told_why_no_device_appears() {
    use crate::transport::vmbus::uio::Isolation;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bus/vmbus/devices")).unwrap();
    let (_pagemap, dma) = fake_pool(spread);
    let source = UioChannelSource::new(root.path(), vmblob_protocol::transport::VMBUS_CLASS_GUID, dma)
        .with_isolation(Some(Isolation::Tdx));
    let started = std::time::Instant::now();
    let err = source.open(std::time::Duration::from_secs(10)).unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "no wait for an offer that cannot come");
    assert!(matches!(&err, ChannelError::NeverOffered(why) if why.contains("TDX")), "{err}");
}
