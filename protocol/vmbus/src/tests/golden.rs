//! `vmbus.md` §2.7: vectors A, B and W byte for byte, with indices and signal decisions.

use crate::packet::{Packet, encode_completion, encode_inband, parse_packet};

use super::*;

const TID: u64 = 0x1122_3344_5566_7788;

#[test]
fn vectors_a_and_b() {
    let mem = flat(4096);
    let (mut out, mut inc) = rings_at(mem.clone(), 0);
    assert_eq!(word(&*mem, ControlWord::FeatureBits), FEATURE_PENDING_SEND_SIZE);
    assert_eq!(word(&*mem, ControlWord::PendingSendSize), 0);

    out.write(&encode_inband(TID, true, b"hello")).unwrap();
    // Unpublished until the commit.
    assert_eq!(word(&*mem, ControlWord::WriteIndex), 0);
    assert!(out.commit_write(), "A: ring was empty and unmasked");
    assert_eq!(word(&*mem, ControlWord::WriteIndex), 32);
    assert_eq!(
        data(&*mem, 0, 32),
        hex("06 00 02 00 03 00 01 00 88 77 66 55 44 33 22 11 68 65 6c 6c 6f 00 00 00  00 00 00 00 00 00 00 00")
    );

    out.write(&encode_completion(TID, &[1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
    assert!(!out.commit_write(), "B: ring was not empty");
    assert_eq!(word(&*mem, ControlWord::WriteIndex), 64);
    assert_eq!(
        data(&*mem, 32, 32),
        hex("0b 00 02 00 03 00 00 00 88 77 66 55 44 33 22 11 01 02 03 04 05 06 07 08  00 00 00 00 20 00 00 00")
    );

    let a = inc.read_packet(0).unwrap();
    assert_eq!(a, Packet::InBand { transaction_id: TID, completion_requested: true, payload: b"hello\0\0\0".to_vec() });
    let b = inc.read_packet(0).unwrap();
    assert_eq!(b, Packet::Completion { transaction_id: TID, payload: vec![1, 2, 3, 4, 5, 6, 7, 8] });
    assert_eq!(inc.read(), Err(ReadError::Empty));
    assert_eq!(word(&*mem, ControlWord::ReadIndex), 0, "reads are private until committed");
    assert!(!inc.commit_read(), "writer asked for nothing");
    assert_eq!(word(&*mem, ControlWord::ReadIndex), 64);
}

#[test]
fn vector_w_wraps() {
    let mem = flat(4096);
    let (mut out, mut inc) = rings_at(mem.clone(), 4080);
    let packet = encode_inband(0, false, &[1, 2, 3, 4, 5, 6, 7, 8]);
    out.write(&packet).unwrap();
    assert!(out.commit_write());
    assert_eq!(data(&*mem, 4080, 16), hex("06 00 02 00 03 00 00 00 00 00 00 00 00 00 00 00"));
    assert_eq!(data(&*mem, 0, 16), hex("01 02 03 04 05 06 07 08 00 00 00 00 f0 0f 00 00"));
    assert_eq!(word(&*mem, ControlWord::WriteIndex), 16);

    assert_eq!(inc.read().unwrap(), packet);
    assert!(!inc.commit_read());
    assert_eq!(word(&*mem, ControlWord::ReadIndex), 16);
    assert_eq!(
        parse_packet(&packet, 0).unwrap(),
        Packet::InBand { transaction_id: 0, completion_requested: false, payload: vec![1, 2, 3, 4, 5, 6, 7, 8] }
    );
}
