//! Op version 2's properties and conditions: the HTTP headers besides
//! Content-Type, the creation time, and If-Modified-Since /
//! If-Unmodified-Since (compared in whole seconds, as Azure compares them).

use vmblob_protocol::ops::{BlobUpdate, ContentHeaders, SetBlobProperties};

use super::*;

fn props(s: &dyn BlobStore, c: &str, b: &str) -> BlobProperties {
    s.blob_properties(&bref(c, b), &Conditions::none()).unwrap()
}

fn set(s: &dyn BlobStore, b: &str, update: BlobUpdate, conditions: Conditions) -> Result<BlobWritten, StoreError> {
    s.set_blob_properties(&SetBlobProperties { target: bref("box", b), update, conditions }, &txn())
}

fn sample_headers() -> ContentHeaders {
    ContentHeaders {
        content_encoding: "gzip".into(),
        content_language: "de-CH".into(),
        content_disposition: "attachment; filename=\"r.csv\"".into(),
        cache_control: "max-age=60".into(),
    }
}

/// A new blob is created at its write; metadata and property changes keep
/// that, a whole write or a copy makes a new blob.
pub fn http_headers_and_creation_time_are_kept(s: &dyn BlobStore) {
    new_container(s, "box");
    let mut req = put_req("box", "h");
    req.content_type = "text/csv".into();
    req.headers = sample_headers();
    let w = s.put_blob(&req, &mut VecSource::new(b"a,b\n1,2\n"), &txn()).unwrap();
    let p = props(s, "box", "h");
    assert_eq!((&p.headers, p.created_ms), (&sample_headers(), w.last_modified_ms));
    assert_eq!(get(s, "box", "h").unwrap().0, p, "GET answers what HEAD does");
    let listed = s.list_blobs(&list_req("box", "", "", "", 10)).unwrap();
    match &listed.items[..] {
        [BlobListItem::Blob { properties, .. }] => {
            assert_eq!((&properties.headers, properties.created_ms), (&p.headers, p.created_ms))
        }
        other => panic!("{other:?}"),
    }

    set(s, "h", BlobUpdate::Metadata(meta(&[("k", "v")])), Conditions::none()).unwrap();
    let after = props(s, "box", "h");
    assert_eq!((&after.headers, after.created_ms, after.content_type.as_str()), (&p.headers, p.created_ms, "text/csv"));

    // Set Blob Properties sets them all: one not given is cleared.
    let only_cache = ContentHeaders { cache_control: "no-cache".into(), ..ContentHeaders::default() };
    let update = BlobUpdate::Properties { content_type: "text/plain".into(), headers: Some(only_cache.clone()) };
    set(s, "h", update, Conditions::none()).unwrap();
    let after = props(s, "box", "h");
    assert_eq!((&after.headers, after.content_type.as_str()), (&only_cache, "text/plain"));
    assert_eq!((after.created_ms, &after.metadata), (p.created_ms, &meta(&[("k", "v")])));
    // The content type alone (all an op-version-1 peer can send): the other headers stay.
    set(s, "h", BlobUpdate::content_type("text/x-csv"), Conditions::none()).unwrap();
    let after = props(s, "box", "h");
    assert_eq!((&after.headers, after.content_type.as_str()), (&only_cache, "text/x-csv"));

    // A copy takes the source's headers and is a new blob.
    let cw = s
        .copy_blob(
            &vmblob_protocol::ops::CopyBlob {
                source: bref("box", "h"),
                target: bref("box", "copy"),
                source_conditions: Conditions::none(),
                conditions: Conditions::none(),
                metadata: None,
            },
            &txn(),
        )
        .unwrap();
    let c = props(s, "box", "copy");
    assert_eq!((&c.headers, c.created_ms), (&only_cache, cw.last_modified_ms));

    // A whole write replaces them with its own (none here) and is created anew.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let w2 = put(s, "box", "h", b"new");
    let p2 = props(s, "box", "h");
    assert_eq!((&p2.headers, p2.created_ms), (&ContentHeaders::default(), w2.last_modified_ms));
    assert!(p2.created_ms > p.created_ms);

    // A block-list commit carries them too.
    stage(s, "box", "blk", b"id-1", b"block");
    let mut commit = block_list_req("box", "blk", &[b"id-1"]);
    commit.headers = sample_headers();
    let bw = s.put_block_list(&commit, &txn()).unwrap();
    let b = props(s, "box", "blk");
    assert_eq!((&b.headers, b.created_ms), (&sample_headers(), bw.last_modified_ms));
}

