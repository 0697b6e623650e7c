//! One request as a VMBus packet (`../shared/notes/vmbus.md` §2).
//!
//! The VSC sends `VM_PKT_DATA_USING_GPA_DIRECT` with completion requested:
//! the 16-byte descriptor, the GPA-direct header, one `gpa_range` whose PFNs
//! are the data pages, then the request pages, then the response pages (the
//! seed's order), and the 56-byte [`VspRequest`] in band. Buffer offsets in the
//! header are byte offsets into that concatenated page range. The VSP answers
//! with `VM_PKT_COMP` carrying the 12-byte [`VspResponse`] and the same
//! transaction id, which is never 0.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{BufferLayout, DataBuffer, FramingError, overlaps};
use crate::sg::Segment;
use crate::transport::{MAX_PAGES, PAGE_SIZE, REQUEST_SIZE, RESPONSE_SIZE, VspRequest, VspResponse};

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

/// The VSC side: one blob request as a GPA-direct packet. Fills the offsets
/// of `hdr` (data, request, response pages in that order, as the seed did).
pub fn encode_blob_request(
    transaction_id: u64,
    hdr: &mut VspRequest,
    data: Option<&PageBuffer>,
    request: &PageBuffer,
    response: &PageBuffer,
) -> Vec<u8> {
    let data_pages = data.map_or(0, |d| d.pfns.len() as u32);
    hdr.data_buffer_offset = data.map_or(0, |d| d.first_page_offset).into();
    hdr.request_buffer_offset = (request.first_page_offset + data_pages * PAGE_SIZE).into();
    hdr.response_buffer_offset =
        (response.first_page_offset + (data_pages + request.pfns.len() as u32) * PAGE_SIZE).into();
    let pfns: Vec<u64> = data.into_iter().chain([request, response]).flat_map(|b| b.pfns.iter().copied()).collect();
    let range = GpaRange { byte_count: pfns.len() as u32 * PAGE_SIZE, byte_offset: 0, pfns };
    encode_gpa_direct(transaction_id, &[range], hdr.as_bytes())
}

/// The VSP side: a GPA-direct blob request, header copied out once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaDirectFrame {
    pub transaction_id: u64,
    pub header: VspRequest,
    range: GpaRange,
}

impl GpaDirectFrame {
    /// From a parsed packet: one range, completion requested, id ≠ 0, and a
    /// payload holding the 56-byte header.
    pub fn from_packet(p: Packet) -> Result<Self, FramingError> {
        match p {
            Packet::GpaDirect { transaction_id, completion_requested: true, mut ranges, payload }
                if transaction_id != 0 && ranges.len() == 1 && payload.len() >= REQUEST_SIZE =>
            {
                let header = VspRequest::parse(&payload[..REQUEST_SIZE]).map_err(|_| FramingError::NoHeader)?;
                Ok(Self { transaction_id, header, range: ranges.remove(0) })
            }
            _ => Err(FramingError::OutOfRange),
        }
    }

    /// Guest-physical spans of `[off, off+len)` of the range's byte space.
    fn spans(&self, off: u64, len: u64) -> Result<Vec<Segment>, FramingError> {
        let end = off.checked_add(len).ok_or(FramingError::OutOfRange)?;
        if end > u64::from(self.range.byte_count) {
            return Err(FramingError::OutOfRange);
        }
        let page = u64::from(PAGE_SIZE);
        let mut out: Vec<Segment> = Vec::new();
        let mut pos = off + u64::from(self.range.byte_offset);
        let stop = end + u64::from(self.range.byte_offset);
        while pos < stop {
            let idx = (pos / page) as usize;
            let pfn = *self.range.pfns.get(idx).ok_or(FramingError::OutOfRange)?;
            let in_page = pos % page;
            let n = (page - in_page).min(stop - pos);
            let addr = pfn * page + in_page;
            match out.last_mut() {
                Some(last) if last.addr + u64::from(last.len) == addr => last.len += n as u32,
                _ => out.push(Segment { addr, len: n as u32 }),
            }
            pos += n;
        }
        Ok(out)
    }

