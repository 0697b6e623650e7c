//! `OpRequest::decode_versioned` over arbitrary bytes.
//!
//! Invariant: whatever decodes re-encodes, in the op version it came in, to
//! the same bytes (the one alias is `max_results` 0, which decodes as 5000),
//! and the re-encoding decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmblob_protocol::ops::{ListBlobs, ListContainers, MAX_LIST_RESULTS, OpRequest};

fuzz_target!(|data: &[u8]| {
    let Ok((version, req)) = OpRequest::decode_versioned(data) else { return };
    let encode = |r: &OpRequest| r.encode_at(version).expect("a decoded request fits its version");
    let bytes = encode(&req);
    assert_eq!(OpRequest::decode_versioned(&bytes), Ok((version, req.clone())));
    if bytes == data {
        return;
    }
    let alias = match &req {
        OpRequest::ListContainers(l) if l.max_results == MAX_LIST_RESULTS => {
            OpRequest::ListContainers(ListContainers { max_results: 0, ..l.clone() })
        }
        OpRequest::ListBlobs(l) if l.max_results == MAX_LIST_RESULTS => {
            OpRequest::ListBlobs(ListBlobs { max_results: 0, ..l.clone() })
        }
        _ => panic!("{req:?} re-encodes to different bytes"),
    };
    assert_eq!(encode(&alias), data, "{req:?} re-encodes to different bytes");
});
