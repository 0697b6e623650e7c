//! `framing::vmbus::parse_packet`, then for GPA-direct packets
//! `GpaDirectFrame::from_packet` and `layout`. The first two bytes give the
//! page budget (`max_pages`), the rest is the packet.
//!
//! Invariants: a parsed packet obeys every check the VSP relies on (ranges
//! well formed, page budget kept, payload length from `len8 - offset8`); a
//! layout gives each buffer exactly its length in segments that lie in the
//! packet's pages and end below 2^64.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmblob_protocol::framing::DataBuffer;
use vmblob_protocol::framing::vmbus::{GpaDirectFrame, Packet, parse_blob_completion, parse_packet};
use vmblob_protocol::sg::{Segment, total_len};
use vmblob_protocol::transport::{MAX_PAGES, PAGE_SIZE};

fn check_in_pages(segs: &[Segment], pfns: &[u64]) {
    let page = u64::from(PAGE_SIZE);
    for s in segs {
        let end = s.addr.checked_add(u64::from(s.len)).expect("segment ends past 2^64");
        let mut pos = s.addr;
        while pos < end {
            assert!(pfns.contains(&(pos / page)), "{s:?} leaves the packet's pages");
            pos = (pos / page + 1) * page;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_pages = usize::from(u16::from_le_bytes([data[0], data[1]])) % (MAX_PAGES as usize + 1);
    let bytes = &data[2..];
    let Ok(p) = parse_packet(bytes, max_pages) else { return };
    let off8 = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    let len8 = usize::from(u16::from_le_bytes([bytes[4], bytes[5]]));
    match &p {
        Packet::InBand { payload, .. } => assert_eq!(payload.len(), (len8 - off8) * 8),
        Packet::Completion { payload, .. } => {
            assert_eq!(payload.len(), (len8 - off8) * 8);
            let _ = parse_blob_completion(payload);
        }
        Packet::GpaDirect { ranges, payload, .. } => {
            assert_eq!(payload.len(), (len8 - off8) * 8);
            assert!(!ranges.is_empty());
            let mut pages = 0;
            for r in ranges {
                assert!(r.byte_offset < PAGE_SIZE && r.byte_count > 0);
                let need = (u64::from(r.byte_offset) + u64::from(r.byte_count)).div_ceil(u64::from(PAGE_SIZE));
                assert_eq!(r.pfns.len() as u64, need);
                assert!(r.pfns.iter().all(|p| p.checked_add(1).and_then(|e| e.checked_mul(4096)).is_some()));
                pages += r.pfns.len();
            }
            assert!(pages <= max_pages);
        }
    }
    let Packet::GpaDirect { ranges, .. } = &p else { return };
    let pfns = ranges[0].pfns.clone();
    let Ok(frame) = GpaDirectFrame::from_packet(p) else { return };
    assert_ne!(frame.transaction_id, 0);
    let Ok(l) = frame.layout() else { return };
    let h = &frame.header;
    assert_eq!(total_len(&l.request), u64::from(h.request_buffer_length.get()));
    assert_eq!(total_len(&l.response), u64::from(h.response_buffer_length.get()));
    check_in_pages(&l.request, &pfns);
    check_in_pages(&l.response, &pfns);
    match &l.data {
        DataBuffer::None => assert_eq!(h.data_buffer_length.get(), 0),
        DataBuffer::ReadWrite(s) => {
            assert_eq!(total_len(s), u64::from(h.data_buffer_length.get()));
            check_in_pages(s, &pfns);
        }
        other => panic!("VMBus data buffer {other:?}"),
    }
});
