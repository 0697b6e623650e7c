//! The table: admission, persistence, the bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmblob_protocol::names::{BlobName, ContainerName};
use vmblob_protocol::ops::{LeaseDuration, LeaseState};

use super::*;

fn blob(name: &str) -> BlobRef {
    BlobRef { container: ContainerName::new("box").unwrap(), blob: BlobName::new(name).unwrap() }
}

fn acquire(secs: Option<u32>) -> LeaseAction {
    LeaseAction::Acquire { duration: secs.map_or(LeaseDuration::Infinite, LeaseDuration::Fixed), proposed_id: None }
}

fn take(t: &LeaseTable, b: &BlobRef, a: &LeaseAction) -> Result<Answer, Refused> {
    t.act(b, a, || Ok::<_, Refused>(())).map(|(_, a)| a)
}

/// Storage in memory that can be told to fail.
#[derive(Default, Clone)]
struct Mem {
    bytes: Arc<Mutex<Option<Vec<u8>>>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseStorage for Mem {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.bytes.lock().unwrap().clone())
    }
    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("disk full"));
        }
        *self.bytes.lock().unwrap() = Some(bytes.to_vec());
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

#[test]
fn a_lease_survives_a_restart_and_a_failed_save_makes_no_lease() {
    let mem = Mem::default();
    let t = LeaseTable::open(Box::new(mem.clone())).unwrap();
    let b = blob("held");
    let id = take(&t, &b, &acquire(None)).unwrap().lease_id.unwrap();
    let again = LeaseTable::open(Box::new(mem.clone())).unwrap();
    assert_eq!(again.properties(&b).state, LeaseState::Leased);
    assert!(again.admit_write(&b, None).is_err(), "the restarted table still locks the blob");
    assert!(again.admit_write(&b, Some(&id)).is_ok());

    mem.fail.store(true, Ordering::SeqCst);
    let other = blob("other");
    assert!(matches!(take(&again, &other, &acquire(None)), Err(Refused::Io(_))));
    assert_eq!(again.properties(&other).state, LeaseState::Available, "not saved, not made");
    assert!(matches!(take(&again, &b, &LeaseAction::Release { lease_id: id }), Err(Refused::Io(_))));
    assert_eq!(again.properties(&b).state, LeaseState::Leased, "a release that was not saved did not happen");
}

#[test]
fn a_write_forgets_a_spent_lease_and_a_delete_any() {
    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    let t = LeaseTable::in_memory().with_clock(|| NOW.load(Ordering::SeqCst));
    let b = blob("b");
    let id = take(&t, &b, &acquire(Some(15))).unwrap().lease_id.unwrap();
    NOW.fetch_add(16_000, Ordering::SeqCst);
    assert_eq!(t.properties(&b).state, LeaseState::Expired);
    t.admit_write(&b, None).unwrap().committed();
    assert_eq!(t.properties(&b).state, LeaseState::Available, "written after expiry: the lease is gone");
    assert!(matches!(take(&t, &b, &LeaseAction::Renew { lease_id: id }), Err(Refused::Lease(_))));

    let id = take(&t, &b, &acquire(None)).unwrap().lease_id.unwrap();
    t.admit_write(&b, Some(&id)).unwrap().deleted();
    assert_eq!(t.properties(&b).state, LeaseState::Available);
    take(&t, &b, &acquire(None)).unwrap();
    t.forget_container(&b.container);
    assert_eq!(t.properties(&b).state, LeaseState::Available);
}

#[test]
fn an_acquire_waits_for_the_write_in_flight_and_then_locks_the_next() {
    let t = Arc::new(LeaseTable::in_memory());
    let b = blob("race");
    let write = t.admit_write(&b, None).unwrap();
    let (t2, b2) = (t.clone(), b.clone());
    let acquirer = std::thread::spawn(move || take(&t2, &b2, &acquire(None)).unwrap().lease_id.unwrap());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(t.properties(&b).state, LeaseState::Available, "the acquire waits for the admitted write");
    drop(write);
    let id = acquirer.join().unwrap();
    assert!(matches!(t.admit_write(&b, None), Err(Refused::Lease(LeaseError::Precondition(_)))));
    assert!(t.admit_write(&b, Some(&id)).is_ok());
}

