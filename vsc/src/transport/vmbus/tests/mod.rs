//! The transport against a scripted host ([`fake`]): framing, completion
//! matching, hostile completions, rescind and re-offer, close.

mod fake;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmblob_protocol::config::DeviceConfig;
use vmblob_protocol::framing::vmbus::{encode_completion, encode_inband};
use vmblob_protocol::ops::{Metadata, OpRequest};
use vmblob_protocol::{BlobError, ContainerName, VspResponse};
use zerocopy::IntoBytes;

use super::{VmbusOptions, VmbusTransport};
use crate::client::{BlobClient, ClientOptions, Data, PendingOp};
use crate::error::ClientError;
use crate::transport::Transport;
use fake::{FakeSource, HostEnd};

const RING: usize = 64 << 10;
const LONG: Duration = Duration::from_secs(20);

fn opts() -> VmbusOptions {
    VmbusOptions {
        wait_slice: Duration::from_millis(20),
        retry_interval: Duration::from_millis(5),
        ..Default::default()
    }
}

/// Open a transport against `source`, answering its config request.
fn open(source: &Arc<FakeSource>, config: DeviceConfig) -> (Arc<VmbusTransport>, HostEnd) {
    let mut host = source.offer();
    let s = source.clone();
    let opener = std::thread::spawn(move || VmbusTransport::open(s, opts()));
    host.answer_config(&config);
    (Arc::new(opener.join().unwrap().unwrap()), host)
}

/// A PutBlock (its data goes in the data buffer) for `cont/blob`.
fn put_block() -> OpRequest {
    OpRequest::PutBlock(vmblob_protocol::ops::PutBlock {
        lease_id: None,
        target: vmblob_protocol::ops::BlobRef {
            container: vmblob_protocol::ContainerName::new("cont").unwrap(),
            blob: vmblob_protocol::BlobName::new("blob").unwrap(),
        },
        block_id: vmblob_protocol::BlockId::new(b"blk").unwrap(),
        content_crc64: None,
    })
}

fn client(t: &Arc<VmbusTransport>) -> BlobClient {
    BlobClient::new(t.clone(), t.device_config(), ClientOptions { timeout_ms: 0, ..Default::default() })
}

/// A host thread answering every request until stopped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<HostEnd>,
}

