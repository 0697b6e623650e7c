//! Blob leases (op version 3): Azure's Lease Blob, the one-writer-at-a-time
//! lock. The VSP keeps the leases; these are their wire forms.

use std::fmt;
use std::str::FromStr;

use super::{BlobRef, Conditions, DecodeError};
use crate::wire::{Reader, Writer};

/// Shortest and longest fixed lease, in seconds (Azure's bounds).
pub const MIN_LEASE_SECS: u32 = 15;
pub const MAX_LEASE_SECS: u32 = 60;
/// Longest break period, in seconds.
pub const MAX_BREAK_SECS: u32 = 60;
/// A lease duration's wire value for "infinite".
const INFINITE: u32 = u32::MAX;

/// A lease id: a GUID, written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (Azure's
/// `x-ms-lease-id`). On the wire its 16 bytes in the order the text gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub [u8; 16]);

impl LeaseId {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.raw(&self.0);
    }
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.md5().map(Self)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a lease id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a lease id is a GUID: 32 hex digits as 8-4-4-4-12")]
pub struct BadLeaseId;

impl FromStr for LeaseId {
    type Err = BadLeaseId;
    /// The GUID form Azure takes: hyphenated, either case.
    fn from_str(s: &str) -> Result<Self, BadLeaseId> {
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(BadLeaseId);
        }
        let digits: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
        if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(BadLeaseId);
        }
        let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        let mut id = [0u8; 16];
        for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = nibble(pair[0]) << 4 | nibble(pair[1]);
        }
        Ok(Self(id))
    }
}

/// How long a lease lasts once acquired or renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDuration {
    /// Seconds, [`MIN_LEASE_SECS`]..=[`MAX_LEASE_SECS`].
    Fixed(u32),
    Infinite,
}

impl LeaseDuration {
    /// A fixed duration, if Azure would take it.
    pub fn fixed(secs: u32) -> Option<Self> {
        (MIN_LEASE_SECS..=MAX_LEASE_SECS).contains(&secs).then_some(Self::Fixed(secs))
    }
    fn encode(&self, w: &mut Writer) {
        w.u32(match self {
            Self::Fixed(s) => *s,
            Self::Infinite => INFINITE,
        });
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u32()? {
            INFINITE => Ok(Self::Infinite),
            s => Self::fixed(s).ok_or(DecodeError::InvalidValue),
        }
    }
}

/// What a lease operation does (Azure's `x-ms-lease-action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// Take the lease (or, holding it under `proposed_id`, restart it with
    /// this duration). No proposed id: the VSP makes one up.
    Acquire { duration: LeaseDuration, proposed_id: Option<LeaseId> },
    /// Restart the lease's clock (also one that expired, while no one else
    /// took it and the blob was not written).
    Renew { lease_id: LeaseId },
    /// Give the lease a new id, keeping its clock.
    Change { lease_id: LeaseId, proposed_id: LeaseId },
    /// Give the lease up: the blob is free at once.
    Release { lease_id: LeaseId },
    /// End the lease without its id, after `break_period_secs`
    /// (0..=[`MAX_BREAK_SECS`]). None: a fixed lease runs out its time, an
    /// infinite one breaks at once.
    Break { break_period_secs: Option<u32> },
}

impl LeaseAction {
    fn tag(&self) -> u8 {
        match self {
            Self::Acquire { .. } => 0,
            Self::Renew { .. } => 1,
            Self::Change { .. } => 2,
            Self::Release { .. } => 3,
            Self::Break { .. } => 4,
        }
    }
    /// The action's name, as Azure's header spells it.
    pub fn name(&self) -> &'static str {
        ["acquire", "renew", "change", "release", "break"][usize::from(self.tag())]
    }
}

/// LeaseBlob: one lease action on a committed blob, under the blob's write
/// conditions (ETag and time; the lease id is the action's, never the
/// conditions'). A lease op does not change the blob's ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseBlob {
    pub target: BlobRef,
    pub action: LeaseAction,
    pub conditions: Conditions,
}

impl LeaseBlob {
    pub(crate) fn encode_body(&self, w: &mut Writer) {
        w.u8(self.action.tag());
        match &self.action {
            LeaseAction::Acquire { duration, proposed_id } => {
                duration.encode(w);
                w.option(proposed_id.as_ref(), |w, id| id.encode(w));
            }
            LeaseAction::Renew { lease_id } | LeaseAction::Release { lease_id } => lease_id.encode(w),
            LeaseAction::Change { lease_id, proposed_id } => {
                lease_id.encode(w);
                proposed_id.encode(w);
            }
            LeaseAction::Break { break_period_secs } => w.option(*break_period_secs, Writer::u32),
        }
        self.conditions.encode(w);
    }

