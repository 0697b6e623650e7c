//! `VspRequest::parse` + `validate` and `VspResponse::parse`.
//!
//! Invariants: a parsed header is its input bytes; a header that validates
//! obeys the seed's limits; a parsed response is 12 bytes saying 12.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmblob_protocol::transport::{
    MAX_BUFFER_LEN, REQUEST_SIZE, RESPONSE_SIZE, TRANSPORT_VERSION, VspRequest, VspResponse,
};
use zerocopy::IntoBytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = VspRequest::parse(data) {
        assert_eq!(data.len(), REQUEST_SIZE);
        assert_eq!(h.as_bytes(), data);
        if let Ok(op) = h.validate() {
            let (req, resp) = (h.request_buffer_length.get(), h.response_buffer_length.get());
            let (len, valid) = (h.data_buffer_length.get(), h.data_buffer_valid.get());
            assert_eq!(h.version.get(), TRANSPORT_VERSION);
            assert_eq!(h.operation_type.get(), op as u32);
            assert!(req != 0 && resp != 0 && valid <= len);
            assert!(u64::from(req) + u64::from(resp) + u64::from(len) <= u64::from(MAX_BUFFER_LEN));
            assert_ne!(h.transaction_id, [0; 16]);
        }
    } else {
        assert_ne!(data.len(), REQUEST_SIZE);
    }
    if let Ok(r) = VspResponse::parse(data) {
        assert_eq!(data.len(), RESPONSE_SIZE);
        assert_eq!(r.length.get(), RESPONSE_SIZE as u32);
        assert_eq!(r.as_bytes(), data);
    }
});
