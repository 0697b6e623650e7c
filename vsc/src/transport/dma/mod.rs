//! A pool of guest-physical buffers the client hands to the device.
//!
//! [`DmaPool`] manages `[base, base + len)` of guest memory in 4 KiB pages
//! with a first-fit allocator over free extents that coalesces on free.
//! [`DmaBuf`] is an RAII lease: dropping it returns its pages, so a request
//! keeps its buffer alive simply by owning it until the device completes.
//! A completed buffer can be read in place ([`view`]).

mod view;

pub use view::DmaBytes;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::AtomicU64;
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
    /// Pool bytes (whole buffers) lent out as `bytes::Bytes` ([`DmaBytes::into_bytes`]).
    lent: AtomicU64,
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
        if !base.0.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::Misaligned(base));
        }
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::BadLength(len));
        }
        let in_memory =
            base.0.checked_add(len).is_some() && usize::try_from(len).is_ok_and(|l| mem.check_range(base, l));
        if !in_memory {
            return Err(DmaError::OutsideMemory { base, len });
        }
        let pages = len / PAGE_SIZE;
        let free = FreeMap { extents: BTreeMap::from([(0, pages)]), free_pages: pages };
        Ok(Self {
            inner: Arc::new(PoolInner {
                mem,
                base,
                pages,
                free: Mutex::new(free),
                freed: Condvar::new(),
                lent: AtomicU64::new(0),
            }),
        })
    }

    /// The memory the pool's addresses refer to (rings placed in a pool
    /// buffer are driven through it).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.inner.mem
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
        let deadline = Instant::now().checked_add(timeout); // None: wait forever
        let mut free = self.inner.lock();
        loop {
            if let Some(start) = free.take(pages) {
                return Some(self.lease(start, pages, len));
            }
            free = match deadline {
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
                    self.inner.freed.wait_timeout(free, left).unwrap_or_else(|e| e.into_inner()).0
                }
                None => self.inner.freed.wait(free).unwrap_or_else(|e| e.into_inner()),
            };
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{Cursor, Seek, SeekFrom};
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};

    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::{DmaBytes, DmaError, DmaPool, PAGE_SIZE};

    const BASE: GuestAddress = GuestAddress(0x20_0000);

    fn pool(pages: u64) -> DmaPool {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        DmaPool::new(mem, BASE, pages * PAGE_SIZE).unwrap()
    }

    fn page_of(buf: &super::DmaBuf) -> u64 {
        (buf.gpa().0 - BASE.0) / PAGE_SIZE
    }

    #[test]
    fn new_validates_the_range() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        assert!(matches!(DmaPool::new(mem.clone(), GuestAddress(0x1800), 0x1000), Err(DmaError::Misaligned(_))));
        assert!(matches!(DmaPool::new(mem.clone(), BASE, 0), Err(DmaError::BadLength(0))));
        assert!(matches!(DmaPool::new(mem.clone(), BASE, 0x1800), Err(DmaError::BadLength(_))));
        let past_end = DmaPool::new(mem.clone(), GuestAddress((16 << 20) - 0x1000), 0x2000);
        assert!(matches!(past_end, Err(DmaError::OutsideMemory { .. })));
        let wraps = DmaPool::new(mem, GuestAddress(u64::MAX - 0xfff), 0x2000);
        assert!(matches!(wraps, Err(DmaError::OutsideMemory { .. })));
    }

    #[test]
    fn first_fit_alloc_free_and_coalesce() {
        let pool = pool(16);
        assert_eq!((pool.capacity(), pool.free_bytes()), (16 * PAGE_SIZE, 16 * PAGE_SIZE));
        let a = pool.alloc(1).unwrap();
        let b = pool.alloc(5000).unwrap(); // two pages
        let c = pool.alloc(4096).unwrap();
        assert_eq!((page_of(&a), page_of(&b), page_of(&c)), (0, 1, 3));
        assert_eq!((a.len(), b.len(), b.segment()), (1, 5000, (BASE.0 + PAGE_SIZE, 5000)));
        assert_eq!(pool.free_bytes(), 12 * PAGE_SIZE);

        drop(b);
        assert_eq!(pool.free_bytes(), 14 * PAGE_SIZE);
        let small = pool.alloc(100).unwrap();
        assert_eq!(page_of(&small), 1, "first fit takes the lowest hole");
        let big = pool.alloc(3 * 4096).unwrap();
        assert_eq!(page_of(&big), 4, "a 3-page request skips the 1-page hole");

        // Free out of order; neighbours must merge back into one 16-page extent.
        drop(a);
        drop(c);
        drop(small);
        drop(big);
        assert_eq!(pool.free_bytes(), 16 * PAGE_SIZE);
        let whole = pool.alloc(16 * 4096).expect("coalesced back into one extent");
        assert_eq!(page_of(&whole), 0);
        assert!(pool.alloc(1).is_none());
    }

    #[test]
    fn exhaustion_and_impossible_requests() {
        let pool = pool(4);
        let bufs: Vec<_> = (0..4).map(|_| pool.alloc(4096).unwrap()).collect();
        assert!(pool.alloc(1).is_none());
        assert_eq!(pool.free_bytes(), 0);
        let start = Instant::now();
        assert!(pool.alloc_wait(5 * 4096, Duration::from_secs(10)).is_none(), "larger than the pool");
        assert!(pool.alloc_wait(0, Duration::from_secs(10)).is_none(), "zero length");
        assert!(pool.alloc(usize::MAX).is_none());
        assert!(start.elapsed() < Duration::from_secs(1), "impossible requests do not wait");
        let start = Instant::now();
        assert!(pool.alloc_wait(1, Duration::from_millis(100)).is_none(), "times out while full");
        assert!(start.elapsed() >= Duration::from_millis(100));
        drop(bufs);
        assert_eq!(pool.free_bytes(), 4 * PAGE_SIZE);
        assert!(pool.alloc_wait(1, Duration::MAX).is_some(), "an unbounded timeout does not overflow");
    }

    #[test]
    fn alloc_wait_unblocks_when_a_buffer_is_freed() {
        let pool = pool(4);
        let first = pool.alloc(2 * 4096).unwrap();
        let second = pool.alloc(2 * 4096).unwrap();
        let waiter = {
            let pool = pool.clone();
            thread::spawn(move || pool.alloc_wait(3 * 4096, Duration::from_secs(10)).map(|b| page_of(&b)))
        };
        thread::sleep(Duration::from_millis(50));
        drop(first); // two free pages: not enough, the waiter must keep waiting
        thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "woken, but 3 pages are not free yet");
        let start = Instant::now();
        drop(second);
        assert_eq!(waiter.join().unwrap(), Some(0));
        assert!(start.elapsed() < Duration::from_secs(5), "woken by the free, not by the timeout");
        assert_eq!(pool.free_bytes(), 4 * PAGE_SIZE);
    }

    #[test]
    fn concurrent_allocations_never_overlap() {
        let pool = pool(256);
        let live: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default(); // start gpa -> end gpa
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                let (pool, live) = (pool.clone(), Arc::clone(&live));
                thread::spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..2000usize {
                        let len = 1 + (i * 7919 + usize::from(t) * 104_729) % (5 * 4096);
                        let mut buf = pool.alloc_wait(len, Duration::from_secs(10)).expect("pool drains");
                        let (start, end) = (buf.gpa().0, buf.gpa().0 + len as u64);
                        {
                            let mut live = live.lock().unwrap();
                            let before = live.range(..end).next_back();
                            assert!(before.is_none_or(|(_, &e)| e <= start), "overlap at {start:#x}");
                            live.insert(start, end);
                        }
                        let pattern = vec![t.wrapping_mul(31).wrapping_add(i as u8); len];
                        buf.write_at(0, &pattern).unwrap();
                        held.push((buf, pattern));
                        if held.len() > 8 || i % 3 == 0 {
                            let (buf, pattern) = held.swap_remove(i % held.len());
                            let mut back = vec![0u8; buf.len()];
                            buf.read_at(0, &mut back).unwrap();
                            assert_eq!(back, pattern, "another thread wrote into this buffer");
                            live.lock().unwrap().remove(&buf.gpa().0);
                        }
                    }
                    for (buf, pattern) in held {
                        let mut back = vec![0u8; buf.len()];
                        buf.read_at(0, &mut back).unwrap();
                        assert_eq!(back, pattern);
                        live.lock().unwrap().remove(&buf.gpa().0);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(pool.free_bytes(), pool.capacity());
        assert!(pool.alloc(256 * 4096).is_some(), "fully coalesced after the storm");
    }

    #[test]
    fn reads_and_writes_are_bounds_checked() {
        let pool = pool(4);
        let mut buf = pool.alloc(5000).unwrap();
        buf.write_at(4990, b"0123456789").unwrap();
        let mut out = [0u8; 10];
        buf.read_at(4990, &mut out).unwrap();
        assert_eq!(&out, b"0123456789");
        assert!(matches!(
            buf.write_at(4991, b"0123456789"),
            Err(DmaError::OutOfBounds { offset: 4991, len: 10, buf_len: 5000 })
        ));
        assert!(matches!(buf.read_at(5000, &mut [0u8; 1]), Err(DmaError::OutOfBounds { .. })));
        assert!(matches!(buf.read_at(usize::MAX, &mut [0u8; 2]), Err(DmaError::OutOfBounds { .. })), "offset overflow");
        buf.read_at(5000, &mut []).unwrap();
        assert!(buf.write_at(0, &vec![1u8; 5001]).is_err(), "page slack past len is not addressable");
    }

    #[test]
    fn streaming_helpers_copy_through_guest_memory() {
        let pool = pool(128);
        let data: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut buf = pool.alloc(200_000).unwrap();

        // std::io::Read: copies until `len`, or fewer at end of input.
        let n = buf.fill_from_reader(10, &mut Cursor::new(&data), 100_000).unwrap();
        assert_eq!(n, 100_000);
        let n = buf.fill_from_reader(10, &mut Cursor::new(&data), 199_990).unwrap();
        assert_eq!(n, data.len(), "stops at end of input");
        let mut out = Vec::new();
        buf.copy_to_writer(10, &mut out, data.len()).unwrap();
        assert_eq!(out, data);
        assert!(buf.fill_from_reader(10, &mut Cursor::new(&data), 199_991).is_err(), "past the end");
        assert!(buf.copy_to_writer(0, &mut Vec::new(), 200_001).is_err());

        // Volatile variants with a real file (no bounce buffer).
        let mut file = tempfile::tempfile().unwrap();
        buf.copy_to_volatile(10, &mut file, data.len()).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut other = pool.alloc(200_000).unwrap();
        assert_eq!(other.fill_from_volatile(0, &mut file, 200_000).unwrap(), data.len());
        let mut back = vec![0u8; data.len()];
        other.read_at(0, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(other.fill_from_volatile(1, &mut file, 200_000).is_err(), "past the end");
    }

    #[test]
    fn a_completed_buffer_reads_in_place() {
        let pool = pool(4);
        let mut buf = pool.alloc(5000).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        buf.write_at(0, &data).unwrap();
        assert_eq!(buf.as_slice().unwrap(), &data[..]);
        let too_long = DmaBytes::new(pool.alloc(10).unwrap(), 11);
        assert!(matches!(too_long, Err(DmaError::OutOfBounds { len: 11, buf_len: 10, .. })));
        let bytes = DmaBytes::new(buf, 4000).unwrap();
        assert!(bytes.is_in_place());
        assert_eq!(&bytes[..], &data[..4000]);
        assert_eq!(pool.free_bytes(), 2 * PAGE_SIZE, "the view holds the buffer's pages");
        drop(bytes);
        assert_eq!(pool.free_bytes(), 4 * PAGE_SIZE);
        assert!(DmaBytes::empty().is_empty());
    }

    #[test]
    fn at_most_a_quarter_of_the_pool_is_lent_as_bytes() {
        let pool = pool(16);
        let filled = |i: u8| {
            let mut buf = pool.alloc(4096).unwrap();
            buf.write_at(0, &[i; 4096]).unwrap();
            DmaBytes::new(buf, 4096).unwrap().into_bytes()
        };
        let mut held: Vec<_> = (0..5).map(filled).collect();
        for (i, b) in held.iter().enumerate() {
            assert_eq!(&b[..], &[i as u8; 4096][..]);
        }
        assert_eq!(pool.free_bytes(), 12 * PAGE_SIZE, "four lent in place, the fifth copied and its buffer freed");
        held.remove(0);
        assert_eq!(pool.free_bytes(), 13 * PAGE_SIZE, "dropping the Bytes frees the buffer");
        held.push(filled(9));
        assert_eq!(pool.free_bytes(), 12 * PAGE_SIZE, "and makes room to lend again");
        assert_eq!(&held[4][..], &[9u8; 4096][..]);
        drop(held);
        assert_eq!(pool.free_bytes(), pool.capacity());
    }

    #[test]
    fn lending_counts_whole_buffers_and_copies_short_answers() {
        let pool = pool(16);
        let answer = |size: usize, len: usize| {
            let mut buf = pool.alloc(size).unwrap();
            buf.write_at(0, &vec![7; len]).unwrap();
            DmaBytes::new(buf, len).unwrap().into_bytes()
        };
        let short = answer(4 * 4096, 10);
        assert_eq!(&short[..], &[7; 10][..]);
        assert_eq!(pool.free_bytes(), pool.capacity(), "10 bytes in four pages are copied, the pages freed");
        // 5000 bytes take two pages: two such buffers fill the quarter (four pages), the third is copied.
        let held: Vec<_> = (0..3).map(|_| answer(5000, 5000)).collect();
        assert_eq!(pool.free_bytes(), 12 * PAGE_SIZE);
        drop(held);
        assert_eq!(pool.free_bytes(), pool.capacity());
        let again: Vec<_> = (0..2).map(|_| answer(5000, 5000)).collect();
        assert_eq!(pool.free_bytes(), 12 * PAGE_SIZE, "the budget came back whole");
        drop(again);
    }
}
