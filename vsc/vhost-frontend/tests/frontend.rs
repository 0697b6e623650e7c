//! The frontend against a real `vhost-user-backend` daemon: handshake, config space, rings.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{BackendSpec, CONFIG_SPACE, DEVICE_BIT_5, RAM_SIZE, TestRing, TestServer, round_trip};
use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestAddress;
use vmblob_vhost_frontend::frontend::{self as vf, DEVICE_SPECIFIC_FEATURES};
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
fn feature_constants_match_the_virtio_spec() {
    assert_eq!(vf::VIRTIO_F_VERSION_1, 1 << VIRTIO_F_VERSION_1);
    assert_eq!(vf::VIRTIO_RING_F_EVENT_IDX, 1 << VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(vf::VIRTIO_RING_F_INDIRECT_DESC, 1 << VIRTIO_RING_F_INDIRECT_DESC);
    assert_eq!(vf::VIRTIO_F_IN_ORDER, 1 << VIRTIO_F_IN_ORDER);
    assert_eq!(vf::VHOST_USER_F_PROTOCOL_FEATURES, 1 << 30);
}

#[test]
fn handshake_negotiates_what_cloud_hypervisor_would() {
    let spec = BackendSpec::default();
    let server = TestServer::spawn(spec.clone(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let dev = VhostUserDevice::connect(server.path(), &ram, 2, fast_opts()).unwrap();
    let session = server.session();
    let n = *dev.negotiated();

    let expected = vf::VIRTIO_F_VERSION_1 | vf::VIRTIO_RING_F_EVENT_IDX | vf::VHOST_USER_F_PROTOCOL_FEATURES;
    assert_eq!(n.backend_features, spec.features);
    assert_eq!(n.acked_features, expected);
    assert!(n.event_idx());
    // Offered by the backend, dropped like CH's generic device does.
    assert_eq!(n.acked_features & DEVICE_BIT_5, 0);
    assert_eq!(n.acked_features & DEVICE_SPECIFIC_FEATURES, 0);
    assert_eq!(n.acked_features & vf::VIRTIO_RING_F_INDIRECT_DESC, 0);
    // The backend saw the same in SET_FEATURES.
    assert_eq!(*session.log.acked_features.lock().unwrap(), Some(expected));
    assert!(session.log.event_idx.load(Ordering::SeqCst));

    let proto = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
    assert_eq!(n.acked_protocol_features, proto);
    // The crate adds REPLY_ACK to what the backend declares; the extras are not acked.
    assert!(n.backend_protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK));
    assert!(n.backend_protocol_features.contains(VhostUserProtocolFeatures::BACKEND_REQ));
    assert_eq!(n.backend_queues, Some(2));
    assert!(!dev.is_disconnected());

    drop(dev);
    server.join();
    assert!(session.log.ended.load(Ordering::SeqCst));
}

#[test]
fn event_idx_can_be_declined() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let opts = FrontendOptions { event_idx: false, ..fast_opts() };
    let dev = VhostUserDevice::connect(server.path(), &ram, 1, opts).unwrap();
    let session = server.session();
    assert!(!dev.negotiated().event_idx());
    assert!(!session.log.event_idx.load(Ordering::SeqCst));
}

#[test]
fn get_config_reads_the_backend_config_space() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).unwrap();
    assert_eq!(dev.get_config(0, CONFIG_SPACE.len() as u32).unwrap(), CONFIG_SPACE);
    assert_eq!(dev.get_config(7, 4).unwrap(), b"echo");
    // The backend refuses a read past its config space: an error, not a hang, and the
    // connection stays in step for the next request.
    let err = dev.get_config(20, 8).unwrap_err();
    assert!(matches!(err, Error::ConfigRefused { offset: 20, len: 8 }), "{err}");
    assert_eq!(dev.get_config(0, 6).unwrap(), b"vmblob");
    // Outside what vhost-user can address at all: refused locally.
    assert!(matches!(dev.get_config(0, 0), Err(Error::ConfigRange { .. })));
    assert!(matches!(dev.get_config(4090, 8), Err(Error::ConfigRange { .. })));
    assert!(!dev.is_disconnected());
}

#[test]
fn get_config_without_the_config_feature_is_an_error() {
    let spec = BackendSpec { protocol_features: VhostUserProtocolFeatures::MQ, ..BackendSpec::default() };
    let server = TestServer::spawn(spec, 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).unwrap();
    assert!(!dev.negotiated().acked_protocol_features.contains(VhostUserProtocolFeatures::CONFIG));
    assert!(matches!(dev.get_config(0, 4), Err(Error::ConfigUnsupported)));
}

#[test]
fn too_few_backend_queues_is_an_error() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let err = VhostUserDevice::connect(server.path(), &ram, 3, fast_opts()).err().expect("must fail");
    assert!(matches!(err, Error::NotEnoughQueues { requested: 3, available: 2 }), "{err}");
    assert!(!err.is_transport_lost());
}

