//! Whole blobs: round trips, ranges, checksums, failed sources, names,
//! conditions, replays and concurrent access.

use super::*;

pub fn put_get_round_trip(s: &dyn BlobStore) {
    new_container(s, "box");
    // Crosses several 256 KiB transfer chunks, delivered in odd-sized reads.
    let data = pattern(700_001, 7);
    let mut req = put_req("box", "dir/file.bin");
    req.content_type = "image/png".into();
    req.metadata = meta(&[("a", "1"), ("B_2", "two words")]);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let w = s.put_blob(&req, &mut VecSource::chunked(&data, 77_777), &txn()).unwrap();
    assert_eq!(w.content_crc64, crc64(&data));
    assert!(w.etag.starts_with("\"0x") && w.etag.ends_with('"') && w.etag.len() > 5, "{}", w.etag);
    assert!(w.last_modified_ms >= before && w.last_modified_ms < before + 60_000);
    let (p, got) = get(s, "box", "dir/file.bin").unwrap();
    assert!(got == data, "content differs");
    assert_eq!(
        p,
        BlobProperties {
            lease: Default::default(),
            etag: w.etag.clone(),
            last_modified_ms: w.last_modified_ms,
            created_ms: w.last_modified_ms,
            content_length: data.len() as u64,
            content_type: "image/png".into(),
            headers: Default::default(),
            content_md5: None,
            content_crc64: crc64(&data),
            committed_blocks: 0,
            metadata: req.metadata.clone(),
        }
    );
    assert_eq!(s.blob_properties(&bref("box", "dir/file.bin"), &Conditions::none()).unwrap(), p);
    assert_err!(get(s, "box", "dir/file"), StoreError::BlobNotFound);
    assert_err!(s.blob_properties(&bref("box", "nope"), &Conditions::none()), StoreError::BlobNotFound);
}

pub fn empty_blob(s: &dyn BlobStore) {
    new_container(s, "box");
    let w = put(s, "box", "empty", b"");
    assert_eq!(w.content_crc64, crc64(b""));
    let (p, got) = get(s, "box", "empty").unwrap();
    assert_eq!((p.content_length, got.len()), (0, 0));
    let mut req = get_req("box", "empty");
    req.range = Some(ByteRange { offset: 0, length: 10 });
    assert_eq!(s.get_blob(&req, &mut VecSink::new(10)).unwrap().2, 0);
    req.range = Some(ByteRange { offset: 1, length: 0 });
    assert_err!(s.get_blob(&req, &mut VecSink::new(10)), StoreError::InvalidRange);
}

pub fn overwrite_replaces_content_and_etag(s: &dyn BlobStore) {
    new_container(s, "box");
    let mut etags = BTreeSet::new();
    for i in 0..20u8 {
        let w = put(s, "box", "b", &pattern(100 + usize::from(i), i));
        assert!(etags.insert(w.etag.clone()), "etag reused: {}", w.etag);
        let (p, got) = get(s, "box", "b").unwrap();
        assert_eq!((p.etag, got), (w.etag, pattern(100 + usize::from(i), i)));
    }
    assert_eq!(names(s, "box"), ["b"]);
}

