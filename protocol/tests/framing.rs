//! Property tests of the virtio and VMBus framings: canonical layouts map
//! back to exactly the bytes the VSC placed, and arbitrary chains and packets
//! give a layout or a typed error, never a panic.

mod common;

use common::{apply, config, mutation};
use proptest::collection::vec;
use proptest::prelude::*;
use zerocopy::little_endian::U32;

use vmblob_protocol::framing::virtio::{ChainDescriptor, VirtioFrame, canonical_offsets};
use vmblob_protocol::framing::vmbus::{
    GpaDirectFrame, GpaRange, Packet, PacketError, PageBuffer, encode_blob_request, encode_gpa_direct, parse_packet,
};
use vmblob_protocol::framing::{BufferLayout, DataBuffer};
use vmblob_protocol::ops::DataDirection;
use vmblob_protocol::sg::{Segment, total_len};
use vmblob_protocol::transport::{MAX_PAGES, PAGE_SIZE, VspRequest};

const PAGE: u64 = PAGE_SIZE as u64;
/// The largest PFN whose whole page has addresses below 2^64.
const TOP_PFN: u64 = (u64::MAX >> 12) - 1;

fn direction() -> impl Strategy<Value = DataDirection> {
    prop_oneof![Just(DataDirection::None), Just(DataDirection::ToHost), Just(DataDirection::ToGuest)]
}

// ---------------------------------------------------------------- virtio

/// One area (R or W) cut into descriptors: (addr, len, offset of its first byte in the area).
#[derive(Debug, Clone)]
struct Area(Vec<(u64, u32, u64)>);

impl Area {
    /// Split `len` bytes at `cuts` (taken modulo `len`); descriptor `i` lives in
    /// its own 4 GiB slot `slot0 + i` at a random low offset, so none overlap.
    /// With `at_top`, the last descriptor ends at the very top of the address space.
    fn build(len: u64, cuts: &[u64], lows: &[u32], slot0: u64, at_top: bool) -> Self {
        let mut points: Vec<u64> = cuts.iter().map(|c| 1 + c % len.max(1)).filter(|p| *p < len).collect();
        points.push(0);
        points.push(len);
        points.sort_unstable();
        points.dedup();
        let mut descs: Vec<(u64, u32, u64)> = points
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let low = u64::from(lows.get(i).copied().unwrap_or(0) & 0x7fff_ffff);
                (((slot0 + i as u64) << 32) + low, (w[1] - w[0]) as u32, w[0])
            })
            .collect();
        if at_top && let Some(last) = descs.last_mut() {
            last.0 = u64::MAX - u64::from(last.1);
        }
        Area(descs)
    }

    fn len(&self) -> u64 {
        self.0.iter().map(|d| u64::from(d.1)).sum()
    }

    /// Area offsets `[start, end)` covered by `segs`, merged; panics if a
    /// segment is not inside one descriptor.
    fn offsets_of(&self, segs: &[Segment]) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for s in segs {
            let (addr, len, off) = *self
                .0
                .iter()
                .find(|(a, l, _)| s.addr >= *a && s.addr + u64::from(s.len) <= a + u64::from(*l))
                .unwrap_or_else(|| panic!("{s:?} lies in no descriptor of {self:?}"));
            let _ = (addr, len);
            let start = off + (s.addr - addr);
            let end = start + u64::from(s.len);
            match out.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => out.push((start, end)),
            }
        }
        out
    }

    fn descriptors(&self, writable: bool) -> impl Iterator<Item = ChainDescriptor> + '_ {
        self.0.iter().map(move |(addr, len, _)| ChainDescriptor { addr: *addr, len: *len, writable })
    }
}

#[derive(Debug, Clone)]
struct CanonicalCase {
    dir: DataDirection,
    req_len: u32,
    resp_len: u32,
    data_len: u32,
    data_valid: u32,
    r: Area,
    w: Area,
}

