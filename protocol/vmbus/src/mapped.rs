//! Rings inside a larger shared mapping: guest RAM for the host emulator, the uio `txrx_rings`
//! map for the guest driver (`../shared/notes/vmbus.md` §1.2, §3.3).
//!
//! [`SharedMemory`] is the small safe trait such a mapping implements; the `unsafe` of creating a
//! mapping and of accessing it through raw pointers belongs to the implementer (the uio guest
//! maps `/dev/uioN` itself). `vm_memory::GuestMemoryMmap` implements it here, addressed by
//! guest physical address.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::control::{CONTROL_PAGE_SIZE, ControlWord, LayoutError, RING_PAGE_SIZE};
use super::ring_mem::{RingMem, split_wrap};

/// Byte-addressable memory shared with the peer.
///
/// Contract for implementers: the access methods are only called on ranges inside one range
/// that [`contains`](SharedMemory::contains) accepted, and `load_u32`/`store_u32` only at
/// 4-aligned offsets (within a 4096-aligned ring). Accesses must be atomic (the words) or
/// volatile (the bytes): the peer changes the memory concurrently.
pub trait SharedMemory: Send + Sync {
    /// Whether `[off, off + len)` is accessible.
    fn contains(&self, off: u64, len: u64) -> bool;
    /// Atomically loads the little-endian `u32` at `off`.
    fn load_u32(&self, off: u64, order: Ordering) -> u32;
    /// Atomically stores a little-endian `u32` at `off`.
    fn store_u32(&self, off: u64, value: u32, order: Ordering);
    /// Copies bytes out of the shared memory.
    fn read(&self, off: u64, buf: &mut [u8]);
    /// Copies bytes into the shared memory.
    fn write(&self, off: u64, buf: &[u8]);
}

impl<T: SharedMemory + ?Sized> SharedMemory for Arc<T> {
    fn contains(&self, off: u64, len: u64) -> bool {
        (**self).contains(off, len)
    }
    fn load_u32(&self, off: u64, order: Ordering) -> u32 {
        (**self).load_u32(off, order)
    }
    fn store_u32(&self, off: u64, value: u32, order: Ordering) {
        (**self).store_u32(off, value, order)
    }
    fn read(&self, off: u64, buf: &mut [u8]) {
        (**self).read(off, buf)
    }
    fn write(&self, off: u64, buf: &[u8]) {
        (**self).write(off, buf)
    }
}

/// Guest RAM, addressed by guest physical address. The ranges were checked by
/// [`MappedRingMem::new`] and guest RAM never shrinks, so the accesses cannot fail.
impl SharedMemory for GuestMemoryMmap {
    fn contains(&self, off: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|len| GuestMemoryBackend::check_range(self, GuestAddress(off), len))
    }
    fn load_u32(&self, off: u64, order: Ordering) -> u32 {
        self.load(GuestAddress(off), order).expect("ring control word inside checked guest RAM")
    }
    fn store_u32(&self, off: u64, value: u32, order: Ordering) {
        self.store(value, GuestAddress(off), order).expect("ring control word inside checked guest RAM")
    }
    fn read(&self, off: u64, buf: &mut [u8]) {
        self.read_slice(buf, GuestAddress(off)).expect("ring data inside checked guest RAM")
    }
    fn write(&self, off: u64, buf: &[u8]) {
        self.write_slice(buf, GuestAddress(off)).expect("ring data inside checked guest RAM")
    }
}

/// One ring (control page + data area) at `base` in a [`SharedMemory`].
#[derive(Clone)]
pub struct MappedRingMem<S> {
    mem: S,
    base: u64,
    dsize: usize,
}

impl<S: SharedMemory> MappedRingMem<S> {
    /// The ring of `ring_size` bytes (control page included) at `base`, which must be
    /// 4096-aligned; `ring_size` must be a multiple of 4096 of at least 8192.
    pub fn new(mem: S, base: u64, ring_size: usize) -> Result<Self, LayoutError> {
        if ring_size < CONTROL_PAGE_SIZE + RING_PAGE_SIZE
            || !ring_size.is_multiple_of(RING_PAGE_SIZE)
            || u32::try_from(ring_size - CONTROL_PAGE_SIZE).is_err()
        {
            return Err(LayoutError::RingSize(ring_size));
        }
        if !base.is_multiple_of(RING_PAGE_SIZE as u64) {
            return Err(LayoutError::Misaligned(base));
        }
        if base.checked_add(ring_size as u64).is_none() || !mem.contains(base, ring_size as u64) {
            return Err(LayoutError::OutOfBounds { base, size: ring_size });
        }
        Ok(MappedRingMem { mem, base, dsize: ring_size - CONTROL_PAGE_SIZE })
    }

    /// Where the ring's control page starts.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn data(&self, off: usize) -> u64 {
        self.base + (CONTROL_PAGE_SIZE + off) as u64
    }
}

impl<S> fmt::Debug for MappedRingMem<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedRingMem")
            .field("base", &self.base)
            .field("data_size", &self.dsize)
            .finish_non_exhaustive()
    }
}

impl<S: SharedMemory> RingMem for MappedRingMem<S> {
    fn len(&self) -> usize {
        self.dsize
    }

    fn load(&self, word: ControlWord, order: Ordering) -> u32 {
        self.mem.load_u32(self.base + word.offset() as u64, order)
    }

    fn store(&self, word: ControlWord, value: u32, order: Ordering) {
        self.mem.store_u32(self.base + word.offset() as u64, value, order)
    }

    fn read_at(&self, off: usize, buf: &mut [u8]) {
        let (first, _) = split_wrap(off, buf.len(), self.dsize);
        let (head, tail) = buf.split_at_mut(first);
        self.mem.read(self.data(off), head);
        if !tail.is_empty() {
            self.mem.read(self.data(0), tail);
        }
    }

    fn write_at(&self, off: usize, buf: &[u8]) {
        let (first, _) = split_wrap(off, buf.len(), self.dsize);
        let (head, tail) = buf.split_at(first);
        self.mem.write(self.data(off), head);
        if !tail.is_empty() {
            self.mem.write(self.data(0), tail);
        }
    }
}

/// The two rings of a channel as one allocation lays them out (Linux `vmbus_alloc_ring`, uio
/// map 0 `txrx_rings`): the guest→host ring first, the host→guest ring right after it.
#[derive(Debug, Clone)]
pub struct ChannelRings<S> {
    /// The guest's outgoing ring, the host's incoming ring (at `base`).
    pub guest_to_host: MappedRingMem<S>,
    /// The host's outgoing ring, the guest's incoming ring (at `base + send_ring_size`).
    pub host_to_guest: MappedRingMem<S>,
}

impl<S: SharedMemory + Clone> ChannelRings<S> {
    /// Both rings of an allocation at `base`. With uio_hv_generic both have the same size:
    /// pass `map0_size / 2` twice (never hard-code it, `vmbus.md` §3.7).
    pub fn new(mem: S, base: u64, send_ring_size: usize, recv_ring_size: usize) -> Result<Self, LayoutError> {
        let guest_to_host = MappedRingMem::new(mem.clone(), base, send_ring_size)?;
        let recv_base =
            base.checked_add(send_ring_size as u64).ok_or(LayoutError::OutOfBounds { base, size: send_ring_size })?;
        let host_to_guest = MappedRingMem::new(mem, recv_base, recv_ring_size)?;
        Ok(ChannelRings { guest_to_host, host_to_guest })
    }
}
