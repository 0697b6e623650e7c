//! The VMBus guest against the emulator and the real VSP service: blob
//! traffic, random rescinds under load, re-offer with old handles held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmblob_integration::data::{PatternReader, crc64, pattern};
use vmblob_integration::vmbus::{VmbusRig, VmbusRigOptions};
use vmblob_integration::{bounded, is_rescinded, wait_until};
use vmblob_protocol::ops::{Conditions, OpRequest, PutBlob};
use vmblob_vsc::{BlobClient, ClientError, Data, GetOptions, ListBlobsOptions, PendingOp, PutOptions, Transport};

const LIMIT: Duration = Duration::from_secs(60);

/// One put: blob name, data seed, result.
type Outcome = (String, u64, Result<(), ClientError>);

/// A small xorshift: reproducible "random" timing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn submit_put(c: &BlobClient, container: &str, name: &str, data: &[u8]) -> Result<PendingOp, ClientError> {
    let op = OpRequest::PutBlob(PutBlob {
        target: vmblob_protocol::ops::BlobRef {
            container: vmblob_protocol::ContainerName::new(container).unwrap(),
            blob: vmblob_protocol::BlobName::new(name).unwrap(),
        },
        content_type: String::new(),
        headers: Default::default(),
        metadata: Default::default(),
        conditions: Conditions::none(),
        content_md5: None,
        content_crc64: Some(crc64(data)),
    });
    c.submit(&op, Data::Out(data))
}

#[test]
fn vmbus_blob_round_trip_through_the_vsp_service() {
    let rig = VmbusRig::start(VmbusRigOptions::default());
    let c = &rig.client;
    assert_eq!(
        c.device_config().max_op_version,
        vmblob_protocol::ops::OP_VERSION,
        "config fetched with GetDeviceConfig"
    );
    c.container("photos").create().unwrap();
    let small = pattern(7, 0, 123_457);
    c.container("photos").blob("small.bin").put(&small).unwrap();
    assert_eq!(c.container("photos").blob("small.bin").get().unwrap(), small);
    assert_eq!(
        c.container("photos").blob("small.bin").get_opts(GetOptions::range(5000..15_000)).map(|r| r.data).unwrap(),
        small[5000..15_000]
    );

    // Larger than one block: PutBlock / PutBlockList, ranged parallel reads.
    let len = 3 * c.block_size() as u64 + 12_345;
    let mut reader = PatternReader::new(11, len);
    c.container("photos").blob("big.bin").put_stream(&mut reader, len, PutOptions::default(), &|_| {}).unwrap();
    let props = c.container("photos").blob("big.bin").properties().unwrap();
    assert_eq!((props.content_length, props.content_crc64), (len, reader.crc64()));
    let mut out = Vec::new();
    c.container("photos").blob("big.bin").get_to_writer(&mut out, &|_| {}).unwrap();
    assert!(out == pattern(11, 0, len as usize), "big blob differs");

    let names: Vec<String> = c
        .container("photos")
        .list_blobs(ListBlobsOptions::default())
        .items()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .iter()
        .map(|i| format!("{i:?}"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    c.container("photos").blob("small.bin").delete().unwrap();
    assert!(c.container("photos").blob("small.bin").properties().unwrap_err().is_not_found());
    assert_eq!(rig.transport.pending(), 0);
}

/// 1,000 rescinds at random moments while four threads keep requests in
/// flight: every request ends exactly once (success or rescinded), nothing
/// hangs, acknowledged writes are intact, and the host's completions match
/// the guest's one for one.
#[test]
fn random_rescinds_under_load_complete_every_request_exactly_once() {
    let rig = Arc::new(VmbusRig::start(VmbusRigOptions::default()));
    rig.client.container("load").create().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (rig, stop, results) = (rig.clone(), stop.clone(), results.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    // Four in flight per worker before waiting for any.
                    let mut batch = Vec::new();
                    for _ in 0..4 {
                        let name = format!("w{w}/b{i}");
                        let seed = w * 1_000_000 + i;
                        i += 1;
                        let data = pattern(seed, 0, 1000 + (seed % 9000) as usize);
                        batch.push((name.clone(), seed, submit_put(&rig.client, "load", &name, &data)));
                    }
                    let mut down = false;
                    for (name, seed, submitted) in batch {
                        let r = submitted.and_then(|p| p.wait()).map(|_| ());
                        down |= r.is_err();
                        results.lock().unwrap().push((name, seed, r));
                    }
                    // Fast failures while the channel is gone prove little:
                    // resume when it is back, to be in flight at the next rescind.
                    while down && !rig.transport.is_connected() && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        })
        .collect();

    let chaos = rig.clone();
    bounded(Duration::from_secs(300), "1,000 rescinds", move || {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for n in 0..1000 {
            std::thread::sleep(Duration::from_micros(rng.next() % 2000));
            chaos.rescind_and_reoffer();
            if n % 20 == 0 {
                // Let traffic through now and then.
                chaos.wait_connected(LIMIT);
            }
        }
    });
    rig.wait_connected(LIMIT);
    wait_until(LIMIT, "requests succeed after the storm", || {
        results.lock().unwrap().iter().rev().take(8).any(|(_, _, r)| r.is_ok())
    });
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        bounded(LIMIT, "worker ends", move || w.join().unwrap());
    }

    let results = results.lock().unwrap();
    let ok = results.iter().filter(|r| r.2.is_ok()).count();
    for (name, _, r) in results.iter() {
        if let Err(e) = r {
            // Refused (not sent), rescinded by the host, or sent with its answer lost: the VMBus
            // transport does not ask again after a re-offer yet, so that outcome is unknown.
            assert!(is_rescinded(e) || matches!(e, ClientError::OutcomeUnknown { .. }), "{name}: {e}");
        }
    }
    let rescinded = results.len() - ok;
    // Completed by the host with the rescinded status: in flight at a rescind.
    let by_host = results.iter().filter(|r| matches!(r.2, Err(ClientError::Status { .. }))).count();
    assert!(ok > 0 && by_host > 0 && rescinded > by_host, "ok {ok}, rescinded {rescinded} ({by_host} by the host)");
    for (name, seed, _) in results.iter().filter(|r| r.2.is_ok()) {
        let want = pattern(*seed, 0, 1000 + (*seed % 9000) as usize);
        assert!(rig.client.container("load").blob(name).get().unwrap() == want, "{name} differs");
    }
    assert_eq!(rig.transport.pending(), 0, "requests left pending");
    assert!(rig.transport.generation() > 50, "re-offers were picked up: {}", rig.transport.generation());
    let report = rig.service.report();
    assert_eq!(report.undelivered, 0, "{report:?}");
    // Every completion the host posted reached exactly one request, and the
    // guest accepted nothing else (the gets above included).
    assert_eq!(rig.transport.completions(), report.completed + report.refused, "{report:?}");
    eprintln!(
        "{ok} puts succeeded, {rescinded} rescinded ({by_host} by the host), {} channels",
        rig.transport.generation()
    );
}

