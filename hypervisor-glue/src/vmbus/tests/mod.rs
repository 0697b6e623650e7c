//! Ring tests: golden bytes, wrap-around, space and signalling rules, hostile peers, a
//! concurrent writer and reader, and rings inside guest memory.

mod concurrent;
mod golden;
mod hostile;
mod mapped;
mod space;
mod wrap;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;

/// A small deterministic PRNG (splitmix64).
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n`.
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub(super) fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

pub(super) fn flat(dsize: usize) -> Arc<FlatRingMem> {
    Arc::new(FlatRingMem::new(dsize).unwrap())
}

/// Both indices at `at` (as after earlier traffic), then a writer and a reader on the ring.
pub(super) fn rings_at<M: RingMem + Clone>(mem: M, at: u32) -> (OutgoingRing<M>, IncomingRing<M>) {
    mem.store(ControlWord::WriteIndex, at, Ordering::SeqCst);
    mem.store(ControlWord::ReadIndex, at, Ordering::SeqCst);
    (OutgoingRing::new(mem.clone()).unwrap(), IncomingRing::new(mem).unwrap())
}

/// `len` data-area bytes at `off`, wrapping.
pub(super) fn data(mem: &impl RingMem, off: usize, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    mem.read_at(off, &mut b);
    b
}

pub(super) fn word(mem: &impl RingMem, w: ControlWord) -> u32 {
    mem.load(w, Ordering::SeqCst)
}

/// What a hostile writer does: raw `bytes` and a trailer at `write_index`, then publishes.
pub(super) fn inject(mem: &impl RingMem, bytes: &[u8]) {
    let at = word(mem, ControlWord::WriteIndex) as usize;
    mem.write_at(at, bytes);
    let end = (at + bytes.len()) % mem.len();
    mem.write_at(end, &((at as u64) << 32).to_le_bytes());
    mem.store(ControlWord::WriteIndex, ((end + 8) % mem.len()) as u32, Ordering::SeqCst);
}
