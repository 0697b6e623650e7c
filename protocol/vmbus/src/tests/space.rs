//! The never-full rule, the maximum packet, free-space numbers, and when each end signals.

use crate::packet::encode_inband;

use super::*;

/// An in-band packet of exactly `len` ring bytes (without trailer).
fn packet_of(len: usize) -> Vec<u8> {
    let p = encode_inband(1, false, &vec![0x5a; len - 16]);
    assert_eq!(p.len(), len);
    p
}

#[test]
fn never_full() {
    let mem = flat(4096);
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    out.write(&packet_of(1000)).unwrap(); // 1008 ring bytes
    assert_eq!(out.free_space().unwrap(), 4096 - 1008 - 8);
    // Exactly filling the ring (4096 - 1008 ring bytes) is refused: full would look empty.
    assert_eq!(out.write(&packet_of(4096 - 1008 - 8)), Err(WriteError::Full { needed: 4096 - 1008 }));
    // One slot less fits, and leaves exactly 8 bytes free.
    out.write(&packet_of(4096 - 1008 - 16)).unwrap();
    assert_eq!(out.free_space().unwrap(), 0);
    assert_eq!(out.write(&packet_of(16)), Err(WriteError::Full { needed: 24 }));
    out.commit_write();
    assert_eq!(word(&*mem, ControlWord::WriteIndex), 4096 - 8);
    assert_eq!(inc.read().unwrap().len(), 1000);
    assert_eq!(inc.read().unwrap().len(), 4096 - 1008 - 16);
    assert_eq!(inc.read(), Err(ReadError::Empty));
}

#[test]
fn maximum_packet() {
    let (mut out, mut inc) = rings_at(flat(4096), 0);
    assert_eq!(out.max_packet_len(), 4096 - 24);
    // dsize - 16 ring bytes with the trailer (OpenVMM's limit) is accepted ...
    let max = packet_of(4096 - 24);
    out.write(&max).unwrap();
    out.commit_write();
    assert_eq!(inc.read().unwrap(), max);
    inc.commit_read();
    // ... dsize - 8 (Linux would accept it, OpenVMM not) and dsize (fills the ring) are not.
    assert_eq!(out.write(&packet_of(4096 - 16)), Err(WriteError::TooLarge { len: 4096 - 16, max: 4096 - 24 }));
    assert_eq!(out.write(&packet_of(4096 - 8)), Err(WriteError::TooLarge { len: 4096 - 8, max: 4096 - 24 }));
    assert!(matches!(out.poll_ready(4096 - 16), Err(WriteError::TooLarge { .. })));
    assert!(!out.has_uncommitted());

    // A reader takes the largest packet a Linux writer may send (dsize - 8 ring bytes).
    let mem = flat(4096);
    let (_, mut inc) = rings_at(mem.clone(), 16);
    let linux_max = packet_of(4096 - 16);
    inject(&*mem, &linux_max);
    assert_eq!(word(&*mem, ControlWord::WriteIndex), 8);
    assert_eq!(inc.read().unwrap(), linux_max);
}

#[test]
fn refuses_non_packets() {
    let (mut out, _) = rings_at(flat(4096), 0);
    let mut p = encode_inband(1, false, b"abc");
    assert!(matches!(out.write(&p[..8]), Err(WriteError::NotAPacket(_))));
    assert!(matches!(out.write(&p[..16]), Err(WriteError::NotAPacket(_))), "len8 says 24");
    p[2] = 1; // offset8 < 2
    assert!(matches!(out.write(&p), Err(WriteError::NotAPacket(_))));
    p[2] = 4; // offset8 > len8
    assert!(matches!(out.write(&p), Err(WriteError::NotAPacket(_))));
    assert_eq!(out.free_space().unwrap(), 4088);
}

/// OpenVMM `test_pending_send_size` with data size 16384.
#[test]
fn pending_send_size_numbers() {
    let mem = flat(16384);
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    inc.set_interrupt_mask(true);
    let p = |b: u8| encode_inband(0, false, &[b; 4000]); // 4016 + 8 = 4024 ring bytes
    assert_eq!(out.free_space().unwrap(), 16376);
    for b in 1..=4 {
        out.write(&p(b)).unwrap();
        assert!(!out.commit_write(), "masked");
    }
    assert_eq!(out.free_space().unwrap(), 16384 - 16096 - 8);
    assert_eq!(out.write(&p(5)), Err(WriteError::Full { needed: 4024 }));

    // No pending send size yet: no signal.
    assert_eq!(inc.read().unwrap(), p(1));
    assert!(!inc.commit_read());
    out.write(&p(5)).unwrap();
    out.commit_write();
    assert!(matches!(out.write(&p(6)), Err(WriteError::Full { .. })));

    // Two packets' worth: the second read crosses it, the others don't.
    out.set_pending_send_size(4024 * 2);
    let signals: Vec<bool> = (0..3)
        .map(|_| {
            inc.read().unwrap();
            inc.commit_read()
        })
        .collect();
    assert_eq!(signals, [false, true, false]);
}

