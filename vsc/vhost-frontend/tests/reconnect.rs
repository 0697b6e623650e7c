//! Backend hang-up detection and CH-style reconnection against real daemons.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{BackendSpec, RAM_SIZE, TestRing, TestServer, round_trip, wait_readable, wait_until};
use vmblob_vhost_frontend::{Error, FrontendOptions, GuestRam, QueueConfig, VhostUserDevice};

fn fast_opts() -> FrontendOptions {
    FrontendOptions {
        connect_timeout: Duration::from_secs(5),
        reconnect_timeout: Duration::from_secs(5),
        retry_interval: Duration::from_millis(20),
        reply_timeout: Some(Duration::from_secs(10)),
        event_idx: true,
        inflight: true,
    }
}

#[test]
fn watcher_fires_when_the_backend_goes_away_and_not_before() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).unwrap();
    let session = server.session();
    let hangup = dev.disconnect_handle();
    let mut ring = TestRing::new(&ram, 0, 16, 0x1000, 0x10_0000, 0);
    dev.activate(&[ring.config()]).unwrap();
    let (kick, call) = (dev.kick_fd(0).unwrap(), dev.call_fd(0).unwrap());
    round_trip(&mut ring, &kick, &call, b"alive");

    // Alive: traffic on the socket (replies) and an idle backend are not hang-ups.
    let _ = dev.get_config(0, 4).unwrap();
    assert!(!hangup.wait_timeout(Duration::from_millis(300)));
    assert!(!dev.is_disconnected());
    assert!(!wait_readable(hangup.event_fd(), Duration::ZERO));

    // The backend drops the connection (what a crashing or exiting daemon does).
    let start = Instant::now();
    session.shutdown.shutdown();
    assert!(hangup.wait_timeout(Duration::from_secs(5)), "hang-up not seen");
    assert!(start.elapsed() < Duration::from_secs(1), "hang-up seen late: {:?}", start.elapsed());
    assert!(dev.is_disconnected());
    // The eventfd a client polls next to its call fds is readable too.
    assert!(wait_readable(hangup.event_fd(), Duration::ZERO));

    // Requests now fail as transport errors instead of hanging.
    let err = dev.get_config(0, 4).unwrap_err();
    assert!(err.is_transport_lost(), "{err}");
    server.join();
}

#[test]
fn watcher_fires_when_the_backend_daemon_is_dropped() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let dev = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).unwrap();
    let session = server.session();
    let hangup = dev.disconnect_handle();
    assert!(!hangup.is_disconnected());
    session.shutdown.shutdown();
    // The server thread returns from wait() and drops the daemon and its socket.
    assert!(wait_until(Duration::from_secs(5), || session.log.ended.load(Ordering::SeqCst)));
    assert!(hangup.wait_timeout(Duration::from_secs(1)));
}

#[test]
fn reconnect_rearms_the_rings_at_the_given_base() {
    let server = TestServer::spawn(BackendSpec::default(), 2);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 2, fast_opts()).unwrap();
    let first = server.session();
    let hangup = dev.disconnect_handle();
    let mut q0 = TestRing::new(&ram, 0, 16, 0x1000, 0x10_0000, 0);
    let mut q1 = TestRing::new(&ram, 1, 8, 0x8000, 0x20_0000, 0);
    dev.activate(&[q0.config(), q1.config()]).unwrap();
    let (k0, c0) = (dev.kick_fd(0).unwrap(), dev.call_fd(0).unwrap());
    let (k1, c1) = (dev.kick_fd(1).unwrap(), dev.call_fd(1).unwrap());
    round_trip(&mut q0, &k0, &c0, b"first");
    round_trip(&mut q0, &k0, &c0, b"second");
    round_trip(&mut q1, &k1, &c1, b"other queue");

    first.shutdown.shutdown();
    assert!(hangup.wait_timeout(Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(5), || first.log.ended.load(Ordering::SeqCst)));

    // A request posted (and kicked) while the backend is gone; the client fails it.
    q0.post(b"lost", 64);
    k0.write(1).unwrap();
    assert_eq!(q0.avail_idx(), 3);

    // Resume at the driver's avail index: the failed request must not be replayed.
    dev.reconnect(&[q0.config(), q1.config()]).unwrap();
    let second = server.session();
    assert!(!dev.is_disconnected());
    assert!(!hangup.is_disconnected());
    assert!(!wait_readable(hangup.event_fd(), Duration::ZERO), "hang-up eventfd drained");
    assert_eq!(*second.log.acked_features.lock().unwrap(), Some(dev.negotiated().acked_features));

    round_trip(&mut q0, &k0, &c0, b"after reconnect");
    round_trip(&mut q1, &k1, &c1, b"other queue again");
    assert_eq!(second.log.requests.load(Ordering::SeqCst), 2, "only the new requests were served");
    assert_eq!(q0.pop_used(), None);
    assert_eq!(q0.used_idx(), 3, "two completions before the hang-up, one after");
    assert_eq!(dev.stop().unwrap(), vec![4, 2]);

    // The watcher follows the new connection.
    second.shutdown.shutdown();
    assert!(hangup.wait_timeout(Duration::from_secs(5)));
    server.join();
}

