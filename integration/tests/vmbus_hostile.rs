//! A lying host behind the emulator: the VMBus guest answers every lie with
//! a clean channel failure (the caller gets an error, no panic, no hang),
//! closes the channel, opens it again and carries on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmblob_glue::GuestRam;
use vmblob_glue::vmbus::emulator::{ChannelDevice, DeviceError, EmulatorConfig, HostChannel, Offer, VmbusEmulator};
use vmblob_integration::emulated::EmulatedSource;
use vmblob_integration::{bounded, wait_until};
use vmblob_protocol::config::{DeviceConfig, caps};
use vmblob_protocol::framing::vmbus::{
    GpaDirectFrame, MAX_PACKET_PAGES, encode_blob_completion, encode_completion, encode_inband, parse_packet,
};
use vmblob_protocol::ops::{ContainerProperties, OpRequest, OpResponse, encode_success_at};
use vmblob_protocol::transport::MAX_BUFFER_LEN;
use vmblob_protocol::{Segment, VspResponse};
use vmblob_vmbus::{AttachedChannel, ControlWord, ReadError, RingMem};
use vmblob_vsc::{BlobClient, ClientError, ClientOptions, Transport, VmbusOptions, VmbusTransport};
use zerocopy::IntoBytes;

const LIMIT: Duration = Duration::from_secs(30);

type Lie = fn(&mut Host, u64);

/// The host end the liar serves: guest memory and the channel with its rings attached.
struct Host {
    memory: GuestMemoryMmap,
    ch: AttachedChannel,
}

impl Host {
    fn new(channel: HostChannel) -> Self {
        Host { ch: channel.channel.attach().unwrap(), memory: channel.memory }
    }

    fn interrupt_guest(&self) {
        let _ = self.ch.signal.signal_peer();
    }
}

fn config() -> DeviceConfig {
    DeviceConfig {
        min_op_version: 1,
        max_op_version: 1,
        max_buffer_len: MAX_BUFFER_LEN,
        max_data_len: MAX_BUFFER_LEN - 8192,
        max_request_len: 4 << 20,
        max_segments: 1024,
        max_inflight: 64,
        num_queues: 1,
        capabilities: caps::ALL,
        max_blob_size: 1 << 40,
        block_size_hint: 8 << 20,
    }
}

fn post(host: &mut Host, packet: &[u8]) {
    host.ch.outgoing.write(packet).expect("room for a completion");
    if host.ch.outgoing.commit_write() {
        host.interrupt_guest();
    }
}

fn write_segments(mem: &GuestMemoryMmap, segs: &[Segment], mut bytes: &[u8]) {
    for s in segs {
        let n = bytes.len().min(s.len as usize);
        mem.write_slice(&bytes[..n], GuestAddress(s.addr)).unwrap();
        bytes = &bytes[n..];
    }
}

/// Answers the config honestly, lies on the first other request (once
/// across opens), then creates containers honestly.
struct Liar {
    lie: Lie,
    lies: Arc<AtomicUsize>,
    running: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

impl Liar {
    fn new(lie: Lie) -> Self {
        Self { lie, lies: Arc::new(AtomicUsize::new(1)), running: Mutex::new(None) }
    }

    fn serve(mut host: Host, lie: Lie, lies: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            let bytes = match host.ch.incoming.read() {
                Ok(b) => b,
                Err(ReadError::Empty) => {
                    if host.ch.incoming.commit_read() {
                        host.interrupt_guest();
                    }
                    if !host.ch.incoming.unmask_and_check().unwrap_or(false) {
                        let _ = host.ch.signal.wait(Some(Duration::from_millis(20)));
                    }
                    continue;
                }
                Err(e) => panic!("the guest corrupted its ring: {e}"),
            };
            let frame = GpaDirectFrame::from_packet(parse_packet(&bytes, MAX_PACKET_PAGES).unwrap()).unwrap();
            let layout = frame.layout().unwrap();
            let mut req = Vec::new();
            for s in &layout.request {
                let mut b = vec![0u8; s.len as usize];
                host.memory.read_slice(&mut b, GuestAddress(s.addr)).unwrap();
                req.extend(b);
            }
            let (version, op) = OpRequest::decode_versioned(&req).unwrap();
            let answer = match &op {
                OpRequest::GetDeviceConfig => OpResponse::DeviceConfig(config()),
                _ if lies.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() => {
                    lie(&mut host, frame.transaction_id);
                    continue;
                }
                OpRequest::CreateContainer { container, .. } => OpResponse::ContainerCreated(ContainerProperties {
                    etag: container.as_str().into(),
                    last_modified_ms: 0,
                    metadata: Default::default(),
                }),
                other => panic!("unexpected {other:?}"),
            };
            let body = encode_success_at(version, op.op(), &answer);
            write_segments(&host.memory, &layout.response, &body);
            post(&mut host, &encode_blob_completion(frame.transaction_id, &VspResponse::new(0, body.len() as u32)));
        }
    }

