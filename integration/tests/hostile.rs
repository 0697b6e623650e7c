//! A hostile guest: malformed chains, headers and operations sent through a
//! hand-driven split queue. Each must be refused with the exact status at the
//! end of the writable area (or used length 0 where nothing can be written),
//! the daemon must keep serving the same queue, and nothing may be created
//! outside the store directory.

use vmblob_integration::data::pattern;
use vmblob_integration::raw::{
    DATA_OUT_AREA, Desc, Exchange, NO_NEXT, RAM_SIZE, READ_AREA, RawGuest, RawRequest, WRITE_AREA, patch,
};
use vmblob_integration::{Sandbox, Vsp, VspOptions, assert_nothing_outside_store};
use vmblob_protocol::BlobError;
use vmblob_protocol::DataDirection;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{ListContainers, Metadata, OpCode, OpRequest, OpResponse};
use vmblob_protocol::transport::{OperationType, REQUEST_SIZE, RESPONSE_SIZE, VspResponse};
use zerocopy::FromBytes;

const MAX_DESCRIPTORS: usize = 8;
const MAX_REQUEST_LEN: u32 = 4096;

fn start() -> (Sandbox, Vsp) {
    let sb = Sandbox::new();
    let opts = VspOptions {
        queues: 1,
        max_descriptors: Some(MAX_DESCRIPTORS),
        max_request_len: Some(MAX_REQUEST_LEN),
        ..VspOptions::default()
    };
    let vsp = Vsp::start(&sb.dir, opts);
    (sb, vsp)
}

/// A harmless request with no data: ListContainers.
fn list_req() -> RawRequest {
    RawRequest::new(
        &OpRequest::ListContainers(ListContainers {
            prefix: String::new(),
            marker: String::new(),
            max_results: 0,
            include_metadata: false,
        }),
        &[],
        0,
    )
}

/// Assert a status-only refusal: `want` in the 12-byte status, no response
/// body, used length 12.
#[track_caller]
fn refused(x: &Exchange, want: BlobError, what: &str) {
    let s = x.status.unwrap_or_else(|| panic!("{what}: no status written ({x:?})"));
    assert_eq!(s.length.get(), RESPONSE_SIZE as u32, "{what}: status length field");
    assert_eq!(BlobError::from_code(s.error.get()), Some(want), "{what}: status {:#x}", s.error.get());
    assert_eq!(s.response_len.get(), 0, "{what}: no response body");
    assert_eq!(x.used.len, RESPONSE_SIZE as u32, "{what}: used length");
}

/// Assert a refusal answered with an op error body as well.
#[track_caller]
fn refused_with_body(x: &Exchange, op: OpCode, want: BlobError, what: &str) {
    assert_eq!(x.error(), Some(want), "{what}: status");
    let body = x.status.unwrap().response_len.get();
    assert!(body > 0, "{what}: error body expected");
    assert_eq!(x.used.len, body + RESPONSE_SIZE as u32, "{what}: used length");
    let m = x.message(op);
    let e = m.result.expect_err("an error reply");
    assert_eq!(e.error, want, "{what}: body status ({})", e.message);
}

/// The guest is still served on the same queue: a fresh container can be created.
#[track_caller]
fn still_serving(g: &mut RawGuest, name: &str) {
    let op = OpRequest::CreateContainer { container: ContainerName::new(name).unwrap(), metadata: Metadata::default() };
    let x = g.send(&RawRequest::new(&op, &[], 0));
    assert_eq!(x.error(), None, "valid request after the hostile ones: {x:?}");
    assert!(matches!(x.message(OpCode::CreateContainer).result, Ok(OpResponse::ContainerCreated(_))));
}

