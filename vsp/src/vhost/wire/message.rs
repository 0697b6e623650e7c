//! One vhost-user message as it crosses the socket: the 12-byte header
//! (request, flags, size), the body, and the file descriptors that came with
//! it, read and written with `sendmsg`/`recvmsg` (rustix: no `unsafe`).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    recvmsg, sendmsg,
};
use vhost::vhost_user::message::FrontendReq;

/// Descriptors per message: 8, QEMU's and the vhost crate's limit; more is refused.
pub const MAX_FDS: usize = 8;
/// Largest body accepted. The biggest real ones are a memory table of 8
/// regions (264 bytes) and GET_CONFIG (≤ 268); this leaves room for others.
pub const MAX_BODY: usize = 64 << 10;
pub const HEADER_SIZE: usize = 12;

/// Header flags (vhost-user spec).
pub const FLAG_VERSION_1: u32 = 0x1;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;

#[derive(Debug)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("message body of {0} bytes is over the {MAX_BODY}-byte limit")]
    BodyTooLong(u32),
    #[error("{0} file descriptors with one message (at most {MAX_FDS})")]
    TooManyFds(usize),
}

impl Message {
    /// A reply to `to` carrying `body`.
    pub fn reply(to: &Message, body: Vec<u8>) -> Message {
        Message { request: to.request, flags: FLAG_VERSION_1 | FLAG_REPLY, body, fds: Vec::new() }
    }

    pub fn needs_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    pub fn u32_at(&self, off: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.body.get(off..off + 4)?.try_into().ok()?))
    }

    pub fn u64_at(&self, off: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.get(off..off + 8)?.try_into().ok()?))
    }

    /// `GET_FEATURES`, `SET_VRING_ADDR`, ... (or the number, if unknown).
    pub fn frontend_name(&self) -> String {
        FrontendReq::try_from(self.request).map_or_else(|_| format!("request {}", self.request), |r| format!("{r:?}"))
    }

    /// The body for a trace line: small ones in full, large ones cut.
    pub fn body_hex(&self) -> String {
        let shown = &self.body[..self.body.len().min(64)];
        let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
        if shown.len() < self.body.len() { format!("{hex}…") } else { hex }
    }
}

/// Read one message; `None` at a clean end of stream.
pub fn recv(sock: &UnixStream) -> Result<Option<Message>, WireError> {
    let mut header = [0u8; HEADER_SIZE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(sock, &mut [IoSliceMut::new(&mut header)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if got == 0 {
        return Ok(None);
    }
    if fds.len() > MAX_FDS {
        return Err(WireError::TooManyFds(fds.len()));
    }
    let mut reader = sock;
    reader.read_exact(&mut header[got..])?;
    let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8));
    if size as usize > MAX_BODY {
        return Err(WireError::BodyTooLong(size));
    }
    let mut body = vec![0u8; size as usize];
    reader.read_exact(&mut body)?;
    Ok(Some(Message { request, flags, body, fds }))
}

/// Write one message, its descriptors with the first byte (where receivers look for them).
pub fn send(sock: &UnixStream, msg: &Message) -> Result<(), WireError> {
    let mut header = [0u8; HEADER_SIZE];
    header[0..4].copy_from_slice(&msg.request.to_le_bytes());
    header[4..8].copy_from_slice(&msg.flags.to_le_bytes());
    header[8..12].copy_from_slice(&(msg.body.len() as u32).to_le_bytes());
    let fds: Vec<BorrowedFd<'_>> = msg.fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(WireError::TooManyFds(fds.len()));
    }
    let total = HEADER_SIZE + msg.body.len();
    let sent = loop {
        match sendmsg(sock, &[IoSlice::new(&header), IoSlice::new(&msg.body)], &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    };
    if sent < total {
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(&header);
        all.extend_from_slice(&msg.body);
        let mut writer = sock;
        writer.write_all(&all[sent..])?;
    }
    Ok(())
}
