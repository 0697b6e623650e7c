//! INFLIGHT_SHMFD on the wire. vhost-user-backend 0.24 refuses GET/SET_INFLIGHT_FD
//! ("not supported") and its request handler is crate-private, so the tap
//! adds the protocol feature to the backend's offer and answers both
//! messages itself; neither is ever forwarded. The region SET_INFLIGHT_FD
//! brings goes to the connection's [`InflightSlot`], where the queue
//! workers find it.

use std::sync::Arc;

use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};

use super::message::{FLAG_REPLY, Message};
use crate::vhost::inflight::{self, Geometry, InflightError, InflightSlot};

/// `VhostUserInflight`: u64 mmap_size, u64 mmap_offset, u16 num_queues,
/// u16 queue_size, padded to 24 bytes.
const PAYLOAD: usize = 24;

pub struct InflightWire {
    slot: Arc<InflightSlot>,
    /// Queues the backend serves: a region for more is refused.
    queues: u16,
    /// The frontend acked INFLIGHT_SHMFD.
    acked: bool,
}

/// What became of a frontend message.
pub enum Handled {
    /// Not an inflight message: the tap goes on as usual.
    No,
    /// Answered here; send this reply (if any) to the frontend.
    Reply(Option<Message>),
}

impl InflightWire {
    pub fn new(slot: Arc<InflightSlot>, queues: u16) -> Self {
        Self { slot, queues, acked: false }
    }

    pub fn check(&mut self, msg: &mut Message) -> Handled {
        match FrontendReq::try_from(msg.request) {
            Ok(FrontendReq::SET_PROTOCOL_FEATURES) => {
                self.acked = msg.u64_at(0).is_some_and(|f| f & VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits() != 0);
                Handled::No
            }
            Ok(FrontendReq::GET_INFLIGHT_FD) => Handled::Reply(Some(self.get(msg))),
            Ok(FrontendReq::SET_INFLIGHT_FD) => {
                let ok = match self.set(msg) {
                    Ok(g) => {
                        // At every device start (QEMU takes a new region after each guest reset).
                        log::debug!("inflight region set: {} queues of {} descriptors", g.num_queues, g.queue_size);
                        true
                    }
                    Err(e) => {
                        log::warn!("SET_INFLIGHT_FD refused: {e}; requests in flight at a crash are not tracked");
                        false
                    }
                };
                Handled::Reply(msg.needs_reply().then(|| Message::reply(msg, u64::from(!ok).to_le_bytes().to_vec())))
            }
            _ => Handled::No,
        }
    }

    fn geometry(&self, msg: &Message) -> Result<Geometry, InflightError> {
        let (Some(num_queues), Some(queue_size)) = (u16_at(msg, 16), u16_at(msg, 18)) else {
            return Err(InflightError::Geometry { num_queues: 0, queue_size: 0 });
        };
        let g = Geometry::new(num_queues, queue_size)?;
        if num_queues > self.queues {
            return Err(InflightError::Geometry { num_queues, queue_size });
        }
        Ok(g)
    }

    /// A fresh region sized for the queues the frontend names; on any
    /// failure a zero-sized answer without an fd, which frontends take as
    /// "no inflight tracking".
    fn get(&self, msg: &Message) -> Message {
        let made =
            if self.acked { self.geometry(msg) } else { Err(InflightError::Geometry { num_queues: 0, queue_size: 0 }) }
                .and_then(|g| Ok((g, inflight::create(g)?)));
        let mut body = vec![0u8; PAYLOAD];
        let mut reply = Message::reply(msg, Vec::new());
        match made {
            Ok((g, fd)) => {
                body[0..8].copy_from_slice(&(g.size() as u64).to_le_bytes());
                body[16..18].copy_from_slice(&g.num_queues.to_le_bytes());
                body[18..20].copy_from_slice(&g.queue_size.to_le_bytes());
                reply.fds.push(fd);
            }
            Err(e) => log::warn!("GET_INFLIGHT_FD refused: {e}"),
        }
        reply.body = body;
        reply.flags |= FLAG_REPLY;
        reply
    }

    fn set(&self, msg: &mut Message) -> Result<Geometry, InflightError> {
        let g = self.geometry(msg)?;
        let (Some(size), Some(offset)) = (msg.u64_at(0), msg.u64_at(8)) else {
            return Err(InflightError::Geometry { num_queues: 0, queue_size: 0 });
        };
        let mut fds = std::mem::take(&mut msg.fds);
        if fds.len() != 1 {
            return Err(InflightError::Memfd(std::io::Error::other(format!("{} fds, one expected", fds.len()))));
        }
        let region = inflight::map(fds.remove(0), offset, size, g)?;
        self.slot.set(region);
        Ok(g)
    }
}

