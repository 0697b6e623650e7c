//! Engine tests over a `GuestMemoryMmap` model: chains are laid out by hand
//! the way a guest driver would, then served directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmblob_protocol::framing::virtio::{ChainDescriptor, VirtioFrame, canonical_offsets};
use vmblob_protocol::ops::{
    BlobListItem, BlockListType, ByteRange, Conditions, ETag, GetBlob, ListBlobs, ListContainers, Metadata, OpRequest,
    OpResponse, PutBlob, PutBlock, PutBlockList, ResponseMessage,
};
use vmblob_protocol::transport::OperationType;
use vmblob_protocol::{BlobError, BlobName, BlockId, ContainerName, DataDirection, VspRequest, VspResponse};
use zerocopy::IntoBytes;

use super::*;
use crate::store::memory::MemoryStore;
use crate::vhost::VirtioRequest;

const MEM: u64 = 512 << 20;

struct Harness {
    mem: GuestMemoryMmap,
    engine: Arc<Engine>,
    next: u64,
    txn: u64,
    /// The op version requests are sent in (and answers must come back in).
    version: u16,
}

struct Sent {
    request: VirtioRequest,
    resp_gpa: u64,
    data_gpa: u64,
    op: vmblob_protocol::OpCode,
}

fn name(c: &str) -> ContainerName {
    ContainerName::new(c).unwrap()
}

fn blob_ref(c: &str, b: &str) -> vmblob_protocol::ops::BlobRef {
    vmblob_protocol::ops::BlobRef { container: name(c), blob: BlobName::new(b).unwrap() }
}

fn put_op(c: &str, b: &str, conditions: Conditions) -> OpRequest {
    OpRequest::PutBlob(PutBlob {
        target: blob_ref(c, b),
        content_type: "application/octet-stream".into(),
        headers: Default::default(),
        metadata: Metadata::new(vec![("owner".into(), "test".into())]).unwrap(),
        conditions,
        content_md5: None,
        content_crc64: None,
    })
}

