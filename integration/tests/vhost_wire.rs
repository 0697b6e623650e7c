//! The VSP's vhost-user wire tap (vsp/src/vhost/wire/): every message is in
//! the trace log, and a ring address outside guest memory fails that queue
//! without dropping the VMM's connection.

use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::GuestAddress;
use vmblob_integration::{Guest, GuestOptions, Sandbox, Vsp, VspOptions};
use vmblob_vhost_frontend::GuestRam;

#[test]
fn every_vhost_user_message_is_in_the_trace_log() {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions { log_level: "trace", ..VspOptions::default() });
    {
        let g = Guest::connect(vsp.socket(), GuestOptions::default().queues(2));
        g.container("traced").create().unwrap();
    }
    vsp.stop();
    let logs = vsp.logs();
    for line in [
        "vmm → vsp: GET_FEATURES",
        "vsp → vmm: GET_FEATURES",
        "vmm → vsp: SET_PROTOCOL_FEATURES",
        "vmm → vsp: GET_CONFIG",
        "vmm → vsp: SET_MEM_TABLE",
        "vmm → vsp: SET_VRING_ADDR",
        "vmm → vsp: SET_VRING_KICK",
        "vmm → vsp: SET_VRING_ENABLE",
    ] {
        assert!(logs.contains(line), "no {line:?} in the trace log:\n{logs}");
    }
    assert!(logs.contains("SET_MEM_TABLE flags 0x9, ") && logs.contains(", 1 fds"), "flags and fds are shown:\n{logs}");
}

fn ring(ram: &GuestRam, gpa: u64, size: u16) -> VringConfigData {
    let at = |off: u64| ram.host_address(GuestAddress(gpa + off)).expect("inside guest RAM");
    VringConfigData {
        queue_max_size: size,
        queue_size: size,
        flags: 0,
        desc_table_addr: at(0),
        avail_ring_addr: at(0x1000),
        used_ring_addr: at(0x2000),
        log_addr: None,
    }
}

#[test]
fn a_ring_outside_guest_memory_fails_its_queue_not_the_connection() {
    let sb = Sandbox::new();
    let mut vsp = Vsp::start(&sb.dir, VspOptions::default());
    let ram = GuestRam::new(4 << 20).expect("guest RAM");
    let mut f = Frontend::from_stream(UnixStream::connect(vsp.socket()).expect("connect"), 2);
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features & (VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | 1 << 32)).unwrap();
    let protocol = f.get_protocol_features().unwrap();
    let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
    f.set_protocol_features(protocol & wanted).unwrap();
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    f.set_mem_table(&ram.region_infos()).unwrap();

    f.set_vring_num(0, 64).unwrap();
    let mut bad = ring(&ram, 0x10_0000, 64);
    bad.desc_table_addr = 0xdead_0000_0000;
    assert!(f.set_vring_addr(0, &bad).is_err(), "the bad ring address is refused");
    // The connection is still there, and the other queue can be set up and started.
    assert_eq!(f.get_queue_num().unwrap(), 2);
    f.set_vring_num(1, 64).unwrap();
    f.set_vring_addr(1, &ring(&ram, 0x20_0000, 64)).unwrap();
    f.set_vring_base(1, 0).unwrap();
    // Queue 0 may be set up again with addresses that are inside.
    f.get_vring_base(0).unwrap();
    f.set_vring_addr(0, &ring(&ram, 0x10_0000, 64)).unwrap();
    assert_eq!(f.get_queue_num().unwrap(), 2, "still connected");
    drop(f);
    vsp.stop();
    assert!(vsp.logs().contains("queue 0: ring addresses outside guest memory"), "{}", vsp.logs());
}