#[test]
fn a_cancelled_write_stops_waiting_behind_a_lease_action() {
    use crate::engine::{CancelReason, CancelToken};
    let t = Arc::new(LeaseTable::in_memory());
    let b = blob("slow");
    let (t2, b2) = (t.clone(), b.clone());
    let (entered, wait) = std::sync::mpsc::channel();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let actor = std::thread::spawn(move || {
        t2.act(&b2, &acquire(None), || {
            entered.send(()).unwrap();
            hold.recv().unwrap();
            Ok::<_, Refused>(())
        })
        .is_ok()
    });
    wait.recv().unwrap();
    let token = CancelToken::new(None);
    token.cancel(CancelReason::TimedOut);
    let r = crate::store::context::with_cancel(&token, || t.admit_write(&b, None).map(|_| ()));
    assert!(matches!(r, Err(Refused::Cancelled)), "{r:?}");
    release.send(()).unwrap();
    assert!(actor.join().unwrap());
}

#[test]
fn the_table_is_bounded_and_spent_leases_go_first() {
    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    let t = LeaseTable::in_memory().with_clock(|| NOW.load(Ordering::SeqCst));
    for i in 0..MAX_LEASES {
        take(&t, &blob(&format!("b{i}")), &acquire(if i == 0 { Some(15) } else { None })).unwrap();
    }
    assert!(matches!(take(&t, &blob("one-more"), &acquire(None)), Err(Refused::Full)));
    NOW.fetch_add(15_000, Ordering::SeqCst);
    take(&t, &blob("one-more"), &acquire(None)).expect("the expired lease made room");
    assert_eq!(t.properties(&blob("b0")).state, LeaseState::Available);
}

#[test]
fn listings_show_each_blobs_lease() {
    let t = LeaseTable::in_memory();
    take(&t, &blob("a"), &acquire(None)).unwrap();
    let item = |n: &str| BlobListItem::Blob { name: n.into(), properties: Default::default() };
    let mut items = vec![item("a"), BlobListItem::Prefix("a/".into()), item("b")];
    t.fill_listing(&blob("a").container, &mut items);
    let states: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            BlobListItem::Blob { properties, .. } => Some(properties.lease.state),
            _ => None,
        })
        .collect();
    assert_eq!(states, [LeaseState::Leased, LeaseState::Available]);
}

#[test]
fn the_file_storage_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let t = LeaseTable::open(Box::new(FileStorage::open(&dir.path().join("leases"), 0o700).unwrap())).unwrap();
    let b = blob("f");
    take(&t, &b, &acquire(None)).unwrap();
    let again = LeaseTable::open(Box::new(FileStorage::open(&dir.path().join("leases"), 0o700).unwrap())).unwrap();
    assert_eq!(again.properties(&b).state, LeaseState::Leased);
    std::fs::write(dir.path().join("leases/leases.json"), b"not json").unwrap();
    assert!(
        LeaseTable::open(Box::new(FileStorage::open(&dir.path().join("leases"), 0o700).unwrap())).is_err(),
        "a corrupt table is not silently emptied"
    );
}

#[test]
fn the_holder_renews_while_its_own_write_is_in_flight() {
    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    let t = LeaseTable::in_memory().with_clock(|| NOW.load(Ordering::SeqCst));
    let b = blob("long-upload");
    let id = take(&t, &b, &acquire(Some(15))).unwrap().lease_id.unwrap();
    let write = t.admit_write(&b, Some(&id)).unwrap();
    NOW.fetch_add(10_000, Ordering::SeqCst);
    // Does not wait for the write (this thread holds it: waiting would hang).
    take(&t, &b, &LeaseAction::Renew { lease_id: id }).unwrap();
    NOW.fetch_add(10_000, Ordering::SeqCst);
    write.committed();
    assert_eq!(t.properties(&b).state, LeaseState::Leased, "renewed at 10 s, so held at 20 s");
    // A lease that runs out while a write of its holder is in flight stays renewable.
    let write = t.admit_write(&b, Some(&id)).unwrap();
    NOW.fetch_add(30_000, Ordering::SeqCst);
    write.committed();
    assert_eq!(t.properties(&b).state, LeaseState::Expired);
    take(&t, &b, &LeaseAction::Renew { lease_id: id }).unwrap();
}

