//! Where things are in the inflight region (vhost-user spec, "Inflight I/O
//! tracking", split virtqueues): one queue region per queue, each a 16-byte
//! header then `desc_num` descriptor states of 16 bytes.
//!
//! ```text
//! queue region: u64 features | u16 version | u16 desc_num | u16 last_batch_head | u16 used_idx
//!               DescStateSplit[desc_num]
//! DescStateSplit: u8 inflight | u8 padding[5] | u16 next | u64 counter
//! ```
//! All fields little-endian. The queue regions follow each other at a
//! 64-byte-aligned stride.

use super::InflightError;

pub const HEADER_SIZE: usize = 16;
pub const DESC_SIZE: usize = 16;
pub const ALIGN: usize = 64;
/// The region layout this build writes; `0` means a region no backend has
/// initialised yet.
pub const VERSION: u16 = 1;

// Header fields.
pub const FEATURES: usize = 0;
pub const VERSION_AT: usize = 8;
pub const DESC_NUM: usize = 10;
pub const LAST_BATCH_HEAD: usize = 12;
pub const USED_IDX: usize = 14;

// Descriptor-state fields, relative to the state.
pub const INFLIGHT: usize = 0;
pub const NEXT: usize = 6;
pub const COUNTER: usize = 8;

/// Largest split-ring size (virtio spec).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// More queues than any VMM configures; bounds what a frontend can make us map.
pub const MAX_QUEUES: u16 = 256;

/// How many queues the region covers and how big each one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub num_queues: u16,
    pub queue_size: u16,
}

impl Geometry {
    /// Checks the numbers a frontend sent (GET/SET_INFLIGHT_FD).
    pub fn new(num_queues: u16, queue_size: u16) -> Result<Geometry, InflightError> {
        if num_queues == 0 || num_queues > MAX_QUEUES || queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
            return Err(InflightError::Geometry { num_queues, queue_size });
        }
        Ok(Geometry { num_queues, queue_size })
    }

    /// Bytes of one queue's region.
    pub fn stride(&self) -> usize {
        (HEADER_SIZE + DESC_SIZE * usize::from(self.queue_size)).next_multiple_of(ALIGN)
    }

    /// Bytes of the whole region.
    pub fn size(&self) -> usize {
        self.stride() * usize::from(self.num_queues)
    }

    /// Where queue `q`'s region starts.
    pub fn queue_base(&self, q: u16) -> Option<usize> {
        (q < self.num_queues).then(|| self.stride() * usize::from(q))
    }
}

/// Where descriptor state `i` starts within a queue region.
pub fn desc(i: u16) -> usize {
    HEADER_SIZE + DESC_SIZE * usize::from(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_spec_layout() {
        let g = Geometry::new(2, 256).unwrap();
        assert_eq!(g.stride(), 16 + 16 * 256 + 48, "header + states, rounded up to 64");
        assert_eq!(g.size(), 2 * g.stride());
        assert_eq!(g.queue_base(1), Some(g.stride()));
        assert_eq!(g.queue_base(2), None);
        assert_eq!(Geometry::new(1, 3).unwrap().stride(), 64);
        assert_eq!(desc(3), 16 + 48);
    }

    #[test]
    fn hostile_geometry_is_refused() {
        for (n, s) in [(0, 256), (1, 0), (MAX_QUEUES + 1, 256), (1, MAX_QUEUE_SIZE + 1)] {
            assert!(Geometry::new(n, s).is_err(), "{n} × {s}");
        }
    }
}
