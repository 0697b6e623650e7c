//! Strategies and helpers shared by the property tests.
#![allow(dead_code)] // each test binary uses a different subset

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

use vmblob_protocol::config::DeviceConfig;
use vmblob_protocol::names::{BlobName, BlockId, ContainerName};
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobUpdate, BlobWritten, BlockInfo, BlockListType, ByteRange, Conditions,
    ContainerEntry, ContainerProperties, ContentHeaders, CopyBlob, ETag, GetBlob, ListBlobs, ListContainers,
    ListedBlock, MAX_LIST_RESULTS, Metadata, OpCode, OpRequest, OpResponse, PutBlob, PutBlock, PutBlockList,
    ResponseMessage, SetBlobProperties, encode_error_at, encode_success_at,
};
use vmblob_protocol::ops::{
    LeaseAction, LeaseBlob, LeaseDuration, LeaseId, LeaseKind, LeaseProperties, LeaseResult, LeaseState,
};
use vmblob_protocol::status::BlobError;

/// `cases` per property, or `PROPTEST_CASES` when set (for long soak runs).
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------- names

/// 3–63 of `[a-z0-9-]`, letter or digit at both ends, no `--`.
pub fn container_name() -> impl Strategy<Value = ContainerName> {
    prop_oneof![
        8 => "[a-z0-9](-?[a-z0-9]){2,31}",
        1 => "[a-z0-9]{63}",
        1 => "[a-z0-9]{3}",
    ]
    .prop_map(|s| ContainerName::new(&s).expect("strategy makes valid container names"))
}

/// One blob-name segment: no `/`, `\` or control character, not `.` or `..`.
fn blob_segment() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-zA-Z0-9._-]{1,12}", 1 => "[^/\\\\\\p{Cc}]{1,8}"]
        .prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

pub fn blob_name() -> impl Strategy<Value = BlobName> {
    prop_oneof![
        10 => vec(blob_segment(), 1..6).prop_map(|v| v.join("/")),
        1 => "[a-z]{1024}",
        1 => Just(vec!["d"; 254].join("/")),
    ]
    .prop_map(|s| BlobName::new(&s).expect("strategy makes valid blob names"))
}

pub fn blob_ref() -> impl Strategy<Value = BlobRef> {
    (container_name(), blob_name()).prop_map(|(container, blob)| BlobRef { container, blob })
}

pub fn block_id() -> impl Strategy<Value = BlockId> {
    vec(any::<u8>(), 1..=64).prop_map(|b| BlockId::new(&b).expect("1-64 bytes"))
}

/// A PutBlockList entry, with or without the committer's CRC.
pub fn listed_block() -> impl Strategy<Value = ListedBlock> {
    (block_id(), proptest::option::of(any::<u64>())).prop_map(|(id, crc64)| ListedBlock { id, crc64 })
}

/// Text without control characters, at most `max` bytes.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).unwrap(),
        1 => proptest::string::string_regex(&format!("[^\\p{{Cc}}]{{0,{max}}}")).unwrap(),
    ]
    .prop_map(move |s| truncate(s, max))
}

/// `s` cut to at most `max` bytes on a char boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

pub fn metadata() -> impl Strategy<Value = Metadata> {
    let small = vec(("[A-Za-z_][A-Za-z0-9_]{0,15}", text(24)), 0..6).prop_map(|pairs| {
        let mut seen = std::collections::HashSet::new();
        pairs.into_iter().filter(|(k, _)| seen.insert(k.to_ascii_lowercase())).collect::<Vec<_>>()
    });
    // One pair filling the 8 KiB limit exactly.
    let full = "[A-Za-z_][A-Za-z0-9_]{0,40}".prop_map(|k| {
        let v = "v".repeat(8 * 1024 - k.len());
        vec![(k, v)]
    });
    prop_oneof![9 => small, 1 => full].prop_map(|p| Metadata::new(p).expect("strategy makes valid metadata"))
}

pub fn etag() -> impl Strategy<Value = ETag> {
    prop_oneof![
        1 => Just(ETag::any()),
        4 => "[^\\p{Cc}]{1,24}".prop_map(|s| ETag::new(&s).expect("valid etag")),
        1 => "[!-~]{256}".prop_map(|s| ETag::new(&s).expect("valid etag")),
    ]
}

