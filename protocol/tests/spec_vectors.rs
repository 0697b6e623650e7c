//! The worked examples of `docs/PROTOCOL.md`, pinned byte for byte. If one of
//! these changes, the document changes with it.

use vmblob_protocol::BlobError;
use vmblob_protocol::framing::DataBuffer;
use vmblob_protocol::framing::virtio::{ChainDescriptor, VirtioFrame, canonical_offsets};
use vmblob_protocol::framing::vmbus::{
    GpaDirectFrame, PageBuffer, encode_blob_completion, encode_blob_request, parse_blob_completion, parse_packet,
};
use vmblob_protocol::names::{BlobName, ContainerName};
use vmblob_protocol::ops::{
    BlobProperties, BlobRef, ByteRange, Conditions, DataDirection, GetBlob, Metadata, OpCode, OpRequest, OpResponse,
    ResponseMessage, encode_error_at, encode_success_at,
};
use vmblob_protocol::sg::Segment;
use vmblob_protocol::transport::{VspRequest, VspResponse};
use zerocopy::IntoBytes;

/// Hex, 16 bytes a line, as printed in PROTOCOL.md.
fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

const TXN: [u8; 16] = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f];

fn get_blob() -> OpRequest {
    OpRequest::GetBlob(GetBlob {
        target: BlobRef {
            container: ContainerName::new("photos").unwrap(),
            blob: BlobName::new("2024/cat.jpg").unwrap(),
        },
        range: Some(ByteRange { offset: 0, length: 8192 }),
        conditions: Conditions::none(),
    })
}

fn header(request_len: u32) -> VspRequest {
    VspRequest {
        timeout_ms: 30_000.into(),
        data_buffer_length: 8192.into(),
        operation_type: 0x100.into(),
        request_buffer_length: request_len.into(),
        response_buffer_length: 512.into(),
        transaction_id: TXN,
        ..Default::default()
    }
}

const REQUEST_BUFFER: &str = "\
56 42 52 51 01 00 11 00 00 00 00 00 29 00 00 00
06 00 70 68 6f 74 6f 73 0c 00 32 30 32 34 2f 63
61 74 2e 6a 70 67 01 00 00 00 00 00 00 00 00 00
20 00 00 00 00 00 00 00 00";

const HEADER: &str = "\
00 00 00 00 30 75 00 00 00 00 00 00 00 20 00 00
00 00 00 00 00 01 00 00 00 21 00 00 39 00 00 00
00 38 00 00 00 02 00 00 10 11 12 13 14 15 16 17
18 19 1a 1b 1c 1d 1e 1f";

const VMBUS_PACKET: &str = "\
09 00 08 00 0f 00 01 00 05 00 00 00 00 00 00 00
00 00 00 00 01 00 00 00 00 40 00 00 00 00 00 00
40 23 01 00 00 00 00 00 41 23 01 00 00 00 00 00
00 00 02 00 00 00 00 00 10 00 02 00 00 00 00 00
00 00 00 00 30 75 00 00 00 00 00 00 00 20 00 00
00 00 00 00 00 01 00 00 00 21 00 00 39 00 00 00
00 38 00 00 00 02 00 00 10 11 12 13 14 15 16 17
18 19 1a 1b 1c 1d 1e 1f";

const COMPLETION: &str = "\
0b 00 02 00 04 00 00 00 05 00 00 00 00 00 00 00
0c 00 00 00 00 00 00 00 52 00 00 00 00 00 00 00";

const RESPONSE_BUFFER: &str = "\
56 42 52 53 01 00 11 00 00 00 00 00 42 00 00 00
05 00 22 30 78 31 22 00 68 e5 cf 8b 01 00 00 20
4e 00 00 00 00 00 00 0a 00 69 6d 61 67 65 2f 6a
70 65 67 00 ef cd ab 89 67 45 23 01 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 20 00 00 00 00
00 00";

const ERROR_BUFFER: &str = "\
56 42 52 53 01 00 11 00 02 00 07 80 0e 00 00 00
0c 00 6e 6f 20 73 75 63 68 20 62 6c 6f 62";

