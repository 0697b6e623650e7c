//! The daemon and the connection going away: restart, crash (SIGKILL), a VMM
//! that drops the connection, and SIGTERM with requests in flight.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmblob_integration::azurite::Azurite;
use vmblob_integration::data::{CrcWriter, PatternReader, crc64, pattern};
use vmblob_integration::{
    Guest, GuestOptions, Sandbox, StoreKind, Vsp, VspOptions, bounded, is_rescinded, is_transport_failure, ops,
    wait_until,
};
use vmblob_protocol::BlobError;
use vmblob_protocol::ops::{BlobListItem, OpRequest};
use vmblob_vsc::{ClientError, ListBlobsOptions, PendingOp, PutOptions, Transport};

/// How soon a client must fail its requests once the daemon is gone.
const PROMPT: Duration = Duration::from_secs(5);

/// One attempted put: name, data seed and length, and whether it succeeded.
#[derive(Debug, Clone)]
struct Attempt {
    name: String,
    seed: u64,
    len: usize,
    ok: bool,
}

/// After a crash or disconnect: a blob whose put succeeded is intact; one
/// whose put failed is absent or intact (never partial, never mixed).
fn verify_attempts(g: &Guest, container: &str, attempts: &[Attempt]) -> (usize, usize) {
    let (mut present, mut absent) = (0, 0);
    for a in attempts {
        match g.container(container).blob(&a.name).properties() {
            Ok(p) => {
                let want = pattern(a.seed, 0, a.len);
                assert_eq!(p.content_length, a.len as u64, "{} has a torn length", a.name);
                assert_eq!(p.content_crc64, crc64(&want), "{} has a foreign CRC", a.name);
                let got = g.container(container).blob(&a.name).get().unwrap_or_else(|e| panic!("get {}: {e}", a.name));
                assert!(got == want, "{} content differs", a.name);
                present += 1;
            }
            Err(e) if e.blob_error() == Some(BlobError::BlobNotFound) => {
                assert!(!a.ok, "{} was acknowledged but is missing", a.name);
                absent += 1;
            }
            Err(e) => panic!("stat {}: {e}", a.name),
        }
    }
    // Nothing else appeared. Not a count against `present`: on a remote store
    // a PUT the killed VSP had already sent can still land after the stats
    // above (seen once on Azurite under load); it is one of the attempts, whole.
    let listed =
        g.container(container).list_blobs(ListBlobsOptions::default()).items().collect::<Result<Vec<_>, _>>().unwrap();
    for item in &listed {
        let BlobListItem::Blob { name, properties } = item else { panic!("a prefix in a flat listing: {item:?}") };
        let a = attempts.iter().find(|a| a.name == *name);
        let a = a.unwrap_or_else(|| panic!("{name} appeared but nobody wrote it"));
        assert_eq!(properties.content_length, a.len as u64, "{name} has a torn length");
    }
    assert!(listed.len() >= present, "a blob stat found is missing from the listing");
    (present, absent)
}

/// Without an inflight region (a frontend that does not offer it): the device is away between
/// the lives, and the client says so at once.
fn restart_between_operations_rescinds_then_reconnects(store: StoreKind) {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().store(store));
    let g = Guest::connect(vsp.socket(), GuestOptions::default().reconnect(true).inflight(false));
    g.container("keep").create().unwrap();
    let before = pattern(41, 0, 100_000);
    g.container("keep").blob("before").put(&before).unwrap();

    let status = vsp.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0\n{}", vsp.logs());
    wait_until(PROMPT, "client notices the daemon left", || !g.transport.is_connected());
    for _ in 0..3 {
        let t = Instant::now();
        let e = g.container("keep").blob("during").put(b"x").unwrap_err();
        assert!(matches!(e, ClientError::Rescinded), "while down: {e:?}");
        assert!(t.elapsed() < Duration::from_secs(1), "a call while down fails at once");
        let e = g.container("keep").blob("before").get().unwrap_err();
        assert!(matches!(e, ClientError::Rescinded), "while down: {e:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    vsp.restart();
    let after = pattern(42, 0, 50_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match g.container("keep").blob("after").put(&after) {
            Ok(_) => break,
            Err(ClientError::Rescinded) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("client did not come back: {e:?}\n{}", vsp.logs()),
        }
    }
    assert!(g.transport.is_connected());
    assert_eq!(g.container("keep").blob("before").get().unwrap(), before, "data persists across the restart");
    assert_eq!(g.container("keep").blob("after").get().unwrap(), after);
    expect_missing(&g, "keep", "during");
    drop(g);
    assert_eq!(vsp.stop().code(), Some(0));
}

/// Wait until a put succeeds again (the client reconnected on its own).
fn until_back(g: &Guest, vsp: &Vsp, blob: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match g.container("keep").blob(blob).put(b"back") {
            Ok(_) => return,
            Err(ClientError::Rescinded) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("client did not come back: {e:?}\n{}", vsp.logs()),
        }
    }
}