pub fn conditions() -> impl Strategy<Value = Conditions> {
    let time = || proptest::option::of(prop_oneof![any::<u64>(), 0..4_000_000_000_000u64]);
    (proptest::option::of(etag()), proptest::option::of(etag()), time(), time(), proptest::option::of(lease_id()))
        .prop_map(|(if_match, if_none_match, if_modified_since_ms, if_unmodified_since_ms, lease_id)| Conditions {
            if_match,
            if_none_match,
            if_modified_since_ms,
            if_unmodified_since_ms,
            lease_id,
        })
}

pub fn lease_id() -> impl Strategy<Value = LeaseId> {
    any::<[u8; 16]>().prop_map(LeaseId)
}

fn lease_action() -> impl Strategy<Value = LeaseAction> {
    let duration = prop_oneof![Just(LeaseDuration::Infinite), (15u32..=60).prop_map(LeaseDuration::Fixed)];
    prop_oneof![
        (duration, proptest::option::of(lease_id()))
            .prop_map(|(duration, proposed_id)| LeaseAction::Acquire { duration, proposed_id }),
        lease_id().prop_map(|lease_id| LeaseAction::Renew { lease_id }),
        (lease_id(), lease_id()).prop_map(|(lease_id, proposed_id)| LeaseAction::Change { lease_id, proposed_id }),
        lease_id().prop_map(|lease_id| LeaseAction::Release { lease_id }),
        proptest::option::of(0u32..=60).prop_map(|break_period_secs| LeaseAction::Break { break_period_secs }),
    ]
}

fn lease_properties() -> impl Strategy<Value = LeaseProperties> {
    prop_oneof![
        Just(LeaseState::Available),
        Just(LeaseState::Expired),
        Just(LeaseState::Breaking),
        Just(LeaseState::Broken)
    ]
    .prop_map(|state| LeaseProperties { state, duration: None })
    .boxed()
    .prop_union(
        prop_oneof![Just(LeaseKind::Infinite), Just(LeaseKind::Fixed)]
            .prop_map(|k| LeaseProperties { state: LeaseState::Leased, duration: Some(k) })
            .boxed(),
    )
}

/// Conditions op version 1 can carry.
pub fn v1_conditions() -> impl Strategy<Value = Conditions> {
    (proptest::option::of(etag()), proptest::option::of(etag())).prop_map(|(if_match, if_none_match)| Conditions {
        if_match,
        if_none_match,
        ..Conditions::none()
    })
}

pub fn content_headers() -> impl Strategy<Value = ContentHeaders> {
    // HTTP header values: printable ASCII.
    let field = || prop_oneof![3 => Just(String::new()), 2 => "[ -~]{1,24}", 1 => "a{1024}"];
    (field(), field(), field(), field()).prop_map(
        |(content_encoding, content_language, content_disposition, cache_control)| ContentHeaders {
            content_encoding,
            content_language,
            content_disposition,
            cache_control,
        },
    )
}

pub fn byte_range() -> impl Strategy<Value = ByteRange> {
    prop_oneof![any::<u64>(), 0..1u64 << 20]
        .prop_flat_map(|offset| {
            (Just(offset), prop_oneof![0..=u64::MAX - offset, 0..=(u64::MAX - offset).min(1 << 20)])
        })
        .prop_map(|(offset, length)| ByteRange { offset, length })
}

fn max_results() -> impl Strategy<Value = u32> {
    prop_oneof![1..=MAX_LIST_RESULTS, Just(MAX_LIST_RESULTS), Just(1)]
}

// ---------------------------------------------------------------- requests

