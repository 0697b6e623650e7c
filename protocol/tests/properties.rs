//! Property tests of the codecs: round trips, canonical encodings, and
//! totality of every decoder over arbitrary and mutated bytes.

mod common;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use zerocopy::IntoBytes;
use zerocopy::little_endian::U32;

use vmblob_protocol::config::DeviceConfig;
use vmblob_protocol::names::{BlobName, ContainerName, validate_metadata_key};
use vmblob_protocol::ops::{
    DecodeError, Entity, ErrorReply, MAX_MESSAGE, MIN_OP_VERSION, NeedsVersion, OP_HEADER_SIZE, OP_VERSION, OpCode,
    OpRequest, OpResponse, REQUEST_MAGIC, RESPONSE_MAGIC, ResponseMessage, encode_error, encode_success,
    encode_success_at,
};
use vmblob_protocol::status::BlobError;
use vmblob_protocol::transport::{MAX_BUFFER_LEN, OperationType, TransportError, VspRequest, VspResponse};

/// A decoded request must re-encode to the bytes it came from (up to the one
/// documented alias, `max_results` 0 for 5000).
fn check_canonical_request(bytes: &[u8], version: u16, req: &OpRequest) -> Result<(), TestCaseError> {
    let again = encodings_of(version, req);
    prop_assert!(again.iter().any(|e| e == bytes), "{req:?} does not re-encode to its input");
    Ok(())
}

/// Config bytes the decoder ignores: `reserved0` and the 12-byte tail.
const CONFIG_RESERVED: [std::ops::Range<usize>; 2] = [30..32, 52..64];

fn mask_config(bytes: &mut [u8], at: usize) {
    for r in CONFIG_RESERVED {
        bytes[at + r.start..at + r.end].fill(0);
    }
}

/// A decoded response must re-encode to its input, reserved config bytes aside.
fn check_canonical_response(bytes: &[u8], msg: &ResponseMessage) -> Result<(), TestCaseError> {
    let re = reencode_response(msg);
    let mut input = bytes.to_vec();
    if let Ok(OpResponse::DeviceConfig(_)) = msg.result {
        mask_config(&mut input, OP_HEADER_SIZE);
    }
    prop_assert_eq!(re, input);
    Ok(())
}

fn decode_request_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((version, req)) = OpRequest::decode_versioned(bytes) {
        check_canonical_request(bytes, version, &req)?;
    }
    Ok(())
}

fn decode_response_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    for op in OpCode::ALL {
        if let Ok(msg) = ResponseMessage::decode(bytes, op) {
            prop_assert_eq!(msg.op, op);
            check_canonical_response(bytes, &msg)?;
        }
    }
    Ok(())
}

/// A 16-byte op header followed by `body`, with a consistent `body_len`.
fn with_header(magic: u32, op: u16, word: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + body.len());
    b.extend_from_slice(&magic.to_le_bytes());
    b.extend_from_slice(&OP_VERSION.to_le_bytes());
    b.extend_from_slice(&op.to_le_bytes());
    b.extend_from_slice(&word.to_le_bytes());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(body);
    b
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn char_prefix(s: &str, max: usize) -> &str {
    let end = s.char_indices().map(|(i, c)| i + c.len_utf8()).take_while(|&e| e <= max).last().unwrap_or(0);
    &s[..end]
}