/// The writer's full/pending/re-check cycle and the reader's crossing rule, batched.
#[test]
fn poll_ready_cycle() {
    let mem = flat(16384);
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    let p = encode_inband(0, false, &[1; 4000]);
    for _ in 0..4 {
        out.write(&p).unwrap();
    }
    out.commit_write();
    assert!(out.poll_ready(64).unwrap(), "small packets still fit");
    assert!(!out.poll_ready(p.len()).unwrap());
    assert_eq!(word(&*mem, ControlWord::PendingSendSize), 4024);

    // A batch of two reads committed once: one signal.
    inc.read().unwrap();
    inc.read().unwrap();
    assert!(inc.commit_read());
    assert!(out.poll_ready(p.len()).unwrap());
    assert_eq!(word(&*mem, ControlWord::PendingSendSize), 0);
    inc.read().unwrap();
    assert!(!inc.commit_read(), "nothing pending any more");
}

/// The reader frees space after the writer's first check but before it could see
/// `pending_send_sz` (so it will not signal): the writer's re-check must find the space.
#[test]
fn poll_ready_rechecks_after_setting_pending() {
    let flat = flat(16384);
    let p = encode_inband(0, false, &[1; 4000]);
    let mem = HookMem::new(flat.clone(), |ring, access| {
        if let Access::Stored(ControlWord::PendingSendSize, n) = access
            && n != 0
        {
            // A reader that consumed one packet and read pending_send_sz just before this store.
            let r = ring.load(ControlWord::ReadIndex, Ordering::SeqCst);
            ring.store(ControlWord::ReadIndex, r + 4024, Ordering::SeqCst);
        }
    });
    let mut out = OutgoingRing::new(mem.clone()).unwrap();
    for _ in 0..4 {
        out.write(&p).unwrap();
    }
    out.commit_write();
    assert_eq!(out.write(&p), Err(WriteError::Full { needed: 4024 }));
    assert!(out.poll_ready(p.len()).unwrap(), "the re-check sees the freed space");
    assert_eq!(word(&*flat, ControlWord::PendingSendSize), 0, "and withdraws the request");
    out.write(&p).unwrap();
}

/// After moving read_index the reader looks at pending_send_sz, then at write_index, as
/// Linux's hv_pkt_iter_close does (issue 17 item 5); before, it read write_index first.
#[test]
fn the_reader_reads_pending_send_size_before_the_write_index() {
    let flat = flat(16384);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mem = {
        let (seen, mut after_commit) = (seen.clone(), false);
        HookMem::new(flat.clone(), move |_, access| match access {
            Access::Stored(ControlWord::ReadIndex, _) => after_commit = true,
            Access::Loading(w @ (ControlWord::PendingSendSize | ControlWord::WriteIndex)) if after_commit => {
                seen.lock().unwrap().push(w)
            }
            _ => {}
        })
    };
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    let p = encode_inband(0, false, &[1; 4000]);
    for _ in 0..4 {
        out.write(&p).unwrap();
    }
    out.commit_write();
    out.set_pending_send_size(4024);
    inc.read().unwrap();
    // Only the commit's own loads (the set-up stored read_index too).
    seen.lock().unwrap().clear();
    assert!(inc.commit_read(), "the blocked writer is signalled");
    let order = seen.lock().unwrap().clone();
    assert_eq!(order, [ControlWord::PendingSendSize, ControlWord::WriteIndex], "{order:?}");
}

#[test]
fn reader_never_signals_without_the_feature_bit() {
    let mem = flat(16384);
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    mem.store(ControlWord::FeatureBits, 0, Ordering::SeqCst);
    assert!(!inc.supports_pending_send_size());
    let p = encode_inband(0, false, &[1; 4000]);
    for _ in 0..4 {
        out.write(&p).unwrap();
    }
    out.commit_write();
    out.set_pending_send_size(4024);
    inc.read().unwrap();
    assert!(!inc.commit_read());
}