pub fn op_request() -> impl Strategy<Value = OpRequest> {
    let arms: Vec<BoxedStrategy<OpRequest>> = vec![
        Just(OpRequest::GetDeviceConfig).boxed(),
        (container_name(), metadata())
            .prop_map(|(container, metadata)| OpRequest::CreateContainer { container, metadata })
            .boxed(),
        container_name().prop_map(|container| OpRequest::DeleteContainer { container }).boxed(),
        (text(63), text(64), max_results(), any::<bool>())
            .prop_map(|(prefix, marker, max_results, include_metadata)| {
                OpRequest::ListContainers(ListContainers { prefix, marker, max_results, include_metadata })
            })
            .boxed(),
        container_name().prop_map(|container| OpRequest::GetContainerProperties { container }).boxed(),
        (
            blob_ref(),
            (text(64), content_headers()),
            metadata(),
            conditions(),
            proptest::option::of(any::<[u8; 16]>()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(target, (content_type, headers), metadata, conditions, content_md5, content_crc64)| {
                OpRequest::PutBlob(PutBlob {
                    target,
                    content_type,
                    headers,
                    metadata,
                    conditions,
                    content_md5,
                    content_crc64,
                })
            })
            .boxed(),
        (blob_ref(), proptest::option::of(byte_range()), conditions())
            .prop_map(|(target, range, conditions)| OpRequest::GetBlob(GetBlob { target, range, conditions }))
            .boxed(),
        (blob_ref(), conditions())
            .prop_map(|(target, conditions)| OpRequest::GetBlobProperties { target, conditions })
            .boxed(),
        (blob_ref(), conditions())
            .prop_map(|(target, conditions)| OpRequest::DeleteBlob { target, conditions })
            .boxed(),
        (container_name(), text(64), text(16), text(64), max_results(), any::<(bool, bool)>())
            .prop_map(|(container, prefix, delimiter, marker, max_results, (include_metadata, include_uncommitted))| {
                OpRequest::ListBlobs(ListBlobs {
                    container,
                    prefix,
                    delimiter,
                    marker,
                    max_results,
                    include_metadata,
                    include_uncommitted,
                })
            })
            .boxed(),
        (blob_ref(), block_id(), proptest::option::of(any::<u64>()), proptest::option::of(lease_id()))
            .prop_map(|(target, block_id, content_crc64, lease_id)| {
                OpRequest::PutBlock(PutBlock { target, block_id, content_crc64, lease_id })
            })
            .boxed(),
        (blob_ref(), lease_action(), conditions())
            .prop_map(|(target, action, conditions)| {
                OpRequest::LeaseBlob(LeaseBlob { target, action, conditions: conditions.with_lease(None) })
            })
            .boxed(),
        (blob_ref(), vec(listed_block(), 0..24), (text(32), content_headers()), metadata(), conditions())
            .prop_map(|(target, blocks, (content_type, headers), metadata, conditions)| {
                OpRequest::PutBlockList(PutBlockList { target, blocks, content_type, headers, metadata, conditions })
            })
            .boxed(),
        (
            blob_ref(),
            prop_oneof![Just(BlockListType::Committed), Just(BlockListType::Uncommitted), Just(BlockListType::All)],
        )
            .prop_map(|(target, list_type)| OpRequest::GetBlockList { target, list_type })
            .boxed(),
        (blob_ref(), metadata(), conditions())
            .prop_map(|(target, m, conditions)| {
                OpRequest::SetBlobProperties(SetBlobProperties { target, update: BlobUpdate::Metadata(m), conditions })
            })
            .boxed(),
        (blob_ref(), text(64), proptest::option::of(content_headers()), conditions())
            .prop_map(|(target, content_type, headers, conditions)| {
                OpRequest::SetBlobProperties(SetBlobProperties {
                    target,
                    update: BlobUpdate::Properties { content_type, headers },
                    conditions,
                })
            })
            .boxed(),
        (blob_ref(), blob_ref(), conditions(), conditions(), proptest::option::of(metadata()))
            .prop_map(|(source, target, source_conditions, conditions, metadata)| {
                OpRequest::CopyBlob(CopyBlob { source, target, source_conditions, conditions, metadata })
            })
            .boxed(),
    ];
    assert_eq!(arms.len(), OpCode::ALL.len());
    Union::new(arms)
}

/// Every byte string that decodes to `req`: its encoding, and for listings
/// whose `max_results` is 5000 also the one carrying 0 ("0 means 5000").
/// The encodings of `req` in op `version` (the one it was decoded from).
pub fn encodings_of(version: u16, req: &OpRequest) -> Vec<Vec<u8>> {
    let at = |r: &OpRequest| r.encode_at(version).expect("a decoded request re-encodes in its version");
    let mut out = vec![at(req)];
    match req {
        OpRequest::ListContainers(l) if l.max_results == MAX_LIST_RESULTS => {
            out.push(at(&OpRequest::ListContainers(ListContainers { max_results: 0, ..l.clone() })))
        }
        OpRequest::ListBlobs(l) if l.max_results == MAX_LIST_RESULTS => {
            out.push(at(&OpRequest::ListBlobs(ListBlobs { max_results: 0, ..l.clone() })))
        }
        _ => {}
    }
    out
}

// ---------------------------------------------------------------- responses

pub fn device_config() -> impl Strategy<Value = DeviceConfig> {
    (
        (0u16..=1, 1u16..=u16::MAX, any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<u32>(), any::<u16>(), any::<u64>(), any::<u64>(), any::<u32>()),
    )
        .prop_map(
            |(
                (min_op_version, max_op_version, max_buffer_len, max_data_len, max_request_len, max_segments),
                (max_inflight, num_queues, capabilities, max_blob_size, block_size_hint),
            )| DeviceConfig {
                min_op_version,
                max_op_version,
                max_buffer_len,
                max_data_len,
                max_request_len,
                max_segments,
                max_inflight,
                num_queues,
                capabilities,
                max_blob_size,
                block_size_hint,
            },
        )
}

/// Any UTF-8 of at most `max` chars (responses do not check for control characters).
fn any_text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("(?s:.{{0,{max}}})")).unwrap()
}