// Regression (found in review): a hang-up arriving right after a reconnect,
// before the reaper had seen the device up, was ignored; the client then
// queued requests on a ring nobody served.
fn back_to_back_restarts_are_each_noticed(store: StoreKind) {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().store(store));
    // Without an inflight region, so each stop is a visible hang-up.
    let g = Arc::new(Guest::connect(vsp.socket(), GuestOptions::default().reconnect(true).inflight(false)));
    g.container("keep").create().unwrap();
    for round in 0..3 {
        assert_eq!(vsp.stop().code(), Some(0), "round {round}\n{}", vsp.logs());
        wait_until(PROMPT, "client notices the stop", || !g.transport.is_connected());
        vsp.restart();
        // Stop again the moment the client is back, before any request
        // completes on the new connection.
        wait_until(Duration::from_secs(20), "client reconnects", || g.transport.is_connected());
    }
    assert_eq!(vsp.stop().code(), Some(0));
    wait_until(PROMPT, "client notices the last stop", || !g.transport.is_connected());
    let g2 = g.clone();
    let late = bounded(PROMPT, "a put while the daemon is down", move || g2.container("keep").blob("late").put(b"x"));
    assert!(matches!(late, Err(ClientError::Rescinded)), "fails at once while down: {late:?}");
    vsp.restart();
    until_back(&g, &vsp, "final");
    expect_missing(&g, "keep", "late");
}

fn expect_missing(g: &Guest, c: &str, b: &str) {
    let e = g.container(c).blob(b).properties().unwrap_err();
    assert_eq!(e.blob_error(), Some(BlobError::BlobNotFound), "{c}/{b}: {e:?}");
}