fn canonical_case() -> impl Strategy<Value = CanonicalCase> {
    (
        direction(),
        1u32..700,
        1u32..700,
        prop_oneof![Just(0u32), 1u32..20_000],
        any::<u32>(),
        (vec(any::<u64>(), 0..6), vec(any::<u32>(), 8)),
        (vec(any::<u64>(), 0..6), vec(any::<u32>(), 8), any::<bool>()),
    )
        .prop_map(|(dir, req_len, resp_len, data_len, valid, (rcuts, rlows), (wcuts, wlows, at_top))| {
            let r_len = 56 + u64::from(req_len) + if dir == DataDirection::ToHost { u64::from(data_len) } else { 0 };
            let w_len = u64::from(resp_len) + if dir == DataDirection::ToGuest { u64::from(data_len) } else { 0 } + 12;
            CanonicalCase {
                dir,
                req_len,
                resp_len,
                data_len,
                data_valid: if data_len == 0 { 0 } else { valid % (data_len + 1) },
                r: Area::build(r_len, &rcuts, &rlows, 1, false),
                w: Area::build(w_len, &wcuts, &wlows, 1 << 20, at_top),
            }
        })
}

/// Oracle for `VirtioFrame::new`.
fn frame_ok(descs: &[ChainDescriptor], max: usize) -> bool {
    let first_w = descs.iter().position(|d| d.writable).unwrap_or(descs.len());
    let r: u64 = descs[..first_w].iter().map(|d| u64::from(d.len)).sum();
    let w: u64 = descs[first_w..].iter().map(|d| u64::from(d.len)).sum();
    descs.len() <= max
        && descs.iter().all(|d| d.len > 0 && d.addr.checked_add(u64::from(d.len)).is_some())
        && descs[first_w..].iter().all(|d| d.writable)
        && r >= 56
        && w >= 12
}

/// Oracle for `VirtioFrame::layout` on a valid frame with areas of `r` and `w` bytes.
fn layout_ok(h: &VspRequest, dir: DataDirection, r: u64, w: u64) -> bool {
    let g = |x: U32| u64::from(x.get());
    let (ro, rl) = (g(h.request_buffer_offset), g(h.request_buffer_length));
    let (so, sl) = (g(h.response_buffer_offset), g(h.response_buffer_length));
    let (d_o, dl) = (g(h.data_buffer_offset), g(h.data_buffer_length));
    let apart = |a: u64, al: u64, b: u64, bl: u64| al == 0 || bl == 0 || a + al <= b || b + bl <= a;
    let payload = w - 12;
    let base = ro >= 56 && ro + rl <= r && so + sl <= payload;
    base && match dir {
        _ if dl == 0 => true,
        DataDirection::None => true,
        DataDirection::ToHost => d_o >= 56 && d_o + dl <= r && apart(d_o, dl, ro, rl),
        DataDirection::ToGuest => d_o + dl <= payload && apart(d_o, dl, so, sl),
    }
}

fn inside_some(seg: &Segment, descs: &[ChainDescriptor], writable: bool) -> bool {
    descs.iter().any(|d| {
        d.writable == writable && seg.addr >= d.addr && seg.addr + u64::from(seg.len) <= d.addr + u64::from(d.len)
    })
}

fn small_or_any() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..300, Just(56), any::<u32>()]
}

fn chain_descriptor() -> impl Strategy<Value = ChainDescriptor> {
    (prop_oneof![0u64..0x10000, any::<u64>(), (u64::MAX - 0x1000)..=u64::MAX], small_or_any(), any::<bool>())
        .prop_map(|(addr, len, writable)| ChainDescriptor { addr, len, writable })
}

fn arbitrary_header() -> impl Strategy<Value = VspRequest> {
    (vec(small_or_any(), 7), any::<[u8; 16]>()).prop_map(|(f, tid)| VspRequest {
        version: U32::new(0),
        timeout_ms: U32::new(0),
        data_buffer_offset: U32::new(f[0]),
        data_buffer_length: U32::new(f[1]),
        data_buffer_valid: U32::new(f[2]),
        operation_type: U32::new(0x100),
        request_buffer_offset: U32::new(f[3]),
        request_buffer_length: U32::new(f[4]),
        response_buffer_offset: U32::new(f[5]),
        response_buffer_length: U32::new(f[6]),
        transaction_id: tid,
    })
}

