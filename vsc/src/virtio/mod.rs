//! Guest-side virtio transport: the driver half of a split virtqueue.
//!
//! [`SplitQueue`] owns a virtio 1.x split ring placed in guest memory and
//! plays the driver role: it posts descriptor chains, decides when the device
//! needs a kick, harvests completions and controls interrupt suppression.
//! Everything it reads back from the used ring is device-controlled and is
//! validated before use; a misbehaving device yields a [`QueueError`], never a
//! panic or a corrupted free list.

pub mod split_queue;

pub use split_queue::{MAX_QUEUE_SIZE, SplitQueue};

use vm_memory::GuestAddress;

/// Descriptor flag: the chain continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise device-readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Avail ring flag: the driver does not want interrupts (only without EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want kicks (only without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// The EVENT_IDX notification rule (virtio spec 2.7.7.2, Linux `vring_need_event`).
///
/// True when `event_idx` lies in the window `[old_idx, new_idx)` of the
/// wrapping u16 index space, i.e. the peer asked to be notified when the
/// index moved past `event_idx` and that happened since the last decision.
pub fn vring_need_event(event_idx: u16, new_idx: u16, old_idx: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old_idx)
}

/// Errors of the split-queue driver.
///
/// `Full` is ordinary back-pressure; the chain-shape variants are driver bugs
/// the caller can fix; the `Used*` variants mean the device broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue size {0} is not a power of two in 1..={MAX_QUEUE_SIZE}")]
    InvalidSize(u32),
    #[error("ring base {:#x} is not 16-byte aligned", .0.0)]
    Misaligned(GuestAddress),
    #[error("ring [{:#x}, +{len:#x}) is not inside guest memory", base.0)]
    RingOutsideMemory { base: GuestAddress, len: u64 },
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("not enough free descriptors: need {needed}, {free} free")]
    Full { needed: usize, free: usize },
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error("chain of {len} descriptors exceeds the queue size {max}")]
    ChainTooLong { len: usize, max: u16 },
    #[error("descriptor {index} has length 0")]
    EmptyBuffer { index: usize },
    #[error("descriptor {index} is device-readable but follows a device-writable one")]
    ReadableAfterWritable { index: usize },
    #[error("descriptor {index} [{:#x}, +{len:#x}) is not inside guest memory", addr.0)]
    BufferOutsideMemory { index: usize, addr: GuestAddress, len: u32 },
    #[error("chain totals {total} bytes, more than 2^32 - 1")]
    ChainTooLarge { total: u64 },
    #[error("device returned used id {id}, outside the queue of size {size}")]
    UsedIdOutOfRange { id: u32, size: u16 },
    #[error("device returned used id {id}, which is not an outstanding chain head")]
    UsedIdNotOutstanding { id: u16 },
    #[error("device used.idx {used_idx} is {} entries past {last_used}, more than the queue size {size}",
        used_idx.wrapping_sub(*last_used))]
    UsedIdxAhead { used_idx: u16, last_used: u16, size: u16 },
    #[error("device reported {len} bytes written to chain {head}, which has only {max} writable bytes")]
    UsedLenTooLarge { head: u16, len: u32, max: u32 },
}

impl QueueError {
    /// True when the device violated the ring protocol (the caller should
    /// treat the device as broken, e.g. reset the queue).
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            Self::UsedIdOutOfRange { .. }
                | Self::UsedIdNotOutstanding { .. }
                | Self::UsedIdxAhead { .. }
                | Self::UsedLenTooLarge { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::vring_need_event;

    #[test]
    fn need_event_window_is_wrapping() {
        // Device asked for a notification at index 5.
        assert!(vring_need_event(5, 6, 5));
        assert!(vring_need_event(5, 10, 3));
        assert!(!vring_need_event(5, 5, 3)); // not reached yet
        assert!(!vring_need_event(5, 9, 6)); // already passed before `old`
        assert!(!vring_need_event(5, 7, 7)); // empty window
        // Across the 65535 -> 0 wrap.
        assert!(vring_need_event(65535, 1, 65534));
        assert!(vring_need_event(0, 2, 65535));
        assert!(!vring_need_event(3, 2, 65535));
    }
}
