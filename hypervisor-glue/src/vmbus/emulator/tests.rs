//! Emulator tests: offer/open/close/rescind/re-offer, open checks, interrupts both ways.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmblob_protocol::transport::VMBUS_CLASS_GUID;
use vmblob_vmbus::packet::{Packet, encode_completion, encode_inband, parse_packet};

use super::*;
use crate::GuestRam;
use vmblob_vmbus::{ControlWord, IncomingRing, LayoutError, OutgoingRing, RingMem};

const RAM: u64 = 1 << 20;
const RING: usize = 0x4000;
const LONG: Duration = Duration::from_secs(10);

/// Records the hooks; on rescind answers with one completion first, as a VSP must.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    host: Mutex<Option<HostChannel>>,
    refuse: AtomicBool,
    /// The guest's view, to check what it saw while the rescind hook ran.
    guest_watch: Mutex<Option<ChannelState>>,
    status_in_rescind: Mutex<Option<ChannelStatus>>,
}

impl Recorder {
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

impl ChannelDevice for Recorder {
    fn on_open(&self, channel: HostChannel) -> Result<(), DeviceError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err("not today".into());
        }
        self.events.lock().unwrap().push(format!("open {}", channel.offer.generation));
        *self.host.lock().unwrap() = Some(channel);
        Ok(())
    }

    fn on_rescind(&self, offer: &Offer) {
        self.events.lock().unwrap().push(format!("rescind {}", offer.generation));
        *self.status_in_rescind.lock().unwrap() = self.guest_watch.lock().unwrap().as_ref().map(|w| w.status());
        if let Some(host) = self.host.lock().unwrap().take() {
            let mut host = host.channel.attach().unwrap();
            host.outgoing.write(&encode_completion(77, b"rescinded")).unwrap();
            if host.outgoing.commit_write() {
                host.signal.signal_peer().unwrap();
            }
        }
    }

    fn on_close(&self, offer: &Offer) {
        self.events.lock().unwrap().push(format!("close {}", offer.generation));
        self.host.lock().unwrap().take();
    }
}

fn setup() -> (VmbusEmulator, Arc<Recorder>) {
    let device = Arc::new(Recorder::default());
    let emu = VmbusEmulator::new(GuestRam::new(RAM).unwrap(), device.clone(), EmulatorConfig::default());
    (emu, device)
}

fn open(emu: &VmbusEmulator, device: &Recorder) -> GuestChannel {
    let offer = emu.guest().current_offer().expect("on offer");
    let ch = emu.guest().open(&offer, OpenParams::symmetric(0x10000, RING)).unwrap();
    *device.guest_watch.lock().unwrap() = Some(ch.watch());
    ch
}

#[test]
fn offer_carries_the_class_and_a_fresh_generation() {
    let (emu, _) = setup();
    assert_eq!(emu.guest().current_offer(), None);
    let offer = emu.offer().unwrap();
    assert_eq!(offer.class_id, VMBUS_CLASS_GUID);
    assert_eq!(offer.generation, 1);
    assert_eq!(emu.offer(), Err(EmulatorError::AlreadyOffered));
    assert_eq!(emu.guest().wait_offer(None, LONG), Some(offer.clone()));
    assert_eq!(emu.guest().wait_offer(Some(1), Duration::from_millis(20)), None);
    emu.rescind().unwrap();
    assert_eq!(emu.rescind(), Err(EmulatorError::NotOffered));
    let again = emu.offer().unwrap();
    assert_eq!((again.generation, again.relid), (2, offer.relid + 1));
    assert_eq!(again.instance_id, offer.instance_id);
}

