//! `framing::virtio::VirtioFrame::new` and `layout`.
//!
//! Input: byte 0 = descriptor count (mod 17), byte 1 = descriptor budget,
//! byte 2 = data direction (mod 3), then the 56-byte transport header, then
//! 13 bytes per descriptor (addr u64 LE, len u32 LE, flags u8: bit 0 = writable).
//!
//! Invariants: the header and status slices are 56 and 12 bytes; a layout
//! gives each buffer exactly its length, in segments inside descriptors of
//! the right kind (request and ToHost data readable, response and ToGuest
//! data writable), with the request at or after byte 56.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmblob_protocol::framing::DataBuffer;
use vmblob_protocol::framing::virtio::{ChainDescriptor, VirtioFrame};
use vmblob_protocol::ops::DataDirection;
use vmblob_protocol::sg::{Segment, total_len};
use vmblob_protocol::transport::{REQUEST_SIZE, VspRequest};

fn inside(segs: &[Segment], descs: &[ChainDescriptor], writable: bool) {
    for s in segs {
        let ok = descs.iter().any(|d| {
            d.writable == writable && s.addr >= d.addr && s.addr + u64::from(s.len) <= d.addr + u64::from(d.len)
        });
        assert!(ok, "{s:?} is not inside a {} descriptor", if writable { "writable" } else { "readable" });
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 + REQUEST_SIZE {
        return;
    }
    let (count, max, dir) = (usize::from(data[0] % 17), usize::from(data[1]), data[2] % 3);
    let dir = [DataDirection::None, DataDirection::ToHost, DataDirection::ToGuest][usize::from(dir)];
    let Ok(h) = VspRequest::parse(&data[3..3 + REQUEST_SIZE]) else { unreachable!("56 bytes always parse") };
    let descs: Vec<ChainDescriptor> = data[3 + REQUEST_SIZE..]
        .chunks_exact(13)
        .take(count)
        .map(|c| ChainDescriptor {
            addr: u64::from_le_bytes(c[0..8].try_into().unwrap()),
            len: u32::from_le_bytes(c[8..12].try_into().unwrap()),
            writable: c[12] & 1 != 0,
        })
        .collect();
    let Ok(frame) = VirtioFrame::new(descs.iter().copied(), max) else { return };
    assert!(descs.len() <= max);
    assert_eq!(total_len(&frame.header()), REQUEST_SIZE as u64);
    assert_eq!(total_len(&frame.status()), 12);
    inside(&frame.header(), &descs, false);
    inside(&frame.status(), &descs, true);
    let Ok(l) = frame.layout(&h, dir) else { return };
    assert!(h.request_buffer_offset.get() as usize >= REQUEST_SIZE);
    assert_eq!(total_len(&l.request), u64::from(h.request_buffer_length.get()));
    assert_eq!(total_len(&l.response), u64::from(h.response_buffer_length.get()));
    inside(&l.request, &descs, false);
    inside(&l.response, &descs, true);
    let data_len = u64::from(h.data_buffer_length.get());
    match (&l.data, dir) {
        (DataBuffer::None, _) => assert!(dir == DataDirection::None || data_len == 0),
        (DataBuffer::Readable(s), DataDirection::ToHost) => {
            assert_eq!(total_len(s), data_len);
            inside(s, &descs, false);
        }
        (DataBuffer::Writable(s), DataDirection::ToGuest) => {
            assert_eq!(total_len(s), data_len);
            inside(s, &descs, true);
        }
        (other, dir) => panic!("{other:?} for {dir:?}"),
    }
});
