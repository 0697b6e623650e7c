//! A hostile peer: every malformed index or packet is a clean `Corrupt` error, leaves the ring
//! as it was, and never panics.

use crate::packet::{GpaRange, Packet, PacketError, encode_gpa_direct, encode_inband};

use super::*;

fn corrupt(e: CorruptError) -> Result<Vec<u8>, ReadError> {
    Err(ReadError::Corrupt(e))
}

/// Injects `bytes` into a fresh 4096-byte ring whose indices start at `at`; returns the reader.
fn hostile_ring(at: u32, bytes: &[u8]) -> (Arc<FlatRingMem>, IncomingRing<Arc<FlatRingMem>>) {
    let mem = flat(4096);
    let (_, inc) = rings_at(mem.clone(), at);
    inject(&*mem, bytes);
    (mem, inc)
}

/// Reading fails with `want` twice in a row and publishes nothing.
fn assert_stuck(mem: &FlatRingMem, inc: &mut IncomingRing<Arc<FlatRingMem>>, want: CorruptError) {
    let read_index = word(mem, ControlWord::ReadIndex);
    assert_eq!(inc.read(), corrupt(want.clone()));
    assert_eq!(inc.read(), corrupt(want));
    assert!(!inc.commit_read());
    assert_eq!(word(mem, ControlWord::ReadIndex), read_index);
}

fn patched(mut p: Vec<u8>, off: usize, v: &[u8]) -> Vec<u8> {
    p[off..off + v.len()].copy_from_slice(v);
    p
}

#[test]
fn bad_write_index() {
    for bad in [4096, 4104, u32::MAX, 12, 4095] {
        let mem = flat(4096);
        let (_, mut inc) = rings_at(mem.clone(), 0);
        mem.store(ControlWord::WriteIndex, bad, Ordering::SeqCst);
        let want = CorruptError::BadIndex { word: ControlWord::WriteIndex, value: bad };
        assert_stuck(&mem, &mut inc, want.clone());
        assert_eq!(inc.can_read(), Err(want.clone()));
        assert_eq!(inc.unmask_and_check(), Err(want.clone()));
        // A writer attaching to such a ring refuses too.
        assert_eq!(OutgoingRing::new(mem.clone()).unwrap_err(), RingError::Corrupt(want));
    }
}

#[test]
fn bad_read_index() {
    for bad in [4096, 8192, 4, 4097] {
        let mem = flat(4096);
        let (mut out, _) = rings_at(mem.clone(), 0);
        mem.store(ControlWord::ReadIndex, bad, Ordering::SeqCst);
        let want = CorruptError::BadIndex { word: ControlWord::ReadIndex, value: bad };
        assert_eq!(out.write(&encode_inband(1, false, b"x")), Err(WriteError::Corrupt(want.clone())));
        assert_eq!(out.poll_ready(8), Err(WriteError::Corrupt(want.clone())));
        assert!(!out.commit_write());
        assert!(!out.has_uncommitted());
        assert_eq!(word(&*mem, ControlWord::WriteIndex), 0);
        assert_eq!(IncomingRing::new(mem.clone()).unwrap_err(), RingError::Corrupt(want));
    }
}

#[test]
fn bad_sizes_are_refused() {
    assert_eq!(FlatRingMem::new(0).unwrap_err(), LayoutError::DataSize(0));
    assert_eq!(FlatRingMem::new(4000).unwrap_err(), LayoutError::DataSize(4000));
}

#[test]
fn too_little_for_a_descriptor() {
    let mem = flat(4096);
    let (_, mut inc) = rings_at(mem.clone(), 4088);
    mem.store(ControlWord::WriteIndex, 8, Ordering::SeqCst); // 16 bytes: no room for a trailer
    assert_stuck(&mem, &mut inc, CorruptError::Truncated { available: 16 });
}

#[test]
fn bad_descriptor_lengths() {
    let good = encode_inband(1, false, b"payload!"); // offset8 2, len8 3
    let cases = [
        (patched(good.clone(), 2, &[1, 0]), CorruptError::BadLengths { offset8: 1, len8: 3 }),
        (patched(good.clone(), 2, &[0, 0]), CorruptError::BadLengths { offset8: 0, len8: 3 }),
        (patched(good.clone(), 4, &[1, 0]), CorruptError::BadLengths { offset8: 2, len8: 1 }),
        (patched(good.clone(), 4, &[4, 0]), CorruptError::Overrun { len: 32, available: 32 }),
        (patched(good.clone(), 4, &[0xff, 0xff]), CorruptError::Overrun { len: 0xffff * 8, available: 32 }),
        (patched(good.clone(), 6, &[2, 0]), CorruptError::BadFlags(2)),
        (patched(good.clone(), 6, &[1, 0x80]), CorruptError::BadFlags(0x8001)),
        (patched(good.clone(), 0, &[5, 0]), CorruptError::BadType(5)),
        (patched(good.clone(), 0, &[0, 0]), CorruptError::BadType(0)),
        (patched(good.clone(), 0, &[6, 1]), CorruptError::BadType(0x106)),
    ];
    for at in [0, 4088, 4080, 4072] {
        for (bytes, want) in &cases {
            let (mem, mut inc) = hostile_ring(at, bytes);
            assert_stuck(&mem, &mut inc, want.clone());
        }
    }
}