/// A valid chain of `r` readable and `w` writable bytes and a header whose
/// offsets and lengths fall around those sizes, so layouts are accepted and
/// refused about equally often.
fn near_valid() -> impl Strategy<Value = (u32, u32, VspRequest, DataDirection)> {
    (56u32..600, 12u32..600, direction()).prop_flat_map(|(r, w, dir)| {
        let n = r.max(w);
        let off = move || prop_oneof![0..=n + 8, 40u32..80, Just(0)];
        let len = move || prop_oneof![2 => 0..=n / 3, 1 => 0..=n + 8, 1 => Just(0)];
        let bufs = ((off(), len()), (off(), len()), (off(), len()));
        (Just(r), Just(w), bufs, Just(dir)).prop_map(|(r, w, ((ro, rl), (so, sl), (d_o, dl)), dir)| {
            let h = VspRequest {
                request_buffer_offset: U32::new(ro),
                request_buffer_length: U32::new(rl),
                response_buffer_offset: U32::new(so),
                response_buffer_length: U32::new(sl),
                data_buffer_offset: U32::new(d_o),
                data_buffer_length: U32::new(dl),
                ..Default::default()
            };
            (r, w, h, dir)
        })
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn virtio_canonical_layout_maps_back(c in canonical_case()) {
        let mut h = VspRequest {
            request_buffer_length: U32::new(c.req_len),
            response_buffer_length: U32::new(c.resp_len),
            data_buffer_length: U32::new(c.data_len),
            data_buffer_valid: U32::new(c.data_valid),
            operation_type: U32::new(0x100),
            transaction_id: [1; 16],
            ..Default::default()
        };
        canonical_offsets(&mut h, c.dir);
        prop_assert!(h.validate().is_ok());
        let descs: Vec<ChainDescriptor> = c.r.descriptors(false).chain(c.w.descriptors(true)).collect();
        let frame = VirtioFrame::new(descs.iter().copied(), descs.len()).unwrap();
        let (r_len, w_len) = (c.r.len(), c.w.len());
        prop_assert_eq!(c.r.offsets_of(&frame.header()), vec![(0, 56)]);
        prop_assert_eq!(c.w.offsets_of(&frame.status()), vec![(w_len - 12, w_len)]);
        prop_assert_eq!(frame.writable_payload_len(), w_len - 12);

        let l = frame.layout(&h, c.dir).unwrap();
        prop_assert_eq!(&frame.request(&h).unwrap(), &l.request);
        let (req, resp, data) = (u64::from(c.req_len), u64::from(c.resp_len), u64::from(c.data_len));
        prop_assert_eq!(total_len(&l.request), req);
        prop_assert_eq!(total_len(&l.response), resp);
        prop_assert_eq!(c.r.offsets_of(&l.request), vec![(56, 56 + req)]);
        prop_assert_eq!(c.w.offsets_of(&l.response), vec![(0, resp)]);
        prop_assert_eq!(l.data_valid, c.data_valid);
        match (&l.data, c.dir) {
            (DataBuffer::None, DataDirection::None) => {}
            (DataBuffer::None, _) => prop_assert_eq!(data, 0),
            (DataBuffer::Readable(s), DataDirection::ToHost) => {
                prop_assert_eq!(total_len(s), data);
                prop_assert_eq!(c.r.offsets_of(s), vec![(56 + req, r_len)]);
            }
            (DataBuffer::Writable(s), DataDirection::ToGuest) => {
                prop_assert_eq!(total_len(s), data);
                prop_assert_eq!(c.w.offsets_of(s), vec![(resp, w_len - 12)]);
            }
            (other, dir) => prop_assert!(false, "{other:?} for {dir:?}"),
        }
        // Any descriptor budget below the chain's length is refused.
        prop_assert!(VirtioFrame::new(descs.iter().copied(), descs.len() - 1).is_err());
    }

    #[test]
    fn virtio_arbitrary_chains_are_total(
        descs in vec(chain_descriptor(), 0..7),
        max in 0usize..8,
        h in arbitrary_header(),
        dir in direction(),
    ) {
        let frame = VirtioFrame::new(descs.iter().copied(), max);
        prop_assert_eq!(frame.is_ok(), frame_ok(&descs, max), "{:?}", frame);
        let Ok(frame) = frame else { return Ok(()) };
        let r = descs.iter().filter(|d| !d.writable).map(|d| u64::from(d.len)).sum();
        let w = descs.iter().filter(|d| d.writable).map(|d| u64::from(d.len)).sum();
        prop_assert_eq!(total_len(&frame.header()), 56);
        prop_assert_eq!(total_len(&frame.status()), 12);
        let layout = frame.layout(&h, dir);
        prop_assert_eq!(layout.is_ok(), layout_ok(&h, dir, r, w), "{:?}", layout);
        let Ok(l) = layout else { return Ok(()) };
        prop_assert_eq!(total_len(&l.request), u64::from(h.request_buffer_length.get()));
        prop_assert_eq!(total_len(&l.response), u64::from(h.response_buffer_length.get()));
        prop_assert!(l.request.iter().all(|s| inside_some(s, &descs, false)));
        prop_assert!(l.response.iter().all(|s| inside_some(s, &descs, true)));
        match &l.data {
            DataBuffer::None => prop_assert!(dir == DataDirection::None || h.data_buffer_length.get() == 0),
            DataBuffer::Readable(s) => {
                prop_assert_eq!(dir, DataDirection::ToHost);
                prop_assert_eq!(total_len(s), u64::from(h.data_buffer_length.get()));
                prop_assert!(s.iter().all(|s| inside_some(s, &descs, false)));
            }
            DataBuffer::Writable(s) => {
                prop_assert_eq!(dir, DataDirection::ToGuest);
                prop_assert_eq!(total_len(s), u64::from(h.data_buffer_length.get()));
                prop_assert!(s.iter().all(|s| inside_some(s, &descs, true)));
            }
            DataBuffer::ReadWrite(_) => prop_assert!(false, "virtio never gives a read-write buffer"),
        }
    }
}

proptest! {
    // Cheap, and the interesting refusals are a few percent of cases.
    #![proptest_config(config(2048))]

    #[test]
    fn virtio_layout_matches_oracle((r, w, h, dir) in near_valid(), split in any::<u32>()) {
        // Each area in two descriptors, so buffers also cross descriptor boundaries.
        let (r1, w1) = (1 + split % r, 1 + split % w);
        let mut descs = vec![ChainDescriptor { addr: 0x10_0000, len: r1, writable: false }];
        if r1 < r {
            descs.push(ChainDescriptor { addr: 0x20_0000, len: r - r1, writable: false });
        }
        descs.push(ChainDescriptor { addr: 0x30_0000, len: w1, writable: true });
        if w1 < w {
            descs.push(ChainDescriptor { addr: 0x40_0000, len: w - w1, writable: true });
        }
        let frame = VirtioFrame::new(descs.iter().copied(), 4).unwrap();
        let layout = frame.layout(&h, dir);
        prop_assert_eq!(layout.is_ok(), layout_ok(&h, dir, r.into(), w.into()), "{:?}", layout);
    }
}

// ---------------------------------------------------------------- VMBus

fn pfn() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..(1 << 24), 1 => (TOP_PFN - 3)..=TOP_PFN, 1 => 0..=TOP_PFN]
}