#[test]
fn malformed_chains_are_refused_and_the_queue_keeps_serving() {
    let (sb, mut vsp) = start();
    let mut g = RawGuest::connect(vsp.socket(), 64);
    still_serving(&mut g, "before");
    let req = list_req();
    g.place(&req);
    let hdr = Desc::r(READ_AREA, (REQUEST_SIZE + req.op.len()) as u32);
    let resp = Desc::w(WRITE_AREA, req.resp_len);
    let status = Desc::w(WRITE_AREA + u64::from(req.resp_len), RESPONSE_SIZE as u32);

    // A zero-length descriptor anywhere in the chain.
    refused(
        &g.exchange(&[hdr, Desc::r(DATA_OUT_AREA, 0), resp, status]),
        BlobError::InvalidRequest,
        "zero-length readable",
    );
    refused(
        &g.exchange(&[hdr, resp, Desc::w(DATA_OUT_AREA, 0), status]),
        BlobError::InvalidRequest,
        "zero-length writable",
    );
    // A device-readable descriptor after a writable one.
    refused(
        &g.exchange(&[hdr, resp, Desc::r(DATA_OUT_AREA, 16), status]),
        BlobError::InvalidRequest,
        "readable after writable",
    );
    // The header outside guest RAM, or wrapping the address space.
    let far = Desc::r(RAM_SIZE + 0x1000, hdr.len);
    refused(&g.exchange(&[far, resp, status]), BlobError::InvalidRequest, "header outside RAM");
    let wrap = Desc::r(u64::MAX - 16, 64);
    refused(&g.exchange(&[wrap, resp, status]), BlobError::InvalidRequest, "address overflow");
    // A header shorter than 56 bytes; no room for the status.
    refused(&g.exchange(&[Desc::r(READ_AREA, 40), resp, status]), BlobError::InvalidRequest, "short header");
    let x = g.exchange(&[hdr, Desc::w(WRITE_AREA, 8)]);
    assert_eq!(x.used.len, 0, "no room for a status: nothing written");
    assert_eq!(g.read(WRITE_AREA, 8), [0xEE; 8], "the 8 writable bytes are untouched");
    // The status area outside guest RAM: the request is served but cannot be answered.
    let x = g.exchange(&[hdr, resp, Desc::w(RAM_SIZE + 0x2000, RESPONSE_SIZE as u32)]);
    assert_eq!(x.used.len, 0, "status outside RAM: used length 0");

    // One descriptor over --max-descriptors: the device looks at max + 1 of
    // them and answers in the last 12 bytes of the writable ones it saw.
    let mut long = vec![hdr];
    long.extend((0..MAX_DESCRIPTORS as u64).map(|i| Desc::w(WRITE_AREA + 0x1000 + 16 * i, 16)));
    assert_eq!(long.len(), MAX_DESCRIPTORS + 1);
    let x = g.exchange(&long);
    assert_eq!(x.used.len, RESPONSE_SIZE as u32);
    let seen_tail = VspResponse::read_from_bytes(&g.read(WRITE_AREA + 0x1000 + 16 * 7 + 4, 12)).unwrap();
    assert_eq!(BlobError::from_code(seen_tail.error.get()), Some(BlobError::InvalidRequest), "too many descriptors");
    // Twice the limit: the status still lands in what the device looked at,
    // and nothing past it is written.
    let mut longer = vec![hdr];
    longer.extend((0..2 * MAX_DESCRIPTORS as u64).map(|i| Desc::w(WRITE_AREA + 0x1000 + 16 * i, 16)));
    let x = g.exchange(&longer);
    assert_eq!(x.used.len, RESPONSE_SIZE as u32);
    let seen_tail = VspResponse::read_from_bytes(&g.read(WRITE_AREA + 0x1000 + 16 * 7 + 4, 12)).unwrap();
    assert_eq!(BlobError::from_code(seen_tail.error.get()), Some(BlobError::InvalidRequest));
    assert_eq!(g.read(WRITE_AREA + 0x1000 + 16 * 8, 16 * 8), vec![0xEE; 128], "descriptors past the limit untouched");
    // Readable descriptors only in the part the device looks at: nowhere to answer.
    let mut readable = vec![hdr];
    readable.extend((0..MAX_DESCRIPTORS as u64).map(|i| Desc::r(DATA_OUT_AREA + 64 * i, 64)));
    readable.push(status);
    let x = g.exchange(&readable);
    assert_eq!(x.used.len, 0, "too many descriptors, none writable among them");
    assert_eq!(g.read(status.addr, 12), [0xEE; 12]);

    // A `next` link out of the table: the chain ends at the header, nothing is writable.
    let x = g.exchange_table(&[(hdr, 200), (status, NO_NEXT)]);
    assert_eq!(x.len, 0, "chain cut by a bad link: nothing to answer in");
    assert_eq!(g.read(status.addr, 12), [0xEE; 12]);
    // A loop (0 -> 1 -> 2 -> 1 ...): the device stops at --max-descriptors.
    let x = g.exchange_table(&[(hdr, 1), (resp, 2), (status, 1)]);
    assert_eq!(x.len, RESPONSE_SIZE as u32, "looping chain refused");
    let s = VspResponse::read_from_bytes(&g.read(status.addr, 12)).unwrap();
    assert_eq!(BlobError::from_code(s.error.get()), Some(BlobError::InvalidRequest), "looping chain");

    still_serving(&mut g, "after-chains");
    assert!(vsp.is_running());
    drop(g);
    assert_nothing_outside_store(&sb, &vsp);
}