impl Server {
    fn start(mut host: HostEnd, config: DeviceConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(req) = host.next_request(Duration::from_millis(20)) {
                    host.answer(&req, &config);
                }
            }
            host
        });
        Self { stop, thread }
    }

    fn stop(self) -> HostEnd {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn create(c: &BlobClient, name: &str) -> Result<PendingOp, ClientError> {
    let op = OpRequest::CreateContainer { container: ContainerName::new(name).unwrap(), metadata: Metadata::default() };
    c.submit(&op, Data::None)
}

/// The etag the fake host answers with is the container's name: a result
/// delivered to the wrong caller shows.
fn etag_of(r: Result<crate::client::OpResult, ClientError>) -> Result<String, ClientError> {
    match r?.response {
        vmblob_protocol::OpResponse::ContainerCreated(p) => Ok(p.etag),
        other => panic!("unexpected {other:?}"),
    }
}

fn is_rescinded(e: &ClientError) -> bool {
    matches!(e, ClientError::Rescinded | ClientError::Status { error: BlobError::Rescinded, .. })
}

#[test]
fn requests_are_gpa_direct_with_data_request_response_pages_in_order() {
    let source = FakeSource::new(RING);
    let config = fake::config(64);
    let (t, mut host) = open(&source, config);
    // As fetched, but with the largest data request a quarter of the 60 KiB ring.
    let max_data_len = ((60 << 10) / 4 - 96) / 8 * 4096 - 8 * 4096;
    assert_eq!(t.device_config(), DeviceConfig { max_data_len: max_data_len as u32, ..config });
    assert_eq!(t.num_queues(), 1);
    let c = client(&t);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let put = put_block();
    let pending = c.submit(&put, Data::Out(&data)).unwrap();
    let req = host.next_request(LONG).unwrap();
    assert!(req.id >= 1, "requestor ids are never 0");
    let h = req.header;
    // The seed's page order: data, then request, then response.
    assert!(h.data_buffer_offset.get() < 4096);
    let data_pages = (h.data_buffer_offset.get() + h.data_buffer_length.get()).div_ceil(4096);
    assert_eq!(h.request_buffer_offset.get() / 4096, data_pages);
    assert!(h.response_buffer_offset.get() > h.request_buffer_offset.get());
    assert_eq!((h.data_buffer_length.get(), h.data_buffer_valid.get()), (10_000, 10_000));
    assert_eq!(host.read_data(&req), data);
    // 10,000 data bytes: 3 pages; the op request: 1; the 16 KiB response: 4.
    assert_eq!(req.pfn_count, 3 + 1 + 4);
    host.answer(&req, &config);
    assert!(matches!(pending.wait(), Err(e) if e.is_not_found()));

    let second = create(&c, "second").unwrap();
    let req2 = host.next_request(LONG).unwrap();
    assert!(req2.id > req.id, "ids are never reused");
    host.answer(&req2, &config);
    assert_eq!(etag_of(second.wait()).unwrap(), "second");
    assert_eq!(t.pending(), 0);
}

/// The ring Linux gives a class it does not know (0x11000 bytes per direction,
/// 64 KiB of data): the largest data request the config allows is written and
/// answered. Before, the config allowed 8,184 data pages, whose packet (64 KiB
/// of page numbers alone) could never fit that ring.
#[test]
fn the_largest_request_fits_the_kernels_default_ring() {
    let source = FakeSource::new(0x11000);
    let config = fake::config(64);
    let (t, mut host) = open(&source, config);
    let max = t.device_config().max_data_len as usize;
    assert_eq!(max, ((64 << 10) / 4 - 96) / 8 * 4096 - 8 * 4096, "a quarter of the ring");
    let c = client(&t);
    assert_eq!(c.block_size(), max, "the client splits transfers at the ring's limit");
    let data = vec![0x5a; max];
    let put = put_block();
    let pending = c.submit(&put, Data::Out(&data)).expect("the largest request is written into the ring");
    let req = host.next_request(LONG).expect("the host sees it");
    assert_eq!(req.header.data_buffer_length.get() as usize, max);
    host.answer(&req, &config);
    assert!(matches!(pending.wait(), Err(e) if e.is_not_found()));
}

/// Each lie fails the pending request with an error (never a hang), takes
/// the channel down, and the transport recovers on the next offer.
#[test]
fn hostile_completions_fail_the_channel_cleanly() {
    type Lie = fn(&mut HostEnd, u64);
    let lies: [(&str, Lie); 10] = [
        ("unknown id", |h, id| h.complete(id + 1000, VspResponse::new(0, 0))),
        ("id 0", |h, _| h.complete(0, VspResponse::new(0, 0))),
        ("short completion", |h, id| h.send_raw(&encode_completion(id, &[0; 8]))),
        ("wrong packet type", |h, id| h.send_raw(&encode_inband(id, false, VspResponse::new(0, 0).as_bytes()))),
        ("bad length field", |h, id| {
            let mut r = VspResponse::new(0, 0);
            r.length = 13.into();
            h.complete(id, r)
        }),
        ("response_len beyond the buffer", |h, id| h.complete(id, VspResponse::new(0, 1 << 30))),
        ("completed twice", |h, id| {
            h.complete(id, VspResponse::new(BlobError::BlobNotFound.code(), 0));
            h.complete(id, VspResponse::new(0, 0));
        }),
        ("unknown packet type in the ring", |h, id| {
            let mut p = encode_completion(id, VspResponse::new(0, 0).as_bytes());
            p[0] = 5;
            h.send_raw(&p)
        }),
        ("descriptor longer than the ring holds", |h, id| {
            let mut p = encode_completion(id, VspResponse::new(0, 0).as_bytes());
            p[4] = 0xff;
            h.send_raw_unchecked(&p)
        }),
        ("write index not 8-aligned", |h, _| h.set_host_write_index(3)),
    ];
    for (what, lie) in lies {
        let source = FakeSource::new(RING);
        let config = fake::config(64);
        let (t, mut host) = open(&source, config);
        let c = client(&t);
        let pending = create(&c, "victim").unwrap();
        let req = host.next_request(LONG).unwrap();
        lie(&mut host, req.id);
        // PendingOp has no timed wait: a thread and a bounded receive check for hangs.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(pending.wait().map(|_| ())).unwrap());
        let result = rx.recv_timeout(LONG).unwrap_or_else(|_| panic!("{what}: the caller hangs"));
        match what {
            // The request was really completed first; the lie came after.
            "completed twice" => assert!(matches!(result, Err(ref e) if e.is_not_found()), "{what}: {result:?}"),
            _ => {
                let lost = matches!(result, Err(ClientError::OutcomeUnknown { .. } | ClientError::Protocol(_)));
                assert!(lost, "{what}: {result:?}")
            }
        }
        wait_until(|| !t.is_connected(), what);
        assert!(matches!(create(&c, "refused"), Err(ClientError::Rescinded)), "{what}: fails fast while down");
        // Recovery: the old channel is closed, the next offer is picked up.
        wait_until(|| host.guest_closed(), what);
        let server = Server::start(source.offer(), config);
        wait_until(|| t.is_connected(), what);
        assert_eq!(t.generation(), 2);
        assert_eq!(etag_of(create(&c, "after").unwrap().wait()).unwrap(), "after", "{what}");
        server.stop();
    }
}

fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + LONG;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}: condition not reached");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn rescind_fails_pending_at_once_and_old_handles_work_after_the_reoffer() {
    let source = FakeSource::new(RING);
    let config = fake::config(64);
    let (t, mut host) = open(&source, config);
    let c = client(&t);
    let names: Vec<String> = (0..6).map(|i| format!("res{i}")).collect();
    let pending: Vec<PendingOp> = names.iter().map(|n| create(&c, n).unwrap()).collect();
    let reqs: Vec<_> = (0..6).map(|_| host.next_request(LONG).unwrap()).collect();
    // Completion on rescind: two answered for real, one rescinded by the
    // host, three left to the guest.
    host.answer(&reqs[0], &config);
    host.answer(&reqs[1], &config);
    host.complete(reqs[2].id, VspResponse::new(BlobError::Rescinded.code(), 0));
    host.rescind();
    let results: Vec<_> = pending.into_iter().map(|p| etag_of(p.wait())).collect();
    assert_eq!(results[0].as_deref().unwrap(), "res0");
    assert_eq!(results[1].as_deref().unwrap(), "res1");
    // The host said Rescinded: surely not done. The rest lost their answer with the channel:
    // this transport does not ask again, so their outcome is unknown.
    assert!(matches!(&results[2], Err(e) if is_rescinded(e)), "{:?}", results[2]);
    for r in &results[3..] {
        assert!(matches!(r, Err(ClientError::OutcomeUnknown { .. })), "{r:?}");
    }
    // The old channel is closed and nothing waits for the client, which
    // still holds the transport; submissions fail fast meanwhile.
    wait_until(|| host.guest_closed(), "old channel closed");
    assert!(matches!(create(&c, "early"), Err(ClientError::Rescinded)));
    assert_eq!(t.pending(), 0);

    let server = Server::start(source.offer(), config);
    wait_until(|| t.is_connected(), "re-offer picked up");
    assert_eq!(t.generation(), 2);
    assert_eq!(etag_of(create(&c, "later").unwrap().wait()).unwrap(), "later");
    server.stop();
}

