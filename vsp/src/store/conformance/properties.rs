//! SetBlobMetadata / SetBlobProperties (Azure's Set Blob Metadata and Set
//! Blob Properties): a new ETag, the same bytes, blocks kept.

use vmblob_protocol::ops::{BlobUpdate, Conditions, SetBlobProperties};

use super::*;

fn set(
    s: &dyn BlobStore,
    c: &str,
    b: &str,
    update: BlobUpdate,
    conditions: Conditions,
) -> Result<BlobWritten, StoreError> {
    s.set_blob_properties(&SetBlobProperties { target: bref(c, b), update, conditions }, &txn())
}

fn props(s: &dyn BlobStore, c: &str, b: &str) -> BlobProperties {
    s.blob_properties(&bref(c, b), &Conditions::none()).unwrap()
}

/// Above the object store's single-PUT size in the tests (100,000 bytes), so
/// its re-write takes the multipart path.
const LARGE: usize = 300_000;

pub fn set_metadata_and_content_type_keep_the_bytes(s: &dyn BlobStore) {
    new_container(s, "box");
    let data = pattern(LARGE, 5);
    let mut req = put_req("box", "b");
    req.content_type = "text/csv".into();
    req.metadata = meta(&[("owner", "ops"), ("stage", "raw")]);
    let first = s.put_blob(&req, &mut VecSource::new(&data), &txn()).unwrap();
    let before = props(s, "box", "b");

    let w = set(s, "box", "b", BlobUpdate::Metadata(meta(&[("stage", "clean")])), Conditions::none()).unwrap();
    assert_ne!(w.etag, first.etag, "a new ETag");
    assert_eq!(w.content_crc64, first.content_crc64, "the same bytes");
    let after = props(s, "box", "b");
    assert_eq!(after.etag, w.etag);
    assert!(after.last_modified_ms >= before.last_modified_ms);
    assert_eq!(after.metadata, meta(&[("stage", "clean")]), "all metadata replaced");
    assert_eq!(after.content_type, "text/csv", "the content type stays");
    assert_eq!((after.content_length, after.content_crc64), (before.content_length, before.content_crc64));
    assert_eq!(get(s, "box", "b").unwrap().1, data);

    let w2 = set(s, "box", "b", BlobUpdate::content_type("application/json"), Conditions::none()).unwrap();
    assert_ne!(w2.etag, w.etag);
    let p = props(s, "box", "b");
    assert_eq!((p.content_type.as_str(), &p.metadata), ("application/json", &meta(&[("stage", "clean")])));
    let listed = s.list_blobs(&ListBlobs { include_metadata: true, ..list_req("box", "", "", "", 10) }).unwrap();
    match &listed.items[..] {
        [BlobListItem::Blob { name, properties }] => {
            assert_eq!((name.as_str(), properties.etag.as_str()), ("b", w2.etag.as_str()), "listings see it");
            assert_eq!(properties.metadata, meta(&[("stage", "clean")]));
            assert_eq!(properties.content_type, "application/json");
        }
        other => panic!("{other:?}"),
    }

    // Cleared, as Azure clears it (no default, unlike a write without one). No metadata at all: none.
    set(s, "box", "b", BlobUpdate::content_type(""), Conditions::none()).unwrap();
    set(s, "box", "b", BlobUpdate::Metadata(Metadata::default()), Conditions::none()).unwrap();
    let p = props(s, "box", "b");
    assert_eq!((p.content_type.as_str(), p.metadata.0.len()), ("", 0));
    assert_eq!(get(s, "box", "b").unwrap().1, data, "still the same bytes");

    // A small blob (one PUT on the object store) and an empty one.
    put(s, "box", "small", b"tiny");
    set(s, "box", "small", BlobUpdate::Metadata(meta(&[("k", "v")])), Conditions::none()).unwrap();
    assert_eq!(get(s, "box", "small").unwrap().1, b"tiny");
    put(s, "box", "empty", b"");
    set(s, "box", "empty", BlobUpdate::content_type("text/plain"), Conditions::none()).unwrap();
    let (p, bytes) = get(s, "box", "empty").unwrap();
    assert_eq!((p.content_type.as_str(), bytes.len()), ("text/plain", 0));
}

pub fn set_properties_conditions_missing_blobs_and_replays(s: &dyn BlobStore) {
    new_container(s, "box");
    let w = put(s, "box", "b", b"data");
    let update = || BlobUpdate::Metadata(meta(&[("k", "1")]));
    assert_err!(set(s, "box", "b", update(), if_match("\"0x1\"")), StoreError::PreconditionFailed);
    assert_err!(set(s, "box", "b", update(), if_none_match(&w.etag)), StoreError::PreconditionFailed);
    // 412, not a create's 409.
    assert_err!(set(s, "box", "b", update(), if_none_match("*")), StoreError::PreconditionFailed);
    assert_eq!(props(s, "box", "b").etag, w.etag, "nothing changed by a failed condition");
    let bare = w.etag.trim_matches('"');
    let w2 = set(s, "box", "b", update(), if_match(bare)).unwrap();
    assert_err!(set(s, "box", "b", update(), if_match(&w.etag)), StoreError::PreconditionFailed);
    set(s, "box", "b", update(), if_match(&w2.etag)).unwrap();

    assert_err!(set(s, "box", "missing", update(), Conditions::none()), StoreError::BlobNotFound);
    assert_err!(set(s, "nobox", "b", update(), Conditions::none()), StoreError::ContainerNotFound);
    stage(s, "box", "staged", b"id1", b"uncommitted");
    assert_err!(set(s, "box", "staged", update(), Conditions::none()), StoreError::BlobNotFound);

    // A replay (the same transaction id) answers the first result and changes nothing.
    let t = txn();
    let req = SetBlobProperties { target: bref("box", "b"), update: update(), conditions: Conditions::none() };
    let first = s.set_blob_properties(&req, &t).unwrap();
    let again = s.set_blob_properties(&req, &t).unwrap();
    assert_eq!(again.etag, first.etag);
    assert_eq!(props(s, "box", "b").etag, first.etag);
}

pub fn set_properties_keeps_committed_and_staged_blocks(s: &dyn BlobStore) {
    new_container(s, "box");
    let (a, b) = (pattern(LARGE / 2, 1), pattern(LARGE / 2, 2));
    stage(s, "box", "blob", b"id-a", &a);
    stage(s, "box", "blob", b"id-b", &b);
    s.put_block_list(&block_list_req("box", "blob", &[b"id-a", b"id-b"]), &txn()).unwrap();
    stage(s, "box", "blob", b"id-c", b"later");
    set(s, "box", "blob", BlobUpdate::Metadata(meta(&[("v", "2")])), Conditions::none()).unwrap();
    let p = props(s, "box", "blob");
    assert_eq!((p.committed_blocks, &p.metadata), (2, &meta(&[("v", "2")])));
    let blocks = s.get_block_list(&bref("box", "blob"), BlockListType::All).unwrap();
    let seen: Vec<(&[u8], bool)> = blocks.iter().map(|b| (&b.id[..], b.committed)).collect();
    assert_eq!(seen, [(&b"id-a"[..], true), (b"id-b", true), (b"id-c", false)], "blocks kept");
    assert_eq!(get(s, "box", "blob").unwrap().1, [a.as_slice(), b.as_slice()].concat());
    // The committed blocks are still there to commit again, with the staged one.
    s.put_block_list(&block_list_req("box", "blob", &[b"id-b", b"id-c"]), &txn()).unwrap();
    assert_eq!(get(s, "box", "blob").unwrap().1, [b.as_slice(), b"later"].concat());
}
