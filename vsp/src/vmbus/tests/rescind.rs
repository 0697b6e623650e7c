//! Completion-on-rescind: every request the host took completes exactly once, in the ring,
//! before the guest sees the rescind; then a re-offer is served afresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmblob_glue::vmbus::emulator::GuestError;
use vmblob_protocol::ops::{Conditions, Metadata, PutBlob};
use vmblob_protocol::{BlobError, OpRequest, VspResponse};
use vmblob_vmbus::IncomingRing;

use super::guest::{GateStore, Next, TestGuest, WAIT, blob_ref, name};
use crate::engine::Limits;
use crate::store::memory::MemoryStore;
use crate::vmbus::{DrainReport, ServiceOptions, ServiceState};

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Reads completions until the channel ends; panics on a second completion for an id.
fn completions_until_end(g: &mut TestGuest) -> (HashMap<u64, VspResponse>, GuestError) {
    let mut seen = HashMap::new();
    loop {
        match g.next(WAIT) {
            Next::Completion(id, r) => assert!(seen.insert(id, r).is_none(), "second completion for {id}"),
            Next::Timeout => panic!("no rescind seen"),
            Next::Ended(e) => {
                for (id, r) in g.drain() {
                    assert!(seen.insert(id, r).is_none(), "second completion for {id}");
                }
                return (seen, e);
            }
        }
    }
}

fn gated(workers: usize, limits: Limits) -> (TestGuest, Arc<GateStore>) {
    let store = Arc::new(GateStore::new());
    let g = TestGuest::with(store.clone(), limits, ServiceOptions { workers, ..ServiceOptions::default() });
    (g, store)
}

#[test]
fn every_pending_request_completes_once_before_the_guest_sees_the_rescind() {
    const N: usize = 16;
    let (mut g, store) = gated(2, Limits::default());
    let props = OpRequest::GetContainerProperties { container: name("nowhere") };
    let sent: Vec<u64> = (0..N).map(|_| g.submit(&props, &[], 0).txn).collect();
    wait_until("all admitted, two in the store", || store.entered() == 2 && g.service.in_flight() == N);

    let rescinder = {
        let emu = g.emu.clone();
        thread::spawn(move || emu.rescind().unwrap())
    };
    wait_until("the drain", || g.service.state() == ServiceState::Draining);
    assert!(!g.ch.is_rescinded(), "the guest sees the rescind only after the drain");
    store.open();
    rescinder.join().unwrap();

    let (seen, end) = completions_until_end(&mut g);
    assert!(matches!(end, GuestError::Rescinded));
    assert_eq!(seen.len(), N);
    assert!(sent.iter().all(|t| seen.contains_key(t)));
    let count = |e| seen.values().filter(|r| BlobError::from_code(r.error.get()) == Some(e)).count();
    assert_eq!(count(BlobError::ContainerNotFound), 2, "the two in the store finished");
    assert_eq!(count(BlobError::Rescinded), N - 2, "the queued ones were rescinded");
    assert_eq!(g.service.report().last_drain, Some(DrainReport { pending: N, drained: true }));
    assert_eq!(g.service.state(), ServiceState::Idle);

    // A re-offer is picked up and served; the old channel stays rescinded.
    let old = g.ch.offer().clone();
    g.emu.offer().unwrap();
    let mut again = TestGuest::attach(g.emu.clone(), g.service.clone(), Some(old.generation));
    assert!(again.ch.offer().generation > old.generation);
    assert!(again.call(&OpRequest::GetDeviceConfig, &[], 0).0.is_ok());
    assert!(g.ch.is_rescinded());
}