fn sigkill_during_pipelined_puts_leaves_no_torn_blob(store: StoreKind) {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().store(store).queues(2));
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2));
    g.container("crash").create().unwrap();
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut window: VecDeque<(PendingOp, usize)> = VecDeque::new();
    // One result: a success must carry the right CRC; a failure is only
    // allowed once the daemon is dead.
    let settle = |p: PendingOp, a: &mut Attempt, killed: bool| match p.wait() {
        Ok(r) => {
            assert_eq!(ops::written(r).content_crc64, crc64(&pattern(a.seed, 0, a.len)), "{}", a.name);
            a.ok = true;
        }
        Err(e) => {
            assert!(killed, "{} failed before the kill: {e:?}", a.name);
            assert!(is_rescinded(&e) || is_transport_failure(&e), "{e:?}");
        }
    };
    for i in 0..400usize {
        // Mostly 64 KiB..1 MiB, every eighth 4 MiB, so the VSP is mid-write when it dies.
        let len = if i % 8 == 7 { 4 << 20 } else { (64 << 10) + (i * 7919) % (960 << 10) };
        let a = Attempt { name: format!("p/{i:03}"), seed: 5000 + i as u64, len, ok: false };
        let p = ops::submit_put(&g, "crash", &a.name, &pattern(a.seed, 0, len)).expect("submit before the kill");
        window.push_back((p, attempts.len()));
        attempts.push(a);
        if window.len() >= 32 {
            let (p, idx) = window.pop_front().unwrap();
            settle(p, &mut attempts[idx], false);
        }
        if attempts.iter().filter(|a| a.ok).count() == 100 {
            break;
        }
    }
    assert_eq!(window.len(), 31, "the kill comes with requests in flight");
    // Freeze the daemon (its workers stop wherever they are, possibly
    // mid-write), queue a burst of 4 MiB puts behind them, then kill it: it
    // dies with writes both half done and not started.
    vsp.signal("STOP");
    let burst: Vec<Attempt> = (0..24)
        .map(|i| Attempt { name: format!("q/{i:03}"), seed: 7000 + i as u64, len: 4 << 20, ok: false })
        .collect();
    let bufs: Vec<Vec<u8>> = burst.iter().map(|a| pattern(a.seed, 0, a.len)).collect();
    for (a, data) in burst.into_iter().zip(&bufs) {
        window.push_back((ops::submit_put(&g, "crash", &a.name, data).expect("submit burst"), attempts.len()));
        attempts.push(a);
    }
    vsp.kill();
    let killed_at = Instant::now();
    while let Some((p, idx)) = window.pop_front() {
        settle(p, &mut attempts[idx], true);
    }
    assert!(killed_at.elapsed() < PROMPT, "in-flight puts ended promptly after the kill");
    // With the device gone, a new request fails at once.
    let t = Instant::now();
    let r = ops::submit_put(&g, "crash", "late", b"late").and_then(|p| p.wait());
    assert!(r.as_ref().is_err_and(|e| is_rescinded(e) || is_transport_failure(e)), "late put");
    assert!(t.elapsed() < PROMPT);
    assert_eq!(g.transport.pending(), 0);
    drop(g);

    vsp.restart();
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    let (present, absent) = verify_attempts(&g, "crash", &attempts);
    assert!(present >= 100, "acknowledged puts survive");
    assert!(absent >= 24, "the puts queued behind the frozen daemon never ran ({present} present)");
    for a in attempts.iter().filter(|a| a.name.starts_with("q/")) {
        assert!(!a.ok, "{} succeeded while the daemon was frozen", a.name);
        expect_missing(&g, "crash", &a.name);
    }
}

fn sigkill_during_a_streamed_upload_keeps_the_old_blob(store: StoreKind) {
    const LEN: u64 = 96 << 20;
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().store(store));
    let opts = GuestOptions::default().block_size(1 << 20);
    let g = Arc::new(Guest::connect(vsp.socket(), opts.clone()));
    g.container("stream").create().unwrap();
    let old = pattern(77, 0, 300_000);
    g.container("stream").blob("big").put(&old).unwrap();

    let progress = Arc::new(AtomicU64::new(0));
    let (g2, p2) = (g.clone(), progress.clone());
    let upload = std::thread::spawn(move || {
        // A source that slows down after 16 MiB (a slow pipe), so the kill
        // surely lands mid-stream however fast the daemon is.
        let mut src =
            SlowAfter { inner: PatternReader::new(78, LEN), after: 16 << 20, delay: Duration::from_millis(5) };
        let r = g2
            .container("stream")
            .blob("big")
            .put_stream(&mut src, LEN, PutOptions::default(), &|n| p2.store(n, Ordering::Relaxed));
        (r.map(|w| w.etag), Instant::now())
    });
    wait_until(Duration::from_secs(60), "upload makes progress", || progress.load(Ordering::Relaxed) >= 16 << 20);
    vsp.kill();
    let killed = Instant::now();
    let (result, ended) = bounded(PROMPT * 2, "put_stream returns after the kill", move || upload.join().unwrap());
    assert!(ended.duration_since(killed) < PROMPT, "put_stream failed promptly");
    let e = result.expect_err("the upload cannot have committed 96 MiB before the kill");
    assert!(is_rescinded(&e) || is_transport_failure(&e), "{e:?}");
    assert!(progress.load(Ordering::Relaxed) < LEN);
    drop(g);

    vsp.restart();
    let g = Guest::connect(vsp.socket(), opts);
    assert_eq!(g.container("stream").blob("big").get().unwrap(), old, "the old blob, whole");
    let p = g.container("stream").blob("big").properties().unwrap();
    assert_eq!((p.content_length, p.committed_blocks), (old.len() as u64, 0));
    // The store still works for the same name.
    let mut src = PatternReader::new(79, 5 << 20);
    g.container("stream").blob("big").put_stream(&mut src, 5 << 20, PutOptions::default(), &|_| {}).unwrap();
    let mut sink = CrcWriter::expecting(79);
    g.container("stream").blob("big").get_to_writer(&mut sink, &|_| {}).unwrap();
    assert_eq!((sink.len(), sink.crc64(), sink.first_mismatch), (5 << 20, src.crc64(), None));
}