    fn halt(&self) {
        if let Some((stop, thread)) = self.running.lock().unwrap().take() {
            stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
    }
}

impl ChannelDevice for Liar {
    fn on_open(&self, channel: HostChannel) -> Result<(), DeviceError> {
        self.halt();
        let stop = Arc::new(AtomicBool::new(false));
        let (lie, lies, s) = (self.lie, self.lies.clone(), stop.clone());
        let thread = std::thread::spawn(move || Liar::serve(Host::new(channel), lie, lies, s));
        *self.running.lock().unwrap() = Some((stop, thread));
        Ok(())
    }

    fn on_rescind(&self, _offer: &Offer) {
        self.halt();
    }

    fn on_close(&self, _offer: &Offer) {
        self.halt();
    }
}

#[test]
fn lies_from_the_host_fail_the_channel_cleanly_and_it_recovers() {
    let lies: [(&str, Lie); 9] = [
        ("unknown id", |h, id| post(h, &encode_blob_completion(id + 77, &VspResponse::new(0, 0)))),
        ("id 0", |h, _| post(h, &encode_blob_completion(0, &VspResponse::new(0, 0)))),
        ("short completion", |h, id| post(h, &encode_completion(id, &[0; 8]))),
        ("not a completion", |h, id| post(h, &encode_inband(id, false, VspResponse::new(0, 0).as_bytes()))),
        ("lying response length", |h, id| post(h, &encode_blob_completion(id, &VspResponse::new(0, 1 << 30)))),
        ("bad length field", |h, id| {
            let mut r = VspResponse::new(0, 0);
            r.length = 0.into();
            post(h, &encode_completion(id, r.as_bytes()))
        }),
        ("completed twice", |h, id| {
            post(h, &encode_blob_completion(id, &VspResponse::new(0, 0)));
            post(h, &encode_blob_completion(id, &VspResponse::new(0, 0)));
        }),
        ("garbage descriptor", |h, id| {
            let mut p = encode_blob_completion(id, &VspResponse::new(0, 0));
            p[0] = 0x42;
            let mem = h.ch.outgoing.memory();
            let at = mem.load(ControlWord::WriteIndex, Ordering::SeqCst) as usize;
            mem.write_at(at, &p);
            mem.store(ControlWord::WriteIndex, (at + p.len() + 8) as u32, Ordering::SeqCst);
            h.interrupt_guest();
        }),
        ("write index out of the ring", |h, _| {
            h.ch.outgoing.memory().store(ControlWord::WriteIndex, u32::MAX - 7, Ordering::SeqCst);
            h.interrupt_guest();
        }),
    ];
    for (what, lie) in lies {
        let device = Arc::new(Liar::new(lie));
        let emu = VmbusEmulator::new(GuestRam::new(64 << 20).unwrap(), device.clone(), EmulatorConfig::default());
        emu.offer().unwrap();
        let source = EmulatedSource::new(emu.guest(), 64 << 10).unwrap();
        let opts = VmbusOptions { wait_slice: Duration::from_millis(20), ..VmbusOptions::default() };
        let transport = Arc::new(VmbusTransport::open(Arc::new(source), opts).unwrap());
        let client = Arc::new(BlobClient::new(
            transport.clone(),
            transport.device_config(),
            ClientOptions { timeout_ms: 0, ..ClientOptions::default() },
        ));
        let c = client.clone();
        let r = bounded(LIMIT, what, move || c.container("victim").create());
        match what {
            // Completed (as success with no body) before the second one came.
            "completed twice" => assert!(matches!(r, Err(ClientError::Protocol(_))), "{what}: {r:?}"),
            // The create was sent and its answer lost with the channel: its outcome is unknown.
            _ => assert!(
                matches!(r, Err(ClientError::OutcomeUnknown { .. } | ClientError::Protocol(_))),
                "{what}: {r:?}"
            ),
        }
        // The guest closed the channel and opened it again; the host now
        // tells the truth.
        wait_until(LIMIT, what, || transport.generation() == 2 && transport.is_connected());
        let props = client.container("honest").create().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(props.etag, "honest", "{what}");
        drop(client);
        transport.close();
        device.halt();
    }
}
