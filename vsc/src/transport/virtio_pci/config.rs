//! The full device config through a GetDeviceConfig request: the config
//! space a VMM shows the guest may be rewritten or cut short (QEMU's blk
//! carrier overwrites bytes 34–35 and reads 0xff past byte 57).
#![forbid(unsafe_code)]

use std::time::Duration;

use vmblob_protocol::config::DeviceConfig;
use vmblob_protocol::ops::{OpRequest, OpResponse, ResponseMessage};
use vmblob_protocol::transport::OperationType;
use vmblob_protocol::{DataDirection, OpCode, VspRequest};

use crate::error::ClientError;
use crate::transport::{OpBuffers, REQUEST_PREFIX, RESPONSE_SUFFIX, Transport};

/// Response buffer: the op header and 64 bytes fit with room to spare.
const CONFIG_RESPONSE: usize = 1024;

pub fn fetch(t: &dyn Transport, timeout: Duration) -> Result<DeviceConfig, ClientError> {
    let pool = t.pool();
    let body = OpRequest::GetDeviceConfig.encode();
    let no_buffer = || ClientError::Transport("no DMA buffer for the device config".into());
    let mut request = pool.alloc(REQUEST_PREFIX + body.len()).ok_or_else(no_buffer)?;
    request.write_at(REQUEST_PREFIX, &body).map_err(|e| ClientError::Transport(e.to_string()))?;
    let response = pool.alloc(CONFIG_RESPONSE + RESPONSE_SUFFIX).ok_or_else(no_buffer)?;
    let mut transaction_id = [0u8; 16];
    let _ = getrandom::fill(&mut transaction_id);
    let header = VspRequest {
        timeout_ms: (timeout.as_millis().min(u128::from(u32::MAX)) as u32).into(),
        operation_type: (OperationType::UserRequest as u32).into(),
        request_buffer_length: (body.len() as u32).into(),
        response_buffer_length: (CONFIG_RESPONSE as u32).into(),
        transaction_id,
        ..Default::default()
    };
    let ticket = t.submit(OpBuffers { header, request, response, data: None, dir: DataDirection::None })?;
    let c = ticket
        .wait_timeout(timeout)
        .ok_or_else(|| ClientError::Transport(format!("no device config within {timeout:?}")))??;
    let mut raw = vec![0u8; c.response.response_len.get() as usize];
    c.buffers.response.read_at(0, &mut raw).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let msg = ResponseMessage::decode(&raw, OpCode::GetDeviceConfig)
        .map_err(|e| ClientError::Protocol(format!("device config: {e}")))?;
    match msg.result {
        Ok(OpResponse::DeviceConfig(config)) if c.response.error.get() == 0 => Ok(config),
        Ok(r) => Err(ClientError::Protocol(format!("GetDeviceConfig answered {r:?}"))),
        Err(r) => Err(ClientError::Blob { error: r.error, message: r.message }),
    }
}