/// A reader that sleeps before each read once `after` bytes were read.
struct SlowAfter {
    inner: PatternReader,
    after: u64,
    delay: Duration,
}

impl std::io::Read for SlowAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.inner.produced() >= self.after {
            std::thread::sleep(self.delay);
        }
        self.inner.read(buf)
    }
}

/// Submit a mix of large and small puts and gets; returns the pending ops.
fn submit_mix(g: &Guest, container: &str, n: usize, attempts: &mut Vec<Attempt>) -> Vec<(PendingOp, Option<usize>)> {
    let mut pending = Vec::new();
    for i in 0..n {
        if i % 4 == 3 {
            pending.push((ops::submit_get(g, container, "seed", 1 << 20).expect("submit get"), None));
            continue;
        }
        let len = if i % 5 == 0 { 4 << 20 } else { 1000 + 37 * i };
        let a = Attempt { name: format!("m/{i:03}"), seed: 9000 + i as u64, len, ok: false };
        let p = ops::submit_put(g, container, &a.name, &pattern(a.seed, 0, len)).expect("submit put");
        pending.push((p, Some(attempts.len())));
        attempts.push(a);
    }
    pending
}

/// Wait for every op; each must end in success, a rescind or an unknown outcome. Returns (ok,
/// rescinded or unknown). A put whose answer was lost is re-sent with its data
/// (`wait_with_data`), so it ends in success if the device comes back.
fn settle(pending: Vec<(PendingOp, Option<usize>)>, attempts: &mut [Attempt], seed_blob: &[u8]) -> (usize, usize) {
    let (ok, by_vsp, by_client) = settle_counting(pending, attempts, seed_blob);
    (ok, by_vsp + by_client)
}

/// [`settle`], telling a rescind the VSP answered (it had not committed the
/// request: a definite answer) from one the client gave (the answer was lost:
/// `Rescinded`, or `OutcomeUnknown` for a write).
fn settle_counting(
    pending: Vec<(PendingOp, Option<usize>)>,
    attempts: &mut [Attempt],
    seed_blob: &[u8],
) -> (usize, usize, usize) {
    let (mut ok, mut by_vsp, mut by_client) = (0, 0, 0);
    for (p, idx) in pending {
        let result = match idx {
            Some(i) => p.wait_with_data(&[&pattern(attempts[i].seed, 0, attempts[i].len)]),
            None => p.wait(),
        };
        match (result, idx) {
            (Ok(r), Some(i)) => {
                assert_eq!(ops::written(r).content_crc64, crc64(&pattern(attempts[i].seed, 0, attempts[i].len)));
                attempts[i].ok = true;
                ok += 1;
            }
            (Ok(r), None) => {
                assert!(ops::data_of(r) == seed_blob, "get returned other bytes");
                ok += 1;
            }
            (Err(ClientError::Status { error: BlobError::Rescinded, .. }), _) => by_vsp += 1,
            // The device went away with the request unanswered and did not come back (a daemon
            // that stopped): the client cannot know whether it ran. A write says so.
            (Err(e), _) if is_rescinded(&e) || matches!(e, ClientError::OutcomeUnknown { .. }) => by_client += 1,
            (Err(e), _) => panic!("a request ended with neither success nor a rescind: {e:?}"),
        }
    }
    (ok, by_vsp, by_client)
}

