//! A pool of guest-physical buffers the client hands to the device.
//!
//! [`DmaPool`] manages `[base, base + len)` of guest memory in 4 KiB pages
//! with a first-fit allocator over free extents that coalesces on free.
//! [`DmaBuf`] is an RAII lease: dropping it returns its pages, so a request
//! keeps its buffer alive simply by owning it until the device completes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile, WriteVolatile};

/// Allocation granule.
pub const PAGE_SIZE: u64 = 4096;

/// Chunk size of the bounce buffer used by the `std::io` helpers.
const BOUNCE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("pool base {:#x} is not 4 KiB aligned", .0.0)]
    Misaligned(GuestAddress),
    #[error("pool length {0:#x} is zero or not a multiple of 4 KiB")]
    BadLength(u64),
    #[error("pool [{:#x}, +{len:#x}) is not inside guest memory", base.0)]
    OutsideMemory { base: GuestAddress, len: u64 },
    #[error("access [{offset}, +{len}) is outside the {buf_len}-byte buffer")]
    OutOfBounds { offset: usize, len: usize, buf_len: usize },
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Free extents: start page -> page count, never adjacent (always coalesced).
#[derive(Debug)]
struct FreeMap {
    extents: BTreeMap<u64, u64>,
    free_pages: u64,
}

impl FreeMap {
    /// First fit: the lowest-addressed extent with room; returns its start page.
    fn take(&mut self, pages: u64) -> Option<u64> {
        let (&start, &count) = self.extents.iter().find(|&(_, &count)| count >= pages)?;
        self.extents.remove(&start);
        if count > pages {
            self.extents.insert(start + pages, count - pages);
        }
        self.free_pages -= pages;
        Some(start)
    }

    fn give_back(&mut self, mut start: u64, mut pages: u64) {
        self.free_pages += pages;
        if let Some((&prev, &prev_count)) = self.extents.range(..start).next_back()
            && prev + prev_count == start
        {
            self.extents.remove(&prev);
            start = prev;
            pages += prev_count;
        }
        if let Some(next_count) = self.extents.remove(&(start + pages)) {
            pages += next_count;
        }
        self.extents.insert(start, pages);
    }
}

