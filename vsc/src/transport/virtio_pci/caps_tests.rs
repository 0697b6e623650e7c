use super::*;

/// BAR 4 as QEMU lays it out for the blk carrier: 16 KiB, common 0x0, ISR
/// 0x1000, device 0x2000, notify 0x3000 with multiplier 4.
pub(crate) const BAR: u8 = 4;
pub(crate) const BAR_LEN: u64 = 0x4000;
pub(crate) const COMMON: u64 = 0x0;
pub(crate) const ISR: u64 = 0x1000;
pub(crate) const DEVICE: u64 = 0x2000;
pub(crate) const NOTIFY: u64 = 0x3000;
pub(crate) const MULTIPLIER: u32 = 4;

pub(crate) fn bar_lens() -> [u64; 6] {
    let mut l = [0; 6];
    l[usize::from(BAR)] = BAR_LEN;
    l
}

/// A configuration space under construction.
pub(crate) struct Config(pub(crate) Vec<u8>);

impl Config {
    /// 1af4:1042, memory space on, a 64-bit BAR 4 above 4 GiB, no capabilities yet.
    pub(crate) fn blk_carrier() -> Self {
        let mut c = vec![0u8; CONFIG_SPACE];
        c[0..2].copy_from_slice(&VIRTIO_VENDOR.to_le_bytes());
        c[2..4].copy_from_slice(&0x1042u16.to_le_bytes());
        c[4..6].copy_from_slice(&0x0002u16.to_le_bytes());
        c[0x10 + 4 * 4..0x10 + 4 * 4 + 4].copy_from_slice(&0x0000_000cu32.to_le_bytes()); // 64-bit, prefetchable
        c[0x10 + 5 * 4..0x10 + 5 * 4 + 4].copy_from_slice(&0x1u32.to_le_bytes()); // upper half: 4 GiB
        c[0x14..0x18].copy_from_slice(&0xfebf_1000u32.to_le_bytes()); // BAR 1: 32-bit (MSI-X)
        Self(c)
    }

    /// The four structures QEMU offers, chained from 0x40 (plus an MSI-X cap in between).
    pub(crate) fn standard() -> Self {
        let mut c = Self::blk_carrier();
        c.cap(0x40, 0x98, CFG_COMMON, BAR, COMMON as u32, 0x1000, None);
        c.cap(0x98, 0x84, 0x11, 0, 0, 0, None); // MSI-X, not ours: skipped
        c.cap(0x84, 0x70, CFG_ISR, BAR, ISR as u32, 0x1000, None);
        c.cap(0x70, 0x50, CFG_DEVICE, BAR, DEVICE as u32, 0x1000, None);
        c.cap(0x50, 0x00, CFG_NOTIFY, BAR, NOTIFY as u32, 0x1000, Some(MULTIPLIER));
        c.0[CAP_PTR] = 0x40;
        c.0[STATUS] |= STATUS_CAP_LIST as u8;
        c
    }

    /// Write a capability at `at` linking to `next`. Id 0x09 (vendor)
    /// unless `cfg_type` > 0x10 (then it is that id, a foreign capability).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cap(&mut self, at: u8, next: u8, cfg_type: u8, bar: u8, offset: u32, len: u32, mult: Option<u32>) {
        let a = usize::from(at);
        let c = &mut self.0;
        if cfg_type > 0x10 {
            c[a] = cfg_type;
            c[a + 1] = next;
            return;
        }
        c[a] = CAP_ID_VENDOR;
        c[a + 1] = next;
        c[a + 2] = if mult.is_some() { NOTIFY_CAP_LEN } else { VIRTIO_CAP_LEN };
        c[a + 3] = cfg_type;
        c[a + 4] = bar;
        c[a + 8..a + 12].copy_from_slice(&offset.to_le_bytes());
        c[a + 12..a + 16].copy_from_slice(&len.to_le_bytes());
        if let Some(m) = mult {
            c[a + 16..a + 20].copy_from_slice(&m.to_le_bytes());
        }
    }

    fn set(mut self, at: usize, bytes: &[u8]) -> Self {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    fn parse(&self) -> Result<VirtioCaps, CapError> {
        parse(&self.0, &bar_lens())
    }
}

#[test]
fn qemu_layout_decodes() {
    let caps = Config::standard().parse().unwrap();
    assert_eq!(caps.common, Window { bar: 4, offset: 0, len: 0x1000 });
    assert_eq!(caps.isr, Window { bar: 4, offset: 0x1000, len: 0x1000 });
    assert_eq!(caps.device, Window { bar: 4, offset: 0x2000, len: 0x1000 });
    assert_eq!(caps.notify, Window { bar: 4, offset: 0x3000, len: 0x1000 });
    assert_eq!(caps.notify_off_multiplier, 4);
}

#[test]
fn bars_decode_as_64_bit_pairs() {
    let c = Config::standard();
    let kinds = bar_kinds(&c.0).unwrap();
    assert_eq!(kinds, [BarKind::Mem32, BarKind::Mem32, BarKind::Mem32, BarKind::Mem32, BarKind::Mem64, BarKind::Upper]);
    let io = Config::standard().set(0x10, &0x0000_c001u32.to_le_bytes());
    assert_eq!(bar_kinds(&io.0).unwrap()[0], BarKind::Io);
    // A 64-bit BAR in slot 5 has no upper half.
    let last = Config::blk_carrier().set(0x10 + 16, &0u32.to_le_bytes()).set(0x10 + 20, &4u32.to_le_bytes());
    assert_eq!(bar_kinds(&last.0).unwrap()[5], BarKind::Broken);
    assert_eq!(bar_kinds(&[0; 64]), Err(CapError::Truncated(64)));
}