fn frontend_disconnect_with_requests_in_flight(store: StoreKind) {
    const N: usize = 96;
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().store(store).queues(2));
    let socket = vsp.socket().to_owned();
    let (attempts, seed_blob) = bounded(Duration::from_secs(60), "disconnect with requests in flight", move || {
        let g = Guest::connect(&socket, GuestOptions::default().queues(2).reconnect(true));
        g.container("sever").create().unwrap();
        let seed_blob = pattern(1, 0, 700_000);
        g.container("sever").blob("seed").put(&seed_blob).unwrap();
        let mut attempts = Vec::new();
        let pending = submit_mix(&g, "sever", N, &mut attempts);
        g.transport.sever_connection().unwrap();
        // Requests the disconnect caught in flight are asked again once the client is back. The
        // VSP answers Rescinded for what it had taken and not committed; a client that reads
        // those answers before it sees the hang-up (under load it does) has a definite answer,
        // not a lost one. Only a lost answer must never surface.
        let (ok, by_vsp, by_client) = settle_counting(pending, &mut attempts, &seed_blob);
        assert_eq!(by_client, 0, "a lost answer was not asked again");
        assert_eq!(ok + by_vsp, N, "every request completed exactly once");
        assert_eq!(g.transport.pending(), 0);
        // The same client comes back by itself.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match g.container("sever").blob("again").put(&pattern(3, 0, 1000)) {
                Ok(_) => break,
                Err(ClientError::Rescinded) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("old client did not reconnect: {e:?}"),
            }
        }
        assert_eq!(g.container("sever").blob("again").get().unwrap(), pattern(3, 0, 1000));
        // Checked only now: when the VSP answered everything before the client saw the
        // hang-up, the client may count its reconnect after the answers are settled.
        assert!(g.transport.reconnects() > 0, "the disconnect happened");
        (attempts, seed_blob)
    });
    assert!(vsp.is_running(), "the daemon survives a VMM hang-up");
    // A fresh client (the old one is gone) finds every acknowledged write intact.
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    assert_eq!(g.container("sever").blob("seed").get().unwrap(), seed_blob);
    let mut expected = attempts.clone();
    expected.push(Attempt { name: "seed".into(), seed: 1, len: 700_000, ok: true });
    expected.push(Attempt { name: "again".into(), seed: 3, len: 1000, ok: true });
    verify_attempts(&g, "sever", &expected);
    drop(g);
    assert_eq!(vsp.stop().code(), Some(0));
}

/// The object store stops answering (Azurite SIGSTOPped) with requests in
/// flight: SIGTERM still completes each of them within the drain bound and
/// the daemon exits 0; once the store is back, acknowledged writes are intact
/// and the rest are absent or whole.
#[test]
fn stalled_object_store_with_requests_in_flight_drains_on_sigterm() {
    const N: usize = 16;
    let Some(az) = Azurite::start().unwrap_or_else(|e| panic!("{e}")) else {
        return eprintln!("SKIPPED: Node.js (or npm, to install Azurite) is not installed, so Azurite cannot run");
    };
    let store = StoreKind::Azure { endpoint: az.endpoint(), container: "stall".into() };
    let sb = Sandbox::new();
    let opts = VspOptions { drain_timeout_ms: Some(2000), ..VspOptions::default().store(store).queues(2) };
    let mut vsp = Vsp::start(&sb.dir, opts);
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2));
    g.container("stall").create().unwrap();
    let seed_blob = pattern(5, 0, 300_000);
    g.container("stall").blob("seed").put(&seed_blob).unwrap();
    az.pause();
    let mut attempts = Vec::new();
    let pending = submit_mix(&g, "stall", N, &mut attempts);
    // Let the workers take requests into the stalled store (not an assertion:
    // the test holds however many got there).
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let status = vsp.stop();
    eprintln!("stalled store: SIGTERM to exit in {:?}", t.elapsed());
    az.resume();
    assert_eq!(status.code(), Some(0), "SIGTERM with the store stalled still exits 0\n{}", vsp.logs());
    let (attempts, ok, rescinded) = bounded(Duration::from_secs(60), "settle after SIGTERM", move || {
        let mut attempts = attempts;
        let (ok, rescinded) = settle(pending, &mut attempts, &seed_blob);
        (attempts, ok, rescinded)
    });
    assert_eq!(ok + rescinded, N, "every request completed exactly once");
    assert!(rescinded > 0, "the stall caught requests in flight (ok {ok})");
    drop(g);
    vsp.restart();
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    let seed = Attempt { name: "seed".into(), seed: 5, len: 300_000, ok: true };
    verify_attempts(&g, "stall", &attempts.iter().cloned().chain(std::iter::once(seed)).collect::<Vec<_>>());
}

