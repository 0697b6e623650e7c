//! Blob listings: byte order, prefixes, delimiters, markers, pages.

use super::*;

pub fn flat_listing_pages(s: &dyn BlobStore) {
    new_container(s, "box");
    for i in 0..250 {
        let mut req = put_req("box", &format!("blob-{i:03}"));
        req.metadata = meta(&[("i", &i.to_string())]);
        s.put_blob(&req, &mut VecSource::new(&[i as u8]), &txn()).unwrap();
    }
    put(s, "box", "zzz", b"z");
    put(s, "box", "a", b"a");
    let req = |marker: &str| list_req("box", "blob-", "", marker, 100);
    let p1 = s.list_blobs(&req("")).unwrap();
    assert_eq!(p1.items.len(), 100);
    assert_eq!(p1.next_marker, "blob-099");
    let p2 = s.list_blobs(&req(&p1.next_marker)).unwrap();
    assert_eq!(item_key(&p2.items[0]), "blob-100");
    assert_eq!(p2.next_marker, "blob-199");
    let p3 = s.list_blobs(&req(&p2.next_marker)).unwrap();
    assert_eq!(p3.items.len(), 50);
    assert_eq!(p3.next_marker, "");
    let all: Vec<_> = [p1.items, p2.items, p3.items].concat();
    let expect: Vec<String> = (0..250).map(|i| format!("blob-{i:03}")).collect();
    assert_eq!(keys(&all), expect);
    let BlobListItem::Blob { properties, .. } = &all[7] else { panic!("not a blob") };
    assert_eq!((properties.content_length, properties.metadata.0.len()), (1, 0));
    // Metadata on request.
    let mut with_md = req("blob-006");
    with_md.include_metadata = true;
    let p = s.list_blobs(&with_md).unwrap();
    let BlobListItem::Blob { name, properties } = &p.items[0] else { panic!("not a blob") };
    assert_eq!((name.as_str(), &properties.metadata), ("blob-007", &meta(&[("i", "7")])));
    // No prefix; a marker before the prefix; a prefix matching nothing.
    assert_eq!(list_all(s, "box", "", "", 100).len(), 252);
    assert_eq!(s.list_blobs(&list_req("box", "blob-", "", "a", 5)).unwrap().next_marker, "blob-004");
    assert!(s.list_blobs(&list_req("box", "nothing", "", "", 5)).unwrap().items.is_empty());
    assert!(s.list_blobs(&list_req("box", "", "", "zzz", 5)).unwrap().items.is_empty());
}

pub fn listing_is_in_byte_order(s: &dyn BlobStore) {
    new_container(s, "box");
    for n in ["b", "B", "ä", "a", "a-b", "a/b", "a0", "Z", "é", "a.b"] {
        put(s, "box", n, b"");
    }
    assert_eq!(names(s, "box"), ["B", "Z", "a", "a-b", "a.b", "a/b", "a0", "b", "ä", "é"]);
}

pub fn delimiter_rolls_up_prefixes(s: &dyn BlobStore) {
    new_container(s, "box");
    for n in ["dir1/f1", "dir1/f2", "dir1.txt", "dir2/sub/f", "dir2/g", "file1", "file2", "x--y--z", "x--w"] {
        put(s, "box", n, b"");
    }
    assert_eq!(
        keys(&list_all(s, "box", "", "/", 100)),
        ["dir1.txt", "P:dir1/", "P:dir2/", "file1", "file2", "x--w", "x--y--z"]
    );
    assert_eq!(keys(&list_all(s, "box", "dir2/", "/", 100)), ["dir2/g", "P:dir2/sub/"]);
    assert_eq!(keys(&list_all(s, "box", "dir", "/", 100)), ["dir1.txt", "P:dir1/", "P:dir2/"]);
    assert_eq!(keys(&list_all(s, "box", "x", "--", 100)), ["P:x--"]);
    assert_eq!(keys(&list_all(s, "box", "x--", "--", 100)), ["x--w", "P:x--y--"]);
    assert_eq!(keys(&list_all(s, "box", "", "/", 1)), keys(&list_all(s, "box", "", "/", 100)));
}

