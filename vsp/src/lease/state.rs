//! One blob's lease and Azure's rules for it, as pure functions of the
//! current time (ms since the Unix epoch): what a lease action makes of it,
//! and whether a blob operation may go ahead under it. The rules are
//! Azure's "Lease Blob" state table (as Azurite implements it).

use serde::{Deserialize, Serialize};
use vmblob_protocol::ops::{LeaseAction, LeaseDuration, LeaseId, LeaseKind, LeaseProperties, LeaseState};

/// A lease that exists (a blob without one is `Available`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(with = "lease_id_text")]
    pub id: LeaseId,
    pub phase: Phase,
}

/// Where a lease is. `Expired` and `Broken` are also read off the clock: a
/// fixed lease past its end is expired, a breaking one past its break time
/// broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Held; `secs` None is infinite, else it ends at `until_ms`.
    Held {
        secs: Option<u32>,
        until_ms: u64,
    },
    Breaking {
        until_ms: u64,
    },
    Broken,
}

/// Why a lease action or a blob operation is refused; the message names
/// Azure's error code, the status is the protocol's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// 409 on a lease action.
    #[error("{0}")]
    Conflict(&'static str),
    /// 412 on a blob operation.
    #[error("{0}")]
    Precondition(&'static str),
}

const ALREADY_PRESENT: &str = "LeaseAlreadyPresent: there is already a lease on the blob";
const BREAKING_NO_ACQUIRE: &str = "LeaseIsBreakingAndCannotBeAcquired: the lease is breaking";
const BREAKING_NO_CHANGE: &str = "LeaseIsBreakingAndCannotBeChanged: the lease is breaking";
const BROKEN_NO_RENEW: &str = "LeaseIsBrokenAndCannotBeRenewed: the lease was broken";
const ID_MISMATCH: &str = "LeaseIdMismatchWithLeaseOperation: the lease id is not the blob's lease";
const NOT_PRESENT: &str = "LeaseNotPresentWithLeaseOperation: there is no lease on the blob";
const ID_MISSING: &str = "LeaseIdMissing: the blob is leased and the request names no lease id";
const ID_MISMATCH_BLOB: &str = "LeaseIdMismatchWithBlobOperation: the lease id is not the blob's lease";
const NOT_PRESENT_BLOB: &str = "LeaseNotPresentWithBlobOperation: the blob has no active lease";

/// What a lease action answers besides the blob's ETag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub lease_id: Option<LeaseId>,
    /// Seconds until a breaking lease is broken (0 otherwise).
    pub lease_time_secs: u32,
}

impl Lease {
    /// The state at `now`.
    pub fn state(&self, now: u64) -> LeaseState {
        match self.phase {
            Phase::Held { secs: Some(_), until_ms } if until_ms <= now => LeaseState::Expired,
            Phase::Held { .. } => LeaseState::Leased,
            Phase::Breaking { until_ms } if until_ms <= now => LeaseState::Broken,
            Phase::Breaking { .. } => LeaseState::Breaking,
            Phase::Broken => LeaseState::Broken,
        }
    }

    /// As GetBlobProperties and listings show it.
    pub fn properties(&self, now: u64) -> LeaseProperties {
        let state = self.state(now);
        let duration = match self.phase {
            Phase::Held { secs, .. } if state == LeaseState::Leased => {
                Some(if secs.is_some() { LeaseKind::Fixed } else { LeaseKind::Infinite })
            }
            _ => None,
        };
        LeaseProperties { state, duration }
    }

    /// Whether a lease read back from the table is one the rules can make.
    pub fn is_valid(&self) -> bool {
        match self.phase {
            Phase::Held { secs: Some(s), .. } => LeaseDuration::fixed(s).is_some(),
            _ => true,
        }
    }

    /// Whether the lease is nothing but history (expired or broken): a
    /// write of the blob forgets it, as Azure's does.
    pub fn is_spent(&self, now: u64) -> bool {
        matches!(self.state(now), LeaseState::Expired | LeaseState::Broken)
    }
}

fn held(id: LeaseId, duration: LeaseDuration, now: u64) -> Lease {
    let phase = match duration {
        LeaseDuration::Fixed(secs) => Phase::Held { secs: Some(secs), until_ms: now + u64::from(secs) * 1000 },
        LeaseDuration::Infinite => Phase::Held { secs: None, until_ms: u64::MAX },
    };
    Lease { id, phase }
}

fn breaking_until(until_ms: u64, now: u64) -> Lease {
    Lease { id: LeaseId([0; 16]), phase: if until_ms <= now { Phase::Broken } else { Phase::Breaking { until_ms } } }
}

