//! Whether this guest is an isolated Hyper-V VM (SEV-SNP, TDX or VBS). The
//! kernel of such a guest accepts only the offers of classes `vmbus_devs[]`
//! marks `allowed_in_isolated` (`vmbus_is_valid_offer` in channel_mgmt.c;
//! notes/vmbus.md, "Corrections"). vmblob's class is not in that table, so
//! its offer is dropped ("Invalid offer … from the host supporting
//! isolation") and no device ever appears in sysfs: a wait for it would only
//! end in a timeout that names nothing.
//!
//! The test is the kernel's own (`hv_get_isolation_type`): the Hyper-V
//! CPUID leaves, read without privilege.
#![forbid(unsafe_code)]

/// `HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS`: EAX the highest leaf, EBX-EDX the vendor.
const VENDOR_LEAF: u32 = 0x4000_0000;
/// `HYPERV_CPUID_FEATURES`: EBX is the partition's privilege mask, high half.
const FEATURES_LEAF: u32 = 0x4000_0003;
/// `HYPERV_CPUID_ISOLATION_CONFIG`: EBX bits 0–3 are the isolation type.
const ISOLATION_LEAF: u32 = 0x4000_000C;
/// `HV_ISOLATION` in the privilege mask's high half.
const ISOLATION_BIT: u32 = 1 << 22;
const HYPERV_VENDOR: &[u8; 12] = b"Microsoft Hv";

/// The kind of isolated VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Virtualisation-based security (`HV_ISOLATION_TYPE_VBS`).
    Vbs,
    /// AMD SEV-SNP (`HV_ISOLATION_TYPE_SNP`).
    SevSnp,
    /// Intel TDX (`HV_ISOLATION_TYPE_TDX`).
    Tdx,
    /// A type this build does not know.
    Other(u32),
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Isolation::Vbs => f.write_str("VBS"),
            Isolation::SevSnp => f.write_str("SEV-SNP"),
            Isolation::Tdx => f.write_str("TDX"),
            Isolation::Other(t) => write!(f, "isolation type {t}"),
        }
    }
}

/// The isolation a Hyper-V guest runs with, from its CPUID leaves; `None`
/// when not on Hyper-V or not isolated. `cpuid(leaf)` gives EAX, EBX, ECX, EDX.
pub fn from_cpuid(cpuid: impl Fn(u32) -> [u32; 4]) -> Option<Isolation> {
    let [max_leaf, b, c, d] = cpuid(VENDOR_LEAF);
    let vendor: Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
    if vendor != HYPERV_VENDOR || max_leaf < ISOLATION_LEAF {
        return None;
    }
    if cpuid(FEATURES_LEAF)[1] & ISOLATION_BIT == 0 {
        return None;
    }
    match cpuid(ISOLATION_LEAF)[1] & 0xf {
        0 => None,
        1 => Some(Isolation::Vbs),
        2 => Some(Isolation::SevSnp),
        3 => Some(Isolation::Tdx),
        t => Some(Isolation::Other(t)),
    }
}

/// This guest's isolation (x86-64; other architectures have none on Hyper-V).
pub fn running() -> Option<Isolation> {
    #[cfg(target_arch = "x86_64")]
    {
        // The hypervisor bit (leaf 1, ECX bit 31) says the 0x4000_0000 leaves are a hypervisor's.
        if std::arch::x86_64::__cpuid(1).ecx & (1 << 31) == 0 {
            return None;
        }
        from_cpuid(|leaf| {
            let r = std::arch::x86_64::__cpuid(leaf);
            [r.eax, r.ebx, r.ecx, r.edx]
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Why no vmblob device will ever be offered to this guest.
pub fn no_offer_reason(isolation: Isolation) -> String {
    format!(
        "this is an isolated Hyper-V guest ({isolation}): its kernel drops VMBus offers of device classes it does \
         not allow in isolated VMs, vmblob's among them (dmesg: \"Invalid offer ... from the host supporting \
         isolation\"), so no vmblob VMBus device can appear; use a VM without isolation"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Hyper-V CPUID with `priv_high` and `isolation_config_b` as given.
    fn hyperv(max_leaf: u32, priv_high: u32, config_b: u32) -> impl Fn(u32) -> [u32; 4] {
        move |leaf| match leaf {
            VENDOR_LEAF => [max_leaf, 0x7263_694d, 0x666f_736f, 0x7648_2074], // "Microsoft Hv"
            FEATURES_LEAF => [0, priv_high, 0, 0],
            ISOLATION_LEAF => [0, config_b, 0, 0],
            _ => [0; 4],
        }
    }

    #[test]
    fn the_kernels_isolation_types_are_read_from_cpuid() {
        let full = 0x4000_000C;
        assert_eq!(from_cpuid(hyperv(full, ISOLATION_BIT, 2)), Some(Isolation::SevSnp));
        assert_eq!(from_cpuid(hyperv(full, ISOLATION_BIT | 0xff, 0x33)), Some(Isolation::Tdx), "type is bits 0-3");
        assert_eq!(from_cpuid(hyperv(full, ISOLATION_BIT, 1)), Some(Isolation::Vbs));
        assert_eq!(from_cpuid(hyperv(full, ISOLATION_BIT, 7)), Some(Isolation::Other(7)));
    }

    #[test]
    fn ordinary_guests_and_other_hypervisors_are_not_isolated() {
        let full = 0x4000_000C;
        assert_eq!(from_cpuid(hyperv(full, 0, 2)), None, "no isolation privilege");
        assert_eq!(from_cpuid(hyperv(full, ISOLATION_BIT, 0)), None, "type none");
        assert_eq!(from_cpuid(hyperv(0x4000_000A, ISOLATION_BIT, 2)), None, "leaf 0x4000000C not offered");
        let kvm = |leaf| if leaf == VENDOR_LEAF { [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d] } else { [0xffff; 4] };
        assert_eq!(from_cpuid(kvm), None);
    }

    #[test]
    fn the_reason_names_the_isolation_and_the_kernel_message() {
        let why = no_offer_reason(Isolation::SevSnp);
        assert!(why.contains("SEV-SNP") && why.contains("Invalid offer"), "{why}");
    }
}