#[test]
fn get_blob_request_buffer() {
    // The worked example is in op version 1 (§12).
    let b = get_blob().encode_at(1).unwrap();
    assert_eq!(b.len(), 57);
    assert_eq!(hex(&b), REQUEST_BUFFER);
}

#[test]
fn get_blob_over_vmbus() {
    let mut h = header(57);
    let data = PageBuffer { first_page_offset: 0, len: 8192, pfns: vec![0x12340, 0x12341] };
    let request = PageBuffer { first_page_offset: 0x100, len: 57, pfns: vec![0x20000] };
    let response = PageBuffer { first_page_offset: 0x800, len: 512, pfns: vec![0x20010] };
    let pkt = encode_blob_request(5, &mut h, Some(&data), &request, &response);
    assert_eq!(
        (h.data_buffer_offset.get(), h.request_buffer_offset.get(), h.response_buffer_offset.get()),
        (0, 0x2100, 0x3800)
    );
    assert_eq!(hex(h.as_bytes()), HEADER);
    assert_eq!(hex(&pkt), VMBUS_PACKET);

    let frame = GpaDirectFrame::from_packet(parse_packet(&pkt, 8192).unwrap()).unwrap();
    let l = frame.layout().unwrap();
    assert_eq!(l.data, DataBuffer::ReadWrite(vec![Segment { addr: 0x1234_0000, len: 8192 }]));
    assert_eq!(l.request, vec![Segment { addr: 0x2000_0100, len: 57 }]);
    assert_eq!(l.response, vec![Segment { addr: 0x2001_0800, len: 512 }]);

    let comp = encode_blob_completion(5, &VspResponse::new(0, 82));
    assert_eq!(hex(&comp), COMPLETION);
    assert_eq!(parse_blob_completion(&comp[16..]).unwrap(), VspResponse::new(0, 82));
}

#[test]
fn get_blob_over_virtio() {
    let mut h = header(57);
    canonical_offsets(&mut h, DataDirection::ToGuest);
    assert_eq!(
        (h.request_buffer_offset.get(), h.response_buffer_offset.get(), h.data_buffer_offset.get()),
        (56, 0, 512)
    );
    // R = header | request (113 bytes); W = response | data | status (8716 bytes).
    let chain = [
        ChainDescriptor { addr: 0x1000, len: 113, writable: false },
        ChainDescriptor { addr: 0x2000, len: 512, writable: true },
        ChainDescriptor { addr: 0x10000, len: 8192, writable: true },
        ChainDescriptor { addr: 0x3000, len: 12, writable: true },
    ];
    let f = VirtioFrame::new(chain, 4).unwrap();
    let l = f.layout(&h, DataDirection::ToGuest).unwrap();
    assert_eq!(f.header(), vec![Segment { addr: 0x1000, len: 56 }]);
    assert_eq!(l.request, vec![Segment { addr: 0x1038, len: 57 }]);
    assert_eq!(l.response, vec![Segment { addr: 0x2000, len: 512 }]);
    assert_eq!(l.data, DataBuffer::Writable(vec![Segment { addr: 0x10000, len: 8192 }]));
    assert_eq!(f.status(), vec![Segment { addr: 0x3000, len: 12 }]);
}

#[test]
fn get_blob_responses() {
    let properties = BlobProperties {
        etag: "\"0x1\"".into(),
        last_modified_ms: 1_700_000_000_000,
        created_ms: 0,
        content_length: 20_000,
        content_type: "image/jpeg".into(),
        headers: Default::default(),
        content_md5: None,
        content_crc64: 0x0123_4567_89ab_cdef,
        committed_blocks: 0,
        metadata: Metadata::default(),
        lease: Default::default(),
    };
    let ok = OpResponse::BlobData { properties, offset: 0, length: 8192 };
    let b = encode_success_at(1, OpCode::GetBlob, &ok);
    assert_eq!(b.len(), 82);
    assert_eq!(hex(&b), RESPONSE_BUFFER);
    assert_eq!(ResponseMessage::decode(&b, OpCode::GetBlob).unwrap().result, Ok(ok));

    let e = encode_error_at(1, OpCode::GetBlob, BlobError::BlobNotFound, "no such blob", 512);
    assert_eq!(hex(&e), ERROR_BUFFER);
}
