//! A hostile guest: malformed packets that can be answered get a status; a corrupt ring is a
//! clean channel failure that still completes what was pending.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vmblob_protocol::framing::vmbus::{GpaRange, encode_blob_request, encode_gpa_direct, encode_inband};
use vmblob_protocol::{BlobError, OpRequest, VspResponse};
use vmblob_vmbus::{ControlWord, CorruptError, RingMem};
use zerocopy::IntoBytes;

use super::guest::{GateStore, Next, RAM, TestGuest, WAIT, name};
use crate::engine::Limits;
use crate::vmbus::{ChannelFailure, DrainReport, ServiceOptions};

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn status(r: &VspResponse) -> Option<BlobError> {
    BlobError::from_code(r.error.get())
}

/// A GetDeviceConfig request's packet, patched by `f` before it is sent.
fn send_patched(g: &mut TestGuest, f: impl FnOnce(&mut Vec<u8>, &mut vmblob_protocol::VspRequest)) -> u64 {
    let txn = g.next_txn();
    let (mut hdr, _, (data, req, resp)) = g.prepare(txn, &OpRequest::GetDeviceConfig, &[], 0);
    let mut packet = encode_blob_request(txn, &mut hdr, data.as_ref(), &req, &resp);
    let before = hdr;
    f(&mut packet, &mut hdr);
    if hdr != before {
        // Re-encode with the patched header (offsets are kept as patched).
        let at = packet.len() - 56;
        packet[at..].copy_from_slice(hdr.as_bytes());
    }
    g.send_packet(&packet);
    txn
}

fn answer(g: &mut TestGuest, txn: u64) -> Option<BlobError> {
    status(&g.wait_for(txn))
}

#[test]
fn answerable_malformed_packets_get_a_status_and_serving_goes_on() {
    let options = ServiceOptions { max_pages: 16, ..ServiceOptions::default() };
    let mut g = TestGuest::with(Arc::new(crate::store::memory::MemoryStore::new()), Limits::default(), options);
    let beyond_ram = RAM / 4096 + 10;

    // Range count 0, and absurdly large.
    let t = send_patched(&mut g, |p, _| p[20..24].copy_from_slice(&0u32.to_le_bytes()));
    assert_eq!(answer(&mut g, t), Some(BlobError::InvalidRequest));
    let t = send_patched(&mut g, |p, _| p[20..24].copy_from_slice(&u32::MAX.to_le_bytes()));
    assert_eq!(answer(&mut g, t), Some(BlobError::InvalidRequest));
    // byte_offset past a page.
    let t = send_patched(&mut g, |p, _| p[28..32].copy_from_slice(&0x1000u32.to_le_bytes()));
    assert_eq!(answer(&mut g, t), Some(BlobError::InvalidRequest));
    // Every page outside guest RAM.
    let t = send_patched(&mut g, |p, _| {
        for pfn in p[32..48].chunks_exact_mut(8) {
            pfn.copy_from_slice(&beyond_ram.to_le_bytes());
        }
    });
    assert_eq!(answer(&mut g, t), Some(BlobError::InvalidRequest));
    // Buffer offsets and lengths that leave the range, or break the seed's rules.
    let t = send_patched(&mut g, |_, h| h.response_buffer_offset = 0x10_0000.into());
    assert_eq!(answer(&mut g, t), Some(BlobError::InvalidRequest));
    let t = send_patched(&mut g, |_, h| h.request_buffer_length = 0.into());
    assert_eq!(answer(&mut g, t), Some(BlobError::InvalidRequest));
    let t = send_patched(&mut g, |_, h| h.data_buffer_length = u32::MAX.into());
    assert_eq!(answer(&mut g, t), Some(BlobError::TooLarge));
    let t = send_patched(&mut g, |_, h| h.version = 7.into());
    assert_eq!(answer(&mut g, t), Some(BlobError::Unsupported));

    // Two ranges; more pages than allowed; in-band data.
    let one = GpaRange { byte_count: 4096, byte_offset: 0, pfns: vec![300] };
    let t = g.next_txn();
    g.send_packet(&encode_gpa_direct(t, &[one.clone(), one.clone()], &[0; 56]));
    assert_eq!(answer(&mut g, t), Some(BlobError::InvalidRequest));
    let t = g.next_txn();
    let many = GpaRange { byte_count: 17 * 4096, byte_offset: 0, pfns: (300..317).collect() };
    g.send_packet(&encode_gpa_direct(t, &[many], &[0; 56]));
    assert_eq!(answer(&mut g, t), Some(BlobError::TooLarge));
    let t = g.next_txn();
    g.send_packet(&encode_inband(t, true, b"hello"));
    assert_eq!(answer(&mut g, t), Some(BlobError::Unsupported));

    // Unanswerable: no completion requested, id 0. Nothing comes back for them.
    g.send_packet(&encode_inband(99, false, b"fire and forget"));
    g.send_packet(&encode_gpa_direct(0, &[one], &[0; 56]));
    let (r, _) = g.call(&OpRequest::GetDeviceConfig, &[], 0);
    assert!(r.is_ok());
    let report = g.service.report();
    // Framing faults are refused by the service; header and buffer faults are admitted and
    // answered by the engine.
    assert_eq!((report.completed, report.refused, report.dropped, report.failure), (6, 6, 2, None));
    assert!(g.drain().is_empty(), "no completion for the dropped packets");
}