fn since(ms: u64) -> Conditions {
    Conditions { if_modified_since_ms: Some(ms), ..Conditions::none() }
}

fn until(ms: u64) -> Conditions {
    Conditions { if_unmodified_since_ms: Some(ms), ..Conditions::none() }
}

fn get_under(s: &dyn BlobStore, b: &str, conditions: Conditions) -> Result<(), StoreError> {
    let req = GetBlob { conditions, ..get_req("box", b) };
    s.get_blob(&req, &mut VecSink::new(1 << 20)).map(|_| ())
}

pub fn time_conditions_on_reads_and_writes(s: &dyn BlobStore) {
    new_container(s, "box");
    let w = put(s, "box", "t", b"one");
    let (lm, second_before) = (w.last_modified_ms, w.last_modified_ms - 1000);
    let head = |c: Conditions| s.blob_properties(&bref("box", "t"), &c).map(|_| ());

    // Reads: modified since the second before, not since its own; a failed
    // If-Unmodified-Since is 412.
    get_under(s, "t", since(second_before)).unwrap();
    assert_err!(get_under(s, "t", since(lm)), StoreError::NotModified);
    assert_err!(head(since(lm - lm % 1000)), StoreError::NotModified);
    head(until(lm)).unwrap();
    assert_err!(get_under(s, "t", until(second_before)), StoreError::PreconditionFailed);
    // If-None-Match decides with If-Modified-Since on a read: either says "serve".
    let tag = etag(&w.etag);
    let both = Conditions { if_none_match: Some(tag.clone()), ..since(second_before) };
    get_under(s, "t", both).unwrap();
    let both = Conditions { if_none_match: Some(tag), ..since(lm) };
    assert_err!(get_under(s, "t", both), StoreError::NotModified);

    // Writes and deletes: a failed time condition is 412 and changes nothing.
    let mut req = put_req("box", "t");
    req.conditions = since(lm);
    assert_err!(s.put_blob(&req, &mut VecSource::new(b"two"), &txn()), StoreError::PreconditionFailed);
    req.conditions = until(second_before);
    assert_err!(s.put_blob(&req, &mut VecSource::new(b"two"), &txn()), StoreError::PreconditionFailed);
    let md = || BlobUpdate::Metadata(meta(&[("k", "v")]));
    assert_err!(set(s, "t", md(), since(lm)), StoreError::PreconditionFailed);
    assert_err!(s.delete_blob(&bref("box", "t"), &until(second_before)), StoreError::PreconditionFailed);
    let mut commit = block_list_req("box", "t", &[]);
    commit.conditions = since(lm);
    assert_err!(s.put_block_list(&commit, &txn()), StoreError::PreconditionFailed);
    assert_eq!(get(s, "box", "t").unwrap(), (props(s, "box", "t"), b"one".to_vec()));
    assert_eq!(props(s, "box", "t").etag, w.etag);

    // Ones that hold let the write through.
    let w2 = set(s, "t", md(), since(second_before)).unwrap();
    req.conditions = until(w2.last_modified_ms);
    s.put_blob(&req, &mut VecSource::new(b"two"), &txn()).unwrap();
    assert_eq!(get(s, "box", "t").unwrap().1, b"two");

    // On a name without a blob a time condition holds (Azure skips it).
    let mut fresh = put_req("box", "new");
    fresh.conditions = until(0);
    s.put_blob(&fresh, &mut VecSource::new(b"n"), &txn()).unwrap();
    fresh.target = bref("box", "new2");
    fresh.conditions = since(u64::MAX);
    s.put_blob(&fresh, &mut VecSource::new(b"n"), &txn()).unwrap();
    assert_err!(get_under(s, "none", since(0)), StoreError::BlobNotFound);
    s.delete_blob(&bref("box", "t"), &until(u64::MAX)).unwrap();
    assert_err!(get(s, "box", "t"), StoreError::BlobNotFound);
}