/// A buffer of 1..=`max_len` bytes as pages.
fn page_buffer(max_len: u32) -> impl Strategy<Value = PageBuffer> {
    (0..PAGE_SIZE, 1..=max_len).prop_flat_map(|(first_page_offset, len)| {
        let pages = (first_page_offset + len).div_ceil(PAGE_SIZE) as usize;
        // Either random page numbers or a physically contiguous run.
        prop_oneof![
            vec(pfn(), pages),
            (0u64..=TOP_PFN - pages as u64 + 1).prop_map(move |p0| (p0..p0 + pages as u64).collect()),
        ]
        .prop_map(move |pfns| PageBuffer { first_page_offset, len, pfns })
    })
}

/// `(pfn, offset in page, bytes)` for every page-sized piece of `segs`.
fn pieces_of_segments(segs: &[Segment]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for s in segs {
        assert!(s.addr.checked_add(u64::from(s.len)).is_some(), "{s:?} ends past 2^64");
        let (mut pos, end) = (s.addr, s.addr + u64::from(s.len));
        while pos < end {
            let n = (PAGE - pos % PAGE).min(end - pos);
            out.push((pos / PAGE, pos % PAGE, n));
            pos += n;
        }
    }
    out
}

/// The same, computed from the buffer the VSC described.
fn pieces_of_buffer(b: &PageBuffer) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let (mut pos, end) = (u64::from(b.first_page_offset), u64::from(b.first_page_offset) + u64::from(b.len));
    while pos < end {
        let n = (PAGE - pos % PAGE).min(end - pos);
        out.push((b.pfns[(pos / PAGE) as usize], pos % PAGE, n));
        pos += n;
    }
    out
}