#[test]
fn a_duplicate_or_over_limit_id_gets_a_status_never_a_second_completion() {
    let store = Arc::new(GateStore::new());
    let limits = Limits { max_inflight: 2, ..Limits::default() };
    let mut g = TestGuest::with(store.clone(), limits, ServiceOptions::default());
    let props = OpRequest::GetContainerProperties { container: name("nowhere") };
    let first = g.submit(&props, &[], 0);
    let second = g.submit(&props, &[], 0);
    wait_until("both requests in the store", || store.entered() == 2);
    g.submit_as(first.txn, &props, &[], 0);
    assert_eq!(answer(&mut g, first.txn), Some(BlobError::InvalidRequest), "the duplicate is refused");
    let third = g.submit(&props, &[], 0);
    assert_eq!(answer(&mut g, third.txn), Some(BlobError::Busy));
    store.open();
    assert_eq!(answer(&mut g, first.txn), Some(BlobError::ContainerNotFound), "the original, once");
    assert_eq!(answer(&mut g, second.txn), Some(BlobError::ContainerNotFound));
    let (r, _) = g.call(&OpRequest::GetDeviceConfig, &[], 0);
    assert!(r.is_ok());
    assert!(g.drain().is_empty());
    let report = g.service.report();
    assert_eq!((report.completed, report.refused), (3, 2));
}

/// Two requests pending (one in the store, one queued), then `corrupt` breaks the guest→host
/// ring: the channel fails cleanly, both complete once, the queued one as rescinded.
fn corrupt_incoming(corrupt: impl FnOnce(&TestGuest)) -> ChannelFailure {
    let store = Arc::new(GateStore::new());
    let options = ServiceOptions { workers: 1, ..ServiceOptions::default() };
    let mut g = TestGuest::with(store.clone(), Limits::default(), options);
    let props = OpRequest::GetContainerProperties { container: name("nowhere") };
    let (a, b) = (g.submit(&props, &[], 0), g.submit(&props, &[], 0));
    wait_until("both admitted, one in the store", || store.entered() == 1 && g.service.in_flight() == 2);
    corrupt(&g);
    g.ch.signal_host().unwrap();
    wait_until("the channel failure", || g.service.report().failure.is_some());
    store.open();
    assert_eq!(answer(&mut g, b.txn), Some(BlobError::Rescinded));
    assert_eq!(answer(&mut g, a.txn), Some(BlobError::ContainerNotFound));
    // The failed channel serves nothing more, and goes away cleanly.
    wait_until("the table empty", || g.service.in_flight() == 0);
    g.emu.rescind().unwrap();
    assert_eq!(g.service.report().last_drain, Some(DrainReport { pending: 0, drained: true }));
    assert!(matches!(g.next(WAIT), Next::Ended(_)));
    assert!(g.drain().is_empty());
    g.service.report().failure.unwrap()
}

