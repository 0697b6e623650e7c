//! `DeviceConfig::from_bytes`.
//!
//! Invariant: a decoded config's op versions overlap this build's, and it re-encodes
//! to its input with the reserved bytes zeroed; partial reads are slices of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmblob_protocol::config::DeviceConfig;
use vmblob_protocol::ops::{MIN_OP_VERSION, OP_VERSION};

fuzz_target!(|data: &[u8]| {
    let Ok(c) = DeviceConfig::from_bytes(data) else { return };
    assert_eq!(data.len(), DeviceConfig::SIZE);
    assert!(c.min_op_version <= OP_VERSION && MIN_OP_VERSION <= c.max_op_version);
    let mut want = data.to_vec();
    want[30..32].fill(0);
    want[52..64].fill(0);
    assert_eq!(c.to_bytes().to_vec(), want);
    assert_eq!(DeviceConfig::from_bytes(&c.to_bytes()), Ok(c));
    let (off, len) = (u32::from(data[4] % 70), u32::from(data[5]));
    let start = (off as usize).min(DeviceConfig::SIZE);
    let end = (start + len as usize).min(DeviceConfig::SIZE);
    assert_eq!(c.read(off, len), want[start..end].to_vec());
});