proptest! {
    #![proptest_config(config(256))]

    // ------------------------------------------------------------ round trips

    #[test]
    fn request_round_trip(req in op_request()) {
        let bytes = req.encode();
        prop_assert_eq!(&bytes[0..4], b"VBRQ");
        prop_assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), OP_VERSION);
        prop_assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), req.op() as u16);
        prop_assert_eq!(&bytes[8..12], &[0; 4]);
        prop_assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize, bytes.len() - OP_HEADER_SIZE);
        prop_assert_eq!(OpRequest::decode_versioned(&bytes), Ok((OP_VERSION, req.clone())));
        // Every proper prefix is refused.
        let cut = bytes.len() / 2;
        prop_assert!(OpRequest::decode(&bytes[..cut]).is_err());
    }

    /// Each older op version carries what it can and refuses, rather than
    /// drops, a field it lacks (a time condition, an HTTP header, a lease).
    #[test]
    fn requests_round_trip_in_older_versions_or_are_refused(req in op_request()) {
        for version in 1..OP_VERSION {
            match req.encode_at(version) {
                Ok(bytes) => {
                    prop_assert!(req.min_version() <= version);
                    prop_assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), version);
                    prop_assert_eq!(OpRequest::decode_versioned(&bytes), Ok((version, req.clone())));
                }
                Err(e) => {
                    prop_assert_eq!(e, NeedsVersion { op: req.op(), needed: req.min_version(), version });
                    prop_assert!(req.min_version() > version);
                }
            }
        }
        prop_assert!(req.encode_at(0).is_err());
        prop_assert!(req.encode_at(OP_VERSION + 1).is_err());
        prop_assert_eq!(req.encode_at(OP_VERSION), Ok(req.encode()));
    }

    /// An answer in an older version leaves out what that version has no field for.
    #[test]
    fn responses_in_older_versions_leave_out_the_newer_fields((op, resp) in op_response()) {
        for version in 1..OP_VERSION {
            let bytes = encode_success_at(version, op, &resp);
            prop_assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), version);
            let got = ResponseMessage::decode(&bytes, op);
            let want = without_fields_after(version, resp.clone());
            prop_assert_eq!(got, Ok(ResponseMessage { version, op, result: Ok(want) }));
        }
    }

    #[test]
    fn response_round_trip((op, resp) in op_response()) {
        prop_assert!(resp.answers(op));
        let bytes = encode_success(op, &resp);
        prop_assert_eq!(&bytes[0..4], b"VBRS");
        prop_assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), op as u16);
        prop_assert_eq!(&bytes[8..12], &[0; 4], "status is success");
        prop_assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize, bytes.len() - OP_HEADER_SIZE);
        let got = ResponseMessage::decode(&bytes, op);
        prop_assert_eq!(got, Ok(ResponseMessage { version: OP_VERSION, op, result: Ok(resp.clone()) }));
        // Decoding for another op is refused by the header check.
        for other in OpCode::ALL.into_iter().filter(|o| *o != op) {
            prop_assert_eq!(
                ResponseMessage::decode(&bytes, other),
                Err(DecodeError::WrongOp { got: op as u16, expected: other as u16 })
            );
        }
    }

    #[test]
    fn error_round_trip(
        op in op_code(),
        error in blob_error(),
        message in prop_oneof![".{0,64}", "[aé€😀]{300,1100}"],
        limit in prop_oneof![0usize..64, 0usize..1200, Just(usize::MAX)],
    ) {
        let bytes = encode_error(op, error, &message, limit);
        let want = char_prefix(&message, limit.saturating_sub(OP_HEADER_SIZE + 2).min(MAX_MESSAGE));
        prop_assert_eq!(bytes.len(), OP_HEADER_SIZE + 2 + want.len());
        prop_assert!(bytes.len() <= limit.max(OP_HEADER_SIZE + 2));
        prop_assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), error.code());
        let got = ResponseMessage::decode(&bytes, op);
        let expected =
            ResponseMessage { version: OP_VERSION, op, result: Err(ErrorReply { error, message: want.to_owned() }) };
        prop_assert_eq!(got, Ok(expected));
    }

    #[test]
    fn status_codes_round_trip(code in any::<u32>()) {
        match BlobError::from_code(code) {
            None => prop_assert_eq!(code, 0),
            Some(e) => prop_assert_eq!(e.code(), code),
        }
    }

    // ------------------------------------------------------------ totality

    #[test]
    fn request_decoder_total_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        decode_request_checked(&bytes)?;
    }

    #[test]
    fn request_decoder_total_behind_a_valid_header(op in any::<u16>(), op_known in any::<bool>(), body in vec(any::<u8>(), 0..200)) {
        let op = if op_known { OpCode::ALL[usize::from(op) % OpCode::ALL.len()] as u16 } else { op };
        decode_request_checked(&with_header(REQUEST_MAGIC, op, 0, &body))?;
    }

    #[test]
    fn request_decoder_total_on_mutations(
        req in op_request(),
        muts in vec(mutation(), 1..5),
        fix_len in any::<bool>(),
    ) {
        let mut bytes = req.encode();
        for m in &muts {
            apply(&mut bytes, m);
        }
        if fix_len {
            fix_body_len(&mut bytes);
        }
        decode_request_checked(&bytes)?;
    }

    #[test]
    fn response_decoder_total_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        decode_response_checked(&bytes)?;
    }

    #[test]
    fn response_decoder_total_behind_a_valid_header(
        op in op_code(),
        status in prop_oneof![Just(0u32), any::<u32>()],
        body in vec(any::<u8>(), 0..200),
    ) {
        decode_response_checked(&with_header(RESPONSE_MAGIC, op as u16, status, &body))?;
    }

    #[test]
    fn response_decoder_total_on_mutations(
        (op, resp) in op_response(),
        muts in vec(mutation(), 1..5),
        fix_len in any::<bool>(),
    ) {
        let mut bytes = encode_success(op, &resp);
        for m in &muts {
            apply(&mut bytes, m);
        }
        if fix_len {
            fix_body_len(&mut bytes);
        }
        decode_response_checked(&bytes)?;
    }

    #[test]
    fn error_response_decoder_total_on_mutations(
        op in op_code(),
        error in blob_error(),
        message in ".{0,40}",
        muts in vec(mutation(), 1..4),
        fix_len in any::<bool>(),
    ) {
        let mut bytes = encode_error(op, error, &message, usize::MAX);
        for m in &muts {
            apply(&mut bytes, m);
        }
        if fix_len {
            fix_body_len(&mut bytes);
        }
        decode_response_checked(&bytes)?;
    }
}

