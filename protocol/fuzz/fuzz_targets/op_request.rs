//! `OpRequest::decode` over arbitrary bytes.
//!
//! Invariant: whatever decodes re-encodes to the same bytes (the one alias is
//! `max_results` 0, which decodes as 5000), and the re-encoding decodes to the
//! same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmblob_protocol::ops::{ListBlobs, ListContainers, MAX_LIST_RESULTS, OpRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = OpRequest::decode(data) else { return };
    let bytes = req.encode();
    assert_eq!(OpRequest::decode(&bytes).as_ref(), Ok(&req));
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
    assert_eq!(alias.encode(), data, "{req:?} re-encodes to different bytes");
});