#[test]
fn reconnect_with_an_older_base_replays_from_there() {
    // What CH does with IN_ORDER and no inflight fd: rewind to the used index, so the new
    // backend processes the request the old one never completed.
    let server = TestServer::spawn(BackendSpec::default(), 2);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).unwrap();
    let first = server.session();
    let mut ring = TestRing::new(&ram, 0, 16, 0x1000, 0x10_0000, 0);
    dev.activate(&[ring.config()]).unwrap();
    let (kick, call) = (dev.kick_fd(0).unwrap(), dev.call_fd(0).unwrap());
    round_trip(&mut ring, &kick, &call, b"done");
    first.shutdown.shutdown();
    assert!(dev.disconnect_handle().wait_timeout(Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(5), || first.log.ended.load(Ordering::SeqCst)));

    let (head, in_addr) = ring.post(b"in flight", 64);
    let rewound = QueueConfig { base: ring.used_idx(), ..ring.config() };
    assert_eq!((rewound.base, ring.avail_idx()), (1, 2));
    dev.reconnect(&[rewound]).unwrap();
    let second = server.session();
    assert_eq!(ring.wait_used(&call, Duration::from_secs(5)), Some((u32::from(head), 9)));
    assert_eq!(ring.read(in_addr, 9), b"thgilf ni");
    assert_eq!(second.log.requests.load(Ordering::SeqCst), 1);
    assert_eq!(dev.stop().unwrap(), vec![2]);
}

#[test]
fn reconnect_retries_until_the_backend_is_back() {
    let downtime = Duration::from_millis(300);
    let server = TestServer::spawn_restarting(BackendSpec::default(), 2, downtime);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).unwrap();
    let first = server.session();
    let mut ring = TestRing::new(&ram, 0, 16, 0x1000, 0x10_0000, 0);
    dev.activate(&[ring.config()]).unwrap();
    first.shutdown.shutdown();
    assert!(dev.disconnect_handle().wait_timeout(Duration::from_secs(5)));
    // The socket file is gone while the backend "restarts".
    assert!(wait_until(Duration::from_secs(5), || !server.path().exists()));

    let start = Instant::now();
    dev.reconnect(&[ring.config()]).unwrap();
    assert!(start.elapsed() >= downtime / 2, "reconnected too early: {:?}", start.elapsed());
    let second = server.session();
    let (kick, call) = (dev.kick_fd(0).unwrap(), dev.call_fd(0).unwrap());
    round_trip(&mut ring, &kick, &call, b"back");
    assert_eq!(second.log.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn reconnect_gives_up_after_the_timeout() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let opts = FrontendOptions { reconnect_timeout: Duration::from_millis(200), ..fast_opts() };
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 1, opts).unwrap();
    let session = server.session();
    let ring = TestRing::new(&ram, 0, 16, 0x1000, 0x10_0000, 0);
    dev.activate(&[ring.config()]).unwrap();
    session.shutdown.shutdown();
    // The server served its only connection; the listener and its socket file are gone.
    server.join();
    assert!(dev.disconnect_handle().wait_timeout(Duration::from_secs(5)));

    let start = Instant::now();
    let err = dev.reconnect(&[ring.config()]).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(dev.is_disconnected(), "still down after a failed reconnect");
}
