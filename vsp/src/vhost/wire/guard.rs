//! What the tap checks before the backend sees it: ring addresses. The
//! vhost-user-backend handler answers a `SET_VRING_ADDR` outside every
//! memory region with an error that ends the whole connection ("Missing
//! memory mapping"), so one bad queue would take the VMM's other queues
//! with it. The tap keeps the frontend's memory map (from `SET_MEM_TABLE`,
//! `ADD_MEM_REG`, `REM_MEM_REG`), refuses such an address itself and keeps
//! that queue out of the backend until the frontend sets it up again; the
//! other queues and the connection go on.

use std::collections::BTreeSet;

use vhost::vhost_user::message::FrontendReq;

use super::message::Message;

/// More regions than any VMM uses (vhost-user-backend offers 509 slots).
const MAX_REGIONS: usize = 512;

/// One region as the frontend describes it (`VhostUserMemoryRegion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    guest_phys_addr: u64,
    size: u64,
    user_addr: u64,
}

impl Region {
    const SIZE: usize = 32;

    fn parse(b: &[u8]) -> Option<Region> {
        let at = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        Some(Region { guest_phys_addr: at(0)?, size: at(8)?, user_addr: at(16)? })
    }

    fn contains(&self, user_addr: u64) -> bool {
        user_addr >= self.user_addr && user_addr - self.user_addr < self.size
    }
}

/// What to do with a frontend message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Keep it from the backend; answer the frontend with this reply if it asked for one.
    Answer(Option<Vec<u8>>),
}

#[derive(Debug, Default)]
pub struct Guard {
    regions: Vec<Region>,
    /// Queues whose rings are outside guest memory.
    refused: BTreeSet<u32>,
}

/// A reply-ack payload: 0 for success.
fn ack(ok: bool) -> Vec<u8> {
    u64::from(!ok).to_le_bytes().to_vec()
}

impl Guard {
    pub fn check(&mut self, msg: &Message) -> Verdict {
        let Ok(req) = FrontendReq::try_from(msg.request) else { return Verdict::Forward };
        match req {
            FrontendReq::SET_MEM_TABLE => {
                // u32 count, u32 padding, then the regions.
                let n = msg.u32_at(0).unwrap_or(0) as usize;
                self.regions = (0..n.min(8))
                    .filter_map(|i| msg.body.get(8 + i * Region::SIZE..))
                    .filter_map(Region::parse)
                    .collect();
                Verdict::Forward
            }
            FrontendReq::ADD_MEM_REG => {
                // u64 padding, then one region. Bounded: a frontend adding regions forever must
                // not grow the map (the backend refuses more than its slots anyway).
                if self.regions.len() < MAX_REGIONS {
                    self.regions.extend(msg.body.get(8..).and_then(Region::parse));
                }
                Verdict::Forward
            }
            FrontendReq::REM_MEM_REG => {
                if let Some(r) = msg.body.get(8..).and_then(Region::parse) {
                    self.regions.retain(|x| x.guest_phys_addr != r.guest_phys_addr || x.size != r.size);
                }
                Verdict::Forward
            }
            FrontendReq::SET_VRING_ADDR => self.vring_addr(msg),
            FrontendReq::SET_VRING_NUM
            | FrontendReq::SET_VRING_BASE
            | FrontendReq::SET_VRING_KICK
            | FrontendReq::SET_VRING_CALL
            | FrontendReq::SET_VRING_ERR
            | FrontendReq::SET_VRING_ENABLE => match self.queue_of(msg) {
                Some(q) if self.refused.contains(&q) => Verdict::Answer(msg.needs_reply().then(|| ack(true))),
                _ => Verdict::Forward,
            },
            FrontendReq::GET_VRING_BASE => {
                // Stopping the queue ends the refusal: it may be set up afresh.
                if let Some(q) = msg.u32_at(0) {
                    self.refused.remove(&q);
                }
                Verdict::Forward
            }
            FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE => {
                self.refused.clear();
                Verdict::Forward
            }
            _ => Verdict::Forward,
        }
    }

    /// Kick, call and err carry the index in the low byte of a u64; the others a u32 first.
    fn queue_of(&self, msg: &Message) -> Option<u32> {
        let kick_like = [FrontendReq::SET_VRING_KICK, FrontendReq::SET_VRING_CALL, FrontendReq::SET_VRING_ERR];
        if kick_like.iter().any(|r| *r as u32 == msg.request) {
            msg.u64_at(0).map(|v| (v & 0xff) as u32)
        } else {
            msg.u32_at(0)
        }
    }