pub fn blob_properties() -> impl Strategy<Value = BlobProperties> {
    (
        any_text(24),
        (any::<u64>(), any::<u64>()),
        any::<u64>(),
        (any_text(24), content_headers()),
        proptest::option::of(any::<[u8; 16]>()),
        any::<u64>(),
        any::<u32>(),
        (metadata(), lease_properties()),
    )
        .prop_map(
            |(
                etag,
                (last_modified_ms, created_ms),
                content_length,
                (content_type, headers),
                content_md5,
                content_crc64,
                committed_blocks,
                (metadata, lease),
            )| BlobProperties {
                etag,
                last_modified_ms,
                created_ms,
                content_length,
                content_type,
                headers,
                content_md5,
                content_crc64,
                committed_blocks,
                metadata,
                lease,
            },
        )
}

pub fn container_properties() -> impl Strategy<Value = ContainerProperties> {
    (any_text(24), any::<u64>(), metadata()).prop_map(|(etag, last_modified_ms, metadata)| ContainerProperties {
        etag,
        last_modified_ms,
        metadata,
    })
}

fn blob_list_item() -> impl Strategy<Value = BlobListItem> {
    prop_oneof![
        (any_text(40), blob_properties()).prop_map(|(name, properties)| BlobListItem::Blob { name, properties }),
        any_text(40).prop_map(BlobListItem::Prefix),
        any_text(40).prop_map(BlobListItem::Uncommitted),
    ]
}

/// A response and an op it answers.
pub fn op_response() -> impl Strategy<Value = (OpCode, OpResponse)> {
    let arms: Vec<BoxedStrategy<(OpCode, OpResponse)>> = vec![
        device_config().prop_map(|c| (OpCode::GetDeviceConfig, OpResponse::DeviceConfig(c))).boxed(),
        container_properties().prop_map(|p| (OpCode::CreateContainer, OpResponse::ContainerCreated(p))).boxed(),
        prop_oneof![Just(OpCode::DeleteContainer), Just(OpCode::DeleteBlob)]
            .prop_map(|op| (op, OpResponse::Deleted))
            .boxed(),
        (vec((any_text(15), container_properties()), 0..6), any_text(40))
            .prop_map(|(c, next_marker)| {
                let containers = c.into_iter().map(|(name, properties)| ContainerEntry { name, properties }).collect();
                (OpCode::ListContainers, OpResponse::ContainerList { containers, next_marker })
            })
            .boxed(),
        container_properties()
            .prop_map(|p| (OpCode::GetContainerProperties, OpResponse::ContainerProperties(p)))
            .boxed(),
        (
            prop_oneof![
                Just(OpCode::PutBlob),
                Just(OpCode::PutBlockList),
                Just(OpCode::SetBlobMetadata),
                Just(OpCode::SetBlobProperties),
                Just(OpCode::CopyBlob)
            ],
            any_text(24),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(op, etag, last_modified_ms, content_crc64)| {
                (op, OpResponse::BlobWritten(BlobWritten { etag, last_modified_ms, content_crc64 }))
            })
            .boxed(),
        (blob_properties(), any::<u64>(), any::<u64>())
            .prop_map(|(properties, offset, length)| {
                (OpCode::GetBlob, OpResponse::BlobData { properties, offset, length })
            })
            .boxed(),
        blob_properties().prop_map(|p| (OpCode::GetBlobProperties, OpResponse::BlobProperties(p))).boxed(),
        (vec(blob_list_item(), 0..6), any_text(40))
            .prop_map(|(items, next_marker)| (OpCode::ListBlobs, OpResponse::BlobList { items, next_marker }))
            .boxed(),
        any::<u64>().prop_map(|content_crc64| (OpCode::PutBlock, OpResponse::BlockStaged { content_crc64 })).boxed(),
        (any_text(24), any::<u64>(), proptest::option::of(lease_id()), any::<u32>())
            .prop_map(|(etag, last_modified_ms, lease_id, lease_time_secs)| {
                (
                    OpCode::LeaseBlob,
                    OpResponse::Lease(LeaseResult { etag, last_modified_ms, lease_id, lease_time_secs }),
                )
            })
            .boxed(),
        vec((vec(any::<u8>(), 1..=64), any::<u64>(), any::<bool>()), 0..12)
            .prop_map(|b| {
                let blocks = b.into_iter().map(|(id, size, committed)| BlockInfo { id, size, committed }).collect();
                (OpCode::GetBlockList, OpResponse::BlockList { blocks })
            })
            .boxed(),
    ];
    Union::new(arms)
}

