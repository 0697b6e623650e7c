//! A chain read straight from the descriptor table. A head resubmitted after a
//! restart has no avail entry left to pop it from (the dead backend popped
//! it), and virtio-queue's `DescriptorChain::new` is crate-private, so the
//! queue reads the table itself: split ring, direct descriptors only
//! (INDIRECT_DESC is not offered).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmblob_protocol::framing::virtio::ChainDescriptor;

const DESC_SIZE: u64 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor {0} outside the table")]
    Index(u16),
    #[error("descriptor table unreadable at {0:#x}")]
    Memory(u64),
    #[error("indirect descriptor (not negotiated)")]
    Indirect,
    #[error("chain longer than the ring (a loop)")]
    Loop,
}

/// The chain at `head` of the table at `table` (queue size `size`), at most
/// `limit` descriptors (a longer chain comes back cut at `limit`, for the
/// frame to refuse).
pub fn read_chain(
    mem: &GuestMemoryMmap,
    table: u64,
    size: u16,
    head: u16,
    limit: usize,
) -> Result<Vec<ChainDescriptor>, ChainError> {
    let mut out = Vec::new();
    let mut i = head;
    loop {
        if i >= size {
            return Err(ChainError::Index(i));
        }
        if out.len() >= usize::from(size) {
            return Err(ChainError::Loop);
        }
        let at = table.checked_add(u64::from(i) * DESC_SIZE).ok_or(ChainError::Memory(table))?;
        let mut raw = [0u8; DESC_SIZE as usize];
        mem.read_slice(&mut raw, GuestAddress(at)).map_err(|_| ChainError::Memory(at))?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & F_INDIRECT != 0 {
            return Err(ChainError::Indirect);
        }
        out.push(ChainDescriptor { addr, len, writable: flags & F_WRITE != 0 });
        if flags & F_NEXT == 0 || out.len() >= limit {
            return Ok(out);
        }
        i = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(m: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        m.write_slice(&raw, GuestAddress(0x1000 + 16 * u64::from(i))).unwrap();
    }

    #[test]
    fn follows_next_and_reports_writable() {
        let m = mem();
        put(&m, 3, 0x8000, 56, F_NEXT, 5);
        put(&m, 5, 0x9000, 12, F_WRITE, 0);
        let c = read_chain(&m, 0x1000, 8, 3, 16).unwrap();
        assert_eq!(
            c,
            vec![
                ChainDescriptor { addr: 0x8000, len: 56, writable: false },
                ChainDescriptor { addr: 0x9000, len: 12, writable: true }
            ]
        );
        assert_eq!(read_chain(&m, 0x1000, 8, 3, 1).unwrap().len(), 1, "cut at the limit");
    }

    #[test]
    fn hostile_tables_are_errors() {
        let m = mem();
        put(&m, 0, 0, 1, F_NEXT, 1);
        put(&m, 1, 0, 1, F_NEXT, 0);
        assert_eq!(read_chain(&m, 0x1000, 8, 0, 100), Err(ChainError::Loop));
        put(&m, 2, 0, 1, F_NEXT, 9);
        assert_eq!(read_chain(&m, 0x1000, 8, 2, 100), Err(ChainError::Index(9)));
        put(&m, 3, 0, 1, F_INDIRECT, 0);
        assert_eq!(read_chain(&m, 0x1000, 8, 3, 100), Err(ChainError::Indirect));
        assert_eq!(read_chain(&m, 0x1000, 8, 8, 100), Err(ChainError::Index(8)));
        assert!(matches!(read_chain(&m, 0xfff0, 8, 4, 100), Err(ChainError::Memory(_))));
    }
}