fn sigterm_with_requests_in_flight_completes_each_once_and_exits_0(store: StoreKind) {
    const N: usize = 64;
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().store(store).queues(2));
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2));
    g.container("term").create().unwrap();
    let seed_blob = pattern(2, 0, 300_000);
    g.container("term").blob("seed").put(&seed_blob).unwrap();
    let mut attempts = Vec::new();
    let pending = submit_mix(&g, "term", N, &mut attempts);
    let status = vsp.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM with work in flight still exits 0\n{}", vsp.logs());
    let (attempts, ok, rescinded) = bounded(Duration::from_secs(60), "settle after SIGTERM", move || {
        let mut attempts = attempts;
        let (ok, rescinded) = settle(pending, &mut attempts, &seed_blob);
        (attempts, ok, rescinded)
    });
    assert_eq!(ok + rescinded, N, "every request completed exactly once");
    assert_eq!(g.transport.pending(), 0);
    drop(g);

    vsp.restart();
    let g = Guest::connect(vsp.socket(), GuestOptions::default());
    verify_attempts(
        &g,
        "term",
        &attempts
            .iter()
            .cloned()
            .chain(std::iter::once(Attempt { name: "seed".into(), seed: 2, len: 300_000, ok: true }))
            .collect::<Vec<_>>(),
    );
}

fn reconnecting_client_survives_a_crash_with_requests_in_flight(store: StoreKind) {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().store(store).queues(2));
    let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2).reconnect(true));
    g.container("phoenix").create().unwrap();
    let seed_blob = pattern(4, 0, 200_000);
    g.container("phoenix").blob("seed").put(&seed_blob).unwrap();
    let mut attempts = Vec::new();
    let pending = submit_mix(&g, "phoenix", 48, &mut attempts);
    vsp.kill();
    vsp.restart();
    // Every request in flight at the crash is asked again with its transaction id once the
    // client is back: writes the dead daemon committed answer their first result, the rest run.
    let seed_copy = seed_blob.clone();
    let (attempts, ok, rescinded) = bounded(Duration::from_secs(30), "settle after SIGKILL and restart", move || {
        let mut attempts = attempts;
        let (ok, rescinded) = settle(pending, &mut attempts, &seed_copy);
        (attempts, ok, rescinded)
    });
    assert_eq!((ok, rescinded), (48, 0), "a crash of the daemon is invisible to the caller");
    // The same client comes back and sees a consistent store.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match g.container("phoenix").blob("seed").properties() {
            Ok(_) => break,
            Err(ClientError::Rescinded) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("client did not come back: {e:?}\n{}", vsp.logs()),
        }
    }
    let mut expected = attempts;
    expected.push(Attempt { name: "seed".into(), seed: 4, len: 200_000, ok: true });
    verify_attempts(&g, "phoenix", &expected);
    // And keeps working under load on both queues.
    let mut more = Vec::new();
    let pending = submit_mix(&g, "phoenix", 32, &mut more);
    let (ok, rescinded) = settle(pending, &mut more, &seed_blob);
    assert_eq!((ok, rescinded), (32, 0));
}