pub fn ranged_reads(s: &dyn BlobStore) {
    new_container(s, "box");
    let data = pattern(1000, 3);
    put(s, "box", "b", &data);
    let read = |range: Option<(u64, u64)>, cap: u64| {
        let mut req = get_req("box", "b");
        req.range = range.map(|(offset, length)| ByteRange { offset, length });
        let mut sink = VecSink::new(cap);
        s.get_blob(&req, &mut sink).map(|(p, off, len)| {
            assert_eq!(p.content_length, 1000);
            assert_eq!(len, sink.data.len() as u64);
            (off, sink.data)
        })
    };
    assert_eq!(read(Some((100, 50)), 4096).unwrap(), (100, data[100..150].to_vec()));
    assert_eq!(read(Some((990, 50)), 4096).unwrap(), (990, data[990..].to_vec()));
    assert_eq!(read(Some((1000, 50)), 4096).unwrap(), (1000, vec![]));
    assert_eq!(read(Some((0, 0)), 4096).unwrap(), (0, vec![]));
    // Clipped to the sink's capacity, with and without a range.
    assert_eq!(read(Some((10, 500)), 64).unwrap(), (10, data[10..74].to_vec()));
    assert_eq!(read(None, 100).unwrap(), (0, data[..100].to_vec()));
    assert_eq!(read(None, 0).unwrap(), (0, vec![]));
    assert_eq!(read(Some((5, u64::MAX - 5)), 4096).unwrap(), (5, data[5..].to_vec()));
    assert_err!(read(Some((1001, 1)), 4096), StoreError::InvalidRange);
    assert_err!(read(Some((u64::MAX - 1, 1)), 4096), StoreError::InvalidRange);
}

pub fn checksums_checked_and_nothing_stored_on_mismatch(s: &dyn BlobStore) {
    new_container(s, "box");
    let data = pattern(300_000, 9);
    let md5: [u8; 16] = {
        use md5::Digest as _;
        md5::Md5::digest(&data).into()
    };
    let mut req = put_req("box", "b");
    req.content_md5 = Some(md5);
    req.content_crc64 = Some(crc64(&data));
    let w = s.put_blob(&req, &mut VecSource::new(&data), &txn()).unwrap();
    let p = s.blob_properties(&bref("box", "b"), &Conditions::none()).unwrap();
    assert_eq!(p.content_md5, Some(md5));
    assert_eq!(p.content_crc64, crc64(&data));

    let other = pattern(300_000, 10);
    for (md5, crc) in [(None, Some(crc64(&data))), (Some(md5), None), (Some([0; 16]), Some(crc64(&other)))] {
        let mut bad = put_req("box", "b");
        (bad.content_md5, bad.content_crc64) = (md5, crc);
        assert_err!(s.put_blob(&bad, &mut VecSource::new(&other), &txn()), StoreError::ChecksumMismatch);
        bad.target = bref("box", "new");
        assert_err!(s.put_blob(&bad, &mut VecSource::new(&other), &txn()), StoreError::ChecksumMismatch);
    }
    let (p, got) = get(s, "box", "b").unwrap();
    assert_eq!(p.etag, w.etag);
    assert!(got == data);
    assert_eq!(names(s, "box"), ["b"]);
}

pub fn failed_sources_store_nothing(s: &dyn BlobStore) {
    new_container(s, "box");
    let old = put(s, "box", "b", b"old");
    let data = pattern(1 << 20, 1);
    for name in ["b", "fresh"] {
        let r = s.put_blob(&put_req("box", name), &mut VecSource::cancel_at(&data, 600_000), &txn());
        assert_err!(r, StoreError::Cancelled);
        let r = s.put_blob(&put_req("box", name), &mut VecSource::short(&data[..1000], 5000), &txn());
        assert!(r.is_err(), "a source ending early must fail");
    }
    let (p, got) = get(s, "box", "b").unwrap();
    assert_eq!((p.etag, got), (old.etag, b"old".to_vec()));
    assert_eq!(names(s, "box"), ["b"]);
}

pub fn etags_unique_across_blobs(s: &dyn BlobStore) {
    new_container(s, "box");
    let mut seen = BTreeSet::new();
    for i in 0..50 {
        assert!(seen.insert(put(s, "box", &format!("b{i}"), b"same").etag));
    }
}

pub fn odd_names_round_trip(s: &dyn BlobStore) {
    odd_names_with_longest(s, 1024);
}