#[test]
fn an_acquire_across_a_container_delete_looks_again() {
    let t = LeaseTable::in_memory();
    let b = blob("gone");
    let mut calls = 0;
    let r = t.act(&b, &acquire(None), || {
        calls += 1;
        if calls == 1 {
            // The container goes between the blob check and the lease change.
            t.forget_container(&b.container);
            Ok(())
        } else {
            Err(Refused::Lease(LeaseError::Conflict("the blob is gone")))
        }
    });
    assert!(r.is_err() && calls == 2, "{r:?} after {calls} checks");
    assert_eq!(t.properties(&b).state, LeaseState::Available, "no lease outlives its container");
}

#[test]
fn a_panic_in_the_blob_check_leaves_the_name_free() {
    let t = LeaseTable::in_memory();
    let b = blob("p");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = t.act(&b, &acquire(None), || -> Result<(), Refused> { panic!("store bug") });
    }));
    assert!(r.is_err());
    assert!(t.admit_write(&b, None).is_ok(), "the acquire's hold went with the panic");
}

#[test]
fn a_table_with_a_lease_the_rules_cannot_make_is_refused() {
    let mem = Mem::default();
    let bad = br#"{"leases":[{"container":"box","blob":"b","id":"0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a","phase":{"held":{"secs":9999,"until_ms":5}}}]}"#;
    *mem.bytes.lock().unwrap() = Some(bad.to_vec());
    let e = LeaseTable::open(Box::new(mem)).err().expect("refused");
    assert!(e.to_string().contains("bad lease"), "{e}");
    let bad_name =
        br#"{"leases":[{"container":"a/b","blob":"c","id":"0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a","phase":"broken"}]}"#;
    let mem = Mem::default();
    *mem.bytes.lock().unwrap() = Some(bad_name.to_vec());
    let e = LeaseTable::open(Box::new(mem)).err().expect("refused");
    assert!(e.to_string().contains("bad lease"), "{e}");
}

#[test]
fn no_lease_is_granted_while_an_unleased_write_is_in_flight() {
    use std::sync::atomic::AtomicBool;
    let t = Arc::new(LeaseTable::in_memory());
    let b = blob("contended");
    let held = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let (t, b, held, stop, admitted) = (t.clone(), b.clone(), held.clone(), stop.clone(), admitted.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(g) = t.admit_write(&b, None) {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        for _ in 0..50 {
                            assert!(!held.load(Ordering::SeqCst), "a lease was granted over an unleased write");
                            std::hint::spin_loop();
                        }
                        g.committed();
                    }
                }
            })
        })
        .collect();
    let mut leases = 0;
    let until = std::time::Instant::now() + Duration::from_millis(700);
    while std::time::Instant::now() < until {
        let id = take(&t, &b, &acquire(None)).unwrap().lease_id.unwrap();
        held.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(200));
        held.store(false, Ordering::SeqCst);
        take(&t, &b, &LeaseAction::Release { lease_id: id }).unwrap();
        leases += 1;
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    writers.into_iter().for_each(|w| w.join().unwrap());
    assert!(leases > 10 && admitted.load(Ordering::SeqCst) > 10, "both sides ran: {leases} leases");
}