#[derive(Debug)]
struct PoolInner {
    mem: GuestMemoryMmap,
    base: GuestAddress,
    pages: u64,
    free: Mutex<FreeMap>,
    freed: Condvar,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, FreeMap> {
        // The map is updated only by non-panicking code, so a poisoned lock still holds a valid map.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Thread-safe pool of guest-physical buffers; cloning shares the pool.
#[derive(Debug, Clone)]
pub struct DmaPool {
    inner: Arc<PoolInner>,
}

impl DmaPool {
    /// Manage `[base, base + len)` of `mem`; `base` and `len` must be 4 KiB
    /// multiples and the range must lie inside guest memory.
    pub fn new(mem: GuestMemoryMmap, base: GuestAddress, len: u64) -> Result<Self, DmaError> {
        if base.0 % PAGE_SIZE != 0 {
            return Err(DmaError::Misaligned(base));
        }
        if len == 0 || len % PAGE_SIZE != 0 {
            return Err(DmaError::BadLength(len));
        }
        let in_memory =
            base.0.checked_add(len).is_some() && usize::try_from(len).is_ok_and(|l| mem.check_range(base, l));
        if !in_memory {
            return Err(DmaError::OutsideMemory { base, len });
        }
        let pages = len / PAGE_SIZE;
        let free = FreeMap { extents: BTreeMap::from([(0, pages)]), free_pages: pages };
        Ok(Self { inner: Arc::new(PoolInner { mem, base, pages, free: Mutex::new(free), freed: Condvar::new() }) })
    }

    /// Bytes managed by the pool.
    pub fn capacity(&self) -> u64 {
        self.inner.pages * PAGE_SIZE
    }

    /// Bytes currently free (possibly fragmented).
    pub fn free_bytes(&self) -> u64 {
        self.inner.lock().free_pages * PAGE_SIZE
    }

    /// Pages for a `len`-byte buffer, or None if it can never be satisfied
    /// (zero, larger than the pool, or longer than a descriptor can describe).
    fn pages_for(&self, len: usize) -> Option<u64> {
        let len = u32::try_from(len).ok().filter(|&l| l > 0)?;
        Some(u64::from(len).div_ceil(PAGE_SIZE)).filter(|&p| p <= self.inner.pages)
    }

    fn lease(&self, start: u64, pages: u64, len: usize) -> DmaBuf {
        let gpa = GuestAddress(self.inner.base.0 + start * PAGE_SIZE);
        DmaBuf { pool: Arc::clone(&self.inner), gpa, len, start, pages }
    }

    /// A buffer of `len` bytes (rounded up to whole pages), or None if no
    /// free extent is large enough right now. Zero-length requests and ones
    /// above `capacity()` or `u32::MAX` return None.
    pub fn alloc(&self, len: usize) -> Option<DmaBuf> {
        let pages = self.pages_for(len)?;
        let start = self.inner.lock().take(pages)?;
        Some(self.lease(start, pages, len))
    }

    /// Like `alloc`, but waits up to `timeout` for buffers to be freed.
    /// Requests that can never fit return None at once.
    pub fn alloc_wait(&self, len: usize, timeout: Duration) -> Option<DmaBuf> {
        let pages = self.pages_for(len)?;
        let deadline = Instant::now() + timeout;
        let mut free = self.inner.lock();
        loop {
            if let Some(start) = free.take(pages) {
                return Some(self.lease(start, pages, len));
            }
            let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
            free = self.inner.freed.wait_timeout(free, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// A leased guest-physical buffer; its pages return to the pool on drop.
#[derive(Debug)]
pub struct DmaBuf {
    pool: Arc<PoolInner>,
    gpa: GuestAddress,
    len: usize,
    start: u64,
    pages: u64,
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.pool.lock().give_back(self.start, self.pages);
        // Waiters want different sizes; wake them all and let each retry.
        self.pool.freed.notify_all();
    }
}

impl DmaBuf {
    pub fn gpa(&self) -> GuestAddress {
        self.gpa
    }

    /// Usable length (as requested, not rounded to pages).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(gpa, len)` for a descriptor; len fits in u32 by construction.
    pub fn segment(&self) -> (u64, u32) {
        (self.gpa.0, self.len as u32)
    }

    /// Guest address of `[offset, offset + len)`, if inside the buffer.
    fn range(&self, offset: usize, len: usize) -> Result<GuestAddress, DmaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(GuestAddress(self.gpa.0 + offset as u64)),
            _ => Err(DmaError::OutOfBounds { offset, len, buf_len: self.len }),
        }
    }

    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        let addr = self.range(offset, data.len())?;
        Ok(self.pool.mem.write_slice(data, addr)?)
    }

    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), DmaError> {
        let addr = self.range(offset, out.len())?;
        Ok(self.pool.mem.read_slice(out, addr)?)
    }

    /// Copy up to `len` bytes from `r` into the buffer at `offset`, stopping
    /// early only at end of input. Returns the bytes copied.
    pub fn fill_from_reader(&mut self, offset: usize, r: &mut impl Read, len: usize) -> io::Result<usize> {
        self.range(offset, len).map_err(io::Error::other)?;
        let mut bounce = vec![0u8; len.min(BOUNCE)];
        let mut done = 0;
        while done < len {
            let want = (len - done).min(bounce.len());
            let got = match r.read(&mut bounce[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.write_at(offset + done, &bounce[..got]).map_err(io::Error::other)?;
            done += got;
        }
        Ok(done)
    }

    /// Copy `len` bytes of the buffer at `offset` into `w`.
    pub fn copy_to_writer(&self, offset: usize, w: &mut impl Write, len: usize) -> io::Result<()> {
        self.range(offset, len).map_err(io::Error::other)?;
        let mut bounce = vec![0u8; len.min(BOUNCE)];
        let mut done = 0;
        while done < len {
            let chunk = &mut bounce[..(len - done).min(BOUNCE)];
            self.read_at(offset + done, chunk).map_err(io::Error::other)?;
            w.write_all(chunk)?;
            done += chunk.len();
        }
        Ok(())
    }

    /// Like `fill_from_reader`, but reads straight into guest memory (no
    /// bounce copy) from a `ReadVolatile` source such as a `File`.
    pub fn fill_from_volatile<F: ReadVolatile>(&mut self, offset: usize, src: &mut F, len: usize) -> io::Result<usize> {
        self.range(offset, len).map_err(io::Error::other)?;
        let mut done = 0;
        while done < len {
            let addr = GuestAddress(self.gpa.0 + (offset + done) as u64);
            match self.pool.mem.read_volatile_from(addr, src, len - done) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(vm_memory::GuestMemoryError::IOError(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        Ok(done)
    }

    /// Like `copy_to_writer`, but writes straight from guest memory to a
    /// `WriteVolatile` sink such as a `File`.
    pub fn copy_to_volatile<F: WriteVolatile>(&self, offset: usize, dst: &mut F, len: usize) -> io::Result<()> {
        let addr = self.range(offset, len).map_err(io::Error::other)?;
        self.pool.mem.write_all_volatile_to(addr, dst, len).map_err(io::Error::other)
    }
}