fn ranges_ok(ranges: &[GpaRange], max_pages: usize) -> Result<(), TestCaseError> {
    prop_assert!(!ranges.is_empty());
    let mut pages = 0;
    for r in ranges {
        prop_assert!(r.byte_offset < PAGE_SIZE && r.byte_count > 0);
        prop_assert_eq!(r.pfns.len() as u64, (u64::from(r.byte_offset) + u64::from(r.byte_count)).div_ceil(PAGE));
        prop_assert!(r.pfns.iter().all(|p| *p <= TOP_PFN));
        pages += r.pfns.len();
    }
    prop_assert!(pages <= max_pages);
    Ok(())
}

/// Oracle for `GpaDirectFrame::layout` over a range of `bc` bytes.
fn gpa_layout_ok(h: &VspRequest, bc: u64) -> bool {
    let g = |x: U32| u64::from(x.get());
    let bufs = [
        (g(h.request_buffer_offset), g(h.request_buffer_length)),
        (g(h.response_buffer_offset), g(h.response_buffer_length)),
        (g(h.data_buffer_offset), g(h.data_buffer_length)),
    ];
    let apart = |(a, al): (u64, u64), (b, bl): (u64, u64)| al == 0 || bl == 0 || a + al <= b || b + bl <= a;
    apart(bufs[0], bufs[1])
        && apart(bufs[2], bufs[1])
        && apart(bufs[2], bufs[0])
        && bufs[0].0 + bufs[0].1 <= bc
        && bufs[1].0 + bufs[1].1 <= bc
        && (bufs[2].1 == 0 || bufs[2].0 + bufs[2].1 <= bc)
}

/// Everything the VSP does with a packet; checks what holds whenever it succeeds.
fn exercise_packet(bytes: &[u8], max_pages: usize) -> Result<(), TestCaseError> {
    let Ok(p) = parse_packet(bytes, max_pages) else { return Ok(()) };
    let len8 = usize::from(u16::from_le_bytes([bytes[4], bytes[5]]));
    let off8 = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    let payload_len = match &p {
        Packet::InBand { payload, .. } | Packet::Completion { payload, .. } => payload.len(),
        Packet::GpaDirect { ranges, payload, .. } => {
            ranges_ok(ranges, max_pages)?;
            payload.len()
        }
    };
    prop_assert_eq!(payload_len, (len8 - off8) * 8);
    let Packet::GpaDirect { ranges, .. } = &p else { return Ok(()) };
    let range = ranges[0].clone();
    let Ok(frame) = GpaDirectFrame::from_packet(p.clone()) else { return Ok(()) };
    prop_assert!(frame.transaction_id != 0 && ranges.len() == 1);
    let layout = frame.layout();
    prop_assert_eq!(layout.is_ok(), gpa_layout_ok(&frame.header, u64::from(range.byte_count)), "{:?}", layout);
    if let Ok(l) = layout {
        check_gpa_layout(&l, &frame.header, &range)?;
    }
    Ok(())
}