// ---------------------------------------------------------------- transport header

fn field() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        1u32..512,
        Just(MAX_BUFFER_LEN),
        Just(MAX_BUFFER_LEN + 1),
        (MAX_BUFFER_LEN / 2 - 2)..(MAX_BUFFER_LEN / 2 + 2),
        any::<u32>(),
    ]
}

fn header_fields() -> impl Strategy<Value = VspRequest> {
    (
        prop_oneof![Just(0u32), any::<u32>()],
        any::<u32>(),
        (field(), field(), field()),
        prop_oneof![0x100u32..=0x103, Just(0xff), any::<u32>()],
        (field(), field(), field(), field()),
        prop_oneof![Just([0u8; 16]), any::<[u8; 16]>()],
    )
        .prop_map(|(version, timeout, (data_off, data_len, data_valid), op, (ro, rl, so, sl), tid)| VspRequest {
            version: U32::new(version),
            timeout_ms: U32::new(timeout),
            data_buffer_offset: U32::new(data_off),
            data_buffer_length: U32::new(data_len),
            data_buffer_valid: U32::new(data_valid),
            operation_type: U32::new(op),
            request_buffer_offset: U32::new(ro),
            request_buffer_length: U32::new(rl),
            response_buffer_offset: U32::new(so),
            response_buffer_length: U32::new(sl),
            transaction_id: tid,
        })
}

