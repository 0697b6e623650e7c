//! One request as a virtio descriptor chain.
//!
//! The chain is its device-readable descriptors `R` followed by its
//! device-writable descriptors `W`, each seen as one byte stream:
//! - `R[0..56]`: the transport header;
//! - `R[request_buffer_offset..+len]`: the op request (at or after byte 56);
//! - `W[response_buffer_offset..+len]`: the op response;
//! - the data buffer at `data_buffer_offset` in `R` for ops that send data
//!   to the host, in `W` for ops that return data;
//! - `W[W.len-12..]`: the 12-byte transport response, always last.
//!
//! The VSC lays chains out canonically (`R = header|request|data`,
//! `W = response|data|status`); the VSP accepts any layout that keeps the
//! buffers inside their areas and apart.

use super::{BufferLayout, DataBuffer, FramingError, overlaps};
use crate::ops::DataDirection;
use crate::sg::{Segment, sub_range, total_len};
use crate::transport::{REQUEST_SIZE, RESPONSE_SIZE, VspRequest};

/// One descriptor as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainDescriptor {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A validated chain split into its readable and writable areas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioFrame {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

impl VirtioFrame {
    /// Check a chain's shape: at most `max_descriptors`, no empty or wrapping
    /// descriptor, readable before writable, room for header and response.
    pub fn new(descs: impl IntoIterator<Item = ChainDescriptor>, max_descriptors: usize) -> Result<Self, FramingError> {
        let (mut readable, mut writable) = (Vec::new(), Vec::new());
        for (count, d) in descs.into_iter().enumerate() {
            if count >= max_descriptors {
                return Err(FramingError::TooManyDescriptors { count: count + 1, max: max_descriptors });
            }
            if d.len == 0 {
                return Err(FramingError::EmptyDescriptor);
            }
            d.addr.checked_add(u64::from(d.len)).ok_or(FramingError::AddressOverflow)?;
            let seg = Segment { addr: d.addr, len: d.len };
            match (d.writable, writable.is_empty()) {
                (false, true) => readable.push(seg),
                (false, false) => return Err(FramingError::ReadableAfterWritable),
                (true, _) => writable.push(seg),
            }
        }
        if total_len(&readable) < REQUEST_SIZE as u64 {
            return Err(FramingError::NoHeader);
        }
        if total_len(&writable) < RESPONSE_SIZE as u64 {
            return Err(FramingError::NoResponseRoom);
        }
        Ok(Self { readable, writable })
    }

    /// Where the 56-byte header lies.
    pub fn header(&self) -> Vec<Segment> {
        sub_range(&self.readable, 0, REQUEST_SIZE as u64).unwrap_or_default()
    }

    /// Where the 12-byte transport response goes.
    pub fn status(&self) -> Vec<Segment> {
        let w = total_len(&self.writable);
        sub_range(&self.writable, w - RESPONSE_SIZE as u64, RESPONSE_SIZE as u64).unwrap_or_default()
    }

    /// Bytes the device may write before the transport response.
    pub fn writable_payload_len(&self) -> u64 {
        total_len(&self.writable) - RESPONSE_SIZE as u64
    }

    /// Where the op request lies (needed before the op, and so the data
    /// direction, is known).
    pub fn request(&self, hdr: &VspRequest) -> Result<Vec<Segment>, FramingError> {
        let (off, len) = (u64::from(hdr.request_buffer_offset.get()), u64::from(hdr.request_buffer_length.get()));
        if off < REQUEST_SIZE as u64 {
            return Err(FramingError::OverlapsHeader);
        }
        sub_range(&self.readable, off, len)
    }

    /// All buffers, once the op's data direction is known.
    pub fn layout(&self, hdr: &VspRequest, dir: DataDirection) -> Result<BufferLayout, FramingError> {
        let request = self.request(hdr)?;
        let (req_off, req_len) =
            (u64::from(hdr.request_buffer_offset.get()), u64::from(hdr.request_buffer_length.get()));
        let (resp_off, resp_len) =
            (u64::from(hdr.response_buffer_offset.get()), u64::from(hdr.response_buffer_length.get()));
        let (data_off, data_len) = (u64::from(hdr.data_buffer_offset.get()), u64::from(hdr.data_buffer_length.get()));
        let w_payload = self.writable_payload_len();
        if resp_off.checked_add(resp_len).is_none_or(|end| end > w_payload) {
            return Err(FramingError::OutOfRange);
        }
        let response = sub_range(&self.writable, resp_off, resp_len)?;
        let data = match dir {
            DataDirection::None => DataBuffer::None,
            _ if data_len == 0 => DataBuffer::None,
            DataDirection::ToHost => {
                if data_off < REQUEST_SIZE as u64 {
                    return Err(FramingError::OverlapsHeader);
                }
                if overlaps(data_off, data_len, req_off, req_len) {
                    return Err(FramingError::Overlap("data", "request"));
                }
                DataBuffer::Readable(sub_range(&self.readable, data_off, data_len)?)
            }
            DataDirection::ToGuest => {
                if data_off.checked_add(data_len).is_none_or(|end| end > w_payload) {
                    return Err(FramingError::OutOfRange);
                }
                if overlaps(data_off, data_len, resp_off, resp_len) {
                    return Err(FramingError::Overlap("data", "response"));
                }
                DataBuffer::Writable(sub_range(&self.writable, data_off, data_len)?)
            }
        };
        Ok(BufferLayout { request, response, data, data_valid: hdr.data_buffer_valid.get() })
    }
}