#[test]
fn malformed_headers_and_ops_get_exact_statuses() {
    let (sb, mut vsp) = start();
    let mut g = RawGuest::connect(vsp.socket(), 64);
    still_serving(&mut g, "hostile");

    let mut r = list_req();
    r.header.request_buffer_length = 0.into();
    refused(&g.send(&r), BlobError::InvalidRequest, "request length 0");
    let mut r = list_req();
    r.header.response_buffer_length = 0.into();
    refused(&g.send(&r), BlobError::InvalidRequest, "response length 0");
    let mut r = list_req();
    r.header.version = 1.into();
    refused(&g.send(&r), BlobError::Unsupported, "transport version 1");
    let mut r = list_req();
    r.header.operation_type = 0x999.into();
    refused(&g.send(&r), BlobError::Unsupported, "unknown operation type");
    let mut r = list_req();
    r.header.operation_type = (OperationType::RegisterBuffer as u32).into();
    refused(&g.send(&r), BlobError::Unsupported, "RegisterBuffer");
    let mut r = list_req();
    r.header.transaction_id = [0; 16];
    refused(&g.send(&r), BlobError::InvalidRequest, "zero transaction id");
    let mut r = list_req();
    r.header.data_buffer_length = (33 << 20).into();
    refused(&g.send(&r), BlobError::TooLarge, "data buffer over 32 MiB");

    // data_valid past data_length, on a PUT: refused, nothing stored.
    let data = pattern(9, 0, 100);
    let put = vmblob_integration::ops::put_blob("hostile", "valid-past-length", &data);
    let mut r = RawRequest::new(&put, &data, 0);
    r.header.data_buffer_valid = 101.into();
    refused(&g.send(&r), BlobError::InvalidRequest, "data_valid > data_length");
    // Offsets overlapping the header, overlapping each other, or out of range.
    let mut r = list_req();
    r.header.request_buffer_offset = 10.into();
    refused(&g.send(&r), BlobError::InvalidRequest, "request overlaps header");
    let mut r = RawRequest::new(&put, &data, 0);
    r.header.data_buffer_offset = 20.into();
    refused(&g.send(&r), BlobError::InvalidRequest, "data overlaps header");
    let mut r = RawRequest::new(&put, &data, 0);
    r.header.data_buffer_offset = (REQUEST_SIZE as u32 + 4).into();
    refused(&g.send(&r), BlobError::InvalidRequest, "data overlaps request");
    let mut r = list_req();
    r.header.response_buffer_offset = 100.into();
    refused(&g.send(&r), BlobError::InvalidRequest, "response past the writable area");
    let get = vmblob_integration::ops::get_blob("hostile", "x", None);
    let mut r = RawRequest::new(&get, &[], 4096);
    r.header.data_buffer_offset = 100.into();
    refused(&g.send(&r), BlobError::InvalidRequest, "data overlaps response");
    let mut r = list_req();
    r.header.request_buffer_length = (r.op.len() as u32 + 1).into();
    let x = g.send(&r);
    assert_eq!(x.error(), Some(BlobError::InvalidRequest), "request longer than the readable area");
    // Over --max-request-len (checked before the bytes are read).
    let mut r = RawRequest::from_bytes(DataDirection::None, vec![0u8; MAX_REQUEST_LEN as usize + 1], &[], 0);
    r.header.request_buffer_length = (MAX_REQUEST_LEN + 1).into();
    refused(&g.send(&r), BlobError::TooLarge, "request over --max-request-len");

    // Garbage op bytes: bad magic.
    let r = RawRequest::from_bytes(DataDirection::None, pattern(10, 0, 64), &[], 0);
    assert_eq!(g.send(&r).error(), Some(BlobError::InvalidRequest), "garbage op bytes");
    // A well-formed op header around a truncated body: answered in the response buffer.
    let mut bytes = put.encode();
    bytes.truncate(bytes.len() - 3);
    let body = (bytes.len() - 16) as u32;
    bytes[12..16].copy_from_slice(&body.to_le_bytes());
    let r = RawRequest::from_bytes(DataDirection::ToHost, bytes, &data, 0);
    refused_with_body(&g.send(&r), OpCode::PutBlob, BlobError::InvalidRequest, "truncated op body");
    // Unknown op code and op version.
    let mut bytes = list_req().op;
    bytes[6..8].copy_from_slice(&999u16.to_le_bytes());
    refused(&g.send(&RawRequest::from_bytes(DataDirection::None, bytes, &[], 0)), BlobError::Unsupported, "op 999");
    let mut bytes = list_req().op;
    bytes[4..6].copy_from_slice(&7u16.to_le_bytes());
    let x = g.send(&RawRequest::from_bytes(DataDirection::None, bytes, &[], 0));
    refused_with_body(&x, OpCode::ListContainers, BlobError::Unsupported, "op version 7");

    // A path-escaping blob name patched into valid bytes: refused at decode.
    let op = vmblob_integration::ops::put_blob("hostile", "aa/bbbbbb", &data);
    let bytes = patch(op.encode(), b"aa/bbbbbb", b"../../etc");
    let x = g.send(&RawRequest::from_bytes(DataDirection::ToHost, bytes, &data, 0));
    refused_with_body(&x, OpCode::PutBlob, BlobError::InvalidName, "../../etc");

    // The same queue still serves, and nothing of the above was stored.
    still_serving(&mut g, "after-headers");
    let x = g.send(&RawRequest::new(&op, &data, 0));
    assert_eq!(x.error(), None, "the unpatched PutBlob succeeds");
    let x = g.send(&RawRequest::new(&vmblob_integration::ops::list_blobs("hostile", "", "", "", 0), &[], 0));
    let Ok(OpResponse::BlobList { items, .. }) = x.message(OpCode::ListBlobs).result else { panic!("listing") };
    assert_eq!(items.len(), 1, "only aa/bbbbbb was stored: {items:?}");
    assert!(vsp.is_running());
    drop(g);
    assert_nothing_outside_store(&sb, &vsp);
}

