//! Reserve before consume: the host takes a request only once its completion has room in the
//! host→guest ring, so a finished request is posted at once and nothing waits on the host side.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmblob_protocol::framing::vmbus::encode_blob_completion;
use vmblob_protocol::{BlobError, OpRequest, VspResponse};
use vmblob_vmbus::{IncomingRing, TRAILER_SIZE};

use super::guest::{GateStore, Next, TestGuest, WAIT, name};
use crate::engine::Limits;
use crate::vmbus::ServiceOptions;

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Packets still unread in the guest→host ring.
fn unread(g: &TestGuest) -> usize {
    let mut ring = IncomingRing::new(g.ch.outgoing_ring()).unwrap();
    std::iter::from_fn(|| ring.read().ok()).count()
}

/// Every completion slot promised to a request stuck in the store: the host stops reading with a
/// `pending_send_sz` no amount of guest reading can reach, and resumes once those requests post.
#[test]
fn a_ring_promised_to_slow_requests_stops_reading_until_they_post() {
    let store = Arc::new(GateStore::new());
    let limits = Limits { max_inflight: 1024, ..Limits::default() };
    let mut g = TestGuest::with(store.clone(), limits, ServiceOptions::default());
    // A roomy guest→host ring, a one-page host→guest ring.
    g.reopen(0x10000, 0x2000);
    let slot = encode_blob_completion(0, &VspResponse::default()).len() + TRAILER_SIZE;
    let slots = (g.rx.data_size() - TRAILER_SIZE) / slot;
    let total = slots + 20;

    let props = OpRequest::GetContainerProperties { container: name("nowhere") };
    let sent: HashSet<u64> = (0..total).map(|_| g.submit(&props, &[], 0).txn).collect();
    wait_until("the host stops reading", || g.service.in_flight() == slots && unread(&g) == total - slots);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!((g.service.in_flight(), unread(&g)), (slots, total - slots), "nothing more was taken");
    assert!(g.drain().is_empty(), "no completion yet");

    store.open();
    let mut seen = HashSet::new();
    while seen.len() < total {
        match g.next(WAIT) {
            Next::Completion(id, r) => {
                assert!(seen.insert(id), "second completion for {id}");
                assert_eq!(BlobError::from_code(r.error.get()), Some(BlobError::ContainerNotFound));
            }
            other => panic!("after {} completions: {other:?}", seen.len()),
        }
    }
    assert_eq!(seen, sent);
    // The counter moves just after the completion is visible to the guest: give it a moment.
    let until = std::time::Instant::now() + WAIT;
    while g.service.report().completed < total as u64 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(g.service.report().completed, total as u64);
}

#[test]
fn a_panicking_store_gets_one_internal_completion_and_serving_goes_on() {
    let mut g = TestGuest::with(Arc::new(GateStore::new()), Limits::default(), ServiceOptions::default());
    let (r, _) = g.call(&OpRequest::GetContainerProperties { container: name("panic") }, &[], 0);
    assert_eq!(r, Err(BlobError::Internal));
    assert!(g.call(&OpRequest::GetDeviceConfig, &[], 0).0.is_ok());
    assert!(g.drain().is_empty(), "exactly one completion each");
    assert_eq!(g.service.report().completed, 2);
}