/// `longest`: the longest blob name the store takes (1024 unless its keys add to the name).
pub fn odd_names_with_longest(s: &dyn BlobStore, longest: usize) {
    new_container(s, "box");
    let deep = vec!["d"; 254].join("/");
    let long = "n".repeat(longest);
    let odd = ["ünïcode/名前", "..a/b..", "a/.../c", "x y/z%2F", "😀", "a/..b", &deep, &long, "A", "a", "~", "'\"<>"];
    for (i, n) in odd.iter().enumerate() {
        put(s, "box", n, &pattern(i * 10, i as u8));
    }
    for (i, n) in odd.iter().enumerate() {
        assert_eq!(get(s, "box", n).unwrap().1, pattern(i * 10, i as u8), "{n}");
    }
    let mut sorted: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    assert_eq!(names(s, "box"), sorted);
}

// ---- conditions and replays -------------------------------------------------

pub fn conditional_writes(s: &dyn BlobStore) {
    new_container(s, "box");
    let put_if = |c: Conditions, data: &[u8]| {
        let mut req = put_req("box", "b");
        req.conditions = c;
        s.put_blob(&req, &mut VecSource::new(data), &txn())
    };
    // Absent blob: If-Match anything fails, If-None-Match * creates.
    assert_err!(put_if(if_match("*"), b"x"), StoreError::PreconditionFailed);
    assert_err!(put_if(if_match("\"0x1\""), b"x"), StoreError::PreconditionFailed);
    let w1 = put_if(if_none_match("*"), b"one").unwrap();
    // Azure's 409 BlobAlreadyExists for a create-only write over a blob.
    assert_err!(put_if(if_none_match("*"), b"two"), StoreError::AlreadyExists);
    assert_err!(put_if(if_none_match(&w1.etag), b"two"), StoreError::PreconditionFailed);
    assert_err!(put_if(if_match("\"0x1\""), b"two"), StoreError::PreconditionFailed);
    assert_eq!(get(s, "box", "b").unwrap().1, b"one");
    let w2 = put_if(if_match(&w1.etag), b"two").unwrap();
    assert_err!(put_if(if_match(&w1.etag), b"three"), StoreError::PreconditionFailed);
    let w3 = put_if(if_match("*"), b"three").unwrap();
    let w4 = put_if(if_none_match(&w2.etag), b"four").unwrap();
    assert_eq!(
        get(s, "box", "b").unwrap(),
        (s.blob_properties(&bref("box", "b"), &Conditions::none()).unwrap(), b"four".to_vec())
    );
    assert_ne!(w3.etag, w4.etag);
}

pub fn conditional_reads_and_deletes(s: &dyn BlobStore) {
    new_container(s, "box");
    let w = put(s, "box", "b", b"data");
    let r = bref("box", "b");
    let get_if = |c: Conditions| {
        let mut req = get_req("box", "b");
        req.conditions = c;
        s.get_blob(&req, &mut VecSink::new(100)).map(|x| x.2)
    };
    assert_eq!(get_if(if_match(&w.etag)).unwrap(), 4);
    assert_eq!(get_if(if_match("*")).unwrap(), 4);
    assert_eq!(get_if(if_none_match("\"0x1\"")).unwrap(), 4);
    assert_err!(get_if(if_match("\"0x1\"")), StoreError::PreconditionFailed);
    // Azure's 304 for a read whose copy is current.
    assert_err!(get_if(if_none_match(&w.etag)), StoreError::NotModified);
    assert_err!(get_if(if_none_match("*")), StoreError::NotModified);
    assert_err!(s.blob_properties(&r, &if_none_match(&w.etag)), StoreError::NotModified);
    // If-Match is checked first: 412 even when If-None-Match also matches.
    let both = Conditions {
        if_match: if_match("\"0x1\"").if_match,
        if_none_match: if_none_match(&w.etag).if_none_match,
        ..Conditions::none()
    };
    assert_err!(get_if(both), StoreError::PreconditionFailed);
    assert_err!(s.blob_properties(&r, &if_match("\"0x1\"")), StoreError::PreconditionFailed);
    assert_eq!(s.blob_properties(&r, &if_match(&w.etag)).unwrap().etag, w.etag);
    assert_err!(s.delete_blob(&r, &if_match("\"0x1\"")), StoreError::PreconditionFailed);
    assert_err!(s.delete_blob(&r, &if_none_match("*")), StoreError::PreconditionFailed);
    assert_eq!(get(s, "box", "b").unwrap().1, b"data");
    s.delete_blob(&r, &if_match(&w.etag)).unwrap();
    assert_err!(get(s, "box", "b"), StoreError::BlobNotFound);
    assert_err!(s.delete_blob(&r, &Conditions::none()), StoreError::BlobNotFound);
    assert!(names(s, "box").is_empty());
}