#[test]
fn replayed_transaction_is_answered_from_its_first_run() {
    let (sb, mut vsp) = start();
    let mut g = RawGuest::connect(vsp.socket(), 64);
    still_serving(&mut g, "replay");
    let a = pattern(20, 0, 1000);
    let b = pattern(21, 0, 1000);
    let first = RawRequest::new(&vmblob_integration::ops::put_blob("replay", "blob", &a), &a, 0);
    let x1 = g.send(&first);
    assert_eq!(x1.error(), None);
    let Ok(OpResponse::BlobWritten(w1)) = x1.message(OpCode::PutBlob).result else { panic!("put") };
    // The same transaction id again (a VMM replaying after reconnect), even
    // with other bytes: answered from the first run, not executed again.
    let mut again = RawRequest::new(&vmblob_integration::ops::put_blob("replay", "blob", &b), &b, 0);
    again.header.transaction_id = first.header.transaction_id;
    let x2 = g.send(&again);
    assert_eq!(x2.error(), None);
    let Ok(OpResponse::BlobWritten(w2)) = x2.message(OpCode::PutBlob).result else { panic!("replayed put") };
    assert_eq!(w2, w1, "the replay gets the first answer");
    let get = RawRequest::new(&vmblob_integration::ops::get_blob("replay", "blob", None), &[], 4096);
    let x = g.send(&get);
    let Ok(OpResponse::BlobData { length, .. }) = x.message(OpCode::GetBlob).result else { panic!("get") };
    assert_eq!(g.read(vmblob_integration::raw::DATA_IN_AREA, length as usize), a, "the replay did not write");
    // A new transaction id writes.
    let x3 = g.send(&RawRequest::new(&vmblob_integration::ops::put_blob("replay", "blob", &b), &b, 0));
    let Ok(OpResponse::BlobWritten(w3)) = x3.message(OpCode::PutBlob).result else { panic!("put") };
    assert_ne!(w3.etag, w1.etag);
    drop(g);
    assert!(vsp.is_running());
    assert_nothing_outside_store(&sb, &vsp);
}

