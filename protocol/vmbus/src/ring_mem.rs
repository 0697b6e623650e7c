//! Where a ring's bytes live: the [`RingMem`] trait and a heap implementation.
//!
//! The ring code only ever touches memory through this trait, so it works the same over a test
//! buffer, guest RAM of the host emulator, or the uio mapping of the guest driver.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use super::control::{ControlWord, LayoutError, RING_PAGE_SIZE};

/// One ring's memory: the control page as atomic words, and the data area.
///
/// Contract for implementers: `len()` is constant; `read_at`/`write_at` are only called with
/// `off < len()` and `buf.len() <= len()`, and wrap once at the end of the data area (bytes past
/// `len() - off` continue at offset 0). Data bytes need no particular ordering of their own:
/// the ring code orders them with fences and Acquire/Release index accesses, so implementations
/// must use atomic or volatile accesses that the compiler cannot elide or tear into a data race.
#[allow(clippy::len_without_is_empty)] // a ring's data area is never empty
pub trait RingMem: Send + Sync {
    /// Size of the data area in bytes (a multiple of 4096; the control page is not counted).
    fn len(&self) -> usize;
    /// Loads a control word.
    fn load(&self, word: ControlWord, order: Ordering) -> u32;
    /// Stores a control word.
    fn store(&self, word: ControlWord, value: u32, order: Ordering);
    /// Copies `buf.len()` bytes from data offset `off`, wrapping once.
    fn read_at(&self, off: usize, buf: &mut [u8]);
    /// Copies `buf` to data offset `off`, wrapping once.
    fn write_at(&self, off: usize, buf: &[u8]);
}

impl<T: RingMem + ?Sized> RingMem for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        (**self).load(word, order)
    }
    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        (**self).store(word, value, order)
    }
    fn read_at(&self, off: usize, buf: &mut [u8]) {
        (**self).read_at(off, buf)
    }
    fn write_at(&self, off: usize, buf: &[u8]) {
        (**self).write_at(off, buf)
    }
}

impl<T: RingMem + ?Sized> RingMem for Arc<T> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        (**self).load(word, order)
    }
    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        (**self).store(word, value, order)
    }
    fn read_at(&self, off: usize, buf: &mut [u8]) {
        (**self).read_at(off, buf)
    }
    fn write_at(&self, off: usize, buf: &[u8]) {
        (**self).write_at(off, buf)
    }
}

/// Splits a wrapping access of `len` bytes at `off` into the part before the end of a
/// `dsize`-byte data area and the part that continues at 0.
pub(crate) fn split_wrap(off: usize, len: usize, dsize: usize) -> (usize, usize) {
    let first = len.min(dsize - off);
    (first, len - first)
}

/// A ring on the heap: for tests, and for an emulator whose peer is in the same process.
/// Share it between the two ends with `Arc`.
pub struct FlatRingMem {
    /// The first 32 words of the control page (the rest is reserved).
    control: [AtomicU32; 32],
    data: Box<[AtomicU8]>,
}

impl FlatRingMem {
    /// A zeroed ring (indices 0, no features, unmasked) with `data_size` bytes of data area.
    pub fn new(data_size: usize) -> Result<Self, LayoutError> {
        if data_size == 0 || !data_size.is_multiple_of(RING_PAGE_SIZE) || u32::try_from(data_size).is_err() {
            return Err(LayoutError::DataSize(data_size));
        }
        Ok(FlatRingMem {
            control: std::array::from_fn(|_| AtomicU32::new(0)),
            data: (0..data_size).map(|_| AtomicU8::new(0)).collect(),
        })
    }
}

impl fmt::Debug for FlatRingMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlatRingMem").field("data_size", &self.data.len()).finish_non_exhaustive()
    }
}

impl RingMem for FlatRingMem {
    fn len(&self) -> usize {
        self.data.len()
    }

    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        self.control[word.offset() / 4].load(order)
    }

    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        self.control[word.offset() / 4].store(value, order)
    }

    fn read_at(&self, off: usize, buf: &mut [u8]) {
        let (first, _) = split_wrap(off, buf.len(), self.data.len());
        let (head, tail) = buf.split_at_mut(first);
        for (b, a) in head.iter_mut().zip(&self.data[off..]) {
            *b = a.load(Ordering::Relaxed);
        }
        for (b, a) in tail.iter_mut().zip(self.data.iter()) {
            *b = a.load(Ordering::Relaxed);
        }
    }

    fn write_at(&self, off: usize, buf: &[u8]) {
        let (first, _) = split_wrap(off, buf.len(), self.data.len());
        let (head, tail) = buf.split_at(first);
        for (b, a) in head.iter().zip(&self.data[off..]) {
            a.store(*b, Ordering::Relaxed);
        }
        for (b, a) in tail.iter().zip(self.data.iter()) {
            a.store(*b, Ordering::Relaxed);
        }
    }
}