#[test]
fn structures_must_be_in_a_memory_bar_of_known_length() {
    let mut c = Config::standard();
    c.cap(0x40, 0x98, CFG_COMMON, 5, 0, 0x1000, None); // the upper half of BAR 4
    assert!(matches!(c.parse(), Err(CapError::NotMemoryBar { what: "common", bar: 5, kind: BarKind::Upper })));
    let mut c = Config::standard().set(0x10, &1u32.to_le_bytes());
    c.cap(0x40, 0x98, CFG_COMMON, 0, 0, 0x1000, None);
    assert!(matches!(c.parse(), Err(CapError::NotMemoryBar { kind: BarKind::Io, .. })));
    let mut c = Config::standard();
    c.cap(0x40, 0x98, CFG_COMMON, 2, 0, 0x1000, None); // a memory BAR the kernel reports absent
    assert!(matches!(c.parse(), Err(CapError::OutsideBar { bar: 2, bar_len: 0, .. })));
    let mut c = Config::standard();
    c.cap(0x70, 0x50, CFG_DEVICE, BAR, 0x3f00, 0x101, None); // one byte past the BAR
    assert!(matches!(c.parse(), Err(CapError::OutsideBar { what: "device", .. })));
    let mut c = Config::standard();
    c.cap(0x70, 0x50, CFG_DEVICE, BAR, u32::MAX, u32::MAX, None); // would wrap a u32
    assert!(matches!(c.parse(), Err(CapError::OutsideBar { .. })));
    let mut c = Config::standard();
    c.cap(0x40, 0x98, CFG_COMMON, BAR, 0, 0x37, None);
    assert!(matches!(c.parse(), Err(CapError::TooSmall { what: "common", len: 0x37, .. })));
}

#[test]
fn overlapping_structures_are_refused() {
    let mut c = Config::standard();
    c.cap(0x84, 0x70, CFG_ISR, BAR, 0x30, 1, None); // inside the common config
    assert_eq!(c.parse(), Err(CapError::Overlap { a: "common", b: "ISR", bar: BAR }));
    let mut c = Config::standard();
    c.cap(0x50, 0x00, CFG_NOTIFY, BAR, 0x2ffe, 0x10, Some(4)); // straddles device and notify
    assert!(matches!(c.parse(), Err(CapError::Overlap { .. })));
}

#[test]
fn hostile_lists_end_in_errors_not_hangs() {
    // Loop: the last capability points back at the first.
    let mut c = Config::standard();
    c.cap(0x50, 0x40, CFG_NOTIFY, BAR, NOTIFY as u32, 0x1000, Some(4));
    assert_eq!(c.parse(), Err(CapError::Loop(0x40)));
    // A self-loop on a foreign capability.
    let mut c = Config::standard();
    c.cap(0x98, 0x98, 0x11, 0, 0, 0, None);
    assert_eq!(c.parse(), Err(CapError::Loop(0x98)));
    // A pointer into the header, and one at the very end of config space.
    let c = Config::standard().set(CAP_PTR, &[0x20]);
    assert_eq!(c.parse(), Err(CapError::BadPointer(0x20)));
    let mut c = Config::standard();
    c.cap(0x50, 0xff, CFG_NOTIFY, BAR, NOTIFY as u32, 0x1000, Some(4));
    c.0[0xfc] = 0x11;
    c.0[0xfd] = 0;
    assert!(c.parse().is_ok(), "0xff is masked to 0xfc, a valid last node");
    // A vendor capability whose body runs past config space, or is too short.
    let mut c = Config::standard();
    c.cap(0x50, 0xf4, CFG_NOTIFY, BAR, NOTIFY as u32, 0x1000, Some(4));
    c.0[0xf4] = CAP_ID_VENDOR;
    c.0[0xf5] = 0;
    assert!(matches!(c.parse(), Err(CapError::BadCapLen { at: 0xf4, .. })));
    let c = Config::standard().set(0x50 + 2, &[16]); // notify needs 20 bytes
    assert!(matches!(c.parse(), Err(CapError::BadCapLen { at: 0x50, len: 16, min: 20 })));
    // No capability list bit; a non-virtio vendor; missing structures.
    let c = Config::standard().set(STATUS, &[0]);
    assert_eq!(c.parse(), Err(CapError::NoCapList));
    let c = Config::standard().set(0, &0x8086u16.to_le_bytes());
    assert_eq!(c.parse(), Err(CapError::NotVirtio(0x8086)));
    let c = Config::standard().set(0x84 + 1, &[0x50]); // ISR links past the device cap
    assert_eq!(c.parse(), Err(CapError::Missing("device")));
    let c = Config::standard().set(0x50 + 16, &3u32.to_le_bytes());
    assert_eq!(c.parse(), Err(CapError::BadMultiplier(3)));
    assert_eq!(parse(&[0; 100], &bar_lens()), Err(CapError::Truncated(100)));
}

#[test]
fn reserved_bar_numbers_are_skipped_and_the_first_usable_cap_wins() {
    let mut c = Config::standard();
    // A common cap naming BAR 7 first, then the real one.
    c.cap(0xa8, 0x40, CFG_COMMON, 7, 0, 0x1000, None);
    c.0[CAP_PTR] = 0xa8;
    assert_eq!(c.parse().unwrap().common, Window { bar: 4, offset: 0, len: 0x1000 });
}

/// Every single-byte corruption of the capability area decodes or errs; none panics.
#[test]
fn every_byte_flip_is_total() {
    let base = Config::standard();
    for at in 0x34..CONFIG_SPACE {
        for v in [0x00, 0x01, 0x40, 0x7f, 0x98, 0xfc, 0xff] {
            let mut c = Config(base.0.clone());
            c.0[at] = v;
            let _ = c.parse();
        }
    }
}
