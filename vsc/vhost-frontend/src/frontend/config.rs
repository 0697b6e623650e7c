//! `VHOST_USER_GET_CONFIG`, exchanged directly on the socket.
//!
//! vhost 0.18's `Frontend::get_config` reads the reply into a buffer of the *requested* size and
//! waits until it is full. A backend that refuses the read answers, as the spec says, with a
//! zero-size `VhostUserConfig` and no payload, so that call blocks forever (a `vhost-user-backend`
//! daemon does this for any read outside its config space). Here the reply header is read first
//! and exactly the announced number of bytes after it, so a refusal is an error, not a hang.
//!
//! Safe to interleave with `Frontend` requests: the device calls this with `&mut self`, so no
//! other request is in flight, and the frontend's endpoint keeps no buffered bytes of its own.

use std::io::{Read, Write};
use std::mem::size_of;
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{MAX_MSG_SIZE, VHOST_USER_CONFIG_SIZE, VhostUserConfig, VhostUserConfigFlags};
use vm_memory::ByteValued;

use crate::{Error, Result, Step};

/// `VHOST_USER_GET_CONFIG` request code.
const GET_CONFIG: u32 = 24;
/// Header flags: protocol version 1 in bits 0..=1, REPLY is bit 2.
const VERSION_1: u32 = 0x1;
const VERSION_MASK: u32 = 0x3;
const FLAG_REPLY: u32 = 0x4;
const HEADER_SIZE: usize = 12;

/// Reads `len` bytes of config space at `offset`.
pub(crate) fn get_config(socket: &UnixStream, offset: u32, len: u32) -> Result<Vec<u8>> {
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > VHOST_USER_CONFIG_SIZE) {
        return Err(Error::ConfigRange { offset, len });
    }
    let body = VhostUserConfig::new(offset, len, VhostUserConfigFlags::empty());
    let request_size = size_of::<VhostUserConfig>() + len as usize;

    // Header fields are in native byte order (vhost-user spec). No NEED_REPLY: GET_CONFIG has
    // its own reply.
    let mut msg = Vec::with_capacity(HEADER_SIZE + request_size);
    msg.extend_from_slice(&GET_CONFIG.to_ne_bytes());
    msg.extend_from_slice(&VERSION_1.to_ne_bytes());
    msg.extend_from_slice(&(request_size as u32).to_ne_bytes());
    msg.extend_from_slice(body.as_slice());
    msg.resize(HEADER_SIZE + request_size, 0); // the payload of a read request is ignored
    let io = |source| Error::Socket { step: Step::GetConfig, source };
    (&*socket).write_all(&msg).map_err(io)?;

    let mut header = [0u8; HEADER_SIZE];
    (&*socket).read_exact(&mut header).map_err(io)?;
    let field = |i: usize| u32::from_ne_bytes([header[4 * i], header[4 * i + 1], header[4 * i + 2], header[4 * i + 3]]);
    let (code, flags, size) = (field(0), field(1), field(2) as usize);
    let bad = |reason| Error::BadReply { step: Step::GetConfig, reason };
    if code != GET_CONFIG || flags & VERSION_MASK != VERSION_1 || flags & FLAG_REPLY == 0 {
        return Err(bad("not a GET_CONFIG reply"));
    }
    if !(size_of::<VhostUserConfig>()..=MAX_MSG_SIZE).contains(&size) {
        return Err(bad("reply size out of range"));
    }
    // Read the whole announced reply so the stream stays in step even if we reject it.
    let mut reply = vec![0u8; size];
    (&*socket).read_exact(&mut reply).map_err(io)?;
    let (head, payload) = reply.split_at(size_of::<VhostUserConfig>());
    let mut answer = VhostUserConfig::default();
    answer.as_mut_slice().copy_from_slice(head);
    let (answer_offset, answer_size) = (answer.offset, answer.size);

    if answer_size == 0 {
        return Err(Error::ConfigRefused { offset, len });
    }
    if answer_offset != offset || answer_size != len || payload.len() != len as usize {
        return Err(bad("reply does not match the request"));
    }
    Ok(payload.to_vec())
}