#[test]
fn one_vmm_connection_at_a_time_and_max_connections() {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions { max_connections: Some(2), ..VspOptions::default() });
    let first = Guest::connect(vsp.socket(), GuestOptions::default());
    first.container("one").create().unwrap();
    // A second VMM waits until the first is gone.
    let socket = vsp.socket().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let second = std::thread::spawn(move || {
        let g = Guest::connect(&socket, GuestOptions::default());
        tx.send(()).unwrap();
        g.container("one").blob("from-second").put(b"2").unwrap();
        g.container("one").blob("from-first").get().unwrap()
    });
    first.container("one").blob("from-first").put(b"1").unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(700)).is_err(), "second VMM served while the first is connected");
    drop(first);
    rx.recv_timeout(Duration::from_secs(10)).expect("second VMM served after the first left");
    assert_eq!(bounded(Duration::from_secs(20), "second VMM", move || second.join().unwrap()), b"1");
    // --max-connections 2: the daemon exits by itself once the second is gone.
    assert_eq!(vsp.wait_exit(Duration::from_secs(10)).map(|s| s.code()), Some(Some(0)), "{}", vsp.logs());
}

#[test]
fn broken_vmm_connections_do_not_take_the_daemon_down() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions { queue_size: 64, ..VspOptions::default() });
    // Connect and hang up at once; send garbage; stop half way through a message.
    drop(UnixStream::connect(vsp.socket()).unwrap());
    let mut s = UnixStream::connect(vsp.socket()).unwrap();
    let _ = s.write_all(&pattern(6, 0, 4096));
    drop(s);
    let mut s = UnixStream::connect(vsp.socket()).unwrap();
    let _ = s.write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 8, 0]);
    drop(s);
    // A VMM asking for bigger rings than the daemon allows is refused, not served.
    let too_big = GuestOptions { queue_size: 256, ..GuestOptions::default() };
    let r = bounded(Duration::from_secs(30), "oversized queue", {
        let socket = vsp.socket().to_owned();
        move || Guest::try_connect(&socket, too_big).map(|_| ())
    });
    assert!(r.is_err(), "a 256-entry ring was accepted by a daemon limited to 64");
    assert!(vsp.is_running(), "{}", vsp.logs());
    let g = Guest::connect(vsp.socket(), GuestOptions { queue_size: 64, ..GuestOptions::default() });
    g.container("alive").create().unwrap();
    g.container("alive").blob("x").put(b"still serving").unwrap();
    assert_eq!(g.container("alive").blob("x").get().unwrap(), b"still serving");
    drop(g);
    assert_eq!(vsp.stop().code(), Some(0));
}

#[test]
fn guest_that_stops_its_rings_with_requests_queued_leaves_the_daemon_serving() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default().queues(2));
    let socket = vsp.socket().to_owned();
    let outcome = bounded(Duration::from_secs(60), "stop rings with requests queued", move || {
        let g = Guest::connect(&socket, GuestOptions::default().queues(2));
        g.container("drop").create().unwrap();
        let mut attempts = Vec::new();
        let data = pattern(8, 0, 2 << 20);
        let pending: Vec<_> = (0..64)
            .map(|i| {
                attempts.push(format!("d/{i:02}"));
                ops::submit_put(&g, "drop", &attempts[i], &data).unwrap()
            })
            .collect();
        // The guest goes away (its transport stops the rings: GET_VRING_BASE)
        // while most of the 64 puts are still queued.
        drop(g);
        let results: Vec<bool> = pending.into_iter().map(|p| p.wait().is_ok()).collect();
        (attempts, results, data)
    });
    let (names, results, data) = outcome;
    assert_eq!(results.len(), 64);
    // A new guest is served, and what was acknowledged is intact.
    let socket = vsp.socket().to_owned();
    let g = bounded(Duration::from_secs(20), "next guest connects", move || {
        Guest::try_connect(&socket, GuestOptions::default())
    });
    let g = g.unwrap_or_else(|e| panic!("the daemon no longer serves: {e}"));
    for (n, ok) in names.iter().zip(&results) {
        match g.container("drop").blob(n).get() {
            Ok(d) => assert!(d == data, "{n} differs"),
            Err(e) => assert!(!ok && e.blob_error() == Some(BlobError::BlobNotFound), "{n}: {e:?}"),
        }
    }
}