/// `action` applied to `current` (None: no lease) at `now`: the lease after
/// it (None: released) and the answer. `fresh` is the id an acquire without
/// a proposed id gets.
pub fn apply(
    current: Option<&Lease>,
    action: &LeaseAction,
    now: u64,
    fresh: LeaseId,
) -> Result<(Option<Lease>, Answer), LeaseError> {
    use LeaseAction as A;
    use LeaseError::Conflict;
    let state = current.map_or(LeaseState::Available, |l| l.state(now));
    let id_matches = |id: &LeaseId| current.is_some_and(|l| l.id == *id);
    let answer = |lease: Option<Lease>, with_id: bool| {
        let lease_time_secs = match lease.map(|l| l.phase) {
            // Rounded, as Azure answers x-ms-lease-time.
            Some(Phase::Breaking { until_ms }) => {
                u32::try_from((until_ms.saturating_sub(now) + 500) / 1000).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        let lease_id = lease.filter(|_| with_id).map(|l| l.id);
        Ok((lease, Answer { lease_id, lease_time_secs }))
    };
    let next = match (action, state) {
        (A::Acquire { duration, proposed_id }, LeaseState::Leased) => {
            if proposed_id.as_ref().is_some_and(id_matches) {
                return answer(Some(held(current.map_or(fresh, |l| l.id), *duration, now)), true);
            }
            return Err(Conflict(ALREADY_PRESENT));
        }
        (A::Acquire { proposed_id, .. }, LeaseState::Breaking) => {
            let same = proposed_id.as_ref().is_some_and(id_matches);
            return Err(Conflict(if same { BREAKING_NO_ACQUIRE } else { ALREADY_PRESENT }));
        }
        (A::Acquire { duration, proposed_id }, _) => {
            return answer(Some(held(proposed_id.unwrap_or(fresh), *duration, now)), true);
        }
        (A::Renew { lease_id }, _) if !id_matches(lease_id) => return Err(Conflict(ID_MISMATCH)),
        (A::Renew { .. }, LeaseState::Breaking | LeaseState::Broken) => return Err(Conflict(BROKEN_NO_RENEW)),
        (A::Renew { .. }, _) => match current.map(|l| (l.id, l.phase)) {
            Some((id, Phase::Held { secs: Some(secs), .. })) => held(id, LeaseDuration::Fixed(secs), now),
            Some((id, _)) => held(id, LeaseDuration::Infinite, now),
            None => return Err(Conflict(ID_MISMATCH)),
        },
        (A::Change { lease_id, proposed_id }, LeaseState::Leased) => {
            if !id_matches(lease_id) && !id_matches(proposed_id) {
                return Err(Conflict(ID_MISMATCH));
            }
            Lease { id: *proposed_id, phase: current.map_or(Phase::Broken, |l| l.phase) }
        }
        (A::Change { lease_id, .. }, LeaseState::Breaking) => {
            return Err(Conflict(if id_matches(lease_id) { BREAKING_NO_CHANGE } else { ID_MISMATCH }));
        }
        (A::Change { .. }, _) => return Err(Conflict(NOT_PRESENT)),
        (A::Release { lease_id }, _) if !id_matches(lease_id) => return Err(Conflict(ID_MISMATCH)),
        (A::Release { .. }, _) => return answer(None, false),
        (A::Break { .. }, LeaseState::Available) => return Err(Conflict(NOT_PRESENT)),
        (A::Break { break_period_secs }, LeaseState::Leased) => {
            let Some(l) = current else { return Err(Conflict(NOT_PRESENT)) };
            let period_end = break_period_secs.map(|s| now.saturating_add(u64::from(s) * 1000));
            let until = match (l.phase, period_end) {
                // An infinite lease breaks at once unless given a period.
                (Phase::Held { secs: None, .. }, end) => end.unwrap_or(now),
                (Phase::Held { until_ms, .. }, None) => until_ms,
                (Phase::Held { until_ms, .. }, Some(end)) => until_ms.min(end),
                (_, end) => end.unwrap_or(now),
            };
            Lease { id: l.id, ..breaking_until(until, now) }
        }
        (A::Break { break_period_secs }, LeaseState::Breaking) => {
            let Some(l) = current else { return Err(Conflict(NOT_PRESENT)) };
            let Phase::Breaking { until_ms } = l.phase else { return Err(Conflict(NOT_PRESENT)) };
            let until = break_period_secs.map_or(until_ms, |s| until_ms.min(now.saturating_add(u64::from(s) * 1000)));
            Lease { id: l.id, ..breaking_until(until, now) }
        }
        // Broken stays broken; an expired lease breaks at once.
        (A::Break { .. }, _) => Lease { id: current.map_or(fresh, |l| l.id), phase: Phase::Broken },
    };
    let with_id = matches!(action, A::Renew { .. } | A::Change { .. });
    answer(Some(next), with_id)
}

/// Whether a write or delete naming `given` may go ahead under `lease`.
pub fn check_write(lease: Option<&Lease>, given: Option<&LeaseId>, now: u64) -> Result<(), LeaseError> {
    let locked = lease.filter(|l| l.state(now).is_locked());
    match (locked, given) {
        (Some(_), None) => Err(LeaseError::Precondition(ID_MISSING)),
        (Some(l), Some(id)) if l.id != *id => Err(LeaseError::Precondition(ID_MISMATCH_BLOB)),
        (None, Some(_)) => Err(LeaseError::Precondition(NOT_PRESENT_BLOB)),
        _ => Ok(()),
    }
}

/// Whether a read naming `given` may go ahead (a read without a lease id
/// always may).
pub fn check_read(lease: Option<&Lease>, given: Option<&LeaseId>, now: u64) -> Result<(), LeaseError> {
    match given {
        None => Ok(()),
        Some(_) => check_write(lease, given, now),
    }
}

/// Lease ids as the GUID text, in the persisted table.
mod lease_id_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use vmblob_protocol::ops::LeaseId;

    pub fn serialize<S: Serializer>(id: &LeaseId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LeaseId, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