    /// All buffers; the data buffer is readable and writable.
    pub fn layout(&self) -> Result<BufferLayout, FramingError> {
        let h = &self.header;
        let req = (u64::from(h.request_buffer_offset.get()), u64::from(h.request_buffer_length.get()));
        let resp = (u64::from(h.response_buffer_offset.get()), u64::from(h.response_buffer_length.get()));
        let data = (u64::from(h.data_buffer_offset.get()), u64::from(h.data_buffer_length.get()));
        if overlaps(req.0, req.1, resp.0, resp.1) {
            return Err(FramingError::Overlap("request", "response"));
        }
        if overlaps(data.0, data.1, resp.0, resp.1) {
            return Err(FramingError::Overlap("data", "response"));
        }
        if overlaps(data.0, data.1, req.0, req.1) {
            return Err(FramingError::Overlap("data", "request"));
        }
        let data_buf = if data.1 == 0 { DataBuffer::None } else { DataBuffer::ReadWrite(self.spans(data.0, data.1)?) };
        Ok(BufferLayout {
            request: self.spans(req.0, req.1)?,
            response: self.spans(resp.0, resp.1)?,
            data: data_buf,
            data_valid: h.data_buffer_valid.get(),
        })
    }
}

/// The seed's page limit as a `usize`.
pub const MAX_PACKET_PAGES: usize = MAX_PAGES as usize;

/// The VSP's completion for `transaction_id`.
pub fn encode_blob_completion(transaction_id: u64, resp: &VspResponse) -> Vec<u8> {
    encode_completion(transaction_id, resp.as_bytes())
}

/// The VSC side: a completion's response, checked.
pub fn parse_blob_completion(payload: &[u8]) -> Result<VspResponse, FramingError> {
    if payload.len() < RESPONSE_SIZE {
        return Err(FramingError::NoResponseRoom);
    }
    VspResponse::parse(&payload[..RESPONSE_SIZE]).map_err(|_| FramingError::NoResponseRoom)
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

    #[test]
    fn blob_request_round_trip() {
        let mut hdr = VspRequest {
            operation_type: 0x100.into(),
            data_buffer_length: 5000.into(),
            data_buffer_valid: 5000.into(),
            request_buffer_length: 100.into(),
            response_buffer_length: 200.into(),
            transaction_id: [9; 16],
            ..Default::default()
        };
        let data = PageBuffer { first_page_offset: 0x100, len: 5000, pfns: vec![10, 11] };
        let req = PageBuffer { first_page_offset: 0x20, len: 100, pfns: vec![20] };
        let resp = PageBuffer { first_page_offset: 0xf80, len: 200, pfns: vec![30, 40] };
        let pkt = encode_blob_request(42, &mut hdr, Some(&data), &req, &resp);
        let frame = GpaDirectFrame::from_packet(parse_packet(&pkt, 8192).unwrap()).unwrap();
        assert_eq!(frame.header, hdr);
        assert_eq!(frame.transaction_id, 42);
        let l = frame.layout().unwrap();
        assert_eq!(
            l.data,
            DataBuffer::ReadWrite(vec![Segment { addr: 10 * 4096 + 0x100, len: 5000 }]) // pages 10,11 contiguous
        );
        assert_eq!(l.request, vec![Segment { addr: 20 * 4096 + 0x20, len: 100 }]);
        assert_eq!(
            l.response,
            vec![Segment { addr: 30 * 4096 + 0xf80, len: 128 }, Segment { addr: 40 * 4096, len: 72 }]
        );
        let comp = encode_blob_completion(42, &VspResponse::new(0, 16));
        match parse_packet(&comp, 0).unwrap() {
            Packet::Completion { transaction_id: 42, payload } => {
                assert_eq!(parse_blob_completion(&payload).unwrap(), VspResponse::new(0, 16))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_blob_completion(&[0; 11]).is_err());
    }

    #[test]
    fn blob_frame_rejects_bad_offsets() {
        let mut hdr = VspRequest {
            request_buffer_length: 100.into(),
            response_buffer_length: 100.into(),
            transaction_id: [1; 16],
            ..Default::default()
        };
        let one = PageBuffer { first_page_offset: 0, len: 100, pfns: vec![5] };
        let pkt = encode_blob_request(1, &mut hdr, None, &one, &one);
        let mut frame = GpaDirectFrame::from_packet(parse_packet(&pkt, 8).unwrap()).unwrap();
        assert!(frame.layout().is_ok());
        frame.header.response_buffer_offset = 50.into();
        assert_eq!(frame.layout(), Err(FramingError::Overlap("request", "response")));
        frame.header.response_buffer_offset = 8100.into();
        assert_eq!(frame.layout(), Err(FramingError::OutOfRange));
        // Transaction id 0 and packets without completion requested are refused.
        let pkt0 = encode_blob_request(0, &mut hdr, None, &one, &one);
        assert!(GpaDirectFrame::from_packet(parse_packet(&pkt0, 8).unwrap()).is_err());
    }
}