#[test]
fn close_completes_pending_requests_too_and_the_offer_reopens() {
    let (mut g, store) = gated(1, Limits::default());
    let props = OpRequest::GetContainerProperties { container: name("nowhere") };
    let sent: Vec<u64> = (0..4).map(|_| g.submit(&props, &[], 0).txn).collect();
    wait_until("all admitted", || store.entered() == 1 && g.service.in_flight() == 4);
    let closer = {
        let emu = g.emu.clone();
        thread::spawn(move || emu.close().unwrap())
    };
    wait_until("the drain", || g.service.state() == ServiceState::Draining);
    store.open();
    closer.join().unwrap();
    let (seen, end) = completions_until_end(&mut g);
    assert!(matches!(end, GuestError::Closed));
    assert_eq!(seen.len(), 4);
    assert!(sent.iter().all(|t| seen.contains_key(t)));
    let offer = g.ch.offer().generation;
    let mut again = TestGuest::attach(g.emu.clone(), g.service.clone(), Some(offer - 1));
    assert_eq!(again.ch.offer().generation, offer, "a close keeps the offer");
    assert!(again.call(&OpRequest::GetDeviceConfig, &[], 0).0.is_ok());
}

#[test]
fn a_drain_that_times_out_returns_and_says_so() {
    let limits = Limits { drain_timeout: Duration::from_millis(50), ..Limits::default() };
    let (mut g, store) = gated(1, limits);
    let props = OpRequest::GetContainerProperties { container: name("nowhere") };
    for _ in 0..3 {
        g.submit(&props, &[], 0);
    }
    wait_until("all admitted", || store.entered() == 1 && g.service.in_flight() == 3);
    g.emu.rescind().unwrap();
    assert_eq!(g.service.report().last_drain, Some(DrainReport { pending: 3, drained: false }));
    let (seen, end) = completions_until_end(&mut g);
    assert!(matches!(end, GuestError::Rescinded));
    assert!(seen.is_empty(), "nothing could complete while the store was stuck");
    store.open(); // let the stuck worker finish; it can post nothing any more
    wait_until("the late completions", || g.service.report().late == 3);
    // The next channel gets only its own completions.
    let offer = g.ch.offer().generation;
    g.emu.offer().unwrap();
    let mut again = TestGuest::attach(g.emu.clone(), g.service.clone(), Some(offer));
    assert!(again.call(&OpRequest::GetDeviceConfig, &[], 0).0.is_ok());
    assert_eq!(g.service.report().late, 3);
}

/// Packets still unread in the guest→host ring (the host never took them).
fn unread(g: &TestGuest) -> usize {
    let mut ring = IncomingRing::new(g.ch.outgoing_ring()).unwrap();
    std::iter::from_fn(|| ring.read().ok()).count()
}

#[test]
fn random_rescinds_under_load_complete_every_taken_request_once() {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let store = Arc::new(MemoryStore::new());
    let mut g = TestGuest::with(store, Limits::default(), ServiceOptions::default());
    assert!(
        g.call(&OpRequest::CreateContainer { container: name("load"), metadata: Metadata::default() }, &[], 0)
            .0
            .is_ok()
    );
    for round in 0..40 {
        let n = 1 + next(40) as usize;
        let rescind_after = next(n as u64) as usize;
        let mut sent = Vec::new();
        let mut rescinder = None;
        for i in 0..n {
            let op = OpRequest::PutBlob(PutBlob {
                target: blob_ref("load", &format!("r{round}/b{i}")),
                content_type: String::new(),
                headers: Default::default(),
                metadata: Metadata::default(),
                conditions: Conditions::none(),
                content_md5: None,
                content_crc64: None,
            });
            if i == rescind_after {
                let emu = g.emu.clone();
                rescinder = Some(thread::spawn(move || emu.rescind().unwrap()));
            }
            if g.ch.is_rescinded() {
                break;
            }
            sent.push(g.submit(&op, &vec![i as u8; 100 + i * 37], 0).txn);
        }
        rescinder.expect("rescinded this round").join().unwrap();
        let (seen, end) = completions_until_end(&mut g);
        assert!(matches!(end, GuestError::Rescinded));
        for (id, r) in &seen {
            assert!(sent.contains(id), "completion for unknown {id}");
            let status = BlobError::from_code(r.error.get());
            assert!(status.is_none() || status == Some(BlobError::Rescinded), "round {round}: {status:?}");
        }
        assert_eq!(seen.len() + unread(&g), sent.len(), "round {round}: a request was lost");
        let report = g.service.report().last_drain.unwrap();
        assert!(report.drained);
        let seen_gen = g.ch.offer().generation;
        g.emu.offer().unwrap();
        g = TestGuest::attach(g.emu.clone(), g.service.clone(), Some(seen_gen));
    }
}