/// The writer signals iff the reader is unmasked and the ring was empty before the batch.
#[test]
fn writer_signal_truth_table() {
    let mem = flat(4096);
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    let p = encode_inband(5, true, b"x");
    assert!(!out.commit_write(), "empty batch");

    inc.set_interrupt_mask(true);
    out.write(&p).unwrap();
    assert!(!out.commit_write(), "masked");
    // The reader drains, then unmasks: the data that raced in is reported, no signal needed.
    assert!(inc.unmask_and_check().unwrap());
    inc.read().unwrap();
    inc.commit_read();
    assert!(!inc.unmask_and_check().unwrap());

    // A batch of three into an empty ring: one signal.
    for _ in 0..3 {
        out.write(&p).unwrap();
    }
    assert!(out.commit_write());
    out.write(&p).unwrap();
    assert!(!out.commit_write(), "not empty before");
    for _ in 0..4 {
        inc.read().unwrap();
    }
    inc.commit_read();
    // Empty again: the next packet signals; reads not yet committed still count as unread.
    out.write(&p).unwrap();
    assert!(out.commit_write());
    inc.read().unwrap();
    out.write(&p).unwrap();
    assert!(!out.commit_write(), "read_index not yet published");
    inc.read().unwrap();
    inc.commit_read();

    // A batch begun on a non-empty ring signals if the reader emptied it meanwhile.
    out.write(&p).unwrap();
    out.commit_write();
    out.write(&p).unwrap();
    inc.read().unwrap();
    inc.commit_read();
    assert!(out.commit_write());
}

#[test]
fn revert_rereads_and_rewrites() {
    let (mut out, mut inc) = rings_at(flat(4096), 0);
    out.write(&encode_inband(1, false, b"dropped")).unwrap();
    out.revert();
    assert!(!out.has_uncommitted());
    let p = encode_inband(2, false, b"kept");
    out.write(&p).unwrap();
    out.commit_write();
    assert_eq!(inc.read().unwrap(), p);
    inc.revert();
    assert_eq!(inc.read().unwrap(), p);
    inc.commit_read();
    assert_eq!(inc.read(), Err(ReadError::Empty));
}

#[test]
fn connected_pair_and_eventfd_signals() {
    let pair = connected_pair(4096).unwrap();
    let (mut guest, mut host) = (end_of(&pair.guest), end_of(&pair.host));
    guest.send(&encode_inband(1, true, b"req")).unwrap();
    guest.send(&encode_inband(2, true, b"req")).unwrap();
    assert_eq!(pair.to_host.take().unwrap(), 1, "only the empty -> non-empty transition signals");
    assert_eq!(host.try_recv().unwrap(), encode_inband(1, true, b"req"));
    assert_eq!(host.try_recv().unwrap(), encode_inband(2, true, b"req"));
    assert_eq!(host.try_recv(), Err(ReadError::Empty));
    host.send(&encode_inband(1, false, b"resp")).unwrap();
    assert!(pair.guest.signal.wait(Some(std::time::Duration::ZERO)).unwrap(), "the guest was signalled");
    assert_eq!(guest.try_recv().unwrap(), encode_inband(1, false, b"resp"));
    assert_eq!(word(&pair.host.incoming, ControlWord::ReadIndex), 64);

    // A rescind ends both ends: signals and waits fail, the rings stay readable.
    host.send(&encode_inband(3, false, b"last")).unwrap();
    assert!(pair.end(ChannelStatus::Rescinded));
    assert!(!pair.end(ChannelStatus::Closed), "the first end wins");
    assert!(matches!(pair.guest.signal.signal_peer(), Err(ChannelEnded::Rescinded)));
    assert!(matches!(pair.guest.signal.wait(None), Err(ChannelEnded::Rescinded)));
    assert!(pair.host.signal.is_rescinded());
    assert_eq!(guest.incoming.read().unwrap(), encode_inband(3, false, b"last"));

    let e = EventFdSignal::new().unwrap();
    e.signal();
    fn fire(s: impl Signal) {
        s.signal()
    }
    fire(&e);
    assert_eq!(e.take().unwrap(), 2);
    assert_eq!(e.take().unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
}

/// A writer that was blocked and then simply writes (without asking `poll_ready` again)
/// withdraws its request, so later reads do not signal for it.
#[test]
fn write_withdraws_pending_request() {
    let mem = flat(16384);
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    let p = encode_inband(0, false, &[1; 4000]);
    for _ in 0..4 {
        out.write(&p).unwrap();
    }
    out.commit_write();
    assert!(!out.poll_ready(p.len()).unwrap());
    inc.read().unwrap();
    assert!(inc.commit_read(), "the request is answered");
    out.write(&p).unwrap();
    assert_eq!(word(&*mem, ControlWord::PendingSendSize), 0);
    out.commit_write();
    inc.read().unwrap();
    inc.read().unwrap();
    assert!(!inc.commit_read(), "no request outstanding");
}