/// `uio_hv_generic` since 6.11 frees the rings right after it tells the
/// guest of the rescind (EIO / POLLERR), while they are still mapped. The
/// guest must not touch them from then on: no draining, no `read_index`
/// commit, no send. Every pending request fails at once (answers the host
/// posted are lost with the rings), the channel is unmapped, and the
/// re-offer is served as usual.
#[test]
fn after_a_uio_rescind_the_guest_never_touches_the_freed_rings() {
    let source = FakeSource::freeing_rings_on_rescind(RING);
    let config = fake::config(64);
    let (t, mut host) = open(&source, config);
    let c = client(&t);
    let pending: Vec<PendingOp> = (0..4).map(|i| create(&c, &format!("freed{i}")).unwrap()).collect();
    let reqs: Vec<_> = (0..4).map(|_| host.next_request(LONG).unwrap()).collect();
    // Posted before the rescind: reaped before it, or lost with the rings.
    host.answer(&reqs[0], &config);
    host.complete(reqs[1].id, VspResponse::new(BlobError::Rescinded.code(), 0));
    host.rescind();
    let results: Vec<_> = pending.into_iter().map(|p| etag_of(p.wait())).collect();
    assert!(
        matches!(&results[0], Ok(e) if e == "freed0") || matches!(&results[0], Err(ClientError::OutcomeUnknown { .. })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(e) if is_rescinded(e) || matches!(e, ClientError::OutcomeUnknown { .. })),
        "{:?}",
        results[1]
    );
    for r in &results[2..] {
        assert!(matches!(r, Err(ClientError::OutcomeUnknown { .. })), "{r:?}");
    }
    wait_until(|| host.guest_closed(), "old channel closed (unmapped)");
    assert!(matches!(create(&c, "early"), Err(ClientError::Rescinded)));
    assert_eq!(t.pending(), 0);
    assert_eq!(source.touched_after_rescind(), 0, "ring accesses after the guest learned of the rescind");

    let server = Server::start(source.offer(), config);
    wait_until(|| t.is_connected(), "re-offer picked up");
    assert_eq!(t.generation(), 2);
    assert_eq!(etag_of(create(&c, "later").unwrap().wait()).unwrap(), "later");
    server.stop();
    assert_eq!(source.touched_after_rescind(), 0);
}

