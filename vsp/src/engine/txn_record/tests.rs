use super::*;

fn o(s: u32) -> Outcome {
    Outcome { request_digest: u64::from(s) * 7, status: s, response: vec![s as u8; 3] }
}

fn limits(capacity: usize) -> TxnRecordLimits {
    TxnRecordLimits { capacity, ..TxnRecordLimits::default() }
}

fn t(n: u8) -> TxnId {
    [n; 16]
}

#[test]
fn bounded_in_memory() {
    let c = TxnRecord::in_memory(limits(2));
    c.insert(t(1), o(1));
    c.insert(t(2), o(2));
    assert_eq!(c.get(&t(1)), Some(o(1)));
    c.insert(t(3), o(3));
    assert_eq!(c.get(&t(1)), None, "oldest evicted");
    assert_eq!(c.get(&t(3)), Some(o(3)));
}

#[test]
fn records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
        r.insert(t(1), o(1));
        r.insert(t(2), o(2));
    }
    let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
    assert_eq!((r.get(&t(1)), r.get(&t(2)), r.len()), (Some(o(1)), Some(o(2)), 2));
    r.insert(t(3), o(3));
    drop(r);
    let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
    assert_eq!(r.get(&t(3)), Some(o(3)), "appends after a reopen persist too");
}

#[test]
fn a_torn_tail_is_cut_and_never_misread() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
        r.insert(t(1), o(1));
        r.insert(t(2), o(2));
    }
    let path = log::log_path(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    // A crash in the middle of the second append.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 2).unwrap();
    let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
    assert_eq!((r.get(&t(1)), r.get(&t(2))), (Some(o(1)), None));
    r.insert(t(3), o(3));
    drop(r);
    let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
    assert_eq!((r.get(&t(1)), r.get(&t(3))), (Some(o(1)), Some(o(3))), "new frames follow the good ones");
}

#[test]
fn a_corrupt_record_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
        r.insert(t(1), o(1));
        r.insert(t(2), o(2));
    }
    let path = log::log_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip a byte of the first frame's payload (its status): the CRC catches it.
    let at = 8 + 12 + 32;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
    assert_eq!((r.get(&t(1)), r.get(&t(2))), (None, None), "nothing at or after the corrupt frame is trusted");
    // Not a record file at all.
    std::fs::write(&path, b"garbage that is not a record").unwrap();
    let r = TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap();
    assert!(r.is_empty());
    r.insert(t(4), o(4));
    drop(r);
    assert_eq!(TxnRecord::open(dir.path(), 0o700, limits(10)).unwrap().get(&t(4)), Some(o(4)));
}

#[test]
fn the_record_stays_bounded_on_disk_and_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let r = TxnRecord::open(dir.path(), 0o700, limits(8)).unwrap();
    let frame_len = log::encode(&t(0), &Recorded { at_ms: 0, outcome: o(0) }).len() as u64;
    for i in 0..=255u8 {
        r.insert(t(i), o(u32::from(i)));
        assert!(r.len() <= 8);
        let size = std::fs::metadata(log::log_path(dir.path())).unwrap().len();
        assert!(size <= 8 + 16 * frame_len, "log compacted: {size} bytes after {i}");
    }
    drop(r);
    let r = TxnRecord::open(dir.path(), 0o700, limits(8)).unwrap();
    assert_eq!(r.len(), 8);
    assert_eq!(r.get(&t(255)), Some(o(255)));
    assert_eq!(r.get(&t(247)), None, "only the newest 8 are kept");
}

#[test]
fn expired_outcomes_are_forgotten() {
    let r = TxnRecord::in_memory(TxnRecordLimits { capacity: 10, max_age: Duration::ZERO });
    r.insert(t(1), Outcome { request_digest: 1, status: 0, response: vec![] });
    // Recorded "now" with a zero age limit: expired as soon as a millisecond passes, so
    // only the eviction on the next insert is checked, with a recorded time in the past.
    let mut g = r.lock();
    g.map.get_mut(&t(1)).unwrap().at_ms = 1;
    drop(g);
    assert_eq!(r.get(&t(1)), None);
    r.insert(t(2), o(2));
    assert!(!r.lock().map.contains_key(&t(1)), "evicted by age");
}