fn check_gpa_layout(l: &BufferLayout, h: &VspRequest, range: &GpaRange) -> Result<(), TestCaseError> {
    prop_assert_eq!(total_len(&l.request), u64::from(h.request_buffer_length.get()));
    prop_assert_eq!(total_len(&l.response), u64::from(h.response_buffer_length.get()));
    let data: &[Segment] = match &l.data {
        DataBuffer::None => {
            prop_assert_eq!(h.data_buffer_length.get(), 0);
            &[]
        }
        DataBuffer::ReadWrite(s) => {
            prop_assert_eq!(total_len(s), u64::from(h.data_buffer_length.get()));
            s
        }
        other => return Err(TestCaseError::fail(format!("VMBus data buffer {other:?}"))),
    };
    for segs in [&l.request[..], &l.response[..], data] {
        for (pfn, _, _) in pieces_of_segments(segs) {
            prop_assert!(range.pfns.contains(&pfn), "pfn {pfn:#x} not in the packet");
        }
    }
    Ok(())
}

fn gpa_range() -> impl Strategy<Value = GpaRange> {
    (0..PAGE_SIZE + 2, prop_oneof![1u32..20_000, Just(0), any::<u32>().prop_map(|c| c % (1 << 16))]).prop_flat_map(
        |(byte_offset, byte_count)| {
            let n = (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(PAGE) as usize;
            (vec(prop_oneof![pfn(), Just(TOP_PFN + 1), any::<u64>()], n..=n + 1)).prop_map(move |pfns| GpaRange {
                byte_count,
                byte_offset,
                pfns,
            })
        },
    )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn vmbus_page_buffers_map_back(
        data in proptest::option::of(page_buffer(3 * PAGE_SIZE)),
        request in page_buffer(2 * PAGE_SIZE),
        response in page_buffer(2 * PAGE_SIZE),
        tid in 1u64..,
        txn in any::<[u8; 16]>(),
        valid in any::<u32>(),
    ) {
        let data_len = data.as_ref().map_or(0, |d| d.len);
        let mut h = VspRequest {
            data_buffer_length: U32::new(data_len),
            data_buffer_valid: U32::new(valid % (data_len + 1)),
            operation_type: U32::new(0x100),
            request_buffer_length: U32::new(request.len),
            response_buffer_length: U32::new(response.len),
            transaction_id: txn,
            ..Default::default()
        };
        let pkt = encode_blob_request(tid, &mut h, data.as_ref(), &request, &response);
        prop_assert_eq!(pkt.len() % 8, 0);

        // The seed's offsets: data, request, response pages in that order.
        let data_pages = data.as_ref().map_or(0, |d| d.pfns.len() as u32);
        prop_assert_eq!(h.data_buffer_offset.get(), data.as_ref().map_or(0, |d| d.first_page_offset));
        prop_assert_eq!(h.request_buffer_offset.get(), request.first_page_offset + data_pages * PAGE_SIZE);
        prop_assert_eq!(
            h.response_buffer_offset.get(),
            response.first_page_offset + (data_pages + request.pfns.len() as u32) * PAGE_SIZE
        );

        let p = parse_packet(&pkt, MAX_PAGES as usize).unwrap();
        let all: Vec<u64> =
            data.iter().chain([&request, &response]).flat_map(|b| b.pfns.iter().copied()).collect();
        match &p {
            Packet::GpaDirect { transaction_id, completion_requested: true, ranges, payload } => {
                prop_assert_eq!(*transaction_id, tid);
                prop_assert_eq!(
                    ranges,
                    &vec![GpaRange { byte_count: all.len() as u32 * PAGE_SIZE, byte_offset: 0, pfns: all.clone() }]
                );
                prop_assert_eq!(&payload[..56], zerocopy::IntoBytes::as_bytes(&h));
            }
            other => prop_assert!(false, "{other:?}"),
        }
        // Too few pages allowed: refused before any PFN is copied.
        let too_few = parse_packet(&pkt, all.len() - 1);
        prop_assert!(matches!(too_few, Err(PacketError::TooManyPages { .. })), "{:?}", too_few);

        let frame = GpaDirectFrame::from_packet(p).unwrap();
        prop_assert_eq!(frame.transaction_id, tid);
        prop_assert_eq!(frame.header, h);
        let l = frame.layout().unwrap();
        prop_assert_eq!(pieces_of_segments(&l.request), pieces_of_buffer(&request));
        prop_assert_eq!(pieces_of_segments(&l.response), pieces_of_buffer(&response));
        match (&l.data, &data) {
            (DataBuffer::None, None) => {}
            (DataBuffer::ReadWrite(s), Some(d)) => prop_assert_eq!(pieces_of_segments(s), pieces_of_buffer(d)),
            (got, want) => prop_assert!(false, "{got:?} for {want:?}"),
        }
        prop_assert_eq!(l.data_valid, h.data_buffer_valid.get());
    }

    #[test]
    fn vmbus_arbitrary_bytes_are_total(bytes in vec(any::<u8>(), 0..160), max_pages in 0usize..20) {
        exercise_packet(&bytes, max_pages)?;
    }

    #[test]
    fn vmbus_arbitrary_gpa_packets_are_total(
        tid in prop_oneof![Just(0u64), any::<u64>()],
        ranges in vec(gpa_range(), 0..3),
        h in arbitrary_header(),
        short_payload in any::<bool>(),
        muts in vec(mutation(), 0..3),
        max_pages in prop_oneof![0usize..4, Just(MAX_PAGES as usize)],
    ) {
        let payload = zerocopy::IntoBytes::as_bytes(&h);
        let payload = if short_payload { &payload[..40] } else { payload };
        let mut bytes = encode_gpa_direct(tid, &ranges, payload);
        for m in &muts {
            apply(&mut bytes, m);
        }
        exercise_packet(&bytes, max_pages)?;
    }

    #[test]
    fn vmbus_blob_requests_with_hostile_headers_are_total(
        request in page_buffer(2 * PAGE_SIZE),
        h in arbitrary_header(),
        tid in 1u64..,
    ) {
        // Encode honestly, then overwrite the header offsets and lengths with arbitrary ones.
        let mut honest = h;
        let pkt = encode_blob_request(tid, &mut honest, None, &request, &request);
        let mut bytes = pkt.clone();
        let payload_at = bytes.len() - 56;
        bytes[payload_at..].copy_from_slice(zerocopy::IntoBytes::as_bytes(&h));
        exercise_packet(&bytes, MAX_PAGES as usize)?;
    }
}

// ---------------------------------------------------------------- fixed cases

#[test]
fn top_pfns() {
    // The last page whose addresses all fit below 2^64 is accepted, and a
    // buffer running from it into the next listed page maps back exactly.
    let request = PageBuffer { first_page_offset: 4000, len: 200, pfns: vec![TOP_PFN, TOP_PFN] };
    let mut h = VspRequest {
        request_buffer_length: U32::new(200),
        response_buffer_length: U32::new(200),
        operation_type: U32::new(0x100),
        transaction_id: [1; 16],
        ..Default::default()
    };
    let pkt = encode_blob_request(1, &mut h, None, &request, &request);
    let l = GpaDirectFrame::from_packet(parse_packet(&pkt, 8).unwrap()).unwrap().layout().unwrap();
    assert_eq!(
        l.request,
        vec![Segment { addr: TOP_PFN * PAGE + 4000, len: 96 }, Segment { addr: TOP_PFN * PAGE, len: 104 }]
    );
    // The page at 2^64 - 4096 would end at 2^64: refused.
    let request = PageBuffer { first_page_offset: 0, len: 200, pfns: vec![TOP_PFN + 1] };
    let pkt = encode_blob_request(1, &mut h, None, &request, &request);
    assert_eq!(parse_packet(&pkt, 8), Err(PacketError::BadPfn(TOP_PFN + 1)));
}