#[test]
fn open_checks_the_offer_and_the_ring_placement() {
    let (emu, device) = setup();
    let bus = emu.guest();
    let mut offer = emu.offer().unwrap();
    let good = OpenParams::symmetric(0x10000, RING);
    let layout = |p: OpenParams| match bus.open(&offer, p) {
        Err(OpenError::Layout(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(layout(OpenParams::symmetric(0x10800, RING)), LayoutError::Misaligned(0x10800));
    assert_eq!(layout(OpenParams::symmetric(0x10000, 0x1000)), LayoutError::RingSize(0x1000));
    assert_eq!(layout(OpenParams::symmetric(0x10000, 0x3800)), LayoutError::RingSize(0x3800));
    assert_eq!(layout(OpenParams::symmetric(0x10000, 128 << 20)), LayoutError::RingSize(128 << 20));
    assert!(matches!(layout(OpenParams::symmetric(RAM - 0x4000, RING)), LayoutError::OutOfBounds { .. }));
    assert!(matches!(layout(OpenParams::symmetric(0xffff_ffff_ffff_f000_u64, RING)), LayoutError::OutOfBounds { .. }));
    device.refuse.store(true, Ordering::SeqCst);
    assert!(matches!(bus.open(&offer, good), Err(OpenError::DeviceRefused(_))));
    device.refuse.store(false, Ordering::SeqCst);
    offer.generation = 9;
    assert!(matches!(bus.open(&offer, good), Err(OpenError::StaleOffer { requested: 9, current: 1 })));
    offer.generation = 1;
    assert!(device.events().is_empty(), "refused opens never reach the device past on_open");
    let ch = bus.open(&offer, good).unwrap();
    assert!(matches!(bus.open(&offer, good), Err(OpenError::AlreadyOpen)));
    assert_eq!(device.events(), ["open 1"]);
    assert!(emu.is_open());
    ch.close().unwrap();
    emu.rescind().unwrap();
    assert!(matches!(bus.open(&offer, good), Err(OpenError::NotOffered)));
}

#[test]
fn open_resets_both_ring_headers() {
    let (emu, device) = setup();
    emu.offer().unwrap();
    let ram = emu.ram().memory();
    // Leftovers of an earlier user of the pages.
    for base in [0x10000u64, 0x10000 + RING as u64] {
        ram.write_obj(0x1234_5678u32, GuestAddress(base)).unwrap();
        ram.write_obj(0x88u32, GuestAddress(base + 4)).unwrap();
        ram.write_obj(1u32, GuestAddress(base + 8)).unwrap();
    }
    let ch = open(&emu, &device);
    for ring in [ch.outgoing_ring(), ch.incoming_ring()] {
        assert_eq!(ring.load(ControlWord::WriteIndex, Ordering::SeqCst), 0);
        assert_eq!(ring.load(ControlWord::ReadIndex, Ordering::SeqCst), 0);
        assert_eq!(ring.load(ControlWord::InterruptMask, Ordering::SeqCst), 0);
        assert_eq!(ring.load(ControlWord::FeatureBits, Ordering::SeqCst), 1);
    }
    assert_eq!(ch.outgoing_ring().base(), 0x10000);
    assert_eq!(ch.incoming_ring().base(), 0x10000 + RING as u64);
}

#[test]
fn packets_and_interrupts_flow_both_ways() {
    let (emu, device) = setup();
    emu.offer().unwrap();
    let ch = open(&emu, &device);
    let mut host = device.host.lock().unwrap().take().unwrap().channel.attach().unwrap();
    let mut out = OutgoingRing::new(ch.outgoing_ring()).unwrap();
    let mut inc = IncomingRing::new(ch.incoming_ring()).unwrap();

    assert_eq!(ch.wait_interrupt(Some(Duration::from_millis(10))).unwrap(), Wakeup::Timeout);
    assert!(!host.signal.wait(Some(Duration::from_millis(10))).unwrap());

    out.write(&encode_inband(5, true, b"ping")).unwrap();
    assert!(out.commit_write(), "empty -> non-empty, reader unmasked");
    ch.signal_host().unwrap();
    assert!(host.signal.wait(Some(LONG)).unwrap());
    match host.incoming.read_packet(8).unwrap() {
        Packet::InBand { transaction_id: 5, payload, .. } => assert_eq!(&payload[..4], b"ping"),
        other => panic!("{other:?}"),
    }
    host.incoming.commit_read();

    host.outgoing.write(&encode_completion(5, b"pong")).unwrap();
    assert!(host.outgoing.commit_write());
    host.signal.signal_peer().unwrap();
    assert_eq!(ch.wait_interrupt(Some(LONG)).unwrap(), Wakeup::Interrupt { count: 1 });
    let bytes = inc.read().unwrap();
    assert!(matches!(parse_packet(&bytes, 0).unwrap(), Packet::Completion { transaction_id: 5, .. }));
}

#[test]
fn close_stops_the_device_keeps_the_offer_and_allows_a_reopen() {
    let (emu, device) = setup();
    let offer = emu.offer().unwrap();
    let ch = open(&emu, &device);
    assert_eq!(emu.close(), Ok(()));
    assert_eq!(emu.close(), Err(EmulatorError::NotOpen));
    assert_eq!(ch.close(), Ok(()), "closing an ended channel is a no-op");
    assert_eq!(ch.status(), ChannelStatus::Closed);
    assert!(matches!(ch.wait_interrupt(Some(LONG)), Err(GuestError::Closed)));
    assert!(matches!(ch.signal_host(), Err(GuestError::Closed)));
    assert_eq!(emu.guest().current_offer(), Some(offer.clone()));
    let again = open(&emu, &device);
    again.close().unwrap();
    assert_eq!(device.events(), ["open 1", "close 1", "open 1", "close 1"]);
}

#[test]
fn rescind_completes_pending_work_before_the_guest_sees_it() {
    let (emu, device) = setup();
    emu.offer().unwrap();
    let ch = open(&emu, &device);
    let mut inc = IncomingRing::new(ch.incoming_ring()).unwrap();
    emu.rescind().unwrap();
    assert_eq!(*device.status_in_rescind.lock().unwrap(), Some(ChannelStatus::Open));
    assert!(ch.is_rescinded());
    assert!(matches!(ch.wait_interrupt(None), Err(GuestError::Rescinded)));
    assert!(matches!(ch.signal_host(), Err(GuestError::Rescinded)));
    // The completion the device wrote in its hook is in the ring.
    let bytes = inc.read().unwrap();
    assert!(matches!(parse_packet(&bytes, 0).unwrap(), Packet::Completion { transaction_id: 77, .. }));
    assert_eq!(emu.guest().current_offer(), None);
    assert_eq!(ch.close(), Ok(()));
    assert_eq!(device.events(), ["open 1", "rescind 1"]);
}

#[test]
fn rescind_from_another_thread_wakes_a_sleeping_guest() {
    let (emu, device) = setup();
    emu.offer().unwrap();
    let ch = open(&emu, &device);
    let rescinder = {
        let emu = emu.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            emu.rescind().unwrap();
        })
    };
    // The device's completion interrupt may come first; the rescind must follow.
    let err = loop {
        match ch.wait_interrupt(None) {
            Ok(Wakeup::Interrupt { .. }) => continue,
            Ok(Wakeup::Timeout) => panic!("no timeout was asked for"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, GuestError::Rescinded));
    rescinder.join().unwrap();
}

#[test]
fn a_reoffer_is_picked_up_by_a_waiting_guest_while_old_handles_live() {
    let (emu, device) = setup();
    let first = emu.offer().unwrap();
    let old = open(&emu, &device);
    let bus = emu.guest();
    let waiter = thread::spawn(move || bus.wait_offer(Some(first.generation), LONG));
    emu.rescind().unwrap();
    thread::sleep(Duration::from_millis(20));
    let second = emu.offer().unwrap();
    assert_eq!(waiter.join().unwrap(), Some(second.clone()));
    assert!(matches!(
        emu.guest().open(&first, OpenParams::symmetric(0x10000, RING)),
        Err(OpenError::StaleOffer { .. })
    ));
    let new = emu.guest().open(&second, OpenParams::symmetric(0x20000, RING)).unwrap();
    assert!(old.is_rescinded(), "the old channel stays rescinded");
    assert_eq!(new.status(), ChannelStatus::Open);
    assert_eq!(old.close(), Ok(()), "closing the old channel leaves the new one alone");
    assert_eq!(new.status(), ChannelStatus::Open);
    assert_eq!(device.events(), ["open 1", "rescind 1", "open 2"]);
}

#[test]
fn dropping_the_last_handle_closes_an_open_channel() {
    let (emu, device) = setup();
    emu.offer().unwrap();
    let ch = open(&emu, &device);
    let watch = ch.watch();
    drop(ch);
    assert_eq!(device.events(), ["open 1"], "the emulator still holds the channel");
    drop(emu);
    assert_eq!(device.events(), ["open 1", "close 1"]);
    assert_eq!(watch.status(), ChannelStatus::Closed);
}

#[test]
fn page_buffers_name_every_page_a_buffer_touches() {
    let b = page_buffer(0x3ff0, 0x20);
    assert_eq!((b.first_page_offset, b.len, b.pfns), (0xff0, 0x20, vec![3, 4]));
    let b = page_buffer(0x5000, 0x1000);
    assert_eq!((b.first_page_offset, b.pfns), (0, vec![5]));
    assert_eq!(page_buffer(0x5000, 0).pfns, vec![5]);
}

#[test]
fn racing_close_and_rescind_tear_down_once() {
    for _ in 0..50 {
        let (emu, device) = setup();
        emu.offer().unwrap();
        let ch = open(&emu, &device);
        let closer = thread::spawn(move || ch.close());
        let rescinder = {
            let emu = emu.clone();
            thread::spawn(move || emu.rescind())
        };
        assert_eq!(closer.join().unwrap(), Ok(()));
        assert_eq!(rescinder.join().unwrap(), Ok(()), "an offer, open or not, is always there to rescind");
        let events = device.events();
        assert!(events == ["open 1", "close 1"] || events == ["open 1", "rescind 1"], "{events:?}");
        assert_eq!(emu.guest().current_offer(), None);
        assert!(!emu.is_open());
    }
}
