//! VMBus packets (`../shared/notes/vmbus.md` §2): the 16-byte descriptor, in-band,
//! completion and GPA-direct packets, encoded and parsed. Nothing here knows what a
//! packet's payload means.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The Hyper-V page a PFN names.
pub const PAGE_SIZE: u32 = 4096;

pub const VM_PKT_DATA_INBAND: u16 = 0x6;
pub const VM_PKT_DATA_USING_XFER_PAGES: u16 = 0x7;
pub const VM_PKT_DATA_USING_GPA_DIRECT: u16 = 0x9;
pub const VM_PKT_COMP: u16 = 0xb;
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;
pub const DESCRIPTOR_SIZE: usize = 16;
const GPA_HEADER_SIZE: usize = 8;
const RANGE_HEADER_SIZE: usize = 8;
/// Largest page number whose every address, and the end of the page, fits
/// in a u64 (so a segment's `addr + len` never overflows).
const MAX_PFN: u64 = (u64::MAX >> 12) - 1;

/// `struct vmpacket_descriptor`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PacketDescriptor {
    pub packet_type: U16,
    pub offset8: U16,
    pub len8: U16,
    pub flags: U16,
    pub transaction_id: U64,
}

/// The fixed part after the descriptor of a GPA-direct packet.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct GpaDirectHeader {
    pub reserved: U32,
    pub range_count: U32,
}

/// `struct gpa_range` header; `pfns` follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct GpaRangeHeader {
    pub byte_count: U32,
    pub byte_offset: U32,
}

/// A decoded `gpa_range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaRange {
    pub byte_count: u32,
    pub byte_offset: u32,
    pub pfns: Vec<u64>,
}

impl GpaRange {
    fn pages_needed(byte_offset: u32, byte_count: u32) -> usize {
        (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(u64::from(PAGE_SIZE)) as usize
    }
}

/// A packet read from a ring, copied out of shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    InBand { transaction_id: u64, completion_requested: bool, payload: Vec<u8> },
    Completion { transaction_id: u64, payload: Vec<u8> },
    GpaDirect { transaction_id: u64, completion_requested: bool, ranges: Vec<GpaRange>, payload: Vec<u8> },
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet shorter than its descriptor or its declared length")]
    Truncated,
    #[error("data offset {offset8}*8 / length {len8}*8 inconsistent")]
    BadLengths { offset8: u16, len8: u16 },
    #[error("unknown flags {0:#x}")]
    BadFlags(u16),
    #[error("unsupported packet type {0:#x}")]
    BadType(u16),
    #[error("GPA-direct packet with {0} ranges")]
    BadRangeCount(u32),
    #[error("gpa_range byte_offset {0:#x} beyond a page")]
    BadByteOffset(u32),
    #[error("gpa_range with zero bytes")]
    EmptyRange,
    #[error("gpa ranges do not fit the header")]
    RangesOverflow,
    #[error("pfn {0:#x} out of range")]
    BadPfn(u64),
    #[error("{count} pages, limit {max}")]
    TooManyPages { count: usize, max: usize },
}

fn descriptor(
    packet_type: u16,
    flags: u16,
    transaction_id: u64,
    header_len: usize,
    total_len: usize,
) -> PacketDescriptor {
    PacketDescriptor {
        packet_type: U16::new(packet_type),
        offset8: U16::new((header_len / 8) as u16),
        len8: U16::new((total_len.div_ceil(8)) as u16),
        flags: U16::new(flags),
        transaction_id: U64::new(transaction_id),
    }
}

fn pad8(mut v: Vec<u8>) -> Vec<u8> {
    v.resize(v.len().div_ceil(8) * 8, 0);
    v
}

/// An in-band packet (payload padded to 8; the ring adds the trailer).
pub fn encode_inband(transaction_id: u64, completion_requested: bool, payload: &[u8]) -> Vec<u8> {
    let flags = if completion_requested { FLAG_COMPLETION_REQUESTED } else { 0 };
    let d = descriptor(VM_PKT_DATA_INBAND, flags, transaction_id, DESCRIPTOR_SIZE, DESCRIPTOR_SIZE + payload.len());
    let mut v = d.as_bytes().to_vec();
    v.extend_from_slice(payload);
    pad8(v)
}

/// A completion packet carrying `payload`.
pub fn encode_completion(transaction_id: u64, payload: &[u8]) -> Vec<u8> {
    let d = descriptor(VM_PKT_COMP, 0, transaction_id, DESCRIPTOR_SIZE, DESCRIPTOR_SIZE + payload.len());
    let mut v = d.as_bytes().to_vec();
    v.extend_from_slice(payload);
    pad8(v)
}