/// The seed's limits, written out independently of `validate`.
fn validate_model(h: &VspRequest) -> Option<OperationType> {
    let (req, resp, data, valid) = (
        u64::from(h.request_buffer_length.get()),
        u64::from(h.response_buffer_length.get()),
        u64::from(h.data_buffer_length.get()),
        u64::from(h.data_buffer_valid.get()),
    );
    let max = 32 * 1024 * 1024;
    let op = match h.operation_type.get() {
        0x100 => OperationType::UserRequest,
        0x101 => OperationType::RegisterBuffer,
        0x102 => OperationType::DeregisterBuffer,
        _ => return None,
    };
    let ok = h.version.get() == 0
        && req != 0
        && resp != 0
        && valid <= data
        && req + resp + data <= max
        && h.transaction_id != [0; 16];
    ok.then_some(op)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn transport_header_validate_matches_model(h in header_fields()) {
        let parsed = VspRequest::parse(h.as_bytes()).unwrap();
        prop_assert_eq!(parsed, h);
        prop_assert_eq!(parsed.validate().ok(), validate_model(&h));
    }

    #[test]
    fn transport_header_total_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..80)) {
        match VspRequest::parse(&bytes) {
            Ok(h) => {
                prop_assert_eq!(bytes.len(), 56);
                prop_assert_eq!(h.as_bytes(), &bytes[..]);
                prop_assert_eq!(h.validate().ok(), validate_model(&h));
            }
            Err(e) => prop_assert_eq!(e, TransportError::WrongHeaderSize(bytes.len())),
        }
    }

    #[test]
    fn transport_response_total(bytes in prop_oneof![
        vec(any::<u8>(), 0..20),
        (any::<u32>(), any::<u32>()).prop_map(|(e, l)| VspResponse::new(e, l).as_bytes().to_vec()),
    ]) {
        let ok = bytes.len() == 12 && bytes[0..4] == [12, 0, 0, 0];
        match VspResponse::parse(&bytes) {
            Ok(r) => {
                prop_assert!(ok);
                prop_assert_eq!(r.as_bytes(), &bytes[..]);
                prop_assert_eq!(VspResponse::new(r.error.get(), r.response_len.get()), r);
            }
            Err(_) => prop_assert!(!ok),
        }
    }

    // ------------------------------------------------------------ device config

    #[test]
    fn device_config_round_trip(c in device_config()) {
        let b = c.to_bytes();
        prop_assert_eq!(&b[0..4], b"VBCF");
        for r in CONFIG_RESERVED {
            prop_assert!(b[r].iter().all(|x| *x == 0));
        }
        prop_assert_eq!(DeviceConfig::from_bytes(&b), Ok(c));
        // Config-space reads are slices of the same 64 bytes.
        prop_assert_eq!(c.read(0, 64), b.to_vec());
        prop_assert_eq!(c.read(8, 4), b[8..12].to_vec());
    }

    #[test]
    fn device_config_total(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..70),
            (device_config(), vec(mutation(), 0..4)).prop_map(|(c, muts)| {
                let mut b = c.to_bytes().to_vec();
                for m in &muts {
                    apply(&mut b, m);
                }
                b
            }),
        ],
    ) {
        if let Ok(c) = DeviceConfig::from_bytes(&bytes) {
            prop_assert_eq!(bytes.len(), DeviceConfig::SIZE);
            prop_assert!(c.min_op_version <= OP_VERSION && MIN_OP_VERSION <= c.max_op_version);
            let mut input = bytes.clone();
            mask_config(&mut input, 0);
            prop_assert_eq!(c.to_bytes().to_vec(), input);
        }
    }

    // ------------------------------------------------------------ naming rules

    #[test]
    fn container_names_match_model(s in prop_oneof![".{0,70}", "[a-z0-9-]{0,70}", "[a-c-]{2,6}"]) {
        let b = s.as_bytes();
        let model = (3..=63).contains(&b.len())
            && b.iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && !b.windows(2).any(|w| w == b"--");
        prop_assert_eq!(ContainerName::new(&s).is_ok(), model, "{:?}", s);
    }

    #[test]
    fn blob_names_match_model(s in prop_oneof![
        ".{0,40}",
        "[a./\\\\]{0,12}",
        "(?s:.{0,8})",
        "[a-z/]{1000,1030}",
        // Around the 254-segment and 1024-byte limits.
        vec("[a-z]{1,3}", 250..258).prop_map(|v| v.join("/")),
        (1020usize..=1028).prop_map(|n| format!("a/{}", "b".repeat(n - 2))),
    ]) {
        let segments: Vec<&str> = s.split('/').collect();
        let model = !s.is_empty()
            && s.len() <= 1024
            && !s.chars().any(|c| c.is_control() || c == '\\')
            && segments.len() <= 254
            && segments.iter().all(|seg| !seg.is_empty() && *seg != "." && *seg != "..");
        prop_assert_eq!(BlobName::new(&s).is_ok(), model, "{:?}", s);
    }

    #[test]
    fn metadata_keys_match_model(s in prop_oneof!["[A-Za-z0-9_ -]{0,10}", ".{0,5}"]) {
        let model = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        prop_assert_eq!(validate_metadata_key(&s).is_ok(), model);
    }
}

// ---------------------------------------------------------------- fixed cases