#[test]
fn the_file_storage_appends_each_change_and_compacts_now_and_then() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("leases");
    // Every reading of the clock a millisecond later: each renew is a change.
    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    let clock = || NOW.fetch_add(1, Ordering::SeqCst);
    let open = || LeaseTable::open(Box::new(FileStorage::open(&at, 0o700).unwrap())).unwrap().with_clock(clock);
    let t = open();
    let log_len = || std::fs::metadata(at.join("leases.log")).map_or(0, |m| m.len());
    let b = blob("renewed");
    let id = take(&t, &b, &acquire(Some(60))).unwrap().lease_id.unwrap();
    let one = log_len();
    take(&t, &b, &LeaseAction::Renew { lease_id: id }).unwrap();
    assert_eq!(log_len(), 2 * one, "a change appends one line, the table is not rewritten");
    assert!(!at.join("leases.json").exists(), "no whole save yet");
    take(&t, &blob("other"), &acquire(None)).unwrap();
    take(&t, &blob("gone"), &acquire(None))
        .map(|a| a.lease_id.unwrap())
        .and_then(|id| take(&t, &blob("gone"), &LeaseAction::Release { lease_id: id }))
        .unwrap();
    let again = open();
    assert_eq!(again.properties(&b).state, LeaseState::Leased);
    assert_eq!(again.properties(&blob("other")).state, LeaseState::Leased);
    assert_eq!(again.properties(&blob("gone")).state, LeaseState::Available, "a release in the log is replayed");
    // Past the bound the log is folded into the whole table and emptied.
    for _ in 0..1100 {
        take(&again, &b, &LeaseAction::Renew { lease_id: id }).unwrap();
    }
    assert!(at.join("leases.json").exists() && log_len() < 200 * one, "compacted: log {} bytes", log_len());
    let last = open();
    assert_eq!(last.properties(&blob("other")).state, LeaseState::Leased);
    assert!(last.admit_write(&b, None).is_err(), "still leased after compaction and restart");
}

#[test]
fn a_torn_last_change_is_cut_off_and_a_corrupt_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("leases");
    let open = || LeaseTable::open(Box::new(FileStorage::open(&at, 0o700).unwrap()));
    take(&open().unwrap(), &blob("kept"), &acquire(None)).unwrap();
    let log = at.join("leases.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(b"{\"set\":{\"contai");
    std::fs::write(&log, &bytes).unwrap();
    let t = open().expect("a torn last line is a change that was never made");
    assert_eq!(t.properties(&blob("kept")).state, LeaseState::Leased);
    assert_eq!(std::fs::metadata(&log).unwrap().len() as usize, good, "cut off");
    take(&t, &blob("next"), &acquire(None)).unwrap();
    assert_eq!(open().unwrap().properties(&blob("next")).state, LeaseState::Leased);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.splice(0..0, b"garbage\n".iter().copied());
    std::fs::write(&log, &bytes).unwrap();
    assert!(open().is_err(), "a corrupt change before the last is refused, not skipped");
}

#[test]
fn a_log_left_behind_by_a_whole_save_is_not_replayed() {
    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    let clock = || NOW.fetch_add(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("leases");
    let open = || LeaseTable::open(Box::new(FileStorage::open(&at, 0o700).unwrap())).unwrap().with_clock(clock);
    let t = open();
    let b = blob("released");
    let id = take(&t, &b, &acquire(None)).unwrap().lease_id.unwrap();
    let stale_log = std::fs::read(at.join("leases.log")).unwrap();
    take(&t, &b, &LeaseAction::Release { lease_id: id }).unwrap();
    // Fold the log into a whole save (as compaction does), then put the old
    // log back, as a crash before emptying it (or a failed truncation) would.
    for i in 0..1100 {
        let other = blob(&format!("o{}", i % 3));
        let id = take(&t, &other, &acquire(None)).unwrap().lease_id.unwrap();
        take(&t, &other, &LeaseAction::Release { lease_id: id }).unwrap();
    }
    assert!(at.join("leases.json").exists(), "a whole save happened");
    std::fs::write(at.join("leases.log"), &stale_log).unwrap();
    assert_eq!(open().properties(&b).state, LeaseState::Available, "a released lease does not come back");
    // A complete line that does not read is corruption, not a torn append.
    let mut bytes = std::fs::read(at.join("leases.log")).unwrap();
    bytes.extend_from_slice(b"{not json}\n");
    std::fs::write(at.join("leases.log"), &bytes).unwrap();
    assert!(LeaseTable::open(Box::new(FileStorage::open(&at, 0o700).unwrap())).is_err());
}