/// A pool page that moved under the host's page numbers (a uio source's
/// pagemap check fails) closes the transport for good: pending requests
/// fail at once, what the host posts is not reaped, and a re-offer is not
/// taken, since the host would be handed the same stale numbers.
#[test]
fn a_moved_dma_page_closes_the_transport_for_good() {
    let source = FakeSource::new(RING);
    let config = fake::config(64);
    let (t, mut host) = open(&source, config);
    let c = client(&t);
    let pending: Vec<PendingOp> = (0..3).map(|i| create(&c, &format!("moved{i}")).unwrap()).collect();
    let _sent: Vec<_> = (0..3).map(|_| host.next_request(LONG).unwrap()).collect();
    source.move_pool();
    for p in pending {
        assert!(matches!(p.wait(), Err(ClientError::OutcomeUnknown { .. })), "sent creates: outcome unknown");
    }
    wait_until(|| host.guest_closed(), "channel closed");
    let mut reoffer = source.offer();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!t.is_connected());
    assert_eq!(t.generation(), 1, "the re-offer is not taken");
    assert!(matches!(create(&c, "later"), Err(ClientError::Rescinded)));
    assert!(reoffer.next_packet(Duration::from_millis(50)).is_none(), "nothing sent on the re-offer");
    assert_eq!(t.pending(), 0);
}

