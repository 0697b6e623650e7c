//! One blob request as a VMBus packet (`../shared/notes/vmbus.md` §2).
//!
//! The VSC sends `VM_PKT_DATA_USING_GPA_DIRECT` with completion requested:
//! the 16-byte descriptor, the GPA-direct header, one `gpa_range` whose PFNs
//! are the data pages, then the request pages, then the response pages (the
//! seed's order), and the 56-byte [`VspRequest`] in band. Buffer offsets in the
//! header are byte offsets into that concatenated page range. The VSP answers
//! with `VM_PKT_COMP` carrying the 12-byte [`VspResponse`] and the same
//! transaction id, which is never 0. The packet format itself is generic and
//! lives in `vmblob-vmbus`; it is re-exported here.

use zerocopy::IntoBytes;

pub use vmblob_vmbus::packet::*;

use super::{BufferLayout, DataBuffer, FramingError, overlaps};
use crate::sg::Segment;
use crate::transport::{MAX_PAGES, REQUEST_SIZE, RESPONSE_SIZE, VspRequest, VspResponse};

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
    use vmblob_vmbus::packet::parse_packet;

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