/// Descriptor-valid packets that the protocol parser refuses stay unread.
#[test]
fn packets_the_protocol_refuses() {
    let range = GpaRange { byte_count: 10, byte_offset: 0, pfns: vec![1] };
    let good = encode_gpa_direct(7, &[range], &[0; 8]);
    let cases = [
        (patched(good.clone(), 20, &[0, 0, 0, 0]), PacketError::BadRangeCount(0)),
        (patched(good.clone(), 28, &[0, 0x10, 0, 0]), PacketError::BadByteOffset(0x1000)),
        (patched(good.clone(), 24, &[0, 0, 0, 0]), PacketError::EmptyRange),
        (patched(good.clone(), 0, &[7, 0]), PacketError::BadType(7)),
    ];
    for (bytes, want) in cases {
        let (mem, mut inc) = hostile_ring(4072, &bytes);
        for _ in 0..2 {
            assert_eq!(inc.read_packet(8), Err(ReadError::Corrupt(CorruptError::Packet(want.clone()))));
        }
        assert!(!inc.commit_read());
        assert_eq!(word(&*mem, ControlWord::ReadIndex), 4072);
        // The raw bytes are still there to read (and to log).
        assert_eq!(inc.read().unwrap(), bytes);
    }
    let (_, mut inc) = hostile_ring(0, &good);
    assert!(matches!(inc.read_packet(8), Ok(Packet::GpaDirect { transaction_id: 7, .. })));
    assert_eq!(inc.read_packet(8), Err(ReadError::Empty));
}

/// The copy is the packet: later changes to the ring do not reach it.
#[test]
fn peer_mutates_after_the_copy() {
    let mem = flat(4096);
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    let p = encode_inband(3, true, b"original");
    out.write(&p).unwrap();
    out.commit_write();
    let copy = inc.read().unwrap();
    mem.write_at(0, &[0xff; 32]);
    assert_eq!(copy, p);
    assert_eq!(
        crate::packet::parse_packet(&copy, 0).unwrap(),
        Packet::InBand { transaction_id: 3, completion_requested: true, payload: b"original".to_vec() }
    );
}

/// The peer rewrites the descriptor between its validation and the copy of the body: the packet
/// keeps the validated descriptor and length, and nothing is read out of bounds.
#[test]
fn peer_mutates_between_check_and_copy() {
    let flat = flat(4096);
    let mem = HookMem::new(flat.clone(), move |ring, access| {
        if let Access::Reading { off: 16, .. } = access {
            // len8 = 0xffff, flags and type garbage, payload changed.
            ring.write_at(0, &[0xee; 16]);
            ring.write_at(16, b"MUTATED!");
        }
    });
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    let p = encode_inband(3, false, b"original");
    out.write(&p).unwrap();
    out.commit_write();
    let got = inc.read().unwrap();
    assert_eq!(got[..16], p[..16], "the validated descriptor");
    assert_eq!(got.len(), p.len());
    assert_eq!(&got[16..], b"MUTATED!", "the body is whatever was there at copy time");
    assert_eq!(inc.read(), Err(ReadError::Empty));
    inc.commit_read();
    assert_eq!(word(&*flat, ControlWord::ReadIndex), 32);
}

/// Random garbage in the data area and random indices: errors, never a panic.
#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng::new(7);
    for _ in 0..2000 {
        let mem = flat(4096);
        mem.write_at(0, &rng.bytes(4096));
        let r = (rng.below(512) * 8) as u32;
        let (_, mut inc) = rings_at(mem.clone(), r);
        let w = if rng.below(4) == 0 { rng.next() as u32 } else { (rng.below(512) * 8) as u32 };
        mem.store(ControlWord::WriteIndex, w, Ordering::SeqCst);
        mem.store(ControlWord::PendingSendSize, rng.next() as u32, Ordering::SeqCst);
        mem.store(ControlWord::FeatureBits, 1, Ordering::SeqCst);
        for _ in 0..8 {
            match inc.read_packet(64) {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        inc.commit_read();
    }
}
