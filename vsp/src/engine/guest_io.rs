//! Moving bytes between guest memory and the engine or a store, through
//! vm-memory's checked accessors: every address the guest named is resolved
//! against the memory map, so a bad GPA is an error, never a stray access.

use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmblob_protocol::Segment;

use super::cancel::CancelToken;
use crate::store::{DataSink, DataSource, StoreError};

/// Pieces of file reads into guest memory between cancellation checks.
const SINK_PIECE: u64 = 1 << 20;

fn mem_err(e: vm_memory::GuestMemoryError) -> StoreError {
    StoreError::GuestMemory(e.to_string())
}

/// A failure moving file bytes into guest memory: the file's I/O errors are
/// the store's (status `Io`), the rest is a bad guest address.
fn file_err(e: vm_memory::GuestMemoryError) -> StoreError {
    match e {
        vm_memory::GuestMemoryError::IOError(io) => StoreError::Io(io),
        other => mem_err(other),
    }
}

/// Copy a whole segment list out of guest memory (small buffers only: the
/// caller bounds the total).
pub fn read_all(mem: &GuestMemoryMmap, segs: &[Segment]) -> Result<Vec<u8>, StoreError> {
    let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    let mut out = vec![0u8; total as usize];
    read_exact(mem, segs, &mut out)?;
    Ok(out)
}

/// Fill `out` from a segment list whose total length equals `out.len()`.
pub fn read_exact(mem: &GuestMemoryMmap, segs: &[Segment], out: &mut [u8]) -> Result<(), StoreError> {
    let mut pos = 0usize;
    for s in segs {
        let n = s.len as usize;
        let dst =
            out.get_mut(pos..pos + n).ok_or_else(|| StoreError::GuestMemory("segments longer than buffer".into()))?;
        mem.read_slice(dst, GuestAddress(s.addr)).map_err(mem_err)?;
        pos += n;
    }
    if pos == out.len() { Ok(()) } else { Err(StoreError::GuestMemory("segments shorter than buffer".into())) }
}

/// Write `bytes` at the start of a segment list; fails if it does not fit.
pub fn write_all(mem: &GuestMemoryMmap, segs: &[Segment], bytes: &[u8]) -> Result<(), StoreError> {
    let mut rest = bytes;
    for s in segs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(s.len as usize);
        mem.write_slice(&rest[..n], GuestAddress(s.addr)).map_err(mem_err)?;
        rest = &rest[n..];
    }
    if rest.is_empty() { Ok(()) } else { Err(StoreError::GuestMemory("buffer too small".into())) }
}

/// A cursor over a segment list.
struct Cursor<'a> {
    segs: &'a [Segment],
    idx: usize,
    off: u32,
}

impl Cursor<'_> {
    /// The next contiguous piece of at most `max` bytes, and advances past it.
    fn next_piece(&mut self, max: u64) -> Option<(GuestAddress, usize)> {
        while let Some(s) = self.segs.get(self.idx) {
            if self.off < s.len {
                let n = u64::from(s.len - self.off).min(max) as u32;
                let addr = GuestAddress(s.addr + u64::from(self.off));
                self.off += n;
                return Some((addr, n as usize));
            }
            self.idx += 1;
            self.off = 0;
        }
        None
    }
}

/// A PUT's data, read from guest memory chunk by chunk.
pub struct GuestSource<'a> {
    mem: &'a GuestMemoryMmap,
    cursor: Cursor<'a>,
    len: u64,
    remaining: u64,
    cancel: &'a CancelToken,
}

impl<'a> GuestSource<'a> {
    /// `segs` must already be cut to the valid bytes.
    pub fn new(mem: &'a GuestMemoryMmap, segs: &'a [Segment], cancel: &'a CancelToken) -> Self {
        let len = segs.iter().map(|s| u64::from(s.len)).sum();
        Self { mem, cursor: Cursor { segs, idx: 0, off: 0 }, len, remaining: len, cancel }
    }
}