impl Harness {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        Self::with_engine(Engine::new(Arc::new(MemoryStore::new()), limits, 1))
    }

    fn with_engine(engine: Engine) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        Self { mem, engine: Arc::new(engine), next: 0x1000, txn: 1, version: OP_VERSION }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next;
        self.next = (self.next + len.max(1) + 0xfff) & !0xfff;
        assert!(self.next < MEM, "test guest memory exhausted");
        at
    }

    /// Lay out a canonical chain: R = header|request|data-out, W = response|data-in|status.
    fn prepare(&mut self, op: &OpRequest, data_out: &[u8], data_in: u32, resp_cap: u32) -> Sent {
        let body = op.encode_at(self.version).unwrap();
        self.prepare_body(&body, op.op(), data_out, data_in, resp_cap)
    }

    /// [`Harness::prepare`] of request bytes as given.
    fn prepare_body(&mut self, body: &[u8], op: OpCode, data_out: &[u8], data_in: u32, resp_cap: u32) -> Sent {
        let dir = op.data_direction();
        let data_len = match dir {
            DataDirection::ToHost => data_out.len() as u32,
            DataDirection::ToGuest => data_in,
            DataDirection::None => 0,
        };
        self.txn += 1;
        let mut tid = [0u8; 16];
        tid[..8].copy_from_slice(&self.txn.to_le_bytes());
        let mut hdr = VspRequest {
            operation_type: (OperationType::UserRequest as u32).into(),
            request_buffer_length: (body.len() as u32).into(),
            response_buffer_length: resp_cap.into(),
            data_buffer_length: data_len.into(),
            data_buffer_valid: (if dir == DataDirection::ToHost { data_len } else { 0 }).into(),
            transaction_id: tid,
            ..Default::default()
        };
        canonical_offsets(&mut hdr, dir);
        let req_gpa = self.alloc(56 + body.len() as u64);
        self.mem.write_slice(hdr.as_bytes(), GuestAddress(req_gpa)).unwrap();
        self.mem.write_slice(body, GuestAddress(req_gpa + 56)).unwrap();
        let mut descs = vec![ChainDescriptor { addr: req_gpa, len: 56 + body.len() as u32, writable: false }];
        let data_gpa = self.alloc(u64::from(data_len));
        if dir == DataDirection::ToHost && data_len > 0 {
            self.mem.write_slice(data_out, GuestAddress(data_gpa)).unwrap();
            descs.push(ChainDescriptor { addr: data_gpa, len: data_len, writable: false });
        }
        let resp_gpa = self.alloc(u64::from(resp_cap) + 12);
        descs.push(ChainDescriptor { addr: resp_gpa, len: resp_cap, writable: true });
        if dir == DataDirection::ToGuest && data_len > 0 {
            descs.push(ChainDescriptor { addr: data_gpa, len: data_len, writable: true });
        }
        descs.push(ChainDescriptor { addr: resp_gpa + u64::from(resp_cap), len: 12, writable: true });
        let frame = VirtioFrame::new(descs, 64).unwrap();
        Sent { request: VirtioRequest { frame, header: hdr }, resp_gpa, data_gpa, op }
    }

    /// Serve request bytes as given; the answer, whatever its version.
    fn raw(&mut self, body: &[u8], op: OpCode) -> ResponseMessage {
        let s = self.prepare_body(body, op, &[], 0, 4096);
        let resp = self.engine.serve(&self.mem, &s.request, &CancelToken::new(None));
        let mut buf = vec![0u8; resp.response_len.get() as usize];
        self.mem.read_slice(&mut buf, GuestAddress(s.resp_gpa)).unwrap();
        ResponseMessage::decode(&buf, op).unwrap()
    }

    fn decode(&self, s: &Sent, resp: &VspResponse) -> Result<OpResponse, BlobError> {
        let n = resp.response_len.get() as usize;
        if n == 0 {
            return Err(BlobError::from_code(resp.error.get()).expect("status-only answer must be an error"));
        }
        let mut buf = vec![0u8; n];
        self.mem.read_slice(&mut buf, GuestAddress(s.resp_gpa)).unwrap();
        let msg = ResponseMessage::decode(&buf, s.op).unwrap();
        assert_eq!(msg.version, self.version, "answered in the request's op version");
        match msg.result {
            Ok(r) => {
                assert_eq!(resp.error.get(), 0);
                Ok(r)
            }
            Err(e) => {
                assert_eq!(e.error.code(), resp.error.get(), "body status matches transport status");
                Err(e.error)
            }
        }
    }

    fn run(&mut self, op: &OpRequest, data_out: &[u8], data_in: u32) -> (Result<OpResponse, BlobError>, Vec<u8>) {
        let s = self.prepare(op, data_out, data_in, 64 << 10);
        let resp = self.engine.serve(&self.mem, &s.request, &CancelToken::new(None));
        let r = self.decode(&s, &resp);
        let data = match &r {
            Ok(OpResponse::BlobData { length, .. }) => {
                let mut d = vec![0u8; *length as usize];
                self.mem.read_slice(&mut d, GuestAddress(s.data_gpa)).unwrap();
                d
            }
            _ => Vec::new(),
        };
        (r, data)
    }

    fn ok(&mut self, op: &OpRequest, data_out: &[u8]) -> OpResponse {
        self.run(op, data_out, 0).0.unwrap()
    }

    fn get(&mut self, c: &str, b: &str, range: Option<ByteRange>, cap: u32) -> Result<Vec<u8>, BlobError> {
        let op = OpRequest::GetBlob(GetBlob { target: blob_ref(c, b), range, conditions: Conditions::none() });
        let (r, d) = self.run(&op, &[], cap);
        r.map(|_| d)
    }

    fn mkcontainer(&mut self, c: &str) {
        self.ok(&OpRequest::CreateContainer { container: name(c), metadata: Metadata::default() }, &[]);
    }
}

mod replay;