pub fn op_code() -> impl Strategy<Value = OpCode> {
    proptest::sample::select(OpCode::ALL.to_vec())
}

/// Known errors and unknown non-zero codes.
pub fn blob_error() -> impl Strategy<Value = BlobError> {
    prop_oneof![
        3 => proptest::sample::select(BlobError::all().collect::<Vec<_>>()),
        1 => any::<u32>()
            .prop_filter("0 is success; known codes decode to their variant", |c| {
                matches!(BlobError::from_code(*c), Some(BlobError::Unknown(_)))
            })
            .prop_map(BlobError::Unknown),
    ]
}

/// The bytes `ResponseMessage::decode` accepted, re-encoded.
pub fn reencode_response(msg: &ResponseMessage) -> Vec<u8> {
    match &msg.result {
        Ok(r) => encode_success_at(msg.version, msg.op, r),
        Err(e) => encode_error_at(msg.version, msg.op, e.error, &e.message, usize::MAX),
    }
}

/// `resp` as an op-version-1 peer sees it: no creation time, no HTTP headers
/// besides Content-Type.
/// An answer as op `version` carries it: without the fields later versions
/// added (2: creation time, HTTP headers, uncommitted items; 3: leases).
pub fn without_fields_after(version: u16, resp: OpResponse) -> OpResponse {
    let strip = |p: &mut BlobProperties| {
        if version < 2 {
            p.created_ms = 0;
            p.headers = ContentHeaders::default();
        }
        if version < 3 {
            p.lease = LeaseProperties::default();
        }
    };
    match resp {
        OpResponse::BlobProperties(mut p) => {
            strip(&mut p);
            OpResponse::BlobProperties(p)
        }
        OpResponse::BlobData { mut properties, offset, length } => {
            strip(&mut properties);
            OpResponse::BlobData { properties, offset, length }
        }
        OpResponse::BlobList { mut items, next_marker } => {
            items.retain(|i| version >= 2 || !matches!(i, BlobListItem::Uncommitted(_)));
            for i in &mut items {
                if let BlobListItem::Blob { properties, .. } = i {
                    strip(properties);
                }
            }
            OpResponse::BlobList { items, next_marker }
        }
        other => other,
    }
}

// ---------------------------------------------------------------- mutations

/// One edit of an encoded buffer.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    Insert(usize, u8),
    Remove(usize),
    /// Write a little-endian u32 (counts, lengths) at an index.
    SetU32(usize, u32),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => (any::<usize>(), prop_oneof![Just(0), Just(u32::MAX), Just(0xFFFF), any::<u32>()])
            .prop_map(|(i, v)| Mutation::SetU32(i, v)),
    ]
}

pub fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let n = buf.len();
    match m {
        Mutation::FlipBit(i, b) if n > 0 => buf[i % n] ^= 1 << b,
        Mutation::Set(i, v) if n > 0 => buf[i % n] = *v,
        Mutation::Truncate(i) => buf.truncate(i % (n + 1)),
        Mutation::Extend(more) => buf.extend_from_slice(more),
        Mutation::Insert(i, v) => buf.insert(i % (n + 1), *v),
        Mutation::Remove(i) if n > 0 => {
            buf.remove(i % n);
        }
        Mutation::SetU32(i, v) if n >= 4 => {
            let at = i % (n - 3);
            buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        _ => {}
    }
}

/// Set the op header's `body_len` (bytes 12..16) to what follows the header,
/// so mutations reach the body decoders instead of stopping at the length check.
pub fn fix_body_len(buf: &mut [u8]) {
    if buf.len() >= 16 {
        let body = (buf.len() - 16) as u32;
        buf[12..16].copy_from_slice(&body.to_le_bytes());
    }
}