#[test]
fn submit_after_close_never_reaches_the_ring() {
    let source = FakeSource::new(RING);
    let config = fake::config(1024);
    let (t, host) = open(&source, config);
    let server = Server::start(host, config);
    let c = Arc::new(client(&t));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let submitters: Vec<_> = (0..4)
        .map(|k| {
            let (c, stop, outcomes) = (c.clone(), stop.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("s{k}x{i}");
                    i += 1;
                    let r = create(&c, &name).and_then(|p| etag_of(p.wait()));
                    outcomes.lock().unwrap().push((name, r));
                }
            })
        })
        .collect();
    wait_until(|| outcomes.lock().unwrap().len() > 50, "traffic flows");
    t.close();
    let host = server.stop();
    let index = host.guest_write_index();
    wait_until(|| outcomes.lock().unwrap().iter().filter(|(_, r)| r.is_err()).count() > 20, "refusals");
    stop.store(true, Ordering::SeqCst);
    for s in submitters {
        s.join().unwrap();
    }
    assert_eq!(host.guest_write_index(), index, "a packet was written after close");
    assert!(host.guest_closed());
    for (name, r) in outcomes.lock().unwrap().iter() {
        match r {
            Ok(etag) => assert_eq!(etag, name),
            // In flight at the close: sent, answer lost.
            Err(e) => assert!(is_rescinded(e) || matches!(e, ClientError::OutcomeUnknown { .. }), "{e}"),
        }
    }
}

#[test]
fn a_full_ring_blocks_the_sender_until_the_host_reads() {
    // 4 KiB of data per direction: about 30 requests fit.
    let source = FakeSource::new(8192);
    let config = fake::config(1024);
    let (t, mut host) = open(&source, config);
    let c = Arc::new(client(&t));
    let sender = {
        let c = c.clone();
        std::thread::spawn(move || (0..100).map(|i| create(&c, &format!("full{i}")).unwrap()).collect::<Vec<_>>())
    };
    // The sender fills the ring and stops; nothing is lost meanwhile.
    let mut seen = Vec::new();
    while seen.len() < 100 {
        let req = host.next_request(LONG).expect("the blocked sender resumes");
        seen.push(req);
        if seen.len() % 10 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for r in &seen {
        host.answer(r, &config);
    }
    let pending = sender.join().unwrap();
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(etag_of(p.wait()).unwrap(), format!("full{i}"));
    }
}

#[test]
fn in_flight_requests_stay_within_the_device_limit() {
    let source = FakeSource::new(RING);
    let config = fake::config(2);
    let (t, mut host) = open(&source, config);
    let c = Arc::new(client(&t));
    let sender = {
        let c = c.clone();
        std::thread::spawn(move || (0..5).map(|i| create(&c, &format!("lim{i}")).unwrap()).collect::<Vec<_>>())
    };
    let a = host.next_request(LONG).unwrap();
    let b = host.next_request(LONG).unwrap();
    assert!(host.next_request(Duration::from_millis(200)).is_none(), "a third request while two are in flight");
    host.answer(&a, &config);
    let c3 = host.next_request(LONG).unwrap();
    host.answer(&b, &config);
    host.answer(&c3, &config);
    for _ in 0..2 {
        let r = host.next_request(LONG).unwrap();
        host.answer(&r, &config);
    }
    for (i, p) in sender.join().unwrap().into_iter().enumerate() {
        assert_eq!(etag_of(p.wait()).unwrap(), format!("lim{i}"));
    }
}

/// A sender blocked on a full ring when the host rescinds is released with
/// `Rescinded` (its request never reached the ring), and the same transport
/// serves the re-offered channel.
#[test]
fn a_sender_blocked_on_a_full_ring_is_released_by_the_rescind() {
    let source = FakeSource::new(8192);
    let config = fake::config(1024);
    let (t, host) = open(&source, config);
    let c = Arc::new(client(&t));
    let sender = {
        let c = c.clone();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            for i in 0..100 {
                match create(&c, &format!("blk{i}")) {
                    Ok(p) => pending.push(p),
                    Err(e) => return (pending, e),
                }
            }
            panic!("100 requests fit a 4 KiB ring the host never reads");
        })
    };
    wait_until(|| t.pending() > 20 && host.guest_write_index() != 0, "the ring fills");
    std::thread::sleep(Duration::from_millis(20));
    let written = host.guest_write_index();
    host.rescind();
    let (pending, err) = sender.join().unwrap();
    assert!(matches!(err, ClientError::Rescinded), "{err}");
    assert_eq!(host.guest_write_index(), written, "nothing written after the rescind");
    for p in pending {
        assert!(matches!(p.wait(), Err(ClientError::OutcomeUnknown { .. })), "sent creates: outcome unknown");
    }
    let server = Server::start(source.offer(), config);
    wait_until(|| t.is_connected(), "re-offer");
    assert_eq!(etag_of(create(&c, "fresh").unwrap().wait()).unwrap(), "fresh");
    server.stop();
}