    pub(crate) fn decode_body(target: BlobRef, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let action = match r.u8()? {
            0 => LeaseAction::Acquire { duration: LeaseDuration::decode(r)?, proposed_id: r.option(LeaseId::decode)? },
            1 => LeaseAction::Renew { lease_id: LeaseId::decode(r)? },
            2 => LeaseAction::Change { lease_id: LeaseId::decode(r)?, proposed_id: LeaseId::decode(r)? },
            3 => LeaseAction::Release { lease_id: LeaseId::decode(r)? },
            4 => LeaseAction::Break {
                break_period_secs: r.option(|r| {
                    r.u32().and_then(|s| if s <= MAX_BREAK_SECS { Ok(s) } else { Err(DecodeError::InvalidValue) })
                })?,
            },
            t => return Err(DecodeError::BadTag(t)),
        };
        let conditions = Conditions::decode(r)?;
        if conditions.lease_id.is_some() {
            // The action names the lease; a second id would be a second meaning.
            return Err(DecodeError::InvalidValue);
        }
        Ok(Self { target, action, conditions })
    }
}

/// A blob's lease state (Azure's `x-ms-lease-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[repr(u8)]
pub enum LeaseState {
    #[default]
    Available = 0,
    Leased = 1,
    /// A fixed lease ran out; its holder may still renew it.
    Expired = 2,
    /// Broken, within the break period: still locked.
    Breaking = 3,
    Broken = 4,
}

impl LeaseState {
    /// Whether writes need the lease id (Azure's `x-ms-lease-status: locked`).
    pub fn is_locked(self) -> bool {
        matches!(self, Self::Leased | Self::Breaking)
    }
    pub fn name(self) -> &'static str {
        ["available", "leased", "expired", "breaking", "broken"][self as usize]
    }
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Self::Available,
            1 => Self::Leased,
            2 => Self::Expired,
            3 => Self::Breaking,
            4 => Self::Broken,
            t => return Err(DecodeError::BadTag(t)),
        })
    }
}

/// A blob's lease as properties and listings show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct LeaseProperties {
    pub state: LeaseState,
    /// Set while `Leased` (Azure's `x-ms-lease-duration`: fixed or infinite).
    pub duration: Option<LeaseKind>,
}

/// Azure's `x-ms-lease-duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LeaseKind {
    Infinite = 1,
    Fixed = 2,
}

impl LeaseProperties {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(self.state as u8);
        w.u8(self.duration.map_or(0, |k| k as u8));
    }
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let state = LeaseState::from_u8(r.u8()?)?;
        let duration = match r.u8()? {
            0 => None,
            1 => Some(LeaseKind::Infinite),
            2 => Some(LeaseKind::Fixed),
            t => return Err(DecodeError::BadTag(t)),
        };
        // Only a held lease has a duration, and a held one always has one.
        if duration.is_some() != (state == LeaseState::Leased) {
            return Err(DecodeError::InvalidValue);
        }
        Ok(Self { state, duration })
    }
}

/// LeaseBlob's answer: the blob's (unchanged) ETag and last-modified time,
/// the lease id after acquire, renew and change, and after a break the
/// seconds until the lease is broken (0: it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseResult {
    pub etag: String,
    pub last_modified_ms: u64,
    pub lease_id: Option<LeaseId>,
    pub lease_time_secs: u32,
}

impl LeaseResult {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.str16(&self.etag);
        w.u64(self.last_modified_ms);
        w.option(self.lease_id.as_ref(), |w, id| id.encode(w));
        w.u32(self.lease_time_secs);
    }
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            etag: r.str16(crate::names::ETAG_MAX)?.to_owned(),
            last_modified_ms: r.u64()?,
            lease_id: r.option(LeaseId::decode)?,
            lease_time_secs: r.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_print_and_parse_as_guids() {
        let id: LeaseId = "0123ABCD-4567-89ab-cdef-0011223344FF".parse().unwrap();
        assert_eq!(id.0[0], 0x01);
        assert_eq!(id.0[15], 0xff);
        assert_eq!(id.to_string(), "0123abcd-4567-89ab-cdef-0011223344ff");
        assert_eq!(id.to_string().parse::<LeaseId>(), Ok(id));
        for bad in [
            "",
            "0123abcd4567-89ab-cdef-0011223344ff-",
            "0123abcd-4567-89ab-cdef-0011223344f",
            "g123abcd-4567-89ab-cdef-0011223344ff",
            "0123abcd-4567-89ab-cdef-0011223344ffa",
            "+123abcd-4567-89ab-cdef-0011223344ff",
        ] {
            assert_eq!(bad.parse::<LeaseId>(), Err(BadLeaseId), "{bad:?}");
        }
    }

    #[test]
    fn durations_are_azures() {
        assert_eq!(LeaseDuration::fixed(14), None);
        assert_eq!(LeaseDuration::fixed(15), Some(LeaseDuration::Fixed(15)));
        assert_eq!(LeaseDuration::fixed(60), Some(LeaseDuration::Fixed(60)));
        assert_eq!(LeaseDuration::fixed(61), None);
    }
}