// Regression: a worker whose ring was stopped (GET_VRING_BASE) with requests
// queued once re-armed notifications forever at 100% CPU.
#[test]
fn a_paused_ring_with_requests_queued_does_not_spin() {
    use vmblob_integration::raw::{DATA_OUT_AREA, Desc, READ_AREA, RawGuest, RawRequest, WRITE_AREA};
    use vmblob_protocol::transport::{REQUEST_SIZE, RESPONSE_SIZE};
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default().queues(1));
    let mut g = RawGuest::connect_with(vsp.socket(), 128, true);
    let data = pattern(11, 0, 2 << 20);
    g.write(DATA_OUT_AREA, &data);
    let create = OpRequest::CreateContainer {
        container: vmblob_protocol::ContainerName::new("pause").unwrap(),
        metadata: Default::default(),
    };
    let mut chains = Vec::new();
    for j in 0..32u64 {
        let op = if j == 0 { create.clone() } else { ops::put_blob("pause", &format!("b{j}"), &data) };
        let r = RawRequest::new(&op, if j == 0 { &[] } else { &data }, 0);
        let (hdr_at, resp_at) = (READ_AREA + j * 0x1000, WRITE_AREA + j * 0x2000);
        g.write(hdr_at, zerocopy::IntoBytes::as_bytes(&r.header));
        g.write(hdr_at + REQUEST_SIZE as u64, &r.op);
        let mut c = vec![Desc::r(hdr_at, (REQUEST_SIZE + r.op.len()) as u32)];
        if j > 0 {
            c.push(Desc::r(DATA_OUT_AREA, data.len() as u32));
        }
        c.push(Desc::w(resp_at, r.resp_len));
        c.push(Desc::w(resp_at + u64::from(r.resp_len), RESPONSE_SIZE as u32));
        chains.push(c);
    }
    g.post_many(&chains, 4);
    // The VMM pauses the device at once. Requests overlap, so the device may
    // already have taken every chain: queue the batch again behind the
    // stopped ring, so chains are queued there either way.
    let bases = g.device().stop().expect("GET_VRING_BASE");
    assert!(bases[0] <= 32, "the device took only what was posted (base {})", bases[0]);
    g.post_many(&chains, 4);
    let before = vsp.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let spent = vsp.cpu_time() - before;
    assert!(spent < Duration::from_millis(300), "a paused device used {spent:?} of CPU in 1 s");
    drop(g);
    assert!(vsp.is_running());
    assert_eq!(vsp.stop().code(), Some(0));
}

vmblob_integration::both_stores!(
    restart_between_operations_rescinds_then_reconnects,
    back_to_back_restarts_are_each_noticed,
    sigkill_during_pipelined_puts_leaves_no_torn_blob,
    sigkill_during_a_streamed_upload_keeps_the_old_blob,
    frontend_disconnect_with_requests_in_flight,
    sigterm_with_requests_in_flight_completes_each_once_and_exits_0,
    reconnecting_client_survives_a_crash_with_requests_in_flight,
);

#[test]
fn a_corrupt_used_ring_fails_what_is_pending_then_reconnects() {
    let sb = Sandbox::new();
    let vsp = Vsp::start(&sb.dir, VspOptions::default().queues(2));
    let socket = vsp.socket().to_owned();
    bounded(Duration::from_secs(60), "corrupt used ring", move || {
        let g = Guest::connect(&socket, GuestOptions::default().queues(2).reconnect(true));
        g.container("scribble").create().unwrap();
        g.container("scribble").blob("before").put(b"before").unwrap();
        let before = g.transport.reconnects();
        g.transport.corrupt_used_ring(0).unwrap();
        // The reaper finds it, fails what was pending and reconnects by itself.
        wait_until(Duration::from_secs(20), "a reconnect after the corrupt used ring", || {
            g.transport.reconnects() > before
        });
        g.container("scribble").blob("after").put(b"after").unwrap();
        assert_eq!(g.container("scribble").blob("before").get().unwrap(), b"before");
        assert_eq!(g.container("scribble").blob("after").get().unwrap(), b"after");
        assert_eq!(g.transport.pending(), 0);
    });
    drop(vsp);
}