#[test]
fn backend_without_version_1_is_refused() {
    let spec = BackendSpec { features: common::PROTOCOL_FEATURES_BIT | DEVICE_BIT_5, ..BackendSpec::default() };
    let server = TestServer::spawn(spec, 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let err = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).err().expect("must fail");
    assert!(matches!(err, Error::MissingFeatures { missing } if missing == vf::VIRTIO_F_VERSION_1), "{err}");
}

#[test]
fn zero_queues_is_refused_before_connecting() {
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let err =
        VhostUserDevice::connect(std::path::Path::new("/nonexistent/vmblob.sock"), &ram, 0, fast_opts()).err().unwrap();
    assert!(matches!(err, Error::InvalidQueueCount(0)));
}

#[test]
fn connect_waits_for_a_late_backend() {
    let server = TestServer::spawn_after(BackendSpec::default(), 1, Duration::from_millis(300));
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let start = Instant::now();
    let dev = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert!(!dev.is_disconnected());
}

#[test]
fn connect_gives_up_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let opts = FrontendOptions { connect_timeout: Duration::from_millis(200), ..fast_opts() };
    let start = Instant::now();
    let err = VhostUserDevice::connect(&dir.path().join("nobody.sock"), &ram, 1, opts).err().unwrap();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.is_transport_lost());
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn request_round_trips_through_the_ring() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 1, fast_opts()).unwrap();
    let session = server.session();
    let mut ring = TestRing::new(&ram, 0, 16, 0x1000, 0x10_0000, 0);
    dev.activate(&[ring.config()]).unwrap();
    let (kick, call) = (dev.kick_fd(0).unwrap(), dev.call_fd(0).unwrap());

    round_trip(&mut ring, &kick, &call, b"hello");
    // A second one needs used_event to have been advanced (EVENT_IDX is on).
    round_trip(&mut ring, &kick, &call, b"vmblob over vhost-user");
    assert_eq!(ring.used_idx(), 2);
    assert_eq!(session.log.requests.load(Ordering::SeqCst), 2);
    assert!(dev.kick_fd(1).is_none());
}

#[test]
fn stop_returns_each_queues_next_avail() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 2, fast_opts()).unwrap();
    let mut q0 = TestRing::new(&ram, 0, 16, 0x1000, 0x10_0000, 0);
    let mut q1 = TestRing::new(&ram, 1, 8, 0x8000, 0x20_0000, 0);
    dev.activate(&[q0.config(), q1.config()]).unwrap();
    let (k0, c0) = (dev.kick_fd(0).unwrap(), dev.call_fd(0).unwrap());
    let (k1, c1) = (dev.kick_fd(1).unwrap(), dev.call_fd(1).unwrap());
    for msg in [&b"one"[..], b"two", b"three"] {
        round_trip(&mut q0, &k0, &c0, msg);
    }
    round_trip(&mut q1, &k1, &c1, b"four");

    assert_eq!(dev.stop().unwrap(), vec![3, 1]);
    // Nothing is armed any more.
    assert_eq!(dev.stop().unwrap(), Vec::<u16>::new());

    // Re-activation resumes where the backend stopped.
    let cfg = q0.config();
    assert_eq!(cfg.base, 3);
    dev.activate(&[cfg]).unwrap();
    round_trip(&mut q0, &k0, &c0, b"five");
    assert_eq!(dev.stop().unwrap(), vec![4]);
}

#[test]
fn activate_rejects_bad_queue_configs() {
    let server = TestServer::spawn(BackendSpec::default(), 1);
    let ram = GuestRam::new(RAM_SIZE).unwrap();
    let mut dev = VhostUserDevice::connect(server.path(), &ram, 2, fast_opts()).unwrap();
    let good = TestRing::new(&ram, 0, 16, 0x1000, 0x10_0000, 0).config();

    let err = dev.activate(&[QueueConfig { index: 2, ..good }]).unwrap_err();
    assert!(matches!(err, Error::InvalidQueueIndex { index: 2, num_queues: 2 }), "{err}");
    let err = dev.activate(&[good, good]).unwrap_err();
    assert!(matches!(err, Error::DuplicateQueue(0)), "{err}");
    let err = dev.activate(&[QueueConfig { size: 12, ..good }]).unwrap_err();
    assert!(matches!(err, Error::InvalidQueueSize { index: 0, size: 12 }), "{err}");
    let err = dev.activate(&[QueueConfig { size: 0, ..good }]).unwrap_err();
    assert!(matches!(err, Error::InvalidQueueSize { size: 0, .. }), "{err}");
    let err = dev.activate(&[QueueConfig { used: GuestAddress(RAM_SIZE - 8), ..good }]).unwrap_err();
    assert!(matches!(err, Error::RingOutsideRam { ring: "used ring", .. }), "{err}");

    // Nothing was sent: the device still works.
    dev.activate(&[good]).unwrap();
    assert_eq!(dev.stop().unwrap(), vec![0]);
}