/// The VSC's canonical chain for one request: readable `header|request|data-out`,
/// writable `response|data-in|status`. Returns the header with offsets filled
/// in; the caller places the bytes and builds descriptors in this order.
pub fn canonical_offsets(hdr: &mut VspRequest, dir: DataDirection) {
    let req_len = hdr.request_buffer_length.get();
    hdr.request_buffer_offset = (REQUEST_SIZE as u32).into();
    hdr.response_buffer_offset = 0.into();
    hdr.data_buffer_offset = match dir {
        DataDirection::ToHost => REQUEST_SIZE as u32 + req_len,
        DataDirection::ToGuest => hdr.response_buffer_length.get(),
        DataDirection::None => 0,
    }
    .into();
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::little_endian::U32;

    fn rd(addr: u64, len: u32) -> ChainDescriptor {
        ChainDescriptor { addr, len, writable: false }
    }
    fn wr(addr: u64, len: u32) -> ChainDescriptor {
        ChainDescriptor { addr, len, writable: true }
    }

    fn hdr(dir: DataDirection, req: u32, resp: u32, data: u32) -> VspRequest {
        let mut h = VspRequest {
            request_buffer_length: U32::new(req),
            response_buffer_length: U32::new(resp),
            data_buffer_length: U32::new(data),
            ..Default::default()
        };
        canonical_offsets(&mut h, dir);
        h
    }

    #[test]
    fn canonical_put_chain() {
        // header+request in one descriptor, data in two, response+status in one.
        let f =
            VirtioFrame::new([rd(0x1000, 56 + 40), rd(0x8000, 100), rd(0x9000, 28), wr(0x2000, 64 + 12)], 16).unwrap();
        assert_eq!(f.header(), vec![Segment { addr: 0x1000, len: 56 }]);
        assert_eq!(f.status(), vec![Segment { addr: 0x2000 + 64, len: 12 }]);
        let l = f.layout(&hdr(DataDirection::ToHost, 40, 64, 128), DataDirection::ToHost).unwrap();
        assert_eq!(l.request, vec![Segment { addr: 0x1000 + 56, len: 40 }]);
        assert_eq!(l.response, vec![Segment { addr: 0x2000, len: 64 }]);
        assert_eq!(
            l.data,
            DataBuffer::Readable(vec![Segment { addr: 0x8000, len: 100 }, Segment { addr: 0x9000, len: 28 }])
        );
    }

    #[test]
    fn canonical_get_chain() {
        let f = VirtioFrame::new([rd(0x1000, 56 + 40), wr(0x2000, 64), wr(0x3000, 4096 + 12)], 16).unwrap();
        let l = f.layout(&hdr(DataDirection::ToGuest, 40, 64, 4096), DataDirection::ToGuest).unwrap();
        assert_eq!(l.data, DataBuffer::Writable(vec![Segment { addr: 0x3000, len: 4096 }]));
        // Data that would run into the status bytes is refused.
        let l = f.layout(&hdr(DataDirection::ToGuest, 40, 64, 4097), DataDirection::ToGuest);
        assert_eq!(l, Err(FramingError::OutOfRange));
    }

    #[test]
    fn malformed_chains() {
        assert_eq!(VirtioFrame::new([rd(0, 10)], 4), Err(FramingError::NoHeader));
        assert_eq!(VirtioFrame::new([rd(0, 56)], 4), Err(FramingError::NoResponseRoom));
        assert_eq!(VirtioFrame::new([rd(0, 56), wr(0, 12), rd(0, 1)], 4), Err(FramingError::ReadableAfterWritable));
        assert_eq!(VirtioFrame::new([rd(0, 56), rd(0, 0), wr(0, 12)], 4), Err(FramingError::EmptyDescriptor));
        assert_eq!(VirtioFrame::new([rd(u64::MAX - 3, 56), wr(0, 12)], 4), Err(FramingError::AddressOverflow));
        assert!(matches!(
            VirtioFrame::new([rd(0, 56), wr(0, 4), wr(0, 4), wr(0, 4)], 3),
            Err(FramingError::TooManyDescriptors { .. })
        ));
    }

    #[test]
    fn overlapping_buffers_are_refused() {
        let f = VirtioFrame::new([rd(0x1000, 4096), wr(0x2000, 4096)], 4).unwrap();
        let mut h = hdr(DataDirection::ToHost, 40, 64, 100);
        h.data_buffer_offset = U32::new(60);
        assert_eq!(f.layout(&h, DataDirection::ToHost), Err(FramingError::Overlap("data", "request")));
        h.request_buffer_offset = U32::new(10);
        assert_eq!(f.request(&h), Err(FramingError::OverlapsHeader));
        let mut h = hdr(DataDirection::ToGuest, 40, 64, 100);
        h.data_buffer_offset = U32::new(63);
        assert_eq!(f.layout(&h, DataDirection::ToGuest), Err(FramingError::Overlap("data", "response")));
        let mut h = hdr(DataDirection::ToGuest, 40, 4090, 0);
        h.response_buffer_offset = U32::new(0);
        assert_eq!(f.layout(&h, DataDirection::None), Err(FramingError::OutOfRange));
    }
}