/// 250 names, half rolled up: any page size must give exactly the one-page
/// listing, so a marker equal to a returned prefix skips all of its names.
pub fn delimiter_listing_pages(s: &dyn BlobStore) {
    new_container(s, "box");
    for i in 0..100 {
        put(s, "box", &format!("d{i:03}/x"), b"");
        put(s, "box", &format!("d{i:03}/y/z"), b"");
    }
    for i in 0..50 {
        put(s, "box", &format!("f{i:03}"), b"");
    }
    let full = keys(&list_all(s, "box", "", "/", 5000));
    assert_eq!(full.len(), 150);
    assert_eq!(full[0], "P:d000/");
    assert_eq!(full[99], "P:d099/");
    assert_eq!(full[100], "f000");
    let p1 = s.list_blobs(&list_req("box", "", "/", "", 100)).unwrap();
    assert_eq!(p1.next_marker, "d099/");
    let p2 = s.list_blobs(&list_req("box", "", "/", &p1.next_marker, 100)).unwrap();
    assert_eq!(item_key(&p2.items[0]), "f000");
    assert_eq!((p2.items.len(), p2.next_marker.as_str()), (50, ""));
    for page in [1, 2, 3, 7, 99, 100, 149, 150, 151] {
        assert_eq!(keys(&list_all(s, "box", "", "/", page)), full, "page size {page}");
    }
    let flat = keys(&list_all(s, "box", "", "", 5000));
    assert_eq!(flat.len(), 250);
    for page in [1, 100, 249, 250] {
        assert_eq!(keys(&list_all(s, "box", "", "", page)), flat, "flat page size {page}");
    }
    assert_eq!(keys(&list_all(s, "box", "d042/", "/", 1)), ["d042/x", "P:d042/y/"]);
}

/// Azure's `include=uncommittedblobs`: names with staged blocks and no
/// committed blob are listed (as `Uncommitted`) in order among the blobs,
/// rolled up by a delimiter, across pages; a committed blob is listed once.
pub fn listing_includes_uncommitted_blobs(s: &dyn BlobStore) {
    new_container(s, "box");
    put(s, "box", "a", b"committed");
    stage(s, "box", "a", b"id-1", b"staged over a committed blob");
    stage(s, "box", "b/x", b"id-1", b"only staged");
    stage(s, "box", "c", b"id-1", b"only staged");
    put(s, "box", "d", b"d");
    let list = |prefix: &str, delim: &str, marker: &str, max: u32, uncommitted: bool| {
        let req = ListBlobs { include_uncommitted: uncommitted, ..list_req("box", prefix, delim, marker, max) };
        crate::store::list_blobs(s, &req).unwrap()
    };
    assert_eq!(keys(&list("", "", "", 10, false).items), ["a", "d"]);
    let all = list("", "", "", 10, true);
    assert_eq!(
        (keys(&all.items), all.next_marker.as_str()),
        (vec!["a".to_owned(), "U:b/x".into(), "U:c".into(), "d".into()], "")
    );
    assert_eq!(keys(&list("", "/", "", 10, true).items), ["a", "P:b/", "U:c", "d"]);
    assert_eq!(keys(&list("b", "", "", 10, true).items), ["U:b/x"]);
    // Pages of one resume from their markers, committed or not.
    for delim in ["", "/"] {
        let (mut marker, mut got) = (String::new(), Vec::new());
        loop {
            let page = list("", delim, &marker, 1, true);
            assert!(page.items.len() <= 1);
            got.extend(keys(&page.items));
            if page.next_marker.is_empty() {
                break;
            }
            marker = page.next_marker;
        }
        assert_eq!(got, keys(&list("", delim, "", 10, true).items), "delimiter {delim:?}");
    }
    // Committed, it is a blob; deleted with only staged blocks, it is gone.
    s.put_block_list(&block_list_req("box", "c", &[b"id-1"]), &txn()).unwrap();
    s.delete_blob(&bref("box", "b/x"), &Conditions::none()).unwrap();
    assert_eq!(keys(&list("", "", "", 10, true).items), ["a", "c", "d"]);
    assert!(matches!(
        crate::store::list_blobs(s, &ListBlobs { include_uncommitted: true, ..list_req("nobox", "", "", "", 1) }),
        Err(StoreError::ContainerNotFound)
    ));
}