/// A host that offers the channel but never answers the config request:
/// `open` gives up with an error and closes the channel.
#[test]
fn open_fails_cleanly_when_the_config_never_comes() {
    let source = FakeSource::new(RING);
    let mut host = source.offer();
    let o = VmbusOptions { config_timeout: Duration::from_millis(100), ..opts() };
    let r = VmbusTransport::open(source.clone(), o);
    let timed_out = ClientError::Timeout { waiting_for: "the device config", after: Duration::from_millis(100) };
    assert!(matches!(&r, Err(e) if e.to_string() == timed_out.to_string()), "{:?}", r.err());
    assert!(host.next_request(LONG).is_some(), "the config request was sent");
    wait_until(|| host.guest_closed(), "channel closed");
    // And without any offer at all.
    let o = VmbusOptions { open_timeout: Duration::from_millis(50), ..opts() };
    let r = VmbusTransport::open(FakeSource::new(RING), o);
    assert!(matches!(r, Err(ClientError::Timeout { waiting_for: "a VMBus channel offer", .. })), "{:?}", r.err());
}

/// A host that takes one request and then nothing more: a second submission
/// waiting for an in-flight slot gives up after its request's timeout plus
/// the grace, instead of hanging before it even has a ticket.
#[test]
fn a_submission_the_host_never_makes_room_for_times_out() {
    let source = FakeSource::new(RING);
    let config = fake::config(1);
    let (t, mut host) = open(&source, config);
    let c = BlobClient::new(t.clone(), t.device_config(), ClientOptions { timeout_ms: 50, ..Default::default() });
    let _first = create(&c, "stuck").unwrap();
    assert!(host.next_request(LONG).is_some());
    let started = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(create(&c, "waits").err()).unwrap());
        // Bounded, so a submit that ignores its deadline fails the test instead of hanging it.
        let second = rx.recv_timeout(crate::transport::SUBMIT_GRACE + LONG);
        // Unblocks a sender that is still waiting, so a failure below cannot hang the scope.
        t.close();
        let second = second.expect("submit still blocked past its deadline");
        assert!(matches!(second, Some(ClientError::Timeout { .. })), "{second:?}");
        assert!(started.elapsed() >= crate::transport::SUBMIT_GRACE, "gave up early: {:?}", started.elapsed());
    });
    assert!(host.next_request(Duration::from_millis(100)).is_none(), "the timed-out request never reached the ring");
}

/// `REQUEST_OVERHEAD` is what a blob request really takes in the ring besides its page numbers.
#[test]
fn the_request_overhead_matches_the_encoder() {
    use vmblob_protocol::framing::vmbus::{PageBuffer, encode_blob_request};
    let pages = |n: usize| PageBuffer { first_page_offset: 0, len: (n * 4096) as u32, pfns: (0..n as u64).collect() };
    for data_pages in [0usize, 1, 100, 2028] {
        let mut hdr = vmblob_protocol::VspRequest::default();
        let data = (data_pages > 0).then(|| pages(data_pages));
        let packet = encode_blob_request(7, &mut hdr, data.as_ref(), &pages(1), &pages(4));
        let pfns = data_pages + 1 + 4;
        // The ring adds its 8-byte trailer to every packet.
        assert_eq!(packet.len() + 8, super::REQUEST_OVERHEAD + 8 * pfns, "{data_pages} data pages");
    }
}
