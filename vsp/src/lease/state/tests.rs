//! Azure's lease state table, cell by cell where it matters.

use super::*;
use vmblob_protocol::ops::LeaseAction as A;

const A_ID: LeaseId = LeaseId([0xa; 16]);
const B_ID: LeaseId = LeaseId([0xb; 16]);
const FRESH: LeaseId = LeaseId([0xf; 16]);
const T0: u64 = 1_000_000;

fn acquire(secs: Option<u32>, id: Option<LeaseId>) -> A {
    let duration = secs.map_or(LeaseDuration::Infinite, LeaseDuration::Fixed);
    A::Acquire { duration, proposed_id: id }
}

fn run(cur: Option<Lease>, a: A, now: u64) -> Result<(Option<Lease>, Answer), LeaseError> {
    apply(cur.as_ref(), &a, now, FRESH)
}

fn leased(secs: Option<u32>) -> Lease {
    run(None, acquire(secs, Some(A_ID)), T0).unwrap().0.unwrap()
}

fn conflict(r: Result<(Option<Lease>, Answer), LeaseError>) -> &'static str {
    match r {
        Err(LeaseError::Conflict(m)) => m.split(':').next().unwrap(),
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[test]
fn acquire_takes_a_free_blob_and_only_the_holder_reacquires() {
    let (l, ans) = run(None, acquire(Some(15), None), T0).unwrap();
    let l = l.unwrap();
    assert_eq!((l.id, ans.lease_id), (FRESH, Some(FRESH)), "no proposed id: the VSP makes one up");
    assert_eq!(l.state(T0 + 14_999), LeaseState::Leased);
    assert_eq!(l.state(T0 + 15_000), LeaseState::Expired);
    let a = leased(Some(15));
    assert_eq!(conflict(run(Some(a), acquire(Some(15), Some(B_ID)), T0)), "LeaseAlreadyPresent");
    assert_eq!(conflict(run(Some(a), acquire(Some(15), None), T0)), "LeaseAlreadyPresent");
    // The holder acquiring again restarts it, with the new duration.
    let (again, _) = run(Some(a), acquire(None, Some(A_ID)), T0 + 10_000).unwrap();
    assert_eq!(again.unwrap().properties(T0 + 100_000).duration, Some(LeaseKind::Infinite));
    // Expired or broken: anyone may acquire.
    assert_eq!(run(Some(a), acquire(Some(20), Some(B_ID)), T0 + 15_000).unwrap().0.unwrap().id, B_ID);
    let broken = run(Some(a), A::Break { break_period_secs: Some(0) }, T0).unwrap().0;
    assert_eq!(run(broken, acquire(Some(20), Some(B_ID)), T0).unwrap().0.unwrap().id, B_ID);
}

#[test]
fn renew_restarts_the_clock_even_after_expiry_but_not_after_a_break() {
    let a = leased(Some(15));
    let (r, ans) = run(Some(a), A::Renew { lease_id: A_ID }, T0 + 20_000).unwrap();
    assert_eq!(ans.lease_id, Some(A_ID));
    assert_eq!(r.unwrap().state(T0 + 34_999), LeaseState::Leased, "15 s from the renewal");
    assert_eq!(conflict(run(Some(a), A::Renew { lease_id: B_ID }, T0)), "LeaseIdMismatchWithLeaseOperation");
    assert_eq!(conflict(run(None, A::Renew { lease_id: A_ID }, T0)), "LeaseIdMismatchWithLeaseOperation");
    let breaking = run(Some(a), A::Break { break_period_secs: Some(5) }, T0).unwrap().0;
    assert_eq!(conflict(run(breaking, A::Renew { lease_id: A_ID }, T0)), "LeaseIsBrokenAndCannotBeRenewed");
    assert_eq!(conflict(run(breaking, A::Renew { lease_id: A_ID }, T0 + 6_000)), "LeaseIsBrokenAndCannotBeRenewed");
}

#[test]
fn change_keeps_the_clock_and_takes_either_id() {
    let a = leased(Some(30));
    let (c, ans) = run(Some(a), A::Change { lease_id: A_ID, proposed_id: B_ID }, T0 + 1_000).unwrap();
    let c = c.unwrap();
    assert_eq!((c.id, ans.lease_id), (B_ID, Some(B_ID)));
    assert_eq!(c.state(T0 + 30_000), LeaseState::Expired, "the same end as before");
    // Repeating the change (holding the new id already) is fine.
    assert_eq!(run(Some(c), A::Change { lease_id: A_ID, proposed_id: B_ID }, T0).unwrap().0.unwrap().id, B_ID);
    let other = A::Change { lease_id: FRESH, proposed_id: LeaseId([1; 16]) };
    assert_eq!(conflict(run(Some(c), other, T0)), "LeaseIdMismatchWithLeaseOperation");
    assert_eq!(
        conflict(run(Some(a), A::Change { lease_id: A_ID, proposed_id: B_ID }, T0 + 30_000)),
        "LeaseNotPresentWithLeaseOperation"
    );
    assert_eq!(
        conflict(run(None, A::Change { lease_id: A_ID, proposed_id: B_ID }, T0)),
        "LeaseNotPresentWithLeaseOperation"
    );
}

#[test]
fn release_frees_the_blob_for_the_holder_only() {
    let a = leased(None);
    assert_eq!(run(Some(a), A::Release { lease_id: A_ID }, T0).unwrap().0, None);
    assert_eq!(conflict(run(Some(a), A::Release { lease_id: B_ID }, T0)), "LeaseIdMismatchWithLeaseOperation");
    assert_eq!(conflict(run(None, A::Release { lease_id: A_ID }, T0)), "LeaseIdMismatchWithLeaseOperation");
    let broken = run(Some(a), A::Break { break_period_secs: None }, T0).unwrap().0;
    assert_eq!(run(broken, A::Release { lease_id: A_ID }, T0).unwrap().0, None, "a broken lease is released too");
}

#[test]
fn break_periods_follow_azure() {
    let brk = |p| A::Break { break_period_secs: p };
    // Infinite: at once without a period, else after it.
    let inf = leased(None);
    let (b, ans) = run(Some(inf), brk(None), T0).unwrap();
    assert_eq!((b.unwrap().state(T0), ans.lease_time_secs), (LeaseState::Broken, 0));
    let (b, ans) = run(Some(inf), brk(Some(10)), T0).unwrap();
    let b = b.unwrap();
    assert_eq!(
        (b.state(T0 + 9_999), b.state(T0 + 10_000), ans.lease_time_secs),
        (LeaseState::Breaking, LeaseState::Broken, 10)
    );
    // Fixed: runs out its time without a period; the shorter of the two with one.
    let fixed = leased(Some(20));
    let (b, ans) = run(Some(fixed), brk(None), T0 + 5_000).unwrap();
    assert_eq!((b.unwrap().state(T0 + 19_999), ans.lease_time_secs), (LeaseState::Breaking, 15));
    let (b, ans) = run(Some(fixed), brk(Some(60)), T0).unwrap();
    assert_eq!((b.unwrap().state(T0 + 20_000), ans.lease_time_secs), (LeaseState::Broken, 20));
    // Breaking: a shorter period shortens it, a longer one or none leaves it.
    let breaking = run(Some(inf), brk(Some(30)), T0).unwrap().0;
    assert_eq!(run(breaking, brk(Some(5)), T0).unwrap().1.lease_time_secs, 5);
    assert_eq!(run(breaking, brk(Some(50)), T0).unwrap().1.lease_time_secs, 30);
    assert_eq!(run(breaking, brk(None), T0).unwrap().1.lease_time_secs, 30);
    assert_eq!(run(breaking, brk(Some(0)), T0).unwrap().0.unwrap().state(T0), LeaseState::Broken);
    assert_eq!(conflict(run(breaking, acquire(None, Some(A_ID)), T0)), "LeaseIsBreakingAndCannotBeAcquired");
    assert_eq!(conflict(run(breaking, acquire(None, Some(B_ID)), T0)), "LeaseAlreadyPresent");
    assert_eq!(
        conflict(run(breaking, A::Change { lease_id: A_ID, proposed_id: B_ID }, T0)),
        "LeaseIsBreakingAndCannotBeChanged"
    );
    // Nothing to break; an expired lease breaks at once.
    assert_eq!(conflict(run(None, brk(None), T0)), "LeaseNotPresentWithLeaseOperation");
    assert_eq!(run(Some(fixed), brk(Some(30)), T0 + 20_000).unwrap().0.unwrap().state(T0 + 20_000), LeaseState::Broken);
}

#[test]
fn blob_operations_need_the_lease_while_it_is_locked() {
    let pre = |r: Result<(), LeaseError>| match r {
        Err(LeaseError::Precondition(m)) => m.split(':').next().unwrap(),
        other => panic!("expected a 412, got {other:?}"),
    };
    let a = leased(Some(15));
    assert_eq!(pre(check_write(Some(&a), None, T0)), "LeaseIdMissing");
    assert_eq!(pre(check_write(Some(&a), Some(&B_ID), T0)), "LeaseIdMismatchWithBlobOperation");
    assert_eq!(check_write(Some(&a), Some(&A_ID), T0), Ok(()));
    // Expired: free for everyone, and the old id is refused.
    assert_eq!(check_write(Some(&a), None, T0 + 15_000), Ok(()));
    assert_eq!(pre(check_write(Some(&a), Some(&A_ID), T0 + 15_000)), "LeaseNotPresentWithBlobOperation");
    assert_eq!(pre(check_write(None, Some(&A_ID), T0)), "LeaseNotPresentWithBlobOperation");
    assert_eq!(check_write(None, None, T0), Ok(()));
    // Breaking still locks.
    let breaking = run(Some(a), A::Break { break_period_secs: Some(5) }, T0).unwrap().0.unwrap();
    assert_eq!(pre(check_write(Some(&breaking), None, T0)), "LeaseIdMissing");
    assert_eq!(check_write(Some(&breaking), Some(&A_ID), T0), Ok(()));
    // Reads need nothing, but a lease id they name must be the lease.
    assert_eq!(check_read(Some(&a), None, T0), Ok(()));
    assert_eq!(pre(check_read(Some(&a), Some(&B_ID), T0)), "LeaseIdMismatchWithBlobOperation");
    assert_eq!(pre(check_read(None, Some(&A_ID), T0)), "LeaseNotPresentWithBlobOperation");
}

#[test]
fn properties_show_state_and_duration() {
    let a = leased(Some(15));
    assert_eq!(a.properties(T0), LeaseProperties { state: LeaseState::Leased, duration: Some(LeaseKind::Fixed) });
    assert_eq!(a.properties(T0 + 15_000), LeaseProperties { state: LeaseState::Expired, duration: None });
    assert!(a.is_spent(T0 + 15_000) && !a.is_spent(T0));
    assert_eq!(leased(None).properties(u64::MAX - 1).duration, Some(LeaseKind::Infinite));
}

#[test]
fn leases_persist_as_json_and_back() {
    let a = leased(Some(15));
    let text = serde_json::to_string(&a).unwrap();
    assert!(text.contains("0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a"), "{text}");
    assert_eq!(serde_json::from_str::<Lease>(&text).unwrap(), a);
}
