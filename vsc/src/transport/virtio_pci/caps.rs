//! Decoding a virtio-pci function's configuration space: the BAR types and
//! the vendor capabilities that locate the common, notify, ISR and device
//! configuration structures (virtio 1.2 §4.1.4).
//!
//! The device is untrusted: the decoders are total (any byte string gives a
//! value or an error, never a panic), the capability walk is bounded and
//! detects loops, and every structure is checked to lie inside a memory BAR
//! of known length without overlapping another.
#![forbid(unsafe_code)]

/// PCI vendor id of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Bytes of the standard configuration header plus capabilities.
pub const CONFIG_SPACE: usize = 256;

const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u16 = 1 << 4;
const CAP_PTR: usize = 0x34;
const BAR0: usize = 0x10;
const CAP_ID_VENDOR: u8 = 0x09;
/// Capabilities live after the 64-byte header, 4-byte aligned: at most 48.
const MAX_CAPS: usize = (CONFIG_SPACE - 0x40) / 4;
const VIRTIO_CAP_LEN: u8 = 16;
const NOTIFY_CAP_LEN: u8 = 20;

const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

/// Smallest usable structures: the common config up to `queue_device`
/// (0x38), a 16-bit notify register, the ISR byte, the config magic.
pub const MIN_COMMON_LEN: u64 = 0x38;
const MIN_NOTIFY_LEN: u64 = 2;
const MIN_ISR_LEN: u64 = 1;
const MIN_DEVICE_LEN: u64 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    #[error("configuration space is {0} bytes, need {CONFIG_SPACE}")]
    Truncated(usize),
    #[error("vendor {0:#06x} is not virtio")]
    NotVirtio(u16),
    #[error("the function has no capability list")]
    NoCapList,
    #[error("capability pointer {0:#x} is outside the capability area")]
    BadPointer(u8),
    #[error("capability list loops back to {0:#x}")]
    Loop(u8),
    #[error("capability at {at:#x} has length {len}, need {min} and at most the end of config space")]
    BadCapLen { at: u8, len: u8, min: u8 },
    #[error("{what} structure names BAR {bar}, which is {kind:?}")]
    NotMemoryBar { what: &'static str, bar: u8, kind: BarKind },
    #[error("{what} structure [{offset:#x}, +{len:#x}) is outside BAR {bar} of {bar_len:#x} bytes")]
    OutsideBar { what: &'static str, bar: u8, offset: u64, len: u64, bar_len: u64 },
    #[error("{what} structure is {len:#x} bytes, need at least {min:#x}")]
    TooSmall { what: &'static str, len: u64, min: u64 },
    #[error("{a} and {b} structures overlap in BAR {bar}")]
    Overlap { a: &'static str, b: &'static str, bar: u8 },
    #[error("notify_off_multiplier {0} is neither 0 nor a power of two")]
    BadMultiplier(u32),
    #[error("no {0} capability")]
    Missing(&'static str),
}

/// What a BAR register says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    /// A 64-bit memory BAR; the next BAR register holds its upper half.
    Mem64,
    /// The upper half of the 64-bit BAR before it: not a BAR of its own.
    Upper,
    /// A 64-bit BAR in the last slot has no upper half.
    Broken,
}

/// BAR kinds from the six BAR registers (64-bit BARs take two slots).
pub fn bar_kinds(config: &[u8]) -> Result<[BarKind; 6], CapError> {
    check_len(config)?;
    let mut kinds = [BarKind::Mem32; 6];
    let mut i = 0;
    while i < 6 {
        let low = le32(config, BAR0 + 4 * i);
        kinds[i] = match (low & 1, (low >> 1) & 3) {
            (1, _) => BarKind::Io,
            (_, 2) if i == 5 => BarKind::Broken,
            (_, 2) => BarKind::Mem64,
            _ => BarKind::Mem32,
        };
        if kinds[i] == BarKind::Mem64 {
            kinds[i + 1] = BarKind::Upper;
            i += 1;
        }
        i += 1;
    }
    Ok(kinds)
}

/// A structure's place: `len` bytes at `offset` into BAR `bar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub bar: u8,
    pub offset: u64,
    pub len: u64,
}

impl Window {
    fn overlaps(&self, other: &Window) -> bool {
        self.bar == other.bar && self.offset < other.offset + other.len && other.offset < self.offset + self.len
    }
}

/// The structures a driver needs, each checked against its BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioCaps {
    pub common: Window,
    pub notify: Window,
    pub notify_off_multiplier: u32,
    pub isr: Window,
    pub device: Window,
}