pub fn replayed_put_blob_answers_unchanged(s: &dyn BlobStore) {
    new_container(s, "box");
    let t = txn();
    let w = s.put_blob(&put_req("box", "b"), &mut VecSource::new(b"first"), &t).unwrap();
    // Same txn: the answer of the original, whatever the data or conditions,
    // and the data need not even be readable.
    let mut req = put_req("box", "b");
    req.conditions = if_none_match("*");
    assert_eq!(s.put_blob(&req, &mut VecSource::new(b"second"), &t).unwrap(), w);
    assert_eq!(s.put_blob(&put_req("box", "b"), &mut VecSource::cancel_at(b"third", 0), &t).unwrap(), w);
    assert_eq!(get(s, "box", "b").unwrap().1, b"first");
    // Once another write replaced it, the old txn is an ordinary write again.
    let w2 = put(s, "box", "b", b"other");
    let w3 = s.put_blob(&put_req("box", "b"), &mut VecSource::new(b"again"), &t).unwrap();
    assert_ne!(w3.etag, w2.etag);
    assert_eq!(get(s, "box", "b").unwrap().1, b"again");
}

pub fn racing_conditional_creates_one_winner(s: &dyn BlobStore) {
    new_container(s, "box");
    let wins = AtomicU64::new(0);
    thread::scope(|sc| {
        for i in 0..8u8 {
            let wins = &wins;
            sc.spawn(move || {
                let mut req = put_req("box", "race");
                req.conditions = if_none_match("*");
                match s.put_blob(&req, &mut VecSource::new(&pattern(50_000, i)), &txn()) {
                    Ok(_) => {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(StoreError::AlreadyExists) => {}
                    Err(e) => panic!("{e}"),
                }
            });
        }
    });
    assert_eq!(wins.load(Ordering::SeqCst), 1);
}

/// Writers keep replacing one blob while readers check every read is one whole
/// version: length, CRC and the pattern's seed (first byte) agree throughout.
pub fn concurrent_readers_never_see_a_mix(s: &dyn BlobStore) {
    new_container(s, "box");
    put(s, "box", "hot", &versioned(0, 1000));
    let done = AtomicBool::new(false);
    thread::scope(|sc| {
        let writers: Vec<_> = (1..=3u8)
            .map(|w| {
                sc.spawn(move || {
                    for k in 0..12u8 {
                        let seed = w * 16 + k;
                        put(s, "box", "hot", &versioned(seed, 200_000 + usize::from(seed) * 4099));
                    }
                })
            })
            .collect();
        for _ in 0..2 {
            sc.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::SeqCst) || reads < 5 {
                    let (p, got) = get(s, "box", "hot").unwrap();
                    assert_eq!(p.content_length, got.len() as u64);
                    assert_eq!(p.content_crc64, crc64(&got), "crc of a torn read");
                    assert!(got == versioned(got[0], got.len()), "bytes from two versions");
                    reads += 1;
                }
            });
        }
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
    });
}

fn versioned(seed: u8, len: usize) -> Vec<u8> {
    let mut v = pattern(len, seed);
    v[0] = seed;
    v
}
