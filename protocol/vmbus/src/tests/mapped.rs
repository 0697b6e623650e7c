//! Rings inside guest memory, laid out as a channel allocation / uio map 0.

use crate::packet::{Packet, encode_completion, encode_inband};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const BASE: u64 = 0x10_0000;
const RAM: usize = 0x10_0000;

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), RAM)]).unwrap()
}

type Ends<S> = End<MappedRingMem<S>, Arc<CountingSignal>>;

/// The guest and the host each build their own view of the same allocation.
fn both_ends<S: SharedMemory + Clone>(mem: S, base: u64, ring_size: usize) -> (Ends<S>, Ends<S>) {
    let guest = ChannelRings::new(mem.clone(), base, ring_size, ring_size).unwrap();
    let host = ChannelRings::new(mem, base, ring_size, ring_size).unwrap();
    assert_eq!(guest.host_to_guest.base(), base + ring_size as u64);
    let g = End::new(
        IncomingRing::new(guest.host_to_guest).unwrap(),
        OutgoingRing::new(guest.guest_to_host).unwrap(),
        Arc::new(CountingSignal::new()),
    );
    let h = End::new(
        IncomingRing::new(host.guest_to_host).unwrap(),
        OutgoingRing::new(host.host_to_guest).unwrap(),
        Arc::new(CountingSignal::new()),
    );
    (g, h)
}

#[test]
fn channel_in_guest_memory() {
    let mem = ram();
    let ring_size = 4096 + 16384;
    let (mut guest, mut host) = both_ends(mem.clone(), BASE, ring_size);

    guest.send(&encode_inband(0x1122_3344_5566_7788, true, b"hello")).unwrap();
    assert_eq!(guest.peer.count(), 1);
    // Vector A where a uio guest and the host see it: data right after the control page.
    let mut bytes = [0u8; 32];
    mem.read_slice(&mut bytes, GuestAddress(BASE + 4096)).unwrap();
    assert_eq!(bytes[..24], hex("06 00 02 00 03 00 01 00 88 77 66 55 44 33 22 11 68 65 6c 6c 6f 00 00 00")[..]);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(BASE)).unwrap(), 32, "write_index");
    assert_eq!(mem.read_obj::<u32>(GuestAddress(BASE + 0x40)).unwrap(), 1, "feature_bits");

    assert!(matches!(host.incoming.read_packet(0), Ok(Packet::InBand { transaction_id: 0x1122_3344_5566_7788, .. })));
    host.incoming.commit_read();
    assert_eq!(mem.read_obj::<u32>(GuestAddress(BASE + 4)).unwrap(), 32, "read_index");

    host.send(&encode_completion(0x1122_3344_5566_7788, &[1; 12])).unwrap();
    let rx = BASE + ring_size as u64;
    assert_eq!(mem.read_obj::<u32>(GuestAddress(rx)).unwrap(), 40, "host->guest write_index");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(rx + 4096)).unwrap(), 0x0b);
    assert_eq!(guest.try_recv().unwrap(), encode_completion(0x1122_3344_5566_7788, &[1; 12]));
}

/// Many packets around a mapped ring: the split copies at the end of the data area work.
#[test]
fn wraps_in_guest_memory() {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (mut guest, mut host) = both_ends(Arc::new(ram), 0x4000, 8192);
    let mut rng = Rng::new(3);
    for i in 0..2000u64 {
        let n = rng.below(900);
        let p = encode_inband(i, true, &rng.bytes(n));
        guest.send(&p).unwrap();
        assert_eq!(host.try_recv().unwrap(), p);
    }
    assert_eq!(host.try_recv(), Err(ReadError::Empty));
}

#[test]
fn layout_errors() {
    let mem = ram();
    let at = |base: u64, size: usize| MappedRingMem::new(mem.clone(), base, size).map(|_| ()).unwrap_err();
    assert_eq!(at(BASE + 8, 8192), LayoutError::Misaligned(BASE + 8));
    assert_eq!(at(BASE, 4096), LayoutError::RingSize(4096));
    assert_eq!(at(BASE, 8192 + 100), LayoutError::RingSize(8192 + 100));
    assert_eq!(at(0, 8192), LayoutError::OutOfBounds { base: 0, size: 8192 });
    let end = BASE + RAM as u64;
    assert_eq!(at(end - 4096, 8192), LayoutError::OutOfBounds { base: end - 4096, size: 8192 });
    assert_eq!(at(u64::MAX - 4095, 8192), LayoutError::OutOfBounds { base: u64::MAX - 4095, size: 8192 });
    assert!(MappedRingMem::new(mem.clone(), end - 8192, 8192).is_ok());
    assert_eq!(
        ChannelRings::new(mem, end - 12288, 8192, 8192).unwrap_err(),
        LayoutError::OutOfBounds { base: end - 4096, size: 8192 }
    );
}