impl DataSource for GuestSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        // Checked on every chunk, including the last (empty) one, so a
        // request cancelled during its final chunk never commits.
        if self.cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let mut filled = 0usize;
        while filled < buf.len() && self.remaining > 0 {
            let Some((addr, n)) = self.cursor.next_piece((buf.len() - filled) as u64) else { break };
            self.mem.read_slice(&mut buf[filled..filled + n], addr).map_err(mem_err)?;
            filled += n;
            self.remaining -= n as u64;
        }
        Ok(filled)
    }
}

/// A GET's destination in guest memory, filled from its start.
pub struct GuestSink<'a> {
    mem: &'a GuestMemoryMmap,
    cursor: Cursor<'a>,
    capacity: u64,
    written: u64,
    cancel: &'a CancelToken,
}

impl<'a> GuestSink<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, segs: &'a [Segment], cancel: &'a CancelToken) -> Self {
        let capacity = segs.iter().map(|s| u64::from(s.len)).sum();
        Self { mem, cursor: Cursor { segs, idx: 0, off: 0 }, capacity, written: 0, cancel }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        if self.cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        if len > self.capacity - self.written {
            return Err(StoreError::GuestMemory("data buffer too small".into()));
        }
        Ok(())
    }
}

impl DataSink for GuestSink<'_> {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn fill_from_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> Result<(), StoreError> {
        self.reserve(len)?;
        // The store hands each request its own open file, so moving its
        // offset races with nobody; reads then go straight into guest memory.
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        let mut fd = file.as_fd();
        let mut left = len;
        while left > 0 {
            if self.cancel.is_cancelled() {
                return Err(StoreError::Cancelled);
            }
            let (addr, n) = self.cursor.next_piece(left.min(SINK_PIECE)).ok_or(StoreError::InvalidRange)?;
            // read(2) may return less than asked (signals, FUSE, NFS): loop.
            let mut done = 0usize;
            while done < n {
                let at = GuestAddress(addr.0 + done as u64);
                let k = self.mem.read_volatile_from(at, &mut fd, n - done).map_err(file_err)?;
                if k == 0 {
                    return Err(StoreError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                done += k;
            }
            left -= n as u64;
            self.written += n as u64;
        }
        Ok(())
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.reserve(bytes.len() as u64)?;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (addr, n) = self.cursor.next_piece(rest.len() as u64).ok_or(StoreError::InvalidRange)?;
            self.mem.write_slice(&rest[..n], addr).map_err(mem_err)?;
            rest = &rest[n..];
            self.written += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn source_reads_across_segments_in_chunks() {
        let m = mem();
        m.write_slice(b"hello", GuestAddress(0x100)).unwrap();
        m.write_slice(b" world", GuestAddress(0x9000)).unwrap();
        let segs = [Segment { addr: 0x100, len: 5 }, Segment { addr: 0x9000, len: 6 }];
        let c = CancelToken::new(None);
        let mut s = GuestSource::new(&m, &segs, &c);
        let mut out = Vec::new();
        let mut buf = [0u8; 4];
        loop {
            let n = s.read_chunk(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn bad_gpa_is_an_error() {
        let m = mem();
        let segs = [Segment { addr: (1 << 20) - 2, len: 5 }];
        assert!(read_all(&m, &segs).is_err());
        let c = CancelToken::new(None);
        let mut s = GuestSource::new(&m, &segs, &c);
        assert!(matches!(s.read_chunk(&mut [0; 8]), Err(StoreError::GuestMemory(_))));
    }

    #[test]
    fn sink_fills_from_file_and_respects_capacity_and_cancel() {
        let m = mem();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        let segs = [Segment { addr: 0x10, len: 3 }, Segment { addr: 0x2000, len: 4 }];
        let c = CancelToken::new(None);
        let mut sink = GuestSink::new(&m, &segs, &c);
        sink.fill_from_file(&f, 2, 7).unwrap();
        let mut a = [0u8; 3];
        let mut b = [0u8; 4];
        m.read_slice(&mut a, GuestAddress(0x10)).unwrap();
        m.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!((&a, &b), (b"234", b"5678"));
        assert!(sink.write_bytes(b"x").is_err(), "past capacity");
        let mut sink = GuestSink::new(&m, &segs, &c);
        c.cancel(super::super::cancel::CancelReason::Rescinded);
        assert!(matches!(sink.fill_from_file(&f, 0, 2), Err(StoreError::Cancelled)));
    }
}
