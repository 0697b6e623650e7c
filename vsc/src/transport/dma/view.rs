//! Reading a completed buffer in place: a `&[u8]` over its guest memory,
//! and [`DmaBytes`], an owned, read-only lease of it (`bytes::Bytes` can own
//! one), so a GET's bytes reach the caller without a copy.
//!
//! Why a plain slice is sound here (the one `unsafe` block below):
//! - the mapping outlives the slice: the buffer holds its pool, which holds
//!   the `GuestMemoryMmap` whose regions own the mapping;
//! - no one in this process writes those pages while the slice lives:
//!   writing through the buffer takes `&mut DmaBuf`, and other buffers,
//!   the rings and the request headers lie in pages of their own;
//! - the device no longer writes them: the client only ever holds a data
//!   buffer before submitting it or after the device completed its
//!   request. A request failed without its completion (rescind, reset,
//!   timeout) keeps its buffers in the request table's quarantine until the
//!   device that had them is gone (`transport::table`), so they are never
//!   handed out or reused while it might still write.
//!
//! A device that writes a buffer after completing it breaks the protocol;
//! it is the hypervisor's agent and can write any guest page, not only
//! this one, so trusting it here assumes nothing the guest does not
//! already have to.
#![allow(unsafe_code)]

use std::ops::Deref;
use std::sync::atomic::Ordering;

use vm_memory::GuestMemoryBackend;

use super::{DmaBuf, DmaError};

impl DmaBuf {
    /// Pool bytes the buffer takes: its whole pages.
    fn footprint(&self) -> u64 {
        self.pages * super::PAGE_SIZE
    }

    /// The buffer's bytes in place, or None if they do not lie in one
    /// mapping (a pool spanning two memory regions); read them with
    /// [`DmaBuf::read_at`] then.
    pub fn as_slice(&self) -> Option<&[u8]> {
        let vs = self.pool.mem.get_slice(self.gpa, self.len).ok()?;
        let guard = vs.ptr_guard();
        // SAFETY: `get_slice` checked that `[gpa, gpa + len)` lies in one
        // mapped region, so the pointer is valid for `len` bytes; the region
        // stays mapped while `self.pool` holds the memory, which outlives the
        // borrow of `self`; and nothing writes these pages while it lasts
        // (module comment: `&mut self` for our writes, completion or
        // quarantine for the device's).
        Some(unsafe { std::slice::from_raw_parts(guard.as_ptr(), vs.len()) })
    }
}

/// The first `len` bytes of a completed data buffer, read in place; its
/// pages go back to the pool when it is dropped. (A buffer that does not lie
/// in one mapping, which no pool this crate builds has, is copied once.)
#[derive(Debug)]
pub struct DmaBytes {
    held: Held,
    len: usize,
}

#[derive(Debug)]
enum Held {
    InPlace {
        buf: DmaBuf,
        /// Counted in the pool's `lent` bytes (see [`DmaBytes::into_bytes`]).
        lent: bool,
    },
    Copied(Vec<u8>),
}

impl DmaBytes {
    /// `buf[..len]`; fails only if `len` is past the buffer's end.
    pub fn new(buf: DmaBuf, len: usize) -> Result<Self, DmaError> {
        if len > buf.len() {
            return Err(DmaError::OutOfBounds { offset: 0, len, buf_len: buf.len() });
        }
        if buf.as_slice().is_some() {
            return Ok(Self { held: Held::InPlace { buf, lent: false }, len });
        }
        let mut copy = vec![0; len];
        buf.read_at(0, &mut copy)?;
        Ok(Self { held: Held::Copied(copy), len })
    }

    /// No bytes (a GET of nothing has no buffer).
    pub fn empty() -> Self {
        Self { held: Held::Copied(Vec::new()), len: 0 }
    }

    /// Whether the bytes are still in the DMA buffer (not copied).
    pub fn is_in_place(&self) -> bool {
        matches!(self.held, Held::InPlace { .. })
    }

    /// As `bytes::Bytes` that own this buffer, while the pool has room for
    /// them: such buffers may be kept for as long as the caller likes
    /// (an `object_store` consumer collecting chunks), so at most a quarter
    /// of the pool (counted in whole buffers, not in the bytes they hold) is
    /// lent out this way, and past that the bytes are copied, leaving the pool
    /// to the requests in flight. A short answer in a large buffer (less than
    /// half of it used) is copied too: lending it would pin far more of the
    /// pool than it returns.
    pub fn into_bytes(mut self) -> bytes::Bytes {
        let len = self.len as u64;
        match &mut self.held {
            Held::Copied(copy) => bytes::Bytes::from(std::mem::take(copy)),
            Held::InPlace { buf, lent } => {
                let footprint = buf.footprint();
                let pool = &buf.pool;
                let cap = pool.pages * super::PAGE_SIZE / 4;
                let room = |held: u64| (held + footprint <= cap).then_some(held + footprint);
                *lent =
                    len * 2 >= footprint && pool.lent.fetch_update(Ordering::AcqRel, Ordering::Acquire, room).is_ok();
                if *lent { bytes::Bytes::from_owner(self) } else { bytes::Bytes::copy_from_slice(&self) }
            }
        }
    }
}

impl Drop for DmaBytes {
    fn drop(&mut self) {
        if let Held::InPlace { buf, lent: true } = &self.held {
            buf.pool.lent.fetch_sub(buf.footprint(), Ordering::AcqRel);
        }
    }
}

impl Deref for DmaBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.held {
            // `new` saw the buffer in one mapping, and a pool's mapping never changes.
            Held::InPlace { buf, .. } => buf.as_slice().map_or(&[], |s| &s[..self.len]),
            Held::Copied(copy) => copy,
        }
    }
}

impl AsRef<[u8]> for DmaBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