// Regression: replays were once recognised by transaction id alone, so a
// different write reusing an id got the first operation's answer.
#[test]
fn a_reused_transaction_id_never_gets_another_operations_answer() {
    let (_sb, vsp) = start();
    let mut g = RawGuest::connect(vsp.socket(), 64);
    still_serving(&mut g, "reuse");
    let a = pattern(22, 0, 100);
    let put = RawRequest::new(&vmblob_integration::ops::put_blob("reuse", "blob", &a), &a, 0);
    assert_eq!(g.send(&put).error(), None);
    // A different write under the same id: whatever the VSP decides (run it
    // or refuse it), its answer must be an answer to *this* operation.
    let del = OpRequest::DeleteBlob {
        target: vmblob_integration::ops::blob_ref("reuse", "blob"),
        conditions: Default::default(),
    };
    let mut r = RawRequest::new(&del, &[], 0);
    r.header.transaction_id = put.header.transaction_id;
    let x = g.send(&r);
    let body = x.status.expect("status").response_len.get();
    if body > 0 {
        let m = vmblob_protocol::ops::ResponseMessage::decode(&x.response, OpCode::DeleteBlob);
        assert!(m.is_ok(), "a DeleteBlob was answered with another op's response: {m:?} (status {:#x})", x.code());
    }
}

#[test]
fn odd_but_valid_layouts_are_served() {
    use vmblob_integration::raw::DATA_IN_AREA;
    let (_sb, vsp) = start();
    let mut g = RawGuest::connect(vsp.socket(), 64);
    still_serving(&mut g, "layout");
    // R = header split over two descriptors, then the data, then the op
    // request; W = 16 spare bytes, the response, the status. Only 60 of the
    // 100 data bytes are valid.
    let data = pattern(30, 0, 100);
    let op = vmblob_integration::ops::put_blob("layout", "odd", &data[..60]).encode();
    let mut r = RawRequest::from_bytes(DataDirection::ToHost, op.clone(), &data, 0);
    r.header.data_buffer_offset = (REQUEST_SIZE as u32).into();
    r.header.data_buffer_valid = 60.into();
    r.header.request_buffer_offset = (REQUEST_SIZE as u32 + 100).into();
    r.header.response_buffer_offset = 16.into();
    let hdr = zerocopy::IntoBytes::as_bytes(&r.header).to_vec();
    let (a, b, c) = (READ_AREA, READ_AREA + 0x1000, READ_AREA + 0x3000);
    g.write(a, &hdr[..20]);
    let mut rest = hdr[20..].to_vec();
    rest.extend_from_slice(&data);
    g.write(b, &rest);
    g.write(c, &op);
    let descs = [
        Desc::r(a, 20),
        Desc::r(b, rest.len() as u32),
        Desc::r(c, op.len() as u32),
        Desc::w(WRITE_AREA, 16 + r.resp_len),
        Desc::w(WRITE_AREA + 0x2000, RESPONSE_SIZE as u32),
    ];
    let x = g.exchange(&descs);
    assert_eq!(x.error(), None, "{x:?}");
    let body = x.status.unwrap().response_len.get() as usize;
    let resp = g.read(WRITE_AREA + 16, body);
    let m = vmblob_protocol::ops::ResponseMessage::decode(&resp, OpCode::PutBlob).unwrap();
    let Ok(OpResponse::BlobWritten(w)) = m.result else { panic!("{m:?}") };
    assert_eq!(w.content_crc64, vmblob_integration::data::crc64(&data[..60]), "only the valid bytes are stored");
    let x = g.send(&RawRequest::new(&vmblob_integration::ops::get_blob("layout", "odd", None), &[], 4096));
    let Ok(OpResponse::BlobData { length, .. }) = x.message(OpCode::GetBlob).result else { panic!("get") };
    assert_eq!(g.read(DATA_IN_AREA, length as usize), &data[..60]);
}