/// Writes `bytes` at the guest→host ring's write position and publishes `new_index`.
fn publish_raw(g: &TestGuest, bytes: &[u8], new_index: u32) {
    let ring = g.ch.outgoing_ring();
    let at = g.tx.committed_index();
    ring.write_at(at, bytes);
    ring.store(ControlWord::WriteIndex, new_index, Ordering::SeqCst);
}

fn descriptor(packet_type: u16, offset8: u16, len8: u16, flags: u16) -> Vec<u8> {
    let mut d = Vec::new();
    for v in [packet_type, offset8, len8, flags] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d.extend_from_slice(&42u64.to_le_bytes());
    d.extend_from_slice(&[0; 16]); // payload + trailer
    d
}

#[test]
fn a_bad_write_index_fails_the_channel_cleanly() {
    let f = corrupt_incoming(|g| g.ch.outgoing_ring().store(ControlWord::WriteIndex, 3, Ordering::SeqCst));
    assert!(matches!(f, ChannelFailure::CorruptIncoming(CorruptError::BadIndex { value: 3, .. })), "{f:?}");
    let f = corrupt_incoming(|g| g.ch.outgoing_ring().store(ControlWord::WriteIndex, 1 << 30, Ordering::SeqCst));
    assert!(matches!(f, ChannelFailure::CorruptIncoming(CorruptError::BadIndex { .. })), "{f:?}");
}

#[test]
fn a_packet_longer_than_the_written_data_fails_the_channel_cleanly() {
    let f = corrupt_incoming(|g| {
        let at = g.tx.committed_index() as u32;
        publish_raw(g, &descriptor(0x9, 2, 0x1000, 1), at + 32);
    });
    assert!(matches!(f, ChannelFailure::CorruptIncoming(CorruptError::Overrun { .. })), "{f:?}");
    let f = corrupt_incoming(|g| {
        let at = g.tx.committed_index() as u32;
        publish_raw(g, &descriptor(0x9, 2, 3, 1), at + 8);
    });
    assert!(matches!(f, ChannelFailure::CorruptIncoming(CorruptError::Truncated { .. })), "{f:?}");
}

#[test]
fn bad_types_flags_and_offsets_fail_the_channel_cleanly() {
    let raw = |t, o, f| {
        move |g: &TestGuest| {
            let at = g.tx.committed_index() as u32;
            publish_raw(g, &descriptor(t, o, 3, f), at + 32);
        }
    };
    let f = corrupt_incoming(raw(0x5, 2, 1));
    assert_eq!(f, ChannelFailure::CorruptIncoming(CorruptError::BadType(0x5)));
    let f = corrupt_incoming(raw(0x9, 2, 0x8));
    assert_eq!(f, ChannelFailure::CorruptIncoming(CorruptError::BadFlags(0x8)));
    let f = corrupt_incoming(raw(0x9, 1, 1));
    assert!(matches!(f, ChannelFailure::CorruptIncoming(CorruptError::BadLengths { offset8: 1, .. })), "{f:?}");
}

#[test]
fn a_bad_read_index_on_the_completion_ring_fails_the_channel_cleanly() {
    let mut g = TestGuest::new();
    let (r, _) = g.call(&OpRequest::GetDeviceConfig, &[], 0);
    assert!(r.is_ok());
    g.ch.incoming_ring().store(ControlWord::ReadIndex, 5, Ordering::SeqCst);
    g.submit(&OpRequest::GetDeviceConfig, &[], 0);
    wait_until("the channel failure", || g.service.report().failure.is_some());
    let report = g.service.report();
    assert!(matches!(report.failure, Some(ChannelFailure::Undeliverable(_))), "{report:?}");
    assert_eq!(report.undelivered, 1);
    wait_until("the table empty", || g.service.in_flight() == 0);
    g.emu.rescind().unwrap();
    assert_eq!(g.service.report().last_drain, Some(DrainReport { pending: 0, drained: true }));
}
