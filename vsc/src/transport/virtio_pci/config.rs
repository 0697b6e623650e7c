//! The full device config through a GetDeviceConfig request: the config
//! space a VMM shows the guest may be rewritten or cut short (QEMU's blk
//! carrier overwrites bytes 34–35 and reads 0xff past byte 57).
#![forbid(unsafe_code)]

use std::time::Duration;

use vmblob_protocol::config::DeviceConfig;

use crate::error::ClientError;
use crate::transport::{RESPONSE_SUFFIX, Transport};

/// Response buffer: the op header and 64 bytes fit with room to spare.
const CONFIG_RESPONSE: usize = 1024;

pub fn fetch(t: &dyn Transport, timeout: Duration) -> Result<DeviceConfig, ClientError> {
    crate::transport::fetch_device_config(t, t.pool(), CONFIG_RESPONSE, RESPONSE_SUFFIX, timeout)
}