/// A VSC of an older build speaks op version 1 and gets version-1 answers,
/// without the fields it has no place for; a version-2 peer sees them.
#[test]
fn each_op_version_is_answered_in_its_own() {
    let mut h = Harness::new();
    h.mkcontainer("box");
    let mut put = put_op("box", "b", Conditions::none());
    if let OpRequest::PutBlob(p) = &mut put {
        p.headers.cache_control = "no-cache".into();
    }
    let w = match h.ok(&put, b"data") {
        OpResponse::BlobWritten(w) => w,
        r => panic!("{r:?}"),
    };
    let head = OpRequest::GetBlobProperties { target: blob_ref("box", "b"), conditions: Conditions::none() };
    match h.ok(&head, &[]) {
        OpResponse::BlobProperties(p) => {
            assert_eq!((p.headers.cache_control.as_str(), p.created_ms), ("no-cache", w.last_modified_ms))
        }
        r => panic!("{r:?}"),
    }
    h.version = 1;
    match h.ok(&head, &[]) {
        OpResponse::BlobProperties(p) => {
            assert_eq!((p.headers, p.created_ms, p.etag), (Default::default(), 0, w.etag.clone()));
        }
        r => panic!("{r:?}"),
    }
    // An error to a version-1 request is in version 1 too.
    let missing = OpRequest::GetBlobProperties { target: blob_ref("box", "nope"), conditions: Conditions::none() };
    assert_eq!(h.run(&missing, &[], 0).0, Err(BlobError::BlobNotFound));
    // A version the VSP does not speak is refused, answered in the oldest one.
    let mut body = head.encode_at(1).unwrap();
    body[4..6].copy_from_slice(&(OP_VERSION + 1).to_le_bytes());
    let msg = h.raw(&body, OpCode::GetBlobProperties);
    assert_eq!((msg.version, msg.result.map_err(|e| e.error)), (1, Err(BlobError::Unsupported)));
}

#[test]
fn every_operation_round_trips() {
    let mut h = Harness::new();
    match h.ok(&OpRequest::GetDeviceConfig, &[]) {
        OpResponse::DeviceConfig(c) => assert_eq!(c, h.engine.device_config()),
        r => panic!("{r:?}"),
    }
    h.mkcontainer("photos");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let w = match h.ok(&put_op("photos", "2024/cat.jpg", Conditions::none()), &data) {
        OpResponse::BlobWritten(w) => w,
        r => panic!("{r:?}"),
    };
    assert_eq!(w.content_crc64, crate::store::crc64(&data));
    assert_eq!(h.get("photos", "2024/cat.jpg", None, 200_000).unwrap(), data);
    let range = ByteRange { offset: 1000, length: 500 };
    assert_eq!(h.get("photos", "2024/cat.jpg", Some(range), 4096).unwrap(), &data[1000..1500]);
    // A data buffer smaller than the blob gets a positioned read of what fits.
    assert_eq!(h.get("photos", "2024/cat.jpg", None, 4096).unwrap(), &data[..4096]);
    let props =
        OpRequest::GetBlobProperties { target: blob_ref("photos", "2024/cat.jpg"), conditions: Conditions::none() };
    match h.ok(&props, &[]) {
        OpResponse::BlobProperties(p) => {
            assert_eq!(p.content_length, data.len() as u64);
            assert_eq!(p.etag, w.etag);
            assert_eq!(p.metadata.get("owner"), Some("test"));
        }
        r => panic!("{r:?}"),
    }
    h.ok(&put_op("photos", "2024/dog.jpg", Conditions::none()), b"woof");
    h.ok(&put_op("photos", "readme", Conditions::none()), b"hi");
    let list = OpRequest::ListBlobs(ListBlobs {
        container: name("photos"),
        prefix: String::new(),
        delimiter: "/".into(),
        marker: String::new(),
        max_results: 0,
        include_metadata: false,
        include_uncommitted: false,
    });
    match h.ok(&list, &[]) {
        OpResponse::BlobList { items, next_marker } => {
            assert!(next_marker.is_empty());
            assert_eq!(items.len(), 2);
            assert_eq!(items[0], BlobListItem::Prefix("2024/".into()));
        }
        r => panic!("{r:?}"),
    }
    // Blocks: stage two, commit them in reverse, read back.
    for (id, bytes) in [(b"b1", &b"first-"[..]), (b"b2", &b"second"[..])] {
        let op = OpRequest::PutBlock(PutBlock {
            lease_id: None,
            target: blob_ref("photos", "big"),
            block_id: BlockId::new(id).unwrap(),
            content_crc64: None,
        });
        h.ok(&op, bytes);
    }
    let commit = OpRequest::PutBlockList(PutBlockList {
        target: blob_ref("photos", "big"),
        blocks: vec![BlockId::new(b"b2").unwrap().into(), BlockId::new(b"b1").unwrap().into()],
        content_type: String::new(),
        headers: Default::default(),
        metadata: Metadata::default(),
        conditions: Conditions::none(),
    });
    h.ok(&commit, &[]);
    assert_eq!(h.get("photos", "big", None, 100).unwrap(), b"secondfirst-");
    match h.ok(&OpRequest::GetBlockList { target: blob_ref("photos", "big"), list_type: BlockListType::All }, &[]) {
        OpResponse::BlockList { blocks } => assert_eq!(blocks.len(), 2),
        r => panic!("{r:?}"),
    }
    let del = OpRequest::DeleteBlob { target: blob_ref("photos", "readme"), conditions: Conditions::none() };
    assert_eq!(h.ok(&del, &[]), OpResponse::Deleted);
    assert_eq!(h.get("photos", "readme", None, 10), Err(BlobError::BlobNotFound));
    let lc = OpRequest::ListContainers(ListContainers {
        prefix: String::new(),
        marker: String::new(),
        max_results: 0,
        include_metadata: false,
    });
    match h.ok(&lc, &[]) {
        OpResponse::ContainerList { containers, .. } => assert_eq!(containers.len(), 1),
        r => panic!("{r:?}"),
    }
    assert_eq!(h.ok(&OpRequest::DeleteContainer { container: name("photos") }, &[]), OpResponse::Deleted);
    assert_eq!(h.get("photos", "big", None, 10), Err(BlobError::ContainerNotFound));
}