/// A re-offered channel is picked up under the same client: handles taken
/// before the rescind (the client, its transport, a pending request) keep
/// working, and the rescind never waits for them.
#[test]
fn reoffer_with_old_handles_still_held() {
    let rig = VmbusRig::start(VmbusRigOptions::default());
    let client = rig.client.clone();
    let transport: Arc<dyn Transport> = client.transport().clone();
    client.container("keep").create().unwrap();
    client.container("keep").blob("before").put(b"written before the rescind").unwrap();
    let held = submit_put(&client, "keep", "racing", b"maybe").unwrap();

    rig.emulator.rescind().unwrap();
    // The guest notices on its own thread while every handle is held.
    wait_until(LIMIT, "the guest sees the rescind", || !transport.is_connected());
    assert!(
        matches!(client.container("keep").blob("before").properties(), Err(ClientError::Rescinded)),
        "fails fast while gone"
    );

    rig.emulator.offer().unwrap();
    rig.wait_connected(LIMIT);
    assert_eq!(rig.transport.generation(), 2);
    match held.wait() {
        Ok(_) => assert_eq!(client.container("keep").blob("racing").get().unwrap(), b"maybe"),
        // Sent before the rescind and not re-asked (VMBus): either a host rescind or unknown.
        Err(e) => assert!(is_rescinded(&e) || matches!(e, ClientError::OutcomeUnknown { .. }), "{e}"),
    }
    assert_eq!(client.container("keep").blob("before").get().unwrap(), b"written before the rescind");
    client.container("keep").blob("after").put(b"written after the re-offer").unwrap();
    assert!(transport.is_connected());
    assert_eq!(transport.num_queues(), 1);
}

/// The largest data buffer the device config allows fits one VMBus packet
/// (8,192 pages in all, request and response pages included).
#[test]
fn the_largest_advertised_data_buffer_fits_a_packet() {
    let rig = VmbusRig::start(VmbusRigOptions::default());
    let config = rig.client.device_config();
    let options = vmblob_vsc::ClientOptions {
        timeout_ms: 0,
        block_size: config.max_data_len,
        ..vmblob_vsc::ClientOptions::default()
    };
    let c = BlobClient::new(rig.transport.clone(), *config, options);
    assert_eq!(c.block_size(), config.max_data_len as usize);
    c.container("max").create().unwrap();
    let len = config.max_data_len as u64 + 1;
    let mut reader = PatternReader::new(5, len);
    c.container("max").blob("full").put_stream(&mut reader, len, PutOptions::default(), &|_| {}).unwrap();
    let mut out = Vec::new();
    c.container("max").blob("full").get_to_writer(&mut out, &|_| {}).unwrap();
    assert!(out == pattern(5, 0, len as usize));
}
