//! `ResponseMessage::decode`: the first byte picks the op the response is
//! expected for, the rest is the response buffer.
//!
//! Invariant: whatever decodes re-encodes (with `encode_success_at` or
//! `encode_error_at`, in the op version it came in) to the same bytes, except the reserved bytes of a device
//! config, which the decoder ignores.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmblob_protocol::ops::{OP_HEADER_SIZE, OpCode, OpResponse, ResponseMessage, encode_error_at, encode_success_at};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, buf)) = data.split_first() else { return };
    let op = OpCode::ALL[usize::from(pick) % OpCode::ALL.len()];
    let Ok(msg) = ResponseMessage::decode(buf, op) else { return };
    assert_eq!(msg.op, op);
    let bytes = match &msg.result {
        Ok(resp) => {
            assert!(resp.answers(op), "{resp:?} decoded for {op:?}");
            encode_success_at(msg.version, op, resp)
        }
        Err(e) => encode_error_at(msg.version, op, e.error, &e.message, usize::MAX),
    };
    let mut want = buf.to_vec();
    if let Ok(OpResponse::DeviceConfig(_)) = msg.result {
        // reserved0 and the 12-byte tail of the config.
        want[OP_HEADER_SIZE + 30..OP_HEADER_SIZE + 32].fill(0);
        want[OP_HEADER_SIZE + 52..OP_HEADER_SIZE + 64].fill(0);
    }
    assert_eq!(bytes, want);
    assert_eq!(ResponseMessage::decode(&bytes, op), Ok(msg));
});