#[test]
fn conditions_and_errors_map_to_statuses() {
    let mut h = Harness::new();
    assert_eq!(h.run(&put_op("nope", "x", Conditions::none()), b"1", 0).0, Err(BlobError::ContainerNotFound));
    h.mkcontainer("box");
    let create = OpRequest::CreateContainer { container: name("box"), metadata: Metadata::default() };
    assert_eq!(h.run(&create, &[], 0).0, Err(BlobError::AlreadyExists));
    h.ok(&put_op("box", "x", Conditions::none()), b"one");
    let if_none = Conditions::if_none_match(ETag::any());
    assert_eq!(h.run(&put_op("box", "x", if_none), b"two", 0).0, Err(BlobError::AlreadyExists));
    let wrong = Conditions::if_match(ETag::new("\"nope\"").unwrap());
    assert_eq!(h.run(&put_op("box", "x", wrong), b"two", 0).0, Err(BlobError::PreconditionFailed));
    assert_eq!(h.get("box", "x", None, 10).unwrap(), b"one");
    let past = ByteRange { offset: 4, length: 1 };
    assert_eq!(h.get("box", "x", Some(past), 10), Err(BlobError::InvalidRange));
    let mut bad_crc = put_op("box", "y", Conditions::none());
    if let OpRequest::PutBlob(p) = &mut bad_crc {
        p.content_crc64 = Some(12345);
    }
    assert_eq!(h.run(&bad_crc, b"data", 0).0, Err(BlobError::ChecksumMismatch));
    assert_eq!(h.get("box", "y", None, 10), Err(BlobError::BlobNotFound), "nothing stored on mismatch");
}

/// Serve a request whose header was tampered with after `prepare`.
fn serve_with(h: &mut Harness, tamper: impl FnOnce(&mut VspRequest)) -> VspResponse {
    let mut s = h.prepare(&put_op("box", "x", Conditions::none()), b"abc", 0, 4096);
    tamper(&mut s.request.header);
    h.engine.serve(&h.mem, &s.request, &CancelToken::new(None))
}