/// A GPA-direct packet with completion requested.
pub fn encode_gpa_direct(transaction_id: u64, ranges: &[GpaRange], payload: &[u8]) -> Vec<u8> {
    let ranges_len: usize = ranges.iter().map(|r| RANGE_HEADER_SIZE + 8 * r.pfns.len()).sum();
    let header_len = DESCRIPTOR_SIZE + GPA_HEADER_SIZE + ranges_len;
    let d = descriptor(
        VM_PKT_DATA_USING_GPA_DIRECT,
        FLAG_COMPLETION_REQUESTED,
        transaction_id,
        header_len,
        header_len + payload.len(),
    );
    let mut v = d.as_bytes().to_vec();
    v.extend_from_slice(GpaDirectHeader { reserved: 0.into(), range_count: (ranges.len() as u32).into() }.as_bytes());
    for r in ranges {
        v.extend_from_slice(
            GpaRangeHeader { byte_count: r.byte_count.into(), byte_offset: r.byte_offset.into() }.as_bytes(),
        );
        for p in &r.pfns {
            v.extend_from_slice(&p.to_le_bytes());
        }
    }
    v.extend_from_slice(payload);
    pad8(v)
}

/// Parse one packet (without its trailer). Total over arbitrary bytes; at
/// most `max_pages` PFNs are accepted in all.
pub fn parse_packet(bytes: &[u8], max_pages: usize) -> Result<Packet, PacketError> {
    let (d, _) = PacketDescriptor::read_from_prefix(bytes).map_err(|_| PacketError::Truncated)?;
    let (offset8, len8) = (d.offset8.get(), d.len8.get());
    let (start, end) = (usize::from(offset8) * 8, usize::from(len8) * 8);
    if offset8 < 2 || len8 < offset8 {
        return Err(PacketError::BadLengths { offset8, len8 });
    }
    if end > bytes.len() {
        return Err(PacketError::Truncated);
    }
    let flags = d.flags.get();
    if flags & !FLAG_COMPLETION_REQUESTED != 0 {
        return Err(PacketError::BadFlags(flags));
    }
    let transaction_id = d.transaction_id.get();
    let completion_requested = flags & FLAG_COMPLETION_REQUESTED != 0;
    let payload = bytes[start..end].to_vec();
    match d.packet_type.get() {
        VM_PKT_DATA_INBAND => Ok(Packet::InBand { transaction_id, completion_requested, payload }),
        VM_PKT_COMP => Ok(Packet::Completion { transaction_id, payload }),
        VM_PKT_DATA_USING_GPA_DIRECT => {
            let ranges = parse_ranges(&bytes[DESCRIPTOR_SIZE..start], max_pages)?;
            Ok(Packet::GpaDirect { transaction_id, completion_requested, ranges, payload })
        }
        t => Err(PacketError::BadType(t)),
    }
}

fn parse_ranges(mut b: &[u8], max_pages: usize) -> Result<Vec<GpaRange>, PacketError> {
    let (h, rest) = GpaDirectHeader::read_from_prefix(b).map_err(|_| PacketError::RangesOverflow)?;
    b = rest;
    let count = h.range_count.get();
    // Each range needs at least 16 bytes, which bounds the allocation.
    if count == 0 || count as usize > b.len() / (RANGE_HEADER_SIZE + 8) {
        return Err(PacketError::BadRangeCount(count));
    }
    let mut ranges = Vec::with_capacity(count as usize);
    let mut total_pages = 0usize;
    for _ in 0..count {
        let (rh, rest) = GpaRangeHeader::read_from_prefix(b).map_err(|_| PacketError::RangesOverflow)?;
        let (byte_count, byte_offset) = (rh.byte_count.get(), rh.byte_offset.get());
        if byte_offset >= PAGE_SIZE {
            return Err(PacketError::BadByteOffset(byte_offset));
        }
        if byte_count == 0 {
            return Err(PacketError::EmptyRange);
        }
        let n = GpaRange::pages_needed(byte_offset, byte_count);
        total_pages += n;
        if total_pages > max_pages {
            return Err(PacketError::TooManyPages { count: total_pages, max: max_pages });
        }
        if rest.len() < n * 8 {
            return Err(PacketError::RangesOverflow);
        }
        let (pfn_bytes, rest) = rest.split_at(n * 8);
        let mut pfns = Vec::with_capacity(n);
        for c in pfn_bytes.chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            let pfn = u64::from_le_bytes(a);
            if pfn > MAX_PFN {
                return Err(PacketError::BadPfn(pfn));
            }
            pfns.push(pfn);
        }
        ranges.push(GpaRange { byte_count, byte_offset, pfns });
        b = rest;
    }
    Ok(ranges)
}