#[test]
fn limits_are_enforced_at_the_boundary() {
    use vmblob_protocol::names::BlockId;
    use vmblob_protocol::ops::{Conditions, Metadata, PutBlockList};
    let target = vmblob_protocol::ops::BlobRef {
        container: ContainerName::new("box").unwrap(),
        blob: BlobName::new("b").unwrap(),
    };
    let list = |n: usize| {
        OpRequest::PutBlockList(PutBlockList {
            target: target.clone(),
            blocks: vec![BlockId::new(&[7]).unwrap().into(); n],
            content_type: String::new(),
            headers: Default::default(),
            metadata: Metadata::default(),
            conditions: Conditions::none(),
        })
    };
    let ok = list(50_000);
    assert_eq!(OpRequest::decode(&ok.encode()), Ok(ok));
    assert_eq!(OpRequest::decode(&list(50_001).encode()), Err(DecodeError::TooMany { count: 50_001, max: 50_000 }));

    // Metadata: 8 KiB of keys and values in all.
    let key = "k".to_owned();
    assert!(Metadata::new(vec![(key.clone(), "v".repeat(8191))]).is_ok());
    assert_eq!(Metadata::new(vec![(key.clone(), "v".repeat(8192))]), Err(DecodeError::MetadataTooLarge));
    assert_eq!(
        Metadata::new(vec![(key.clone(), String::new()), ("K".to_owned(), String::new())]),
        Err(DecodeError::DuplicateMetadataKey)
    );
    assert_eq!(DecodeError::MetadataTooLarge.status(), BlobError::TooLarge);

    // max_results: 0 means 5000, over 5000 is refused.
    let lc = |n: u32| {
        OpRequest::ListContainers(vmblob_protocol::ops::ListContainers {
            prefix: String::new(),
            marker: String::new(),
            max_results: n,
            include_metadata: false,
        })
    };
    assert_eq!(OpRequest::decode(&lc(0).encode()), Ok(lc(5000)));
    assert!(matches!(OpRequest::decode(&lc(5001).encode()), Err(DecodeError::TooMany { .. })));
}

#[test]
fn error_message_cut_keeps_utf8() {
    // "€" is 3 bytes; a 1024-byte limit falls inside the 342nd one.
    let msg = "€".repeat(400);
    let b = encode_error(OpCode::GetBlob, BlobError::Io, &msg, usize::MAX);
    let m = ResponseMessage::decode(&b, OpCode::GetBlob).unwrap();
    assert_eq!(m.result.unwrap_err().message, "€".repeat(341));
    // A response buffer of 20 bytes leaves room for 2 message bytes: no whole "€".
    let b = encode_error(OpCode::GetBlob, BlobError::Io, &msg, 20);
    assert_eq!(b.len(), 18);
    // Smaller than the header: the 18-byte minimum is still produced.
    assert_eq!(encode_error(OpCode::GetBlob, BlobError::Io, "x", 4).len(), 18);
}

#[test]
fn block_list_ids_follow_the_block_id_rules() {
    use vmblob_protocol::ops::BlockInfo;
    let list = |ids: &[&[u8]]| OpResponse::BlockList {
        blocks: ids.iter().map(|id| BlockInfo { id: id.to_vec(), size: 1, committed: true }).collect(),
    };
    let decode =
        |r: &OpResponse| ResponseMessage::decode(&encode_success(OpCode::GetBlockList, r), OpCode::GetBlockList);
    let ok = list(&[&[1], &[0xff; 64]]);
    assert_eq!(decode(&ok).unwrap().result, Ok(ok));
    // An empty id is refused wherever it stands, not only when the count
    // pre-check happens to run out of bytes.
    assert!(decode(&list(&[&[]])).is_err());
    assert_eq!(decode(&list(&[&[], &[0xff; 64]])), Err(DecodeError::InvalidName));
    assert_eq!(decode(&list(&[&[0xff; 64], &[]])), Err(DecodeError::InvalidName));
}

