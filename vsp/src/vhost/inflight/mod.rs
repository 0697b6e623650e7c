//! vhost-user inflight I/O tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`),
//! split rings, laid out exactly as the vhost-user spec ("Inflight I/O
//! tracking") describes, so any frontend that keeps the region (QEMU's
//! vhost-user-blk, Cloud Hypervisor) can hand it back to a restarted VSP.
//!
//! The VSP creates the region (a sealed memfd) when the frontend asks with
//! GET_INFLIGHT_FD; the frontend keeps the fd and returns it with
//! SET_INFLIGHT_FD on every connection. Each queue's in-memory
//! `InflightTable` stays the one tracker; this region is its durable copy,
//! written at the same two points (admit, completion), so a restarted
//! backend knows which heads the dead one took and in which order.

mod file;
mod layout;
mod queue;

use std::sync::{Arc, Mutex};

pub use file::{InflightRegion, create, map};
pub use layout::Geometry;
pub use queue::QueueRegion;

#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("{num_queues} queues of {queue_size} descriptors is not a valid inflight region")]
    Geometry { num_queues: u16, queue_size: u16 },
    #[error("the inflight region has no queue {0}")]
    NoSuchQueue(u16),
    #[error("the inflight region is {have} bytes, {need} needed")]
    TooSmall { have: usize, need: usize },
    #[error("inflight region access at byte {0} out of bounds")]
    Access(usize),
    #[error("queue region version {0} (this build knows 1)")]
    Version(u16),
    #[error("queue region holds {found} descriptors, the frontend said {expected}")]
    DescNum { found: u16, expected: u16 },
    #[error("ring of {ring} descriptors does not fit the region's {desc_num}")]
    RingTooLarge { ring: u16, desc_num: u16 },
    #[error("head {head} outside the region's {desc_num} descriptors")]
    Head { head: u16, desc_num: u16 },
    #[error("descriptor {head}: inflight flag {value} (0 or 1)")]
    Flag { head: u16, value: u8 },
    #[error("used ring at {ring} and region at {region}: more than a ring apart")]
    UsedIdx { ring: u16, region: u16 },
    #[error("descriptors {a} and {b} share counter {counter}")]
    DuplicateCounter { counter: u64, a: u16, b: u16 },
    #[error("{n} descriptors in flight on a ring of {ring}")]
    TooManyInflight { n: usize, ring: u16 },
    #[error("admission counter exhausted")]
    CounterExhausted,
    #[error("inflight memfd: {0}")]
    Memfd(std::io::Error),
    #[error("the inflight fd is not sealed against shrinking (not one this VSP created)")]
    Unsealed,
    #[error("the inflight fd holds {have} bytes, {need} needed at offset {offset}")]
    FileTooSmall { have: u64, need: u64, offset: u64 },
    #[error("cannot map the inflight region: {0}")]
    Map(vm_memory::mmap::MmapRegionError),
}

/// The region a connection's frontend set, shared by the wire tap (which
/// receives SET_INFLIGHT_FD) and the queue workers (which use it). Each
/// SET_INFLIGHT_FD is a new generation: a worker recovers its queue from a
/// region once per generation, at the queue's first pop.
#[derive(Default)]
pub struct InflightSlot {
    current: Mutex<Option<(u64, Arc<InflightRegion>)>>,
}

impl InflightSlot {
    pub fn set(&self, region: InflightRegion) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let generation = cur.as_ref().map_or(1, |(g, _)| g + 1);
        *cur = Some((generation, Arc::new(region)));
    }

    /// The region and its generation, if the frontend set one.
    pub fn get(&self) -> Option<(u64, Arc<InflightRegion>)> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
