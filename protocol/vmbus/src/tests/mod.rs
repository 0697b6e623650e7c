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

/// A channel end with its ring state: commits one packet at a time and signals the peer when
/// the rings say so (what a device or driver loop does, minus batching).
pub(super) struct End<M, S> {
    pub incoming: IncomingRing<M>,
    pub outgoing: OutgoingRing<M>,
    pub peer: S,
}

impl<M: RingMem, S: Signal> End<M, S> {
    pub(super) fn new(incoming: IncomingRing<M>, outgoing: OutgoingRing<M>, peer: S) -> Self {
        End { incoming, outgoing, peer }
    }

    pub(super) fn send(&mut self, packet: &[u8]) -> Result<(), WriteError> {
        self.outgoing.write(packet)?;
        if self.outgoing.commit_write() {
            self.peer.signal();
        }
        Ok(())
    }

    pub(super) fn try_recv(&mut self) -> Result<Vec<u8>, ReadError> {
        let packet = self.incoming.read()?;
        if self.incoming.commit_read() {
            self.peer.signal();
        }
        Ok(packet)
    }
}

/// A [`RawChannel`]'s signal as the ring code's [`Signal`].
pub(super) struct Peer(pub Arc<dyn ChannelSignal>);

impl Signal for Peer {
    fn signal(&self) {
        self.0.signal_peer().unwrap();
    }
}

/// An [`End`] over one end of a [`RawChannel`].
pub(super) fn end_of(ch: &RawChannel) -> End<Arc<dyn RingMem>, Peer> {
    End::new(
        IncomingRing::new(ch.incoming.clone()).unwrap(),
        OutgoingRing::new(ch.outgoing.clone()).unwrap(),
        Peer(ch.signal.clone()),
    )
}

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

/// An access to a [`HookMem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// After a control word was stored.
    Stored(ControlWord, u32),
    /// Before `len` data bytes are read at `off`.
    Reading { off: usize, len: usize },
    /// Before a control word is loaded.
    Loading(ControlWord),
}

type Hook = Box<dyn FnMut(&FlatRingMem, Access) + Send>;

/// A ring whose "peer" acts at precise moments: the hook runs on every access and may change
/// the ring underneath the end under test.
pub(super) struct HookMem {
    pub(super) inner: Arc<FlatRingMem>,
    hook: std::sync::Mutex<Hook>,
}

impl HookMem {
    pub(super) fn new(inner: Arc<FlatRingMem>, hook: impl FnMut(&FlatRingMem, Access) + Send + 'static) -> Arc<Self> {
        Arc::new(HookMem { inner, hook: std::sync::Mutex::new(Box::new(hook)) })
    }

    fn call(&self, a: Access) {
        (self.hook.lock().unwrap())(&self.inner, a)
    }
}

impl RingMem for HookMem {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        self.call(Access::Loading(word));
        self.inner.load(word, order)
    }
    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        self.inner.store(word, value, order);
        self.call(Access::Stored(word, value));
    }
    fn read_at(&self, off: usize, buf: &mut [u8]) {
        self.call(Access::Reading { off, len: buf.len() });
        self.inner.read_at(off, buf)
    }
    fn write_at(&self, off: usize, buf: &[u8]) {
        self.inner.write_at(off, buf)
    }
}