#[test]
fn block_list_crcs_are_an_optional_trailing_section() {
    use vmblob_protocol::names::BlockId;
    use vmblob_protocol::ops::{BlobRef, Conditions, ListedBlock, Metadata, PutBlockList};
    let target = BlobRef { container: ContainerName::new("box").unwrap(), blob: BlobName::new("b").unwrap() };
    let id = |b: u8| BlockId::new(&[b]).unwrap();
    let list = |blocks: Vec<ListedBlock>| {
        OpRequest::PutBlockList(PutBlockList {
            target: target.clone(),
            blocks,
            content_type: String::new(),
            headers: Default::default(),
            metadata: Metadata::default(),
            conditions: Conditions::none(),
        })
    };
    // Without CRCs the body ends after the conditions, as before the section existed.
    let old = list(vec![id(1).into(), id(2).into()]);
    let old_bytes = old.encode();
    // blob_ref 2+3 + 2+1, count 4, 2 ids of 1+1, content type 2, headers 4×2,
    // metadata 2, conditions 5 (op version 3: two ETags, two times, a lease id).
    assert_eq!(old_bytes.len(), OP_HEADER_SIZE + 8 + 4 + 4 + 2 + 8 + 2 + 5, "{old_bytes:02x?}");
    // With one CRC, every entry gets an option<u64>, in list order.
    let mixed = list(vec![ListedBlock::proven(id(1), 0x0102_0304_0506_0708), id(2).into()]);
    let bytes = mixed.encode();
    assert_eq!(&bytes[OP_HEADER_SIZE..old_bytes.len()], &old_bytes[OP_HEADER_SIZE..]);
    assert_eq!(&bytes[old_bytes.len()..], &[1, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    assert_eq!(OpRequest::decode(&bytes), Ok(mixed));
    // A section of absent CRCs only would be a second encoding of "none".
    let mut all_absent = old_bytes[OP_HEADER_SIZE..].to_vec();
    all_absent.extend_from_slice(&[0, 0]);
    let input = with_header(REQUEST_MAGIC, OpCode::PutBlockList as u16, 0, &all_absent);
    assert_eq!(OpRequest::decode(&input), Err(DecodeError::InvalidValue));
    // A section shorter than the list is truncated; a longer one leaves bytes over.
    let mut short = old_bytes[OP_HEADER_SIZE..].to_vec();
    short.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let input = with_header(REQUEST_MAGIC, OpCode::PutBlockList as u16, 0, &short);
    assert_eq!(OpRequest::decode(&input), Err(DecodeError::Truncated));
    short.extend_from_slice(&[0, 0]);
    let input = with_header(REQUEST_MAGIC, OpCode::PutBlockList as u16, 0, &short);
    assert_eq!(OpRequest::decode(&input), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn field_rules_are_enforced_on_decode() {
    use vmblob_protocol::ops::{BlobRef, ByteRange, Conditions, ETag, GetBlob, Metadata, PutBlob};
    let target = BlobRef { container: ContainerName::new("box").unwrap(), blob: BlobName::new("b").unwrap() };
    let put = |content_type: &str, if_match: Option<ETag>| {
        OpRequest::PutBlob(PutBlob {
            target: target.clone(),
            content_type: content_type.to_owned(),
            headers: Default::default(),
            metadata: Metadata::default(),
            conditions: Conditions { if_match, ..Conditions::none() },
            content_md5: None,
            content_crc64: None,
        })
    };
    let ok = put("text/plain; charset=utf-8", Some(ETag::any()));
    assert_eq!(OpRequest::decode(&ok.encode()), Ok(ok));
    // Control characters in header-like text are refused (encoders do not check).
    assert_eq!(OpRequest::decode(&put("text/plain\r\nX: y", None).encode()), Err(DecodeError::InvalidName));
    assert_eq!(DecodeError::InvalidName.status(), BlobError::InvalidName);
    // ETags are 1..=256 bytes without control characters.
    assert_eq!(ETag::new(""), Err(DecodeError::InvalidValue));
    assert_eq!(ETag::new(&"e".repeat(257)), Err(DecodeError::InvalidValue));
    assert_eq!(ETag::new("a\u{7f}"), Err(DecodeError::InvalidName));
    assert!(ETag::new(&"e".repeat(256)).is_ok());
    // A range whose end overflows a u64 is refused.
    let get = |offset: u64, length: u64| {
        OpRequest::GetBlob(GetBlob {
            target: target.clone(),
            range: Some(ByteRange { offset, length }),
            conditions: Conditions::none(),
        })
    };
    assert!(OpRequest::decode(&get(u64::MAX, 0).encode()).is_ok());
    assert_eq!(OpRequest::decode(&get(u64::MAX, 1).encode()), Err(DecodeError::InvalidValue));
    // Decode errors map to the statuses PROTOCOL.md §5.2 lists.
    assert_eq!(DecodeError::UnknownOp(99).status(), BlobError::Unsupported);
    assert_eq!(DecodeError::TooMany { count: 1, max: 0 }.status(), BlobError::TooLarge);
    assert_eq!(DecodeError::FieldTooLong { len: 64, max: 63 }.status(), BlobError::InvalidRequest);
}

#[test]
fn conditions_follow_the_table() {
    use vmblob_protocol::ops::{Conditions, ETag};
    let (a, b, any) = (ETag::new("a").unwrap(), ETag::new("b").unwrap(), ETag::any());
    let c = |m: Option<&ETag>, n: Option<&ETag>| Conditions {
        if_match: m.cloned(),
        if_none_match: n.cloned(),
        ..Conditions::none()
    };
    let at = |etag| Some(Entity { etag, last_modified_ms: 0 });
    // (conditions, current etag or absent, holds)
    let cases = [
        (c(None, None), None, true),
        (c(None, None), at(&a), true),
        (c(Some(&a), None), at(&a), true),
        (c(Some(&a), None), at(&b), false),
        (c(Some(&a), None), None, false),
        (c(Some(&any), None), at(&b), true),
        (c(Some(&any), None), None, false),
        (c(None, Some(&a)), at(&a), false),
        (c(None, Some(&a)), at(&b), true),
        (c(None, Some(&a)), None, true),
        (c(None, Some(&any)), at(&b), false),
        (c(None, Some(&any)), None, true),
        (c(Some(&a), Some(&b)), at(&a), true),
        (c(Some(&a), Some(&a)), at(&a), false),
    ];
    for (cond, current, holds) in cases {
        assert_eq!(cond.check(current), holds, "{cond:?} on {current:?}");
    }
}

/// Time conditions compare whole seconds, as the HTTP dates they stand for;
/// writes let an ETag condition decide over its time counterpart and skip
/// times on an absent blob; reads answer 412 or 304 as Azure does.
#[test]
fn time_conditions_follow_azure() {
    use vmblob_protocol::ops::{Conditions, ETag, ReadVerdict::*};
    let (a, b) = (ETag::new("a").unwrap(), ETag::new("b").unwrap());
    // Last modified at 10.500 s.
    let blob = Entity { etag: &a, last_modified_ms: 10_500 };
    let since = |ms| Conditions { if_modified_since_ms: Some(ms), ..Conditions::none() };
    let until = |ms| Conditions { if_unmodified_since_ms: Some(ms), ..Conditions::none() };
    // (conditions, write holds, read verdict)
    let cases = [
        (since(9_999), true, Holds),
        // The same second is not "since": the reader has this version.
        (since(10_000), false, NotModified),
        (since(10_900), false, NotModified),
        (since(11_000), false, NotModified),
        (until(10_000), true, Holds),
        (until(10_999), true, Holds),
        (until(9_999), false, PreconditionFailed),
        // An ETag condition decides a write over its time counterpart...
        (Conditions { if_match: Some(a.clone()), ..until(0) }, true, PreconditionFailed),
        (Conditions { if_none_match: Some(b.clone()), ..since(20_000) }, true, Holds),
        (Conditions { if_none_match: Some(a.clone()), ..since(0) }, false, Holds),
        // ...and a read serves when either of If-None-Match / If-Modified-Since says so.
        (Conditions { if_none_match: Some(a.clone()), ..since(20_000) }, false, NotModified),
        (Conditions { if_match: Some(b.clone()), ..since(0) }, false, PreconditionFailed),
        (Conditions { if_unmodified_since_ms: Some(0), ..since(20_000) }, false, PreconditionFailed),
    ];
    for (cond, write, read) in cases {
        assert_eq!(cond.check(Some(blob)), write, "write under {cond:?}");
        assert_eq!(cond.check_read(blob), read, "read under {cond:?}");
    }
    // An absent blob fails only If-Match.
    assert!(since(u64::MAX).check(None));
    assert!(until(0).check(None));
    assert!(!Conditions { if_match: Some(a), ..until(u64::MAX) }.check(None));
}

/// Content-Encoding and the other three are HTTP header values: printable
/// ASCII, at most 1024 bytes; a request with another is refused on decode.
#[test]
fn http_header_values_are_printable_ascii() {
    use vmblob_protocol::ops::{BlobRef, Conditions, ContentHeaders, Metadata, PutBlob};
    let target = BlobRef { container: ContainerName::new("box").unwrap(), blob: BlobName::new("b").unwrap() };
    let put = |cache_control: &str| {
        OpRequest::PutBlob(PutBlob {
            target: target.clone(),
            content_type: String::new(),
            headers: ContentHeaders { cache_control: cache_control.into(), ..Default::default() },
            metadata: Metadata::default(),
            conditions: Conditions::none(),
            content_md5: None,
            content_crc64: None,
        })
    };
    let ok = put(&"a".repeat(1024));
    assert_eq!(OpRequest::decode(&ok.encode()), Ok(ok));
    assert_eq!(OpRequest::decode(&put("max-age=ü").encode()), Err(DecodeError::InvalidValue));
    assert_eq!(OpRequest::decode(&put("a\tb").encode()), Err(DecodeError::InvalidValue));
    assert!(matches!(OpRequest::decode(&put(&"a".repeat(1025)).encode()), Err(DecodeError::FieldTooLong { .. })));
}
