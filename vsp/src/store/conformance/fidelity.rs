//! Answers that must be Azure's (issue 15's differences), on every store.

use vmblob_protocol::ops::{BlockListType, Conditions};

use super::*;

/// Toggles the surrounding quotes of an ETag: `"0x1"` ⇄ `0x1`.
fn other_quoting(etag: &str) -> String {
    match etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
        Some(bare) => bare.to_owned(),
        None => format!("\"{etag}\""),
    }
}

/// Azure takes an ETag with or without its quotes. Before, If-None-Match with
/// the current ETag in the other quoting let a write through.
pub fn etags_match_with_or_without_quotes(s: &dyn BlobStore) {
    new_container(s, "box");
    let w = put(s, "box", "b", b"one");
    let other = other_quoting(&w.etag);
    let put_if = |c: Conditions, data: &[u8]| {
        let mut req = put_req("box", "b");
        req.conditions = c;
        s.put_blob(&req, &mut VecSource::new(data), &txn())
    };
    assert_err!(put_if(if_none_match(&other), b"two"), StoreError::PreconditionFailed);
    assert_eq!(get(s, "box", "b").unwrap().1, b"one", "If-None-Match in the other quoting let a write through");
    let mut req = get_req("box", "b");
    req.conditions = if_match(&other);
    assert_eq!(s.get_blob(&req, &mut VecSink::new(16)).unwrap().2, 3);
    put_if(if_match(&other), b"two").unwrap();
    assert_eq!(get(s, "box", "b").unwrap().1, b"two");
}

/// Azure refuses a blob whose block ids differ in length.
pub fn block_ids_of_one_blob_have_one_length(s: &dyn BlobStore) {
    new_container(s, "box");
    stage(s, "box", "b", b"aa", b"first");
    // Azure refuses the PutBlock itself (InvalidBlobOrBlock), staging nothing.
    let other = s.put_block(&bref("box", "b"), &bid(b"bbb"), &mut VecSource::new(b"second"), None);
    assert_err!(other, StoreError::InvalidBlockList(_));
    let ids: Vec<Vec<u8>> =
        s.get_block_list(&bref("box", "b"), BlockListType::All).unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(ids, [b"aa".to_vec()], "the refused block was not staged");
    assert_err!(
        s.put_block_list(&block_list_req("box", "b", &[b"aa", b"bbb"]), &txn()),
        StoreError::InvalidBlockList(_)
    );
    assert_err!(s.blob_properties(&bref("box", "b"), &Conditions::none()), StoreError::BlobNotFound);
    stage(s, "box", "b", b"cc", b"third");
    s.put_block_list(&block_list_req("box", "b", &[b"aa", b"cc"]), &txn()).unwrap();
    assert_eq!(get(s, "box", "b").unwrap().1, b"firstthird");
    // Only uncommitted ids count at a PutBlock (none are left after the commit);
    // the commit still refuses a list that mixes lengths.
    stage(s, "box", "b", b"dddd", b"fourth");
    assert_err!(
        s.put_block_list(&block_list_req("box", "b", &[b"aa", b"dddd"]), &txn()),
        StoreError::InvalidBlockList(_)
    );
}

/// A blob written without a content type reads as Azure's default.
pub fn absent_content_type_reads_as_octet_stream(s: &dyn BlobStore) {
    new_container(s, "box");
    let mut req = put_req("box", "whole");
    req.content_type = String::new();
    s.put_blob(&req, &mut VecSource::new(b"x"), &txn()).unwrap();
    stage(s, "box", "blocks", b"1", b"y");
    let mut list = block_list_req("box", "blocks", &[b"1"]);
    list.content_type = String::new();
    s.put_block_list(&list, &txn()).unwrap();
    for name in ["whole", "blocks"] {
        let p = s.blob_properties(&bref("box", name), &Conditions::none()).unwrap();
        assert_eq!(p.content_type, "application/octet-stream", "{name}");
    }
}

/// Azure lists names by UTF-16 code units: U+1F600 (surrogates D83D DE00)
/// before U+E000 and U+FF01, where UTF-8 byte order puts it after them. Every
/// page size and the delimiter's rolled-up prefixes follow that order, so a
/// marker resumes where the page ended.
pub fn listing_is_in_utf16_order(s: &dyn BlobStore) {
    new_container(s, "box");
    for n in ["\u{FF01}", "😀", "\u{E000}x", "a", "a\u{FF01}/b", "a😀/c", "a😀/d", "z"] {
        put(s, "box", n, b"");
    }
    let flat = ["a", "a😀/c", "a😀/d", "a\u{FF01}/b", "z", "😀", "\u{E000}x", "\u{FF01}"];
    assert_eq!(names(s, "box"), flat, "not UTF-16 order");
    let rolled = ["a", "P:a😀/", "P:a\u{FF01}/", "z", "😀", "\u{E000}x", "\u{FF01}"];
    for page in [1, 2, 3, 5000] {
        assert_eq!(keys(&list_all(s, "box", "", "", page)), flat, "flat, page size {page}");
        assert_eq!(keys(&list_all(s, "box", "", "/", page)), rolled, "delimited, page size {page}");
    }
    assert_eq!(keys(&list_all(s, "box", "a", "/", 1)), ["a", "P:a😀/", "P:a\u{FF01}/"]);
    // A marker from a page boundary: after "😀" come the BMP names above it.
    assert_eq!(keys(&s.list_blobs(&list_req("box", "", "", "😀", 5000)).unwrap().items), ["\u{E000}x", "\u{FF01}"]);
}