    /// `VhostUserVringAddr`: u32 index, u32 flags, u64 desc, used, avail, log (frontend VAs).
    fn vring_addr(&mut self, msg: &Message) -> Verdict {
        let (Some(index), Some(desc), Some(used), Some(avail)) =
            (msg.u32_at(0), msg.u64_at(8), msg.u64_at(16), msg.u64_at(24))
        else {
            return Verdict::Forward; // malformed: the backend's own checks refuse it
        };
        let inside = |a: u64| self.regions.iter().any(|r| r.contains(a));
        if inside(desc) && inside(used) && inside(avail) {
            self.refused.remove(&index);
            return Verdict::Forward;
        }
        log::warn!(
            "queue {index}: ring addresses outside guest memory (desc {desc:#x}, avail {avail:#x}, used {used:#x}); \
             the queue stays down, the connection and the other queues go on"
        );
        self.refused.insert(index);
        Verdict::Answer(msg.needs_reply().then(|| ack(false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost::wire::message::{FLAG_NEED_REPLY, FLAG_VERSION_1};

    fn msg(req: FrontendReq, body: Vec<u8>, need_reply: bool) -> Message {
        let flags = FLAG_VERSION_1 | if need_reply { FLAG_NEED_REPLY } else { 0 };
        Message { request: req as u32, flags, body, fds: Vec::new() }
    }

    fn add_region(gpa: u64, size: u64, ua: u64) -> Message {
        let mut b = vec![0u8; 8];
        for v in [gpa, size, ua, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        msg(FrontendReq::ADD_MEM_REG, b, false)
    }

    fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Message {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [desc, used, avail, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        msg(FrontendReq::SET_VRING_ADDR, b, true)
    }

    #[test]
    fn a_ring_outside_memory_is_refused_for_its_queue_only() {
        let mut g = Guard::default();
        assert_eq!(g.check(&add_region(0, 1 << 20, 0x7000_0000)), Verdict::Forward);
        assert_eq!(g.check(&vring_addr(1, 0x7000_0000, 0x7000_2000, 0x7000_1000)), Verdict::Forward);
        // Queue 0 points past the region: refused with a failing ack, and its later setup is held back.
        assert_eq!(g.check(&vring_addr(0, 0x7010_0000, 0x7000_2000, 0x7000_1000)), Verdict::Answer(Some(ack(false))));
        let kick0 = msg(FrontendReq::SET_VRING_KICK, 0u64.to_le_bytes().to_vec(), false);
        assert_eq!(g.check(&kick0), Verdict::Answer(None));
        let enable0 = msg(FrontendReq::SET_VRING_ENABLE, [0u32.to_le_bytes(), 1u32.to_le_bytes()].concat(), true);
        assert_eq!(g.check(&enable0), Verdict::Answer(Some(ack(true))));
        let kick1 = msg(FrontendReq::SET_VRING_KICK, 1u64.to_le_bytes().to_vec(), false);
        assert_eq!(g.check(&kick1), Verdict::Forward);
        // Stopping it ends the refusal; afterwards it may be set up again with good addresses.
        let get_base0 = msg(FrontendReq::GET_VRING_BASE, [0u32.to_le_bytes(), 0u32.to_le_bytes()].concat(), false);
        assert_eq!(g.check(&get_base0), Verdict::Forward);
        assert_eq!(g.check(&kick0), Verdict::Forward);
        assert_eq!(g.check(&vring_addr(0, 0x7000_4000, 0x7000_6000, 0x7000_5000)), Verdict::Forward);
    }

    #[test]
    fn a_memory_table_replaces_the_regions() {
        let mut g = Guard::default();
        g.check(&add_region(0, 1 << 20, 0x7000_0000));
        let mut b = 1u32.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [0u64, 1 << 20, 0x9000_0000, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        g.check(&msg(FrontendReq::SET_MEM_TABLE, b, false));
        assert!(matches!(g.check(&vring_addr(0, 0x7000_0000, 0x7000_2000, 0x7000_1000)), Verdict::Answer(_)));
        assert_eq!(g.check(&vring_addr(0, 0x9000_0000, 0x9000_2000, 0x9000_1000)), Verdict::Forward);
    }
}