/// A guest buffer as pages: the offset of its first byte in the first page,
/// its length and its page numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageBuffer {
    pub first_page_offset: u32,
    pub len: u32,
    pub pfns: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    #[test]
    fn struct_sizes() {
        assert_eq!(size_of::<PacketDescriptor>(), 16);
        assert_eq!(size_of::<GpaDirectHeader>(), 8);
        assert_eq!(size_of::<GpaRangeHeader>(), 8);
    }

    /// vmbus.md §2.7 vector A (packet bytes, without the trailer).
    #[test]
    fn golden_inband() {
        let p = encode_inband(0x1122_3344_5566_7788, true, b"hello");
        assert_eq!(p, hex("06 00 02 00 03 00 01 00 88 77 66 55 44 33 22 11 68 65 6c 6c 6f 00 00 00"));
        let parsed = parse_packet(&p, 8).unwrap();
        assert_eq!(
            parsed,
            Packet::InBand {
                transaction_id: 0x1122_3344_5566_7788,
                completion_requested: true,
                payload: b"hello\0\0\0".to_vec()
            }
        );
    }

    /// Vector B.
    #[test]
    fn golden_completion() {
        let p = encode_completion(0x1122_3344_5566_7788, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p, hex("0b 00 02 00 03 00 00 00 88 77 66 55 44 33 22 11 01 02 03 04 05 06 07 08"));
    }

    /// The GPA-direct vector.
    #[test]
    fn golden_gpa_direct() {
        let ranges = [
            GpaRange { byte_count: 0x1800, byte_offset: 0x800, pfns: vec![0x1000, 0x1001] },
            GpaRange { byte_count: 0x100, byte_offset: 0, pfns: vec![0x2345] },
        ];
        let p = encode_gpa_direct(7, &ranges, &[0xaa, 0xbb, 0xcc, 0xdd]);
        let want = hex("09 00 08 00 09 00 01 00 07 00 00 00 00 00 00 00  00 00 00 00 02 00 00 00
             00 18 00 00 00 08 00 00 00 10 00 00 00 00 00 00  01 10 00 00 00 00 00 00
             00 01 00 00 00 00 00 00 45 23 00 00 00 00 00 00  aa bb cc dd 00 00 00 00");
        assert_eq!(p, want);
        match parse_packet(&p, 16).unwrap() {
            Packet::GpaDirect { transaction_id: 7, completion_requested: true, ranges: r, payload } => {
                assert_eq!(r, ranges);
                assert_eq!(payload, vec![0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_packets() {
        let good = encode_gpa_direct(7, &[GpaRange { byte_count: 10, byte_offset: 0, pfns: vec![1] }], &[0; 8]);
        let patch = |off: usize, v: &[u8]| {
            let mut p = good.clone();
            p[off..off + v.len()].copy_from_slice(v);
            p
        };
        assert_eq!(parse_packet(&good[..10], 8), Err(PacketError::Truncated));
        assert!(matches!(parse_packet(&patch(2, &[1, 0]), 8), Err(PacketError::BadLengths { .. })));
        assert!(matches!(parse_packet(&patch(4, &[1, 0]), 8), Err(PacketError::BadLengths { .. })));
        assert_eq!(parse_packet(&patch(4, &[0xff, 0]), 8), Err(PacketError::Truncated));
        assert_eq!(parse_packet(&patch(6, &[3, 0]), 8), Err(PacketError::BadFlags(3)));
        assert_eq!(parse_packet(&patch(0, &[5, 0]), 8), Err(PacketError::BadType(5)));
        assert_eq!(parse_packet(&patch(20, &[0, 0, 0, 0]), 8), Err(PacketError::BadRangeCount(0)));
        assert!(matches!(parse_packet(&patch(20, &[0xff, 0xff, 0, 0]), 8), Err(PacketError::BadRangeCount(_))));
        assert_eq!(parse_packet(&patch(28, &[0, 0x10, 0, 0]), 8), Err(PacketError::BadByteOffset(0x1000)));
        assert_eq!(parse_packet(&patch(24, &[0, 0, 0, 0]), 8), Err(PacketError::EmptyRange));
        assert_eq!(parse_packet(&patch(24, &[0, 0x20, 0, 0]), 8), Err(PacketError::RangesOverflow));
        assert_eq!(parse_packet(&patch(32, &[0xff; 8]), 8), Err(PacketError::BadPfn(u64::MAX)));
        assert!(matches!(parse_packet(&good, 0), Err(PacketError::TooManyPages { .. })));
    }
}