#[test]
fn bad_headers_get_clean_statuses() {
    let mut h = Harness::new();
    h.mkcontainer("box");
    type Tamper = Box<dyn FnOnce(&mut VspRequest)>;
    let cases: Vec<(Tamper, BlobError)> = vec![
        (Box::new(|r| r.version = 1.into()), BlobError::Unsupported),
        (Box::new(|r| r.operation_type = 0x101.into()), BlobError::Unsupported),
        (Box::new(|r| r.operation_type = 0x7.into()), BlobError::Unsupported),
        (Box::new(|r| r.request_buffer_length = 0.into()), BlobError::InvalidRequest),
        (Box::new(|r| r.response_buffer_length = 0.into()), BlobError::InvalidRequest),
        (Box::new(|r| r.data_buffer_valid = 4.into()), BlobError::InvalidRequest),
        (Box::new(|r| r.data_buffer_length = (33 << 20).into()), BlobError::TooLarge),
        (Box::new(|r| r.transaction_id = [0; 16]), BlobError::InvalidRequest),
        (Box::new(|r| r.request_buffer_offset = 10.into()), BlobError::InvalidRequest),
        (Box::new(|r| r.request_buffer_length = 100_000.into()), BlobError::InvalidRequest),
        (Box::new(|r| r.response_buffer_offset = 4090.into()), BlobError::InvalidRequest),
        (Box::new(|r| r.data_buffer_offset = 0.into()), BlobError::InvalidRequest),
    ];
    for (i, (tamper, want)) in cases.into_iter().enumerate() {
        let resp = serve_with(&mut h, tamper);
        assert_eq!(BlobError::from_code(resp.error.get()), Some(want), "case {i}");
        assert_eq!(resp.response_len.get(), 0, "case {i}");
    }
    assert_eq!(h.get("box", "x", None, 10), Err(BlobError::BlobNotFound), "no tampered request stored anything");
}

#[test]
fn request_over_the_limit_is_refused() {
    let mut h = Harness::with_limits(Limits { max_request_len: 64, ..Limits::default() });
    let s = h.prepare(
        &put_op("box", "a-rather-long-blob-name-to-pass-64-bytes/with/segments", Conditions::none()),
        b"x",
        0,
        4096,
    );
    let resp = h.engine.serve(&h.mem, &s.request, &CancelToken::new(None));
    assert_eq!(BlobError::from_code(resp.error.get()), Some(BlobError::TooLarge));
}