fn u16_at(msg: &Message, off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(msg.body.get(off..off + 2)?.try_into().ok()?))
}

/// The backend's GET_PROTOCOL_FEATURES reply, with INFLIGHT_SHMFD added.
pub fn offer(reply: &mut Message) {
    if reply.request == FrontendReq::GET_PROTOCOL_FEATURES as u32
        && reply.flags & FLAG_REPLY != 0
        && let Some(f) = reply.u64_at(0)
    {
        let f = f | VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits();
        reply.body[0..8].copy_from_slice(&f.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost::wire::message::{FLAG_NEED_REPLY, FLAG_VERSION_1};

    fn msg(req: FrontendReq, body: Vec<u8>) -> Message {
        Message { request: req as u32, flags: FLAG_VERSION_1 | FLAG_NEED_REPLY, body, fds: Vec::new() }
    }

    fn payload(size: u64, offset: u64, n: u16, qs: u16) -> Vec<u8> {
        let mut b = vec![0u8; PAYLOAD];
        b[0..8].copy_from_slice(&size.to_le_bytes());
        b[8..16].copy_from_slice(&offset.to_le_bytes());
        b[16..18].copy_from_slice(&n.to_le_bytes());
        b[18..20].copy_from_slice(&qs.to_le_bytes());
        b
    }

    fn acked(w: &mut InflightWire) {
        let f = VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits().to_le_bytes().to_vec();
        assert!(matches!(w.check(&mut msg(FrontendReq::SET_PROTOCOL_FEATURES, f)), Handled::No));
    }

    fn reply(h: Handled) -> Message {
        match h {
            Handled::Reply(Some(m)) => m,
            _ => panic!("no reply"),
        }
    }

    #[test]
    fn get_then_set_puts_the_region_in_the_slot() {
        let slot = Arc::new(InflightSlot::default());
        let mut w = InflightWire::new(slot.clone(), 2);
        acked(&mut w);
        let r = reply(w.check(&mut msg(FrontendReq::GET_INFLIGHT_FD, payload(0, 0, 2, 128))));
        assert_eq!(r.body.len(), PAYLOAD);
        let g = Geometry::new(2, 128).unwrap();
        assert_eq!((r.u64_at(0), r.u64_at(8), r.fds.len()), (Some(g.size() as u64), Some(0), 1));
        assert!(slot.get().is_none(), "GET alone attaches nothing");
        let mut set = msg(FrontendReq::SET_INFLIGHT_FD, r.body.clone());
        set.fds = r.fds;
        let ack = reply(w.check(&mut set));
        assert_eq!(ack.u64_at(0), Some(0), "success");
        let (generation, region) = slot.get().unwrap();
        assert_eq!((generation, region.geometry()), (1, g));
    }

    #[test]
    fn bad_requests_are_answered_without_a_region() {
        let slot = Arc::new(InflightSlot::default());
        let mut w = InflightWire::new(slot.clone(), 2);
        // Not acked: no region.
        let r = reply(w.check(&mut msg(FrontendReq::GET_INFLIGHT_FD, payload(0, 0, 2, 128))));
        assert_eq!((r.u64_at(0), r.fds.len()), (Some(0), 0));
        acked(&mut w);
        for body in [payload(0, 0, 3, 128), payload(0, 0, 2, 0), vec![1, 2, 3]] {
            let r = reply(w.check(&mut msg(FrontendReq::GET_INFLIGHT_FD, body)));
            assert_eq!((r.u64_at(0), r.fds.len()), (Some(0), 0));
        }
        // SET without an fd, or with one that is not ours: refused with a failing ack.
        let g = Geometry::new(1, 16).unwrap();
        let ack = reply(w.check(&mut msg(FrontendReq::SET_INFLIGHT_FD, payload(g.size() as u64, 0, 1, 16))));
        assert_eq!(ack.u64_at(0), Some(1));
        let mut set = msg(FrontendReq::SET_INFLIGHT_FD, payload(g.size() as u64, 0, 1, 16));
        set.fds.push(tempfile::tempfile().unwrap().into());
        assert_eq!(reply(w.check(&mut set)).u64_at(0), Some(1));
        assert!(slot.get().is_none());
    }

    #[test]
    fn the_protocol_feature_is_added_to_the_backends_offer() {
        let mut r = Message {
            request: FrontendReq::GET_PROTOCOL_FEATURES as u32,
            flags: FLAG_VERSION_1 | FLAG_REPLY,
            body: 0x8u64.to_le_bytes().to_vec(),
            fds: Vec::new(),
        };
        offer(&mut r);
        assert_eq!(r.u64_at(0), Some(0x8 | 1 << 12));
    }
}
