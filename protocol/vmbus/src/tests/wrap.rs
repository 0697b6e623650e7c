//! Wrap-around at every offset class.

use crate::packet::{GpaRange, encode_completion, encode_gpa_direct, encode_inband};

use super::*;

/// A random valid packet of at most `max` bytes.
fn random_packet(rng: &mut Rng, max: usize) -> Vec<u8> {
    let payload_max = max - 16;
    let (tid, kind) = (rng.next(), rng.below(3));
    match kind {
        0 => {
            let n = rng.below(payload_max + 1);
            encode_inband(tid, rng.below(2) == 0, &rng.bytes(n))
        }
        1 => {
            let n = rng.below(payload_max + 1);
            encode_completion(tid, &rng.bytes(n))
        }
        _ => {
            let range = GpaRange { byte_count: 4096, byte_offset: 0, pfns: vec![rng.next() >> 20] };
            // 16 + 8 + 16 bytes of headers.
            let n = rng.below(payload_max - 24 + 1);
            encode_gpa_direct(tid, &[range], &rng.bytes(n))
        }
    }
}

/// For every 8-aligned start offset of a 4096-byte ring: random packets that together fill up
/// to the never-full limit, written in one batch, read back and checked, trailers included.
#[test]
fn every_start_offset_round_trips() {
    let dsize = 4096;
    let mut rng = Rng::new(1);
    for start in (0..dsize).step_by(8) {
        let mem = flat(dsize);
        let (mut out, mut inc) = rings_at(mem.clone(), start as u32);
        let mut sent = Vec::new();
        let mut at = start;
        loop {
            let p = random_packet(&mut rng, 700);
            match out.write(&p) {
                Ok(()) => {
                    let trailer = data(&*mem, (at + p.len()) % dsize, 8);
                    assert_eq!(trailer, ((at as u64) << 32).to_le_bytes(), "trailer at start {start}");
                    assert_eq!(data(&*mem, at, p.len()), p);
                    at = (at + p.len() + 8) % dsize;
                    sent.push(p);
                }
                Err(WriteError::Full { needed }) => {
                    assert!(needed > out.free_space().unwrap());
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(out.commit_write());
        assert_eq!(word(&*mem, ControlWord::WriteIndex) as usize, at);
        for p in &sent {
            assert_eq!(&inc.read().unwrap(), p, "start {start}");
        }
        assert_eq!(inc.read(), Err(ReadError::Empty));
        inc.commit_read();
        assert_eq!(word(&*mem, ControlWord::ReadIndex) as usize, at);
    }
}

/// A packet at `dsize - 8`: half the descriptor at the end, half at 0.
#[test]
fn descriptor_straddles_the_end() {
    let mem = flat(4096);
    let (mut out, mut inc) = rings_at(mem.clone(), 4088);
    let p = encode_inband(0xabcd, true, b"straddle");
    out.write(&p).unwrap();
    out.commit_write();
    assert_eq!(data(&*mem, 4088, 8), p[..8]);
    assert_eq!(p.len(), 24);
    assert_eq!(data(&*mem, 0, 16), p[8..]);
    assert_eq!(data(&*mem, 16, 8), (4088u64 << 32).to_le_bytes());
    assert_eq!(word(&*mem, ControlWord::WriteIndex), 24);
    assert_eq!(inc.read().unwrap(), p);
}

/// Descriptor whole at the end, payload split across it, trailer at the start.
#[test]
fn payload_straddles_the_end() {
    let mem = flat(4096);
    let (mut out, mut inc) = rings_at(mem.clone(), 4096 - 32);
    let payload: Vec<u8> = (0..40).collect();
    let p = encode_inband(9, false, &payload);
    out.write(&p).unwrap();
    out.commit_write();
    assert_eq!(data(&*mem, 4064, 32), p[..32]);
    assert_eq!(data(&*mem, 0, 24), p[32..]);
    assert_eq!(data(&*mem, 24, 8), (4064u64 << 32).to_le_bytes());
    assert_eq!(inc.read().unwrap(), p);
    inc.commit_read();
    assert_eq!(word(&*mem, ControlWord::ReadIndex), 32);
}

/// Packet and trailer end exactly at the end: the index wraps to 0 and the next packet starts
/// there; also a trailer that is alone at the start.
#[test]
fn wrap_lands_exactly_at_zero() {
    let mem = flat(4096);
    let (mut out, mut inc) = rings_at(mem.clone(), 4096 - 48);
    let p = encode_inband(1, false, &[7; 24]); // 40 bytes + 8 trailer = 48
    out.write(&p).unwrap();
    assert!(out.commit_write());
    assert_eq!(word(&*mem, ControlWord::WriteIndex), 0);
    let q = encode_completion(2, &[8; 8]);
    out.write(&q).unwrap();
    assert!(!out.commit_write());
    assert_eq!(data(&*mem, 0, 24), q);
    assert_eq!(data(&*mem, 24, 8), 0u64.to_le_bytes());
    assert_eq!(inc.read().unwrap(), p);
    assert_eq!(inc.read().unwrap(), q);

    // Trailer alone at offset 0.
    let (mut out, mut inc) = rings_at(flat(4096), 4096 - 40);
    let r = encode_inband(3, false, &[9; 24]);
    out.write(&r).unwrap();
    out.commit_write();
    assert_eq!(data(out.memory(), 0, 8), ((4096u64 - 40) << 32).to_le_bytes());
    assert_eq!(out.committed_index(), 8);
    assert_eq!(inc.read().unwrap(), r);
}