#[test]
fn garbage_ops_never_panic() {
    let mut h = Harness::new();
    let mut seed = 0x1234_5678u64;
    for len in [1usize, 15, 16, 17, 40, 300, 5000] {
        for _ in 0..50 {
            let mut body = vec![0u8; len];
            for b in &mut body {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            if len >= 8 && seed.is_multiple_of(2) {
                body[..4].copy_from_slice(b"VBRQ");
                body[4..6].copy_from_slice(&1u16.to_le_bytes());
            }
            let mut s = h.prepare(&OpRequest::GetDeviceConfig, &[], 0, 4096);
            let gpa = h.alloc(56 + len as u64);
            h.mem.write_slice(&body, GuestAddress(gpa + 56)).unwrap();
            let descs = vec![
                ChainDescriptor { addr: gpa, len: 56 + len as u32, writable: false },
                ChainDescriptor { addr: s.resp_gpa, len: 4096 + 12, writable: true },
            ];
            s.request.frame = VirtioFrame::new(descs, 8).unwrap();
            s.request.header.request_buffer_length = (len as u32).into();
            let resp = h.engine.serve(&h.mem, &s.request, &CancelToken::new(None));
            assert_ne!(resp.error.get(), 0, "garbage must not succeed");
        }
    }
}

#[test]
fn buffers_outside_guest_memory_are_refused() {
    let mut h = Harness::new();
    let mut s = h.prepare(&OpRequest::GetDeviceConfig, &[], 0, 4096);
    let descs = vec![
        ChainDescriptor { addr: MEM - 20, len: 56 + 16, writable: false },
        ChainDescriptor { addr: s.resp_gpa, len: 4096 + 12, writable: true },
    ];
    s.request.frame = VirtioFrame::new(descs, 8).unwrap();
    let resp = h.engine.serve(&h.mem, &s.request, &CancelToken::new(None));
    assert_eq!(BlobError::from_code(resp.error.get()), Some(BlobError::InvalidRequest));
}

#[test]
fn listing_fits_the_response_buffer() {
    let mut h = Harness::new();
    h.mkcontainer("many");
    for i in 0..300 {
        h.ok(&put_op("many", &format!("item-{i:04}"), Conditions::none()), b"x");
    }
    let list = |marker: String| {
        OpRequest::ListBlobs(ListBlobs {
            container: name("many"),
            prefix: String::new(),
            delimiter: String::new(),
            marker,
            max_results: 0,
            include_metadata: false,
            include_uncommitted: false,
        })
    };
    let mut seen = Vec::new();
    let mut marker = String::new();
    let mut pages = 0;
    loop {
        let s = h.prepare(&list(marker.clone()), &[], 0, 4096);
        let resp = h.engine.serve(&h.mem, &s.request, &CancelToken::new(None));
        assert!(resp.response_len.get() <= 4096);
        match h.decode(&s, &resp).unwrap() {
            OpResponse::BlobList { items, next_marker } => {
                pages += 1;
                for i in items {
                    if let BlobListItem::Blob { name, .. } = i {
                        seen.push(name);
                    }
                }
                if next_marker.is_empty() {
                    break;
                }
                marker = next_marker;
            }
            r => panic!("{r:?}"),
        }
    }
    assert!(pages > 1, "a 4 KiB buffer cannot hold 300 entries");
    let want: Vec<String> = (0..300).map(|i| format!("item-{i:04}")).collect();
    assert_eq!(seen, want);
    let s = h.prepare(&list(String::new()), &[], 0, 40);
    let resp = h.engine.serve(&h.mem, &s.request, &CancelToken::new(None));
    assert_eq!(BlobError::from_code(resp.error.get()), Some(BlobError::BufferTooSmall));
}

#[test]
fn timed_out_requests_store_nothing() {
    let mut h = Harness::new();
    h.mkcontainer("box");
    let s = h.prepare(&put_op("box", "late", Conditions::none()), &vec![7u8; 1 << 20], 0, 4096);
    let expired = CancelToken::new(Some(Instant::now() - Duration::from_millis(1)));
    let resp = h.engine.serve(&h.mem, &s.request, &expired);
    assert_eq!(resp.error.get(), 0x8007_0102, "the seed's host timeout");
    assert_eq!(h.get("box", "late", None, 10), Err(BlobError::BlobNotFound));
}

#[test]
fn rescind_with_requests_in_flight_completes_each_once() {
    let mut h = Harness::new();
    h.mkcontainer("box");
    let table = Arc::new(InflightTable::new(64));
    let n = 24u16;
    let payload = vec![0x5au8; 4 << 20];
    let sent: Vec<Sent> =
        (0..n).map(|i| h.prepare(&put_op("box", &format!("b{i}"), Conditions::none()), &payload, 0, 4096)).collect();
    let mem = h.mem.clone();
    let engine = h.engine.clone();
    // Every request is admitted (accepted) first; even ones start serving
    // at once and race the rescind, odd ones start only after it.
    let admitted: Vec<(usize, Sent, CancelToken)> =
        sent.into_iter().enumerate().map(|(i, s)| (i, s, table.admit(i as u16, 0).unwrap())).collect();
    let spawn = |i: usize, s: Sent, token: CancelToken| {
        let (mem, engine, table) = (mem.clone(), engine.clone(), table.clone());
        std::thread::spawn(move || {
            let resp = engine.serve(&mem, &s.request, &token);
            assert!(table.complete(i as u16), "completed once");
            (i, resp)
        })
    };
    let (early, late): (Vec<_>, Vec<_>) = admitted.into_iter().partition(|(i, _, _)| i % 2 == 0);
    let mut workers: Vec<_> = early.into_iter().map(|(i, s, t)| spawn(i, s, t)).collect();
    std::thread::sleep(Duration::from_millis(2));
    table.rescind_all();
    workers.extend(late.into_iter().map(|(i, s, t)| spawn(i, s, t)));
    assert!(table.wait_empty(Duration::from_secs(30)), "drain is bounded");
    let mut results: Vec<(usize, VspResponse)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    results.sort_by_key(|r| r.0);
    assert_eq!(results.len(), n as usize);
    let (mut ok, mut rescinded) = (0, 0);
    for (i, resp) in results {
        let stored = h.get("box", &format!("b{i}"), None, 4 << 20);
        if i % 2 == 1 {
            assert_eq!(
                BlobError::from_code(resp.error.get()),
                Some(BlobError::Rescinded),
                "request {i} ran after the rescind"
            );
        }
        match BlobError::from_code(resp.error.get()) {
            None => {
                ok += 1;
                assert_eq!(stored.unwrap(), payload, "a committed write is whole");
            }
            Some(BlobError::Rescinded) => {
                rescinded += 1;
                assert_eq!(stored, Err(BlobError::BlobNotFound), "a rescinded write left nothing");
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!(ok + rescinded, n as usize);
    assert!(rescinded >= n as usize / 2, "requests accepted before the rescind but not yet run are rescinded");
}

#[test]
fn replayed_write_is_answered_from_its_first_run() {
    let mut h = Harness::new();
    h.mkcontainer("box");
    let if_none = Conditions::if_none_match(ETag::any());
    let s = h.prepare(&put_op("box", "once", if_none), b"payload", 0, 4096);
    let first = h.engine.serve(&h.mem, &s.request, &CancelToken::new(None));
    assert_eq!(first.error.get(), 0);
    let a = h.decode(&s, &first).unwrap();
    // Cloud Hypervisor re-sends the same chain after a reconnect.
    let again = h.engine.serve(&h.mem, &s.request, &CancelToken::new(None));
    assert_eq!(again, first);
    assert_eq!(h.decode(&s, &again).unwrap(), a);
    // A new engine over the same store (a VSP restart) still recognises it.
    let store = h.engine.store().clone();
    let fresh = Engine::new(store, Limits::default(), 1);
    let after_restart = fresh.serve(&h.mem, &s.request, &CancelToken::new(None));
    assert_eq!(after_restart.error.get(), 0, "store-level replay detection");
}

#[test]
fn a_replayed_acquire_is_its_first_answer_and_leases_guard_every_write() {
    use vmblob_protocol::ops::{LeaseAction, LeaseBlob, LeaseDuration, LeaseId, LeaseState};
    let mut h = Harness::new();
    h.mkcontainer("box");
    assert!(h.run(&put_op("box", "held", Conditions::none()), b"v1", 0).0.is_ok());
    let proposed = LeaseId([7; 16]);
    let acquire = OpRequest::LeaseBlob(LeaseBlob {
        target: blob_ref("box", "held"),
        action: LeaseAction::Acquire { duration: LeaseDuration::Infinite, proposed_id: Some(proposed) },
        conditions: Conditions::none(),
    });
    let s = h.prepare(&acquire, &[], 0, 4096);
    let first = h.engine.serve(&h.mem, &s.request, &CancelToken::new(None));
    let Ok(OpResponse::Lease(l)) = h.decode(&s, &first) else { panic!("acquire failed: {first:?}") };
    assert_eq!(l.lease_id, Some(proposed));
    // A lost answer's replay must not meet its own lease as someone else's.
    assert_eq!(h.engine.serve(&h.mem, &s.request, &CancelToken::new(None)), first);
    let other = OpRequest::LeaseBlob(LeaseBlob {
        target: blob_ref("box", "held"),
        action: LeaseAction::Acquire { duration: LeaseDuration::Infinite, proposed_id: None },
        conditions: Conditions::none(),
    });
    assert_eq!(h.run(&other, &[], 0).0.unwrap_err(), BlobError::LeaseConflict);

    let held = |c: Conditions| c.with_lease(Some(proposed));
    let target = blob_ref("box", "held");
    assert_eq!(
        h.run(&put_op("box", "held", Conditions::none()), b"v2", 0).0.unwrap_err(),
        BlobError::PreconditionFailed
    );
    let delete = |c| OpRequest::DeleteBlob { target: target.clone(), conditions: c };
    assert_eq!(h.run(&delete(Conditions::none()), &[], 0).0.unwrap_err(), BlobError::PreconditionFailed);
    assert!(h.run(&put_op("box", "held", held(Conditions::none())), b"v2", 0).0.is_ok());
    let props = OpRequest::GetBlobProperties { target: target.clone(), conditions: Conditions::none() };
    let Ok(OpResponse::BlobProperties(p)) = h.run(&props, &[], 0).0 else { panic!("no properties") };
    assert_eq!(p.lease.state, LeaseState::Leased);
    // An op-version-2 answer has no lease fields; a version-2 request cannot name a lease.
    h.version = 2;
    let Ok(OpResponse::BlobProperties(p)) = h.run(&props, &[], 0).0 else { panic!("no properties") };
    assert_eq!(p.lease.state, LeaseState::Available, "version 2 cannot say");
    assert!(acquire.encode_at(2).is_err());
    h.version = OP_VERSION;
    assert!(h.run(&delete(held(Conditions::none())), &[], 0).0.is_ok());
    let Err(e) = h.run(&props, &[], 0).0 else { panic!("deleted") };
    assert_eq!(e, BlobError::BlobNotFound);
}