fn check_len(config: &[u8]) -> Result<(), CapError> {
    if config.len() < CONFIG_SPACE { Err(CapError::Truncated(config.len())) } else { Ok(()) }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The vendor id (offset 0).
pub fn vendor(config: &[u8]) -> Option<u16> {
    (config.len() >= 2).then(|| le16(config, 0))
}

/// One raw virtio vendor capability.
#[derive(Debug, Clone, Copy)]
struct RawCap {
    at: u8,
    cfg_type: u8,
    window: Window,
    multiplier: u32,
}

/// Walk the capability list: each pointer inside the capability area, no
/// node visited twice, at most `MAX_CAPS` nodes.
fn vendor_caps(config: &[u8]) -> Result<Vec<RawCap>, CapError> {
    if le16(config, STATUS) & STATUS_CAP_LIST == 0 {
        return Err(CapError::NoCapList);
    }
    let mut seen = [false; CONFIG_SPACE];
    let mut caps = Vec::new();
    let mut ptr = config[CAP_PTR] & !3;
    for _ in 0..MAX_CAPS {
        if ptr == 0 {
            return Ok(caps);
        }
        let at = usize::from(ptr);
        if at < 0x40 || at + 2 > CONFIG_SPACE {
            return Err(CapError::BadPointer(ptr));
        }
        if std::mem::replace(&mut seen[at], true) {
            return Err(CapError::Loop(ptr));
        }
        if config[at] == CAP_ID_VENDOR {
            caps.push(parse_vendor_cap(config, ptr)?);
        }
        ptr = config[at + 1] & !3;
    }
    // 48 distinct aligned nodes fill the area; a 49th pointer must repeat one.
    if ptr == 0 { Ok(caps) } else { Err(CapError::Loop(ptr)) }
}

fn parse_vendor_cap(config: &[u8], ptr: u8) -> Result<RawCap, CapError> {
    let at = usize::from(ptr);
    let bad_len = |len, min| CapError::BadCapLen { at: ptr, len, min };
    // cap_len is only readable when the fixed part fits.
    if at + usize::from(VIRTIO_CAP_LEN) > CONFIG_SPACE {
        return Err(bad_len(0, VIRTIO_CAP_LEN));
    }
    let len = config[at + 2];
    let cfg_type = config[at + 3];
    let min = if cfg_type == CFG_NOTIFY { NOTIFY_CAP_LEN } else { VIRTIO_CAP_LEN };
    if len < min || at + usize::from(len) > CONFIG_SPACE {
        return Err(bad_len(len, min));
    }
    let window =
        Window { bar: config[at + 4], offset: u64::from(le32(config, at + 8)), len: u64::from(le32(config, at + 12)) };
    let multiplier = if cfg_type == CFG_NOTIFY { le32(config, at + 16) } else { 0 };
    Ok(RawCap { at: ptr, cfg_type, window, multiplier })
}

/// Locate and check the four structures. `bar_len[i]` is BAR i's length
/// (0: absent), as sysfs `resource` reports it.
pub fn parse(config: &[u8], bar_len: &[u64; 6]) -> Result<VirtioCaps, CapError> {
    check_len(config)?;
    let vendor = le16(config, 0);
    if vendor != VIRTIO_VENDOR {
        return Err(CapError::NotVirtio(vendor));
    }
    let kinds = bar_kinds(config)?;
    // The first capability of each type wins (§4.1.4: in order of preference);
    // a reserved BAR number (> 5) makes a capability one to ignore.
    let caps = vendor_caps(config)?;
    let first = |t: u8| caps.iter().find(|c| c.cfg_type == t && c.window.bar <= 5).copied();
    let take = |t: u8, what: &'static str, min: u64| -> Result<RawCap, CapError> {
        let cap = first(t).ok_or(CapError::Missing(what))?;
        check_window(what, &cap.window, &kinds, bar_len, min)?;
        log::trace!("virtio-pci {what} at cap {:#x}: {:?}", cap.at, cap.window);
        Ok(cap)
    };
    let common = take(CFG_COMMON, "common", MIN_COMMON_LEN)?;
    let notify = take(CFG_NOTIFY, "notify", MIN_NOTIFY_LEN)?;
    let isr = take(CFG_ISR, "ISR", MIN_ISR_LEN)?;
    let device = take(CFG_DEVICE, "device", MIN_DEVICE_LEN)?;
    let m = notify.multiplier;
    if m != 0 && !m.is_power_of_two() {
        return Err(CapError::BadMultiplier(m));
    }
    let all = [("common", common.window), ("notify", notify.window), ("ISR", isr.window), ("device", device.window)];
    for (i, (a, wa)) in all.iter().enumerate() {
        for (b, wb) in &all[i + 1..] {
            if wa.overlaps(wb) {
                return Err(CapError::Overlap { a, b, bar: wa.bar });
            }
        }
    }
    Ok(VirtioCaps {
        common: common.window,
        notify: notify.window,
        notify_off_multiplier: m,
        isr: isr.window,
        device: device.window,
    })
}

fn check_window(
    what: &'static str,
    w: &Window,
    kinds: &[BarKind; 6],
    bar_len: &[u64; 6],
    min: u64,
) -> Result<(), CapError> {
    let kind = kinds[usize::from(w.bar)];
    if !matches!(kind, BarKind::Mem32 | BarKind::Mem64) {
        return Err(CapError::NotMemoryBar { what, bar: w.bar, kind });
    }
    if w.len < min {
        return Err(CapError::TooSmall { what, len: w.len, min });
    }
    let bar_len = bar_len[usize::from(w.bar)];
    // offset and len are u32s, so the sum cannot overflow a u64.
    if w.offset + w.len > bar_len {
        return Err(CapError::OutsideBar { what, bar: w.bar, offset: w.offset, len: w.len, bar_len });
    }
    Ok(())
}

#[cfg(test)]
#[path = "caps_tests.rs"]
pub(crate) mod tests;
