//! CopyBlob (Azure's synchronous Copy Blob): the target gets the source's
//! committed content and properties as one write, without the guest.

use vmblob_protocol::ops::{Conditions, CopyBlob};

use super::*;

fn copy_req(from: (&str, &str), to: (&str, &str)) -> CopyBlob {
    CopyBlob {
        source: bref(from.0, from.1),
        target: bref(to.0, to.1),
        source_conditions: Conditions::none(),
        conditions: Conditions::none(),
        metadata: None,
    }
}

fn copy(s: &dyn BlobStore, req: &CopyBlob) -> Result<BlobWritten, StoreError> {
    s.copy_blob(req, &txn())
}

/// Above the object store's single-PUT size in the tests (100,000 bytes).
const LARGE: usize = 300_000;

pub fn copy_blob_copies_content_and_properties(s: &dyn BlobStore) {
    new_container(s, "src");
    new_container(s, "dst");
    let data = pattern(LARGE, 3);
    let mut req = put_req("src", "a");
    req.content_type = "image/png".into();
    req.metadata = meta(&[("camera", "x100")]);
    req.content_md5 = Some(<md5::Md5 as md5::Digest>::digest(&data).into());
    let w = s.put_blob(&req, &mut VecSource::new(&data), &txn()).unwrap();

    let c = copy(s, &copy_req(("src", "a"), ("dst", "b"))).unwrap();
    assert_ne!(c.etag, w.etag, "the target is a new entity");
    assert_eq!(c.content_crc64, w.content_crc64);
    let (p, got) = get(s, "dst", "b").unwrap();
    assert!(got == data, "the bytes are the source's");
    assert_eq!((p.content_type.as_str(), &p.metadata), ("image/png", &meta(&[("camera", "x100")])));
    assert_eq!((p.content_md5, p.content_crc64, p.etag.as_str()), (req.content_md5, w.content_crc64, c.etag.as_str()));
    assert_eq!(get(s, "src", "a").unwrap().0.etag, w.etag, "the source is untouched");

    // New metadata replaces the source's; within one container; onto itself.
    let mut with_meta = copy_req(("src", "a"), ("src", "a-copy"));
    with_meta.metadata = Some(meta(&[("copied", "yes")]));
    copy(s, &with_meta).unwrap();
    assert_eq!(get(s, "src", "a-copy").unwrap().0.metadata, meta(&[("copied", "yes")]));
    copy(s, &copy_req(("src", "a"), ("src", "a"))).unwrap();
    assert!(get(s, "src", "a").unwrap().1 == data);

    // A block-list source: the target has its blocks, and outlives a change of the source.
    let (x, y) = (pattern(LARGE / 2, 7), pattern(LARGE / 2, 8));
    stage(s, "src", "list", b"id-x", &x);
    stage(s, "src", "list", b"id-y", &y);
    s.put_block_list(&block_list_req("src", "list", &[b"id-x", b"id-y"]), &txn()).unwrap();
    stage(s, "dst", "list", b"id-old", b"target's own staged block");
    copy(s, &copy_req(("src", "list"), ("dst", "list"))).unwrap();
    let blocks = s.get_block_list(&bref("dst", "list"), BlockListType::All).unwrap();
    let seen: Vec<(&[u8], bool)> = blocks.iter().map(|b| (&b.id[..], b.committed)).collect();
    assert_eq!(seen, [(&b"id-x"[..], true), (b"id-y", true)], "the source's blocks; the target's staged one went");
    assert_eq!(get(s, "dst", "list").unwrap().0.committed_blocks, 2);
    put(s, "src", "list", b"replaced");
    s.delete_blob(&bref("src", "list"), &Conditions::none()).unwrap();
    assert!(get(s, "dst", "list").unwrap().1 == [x.as_slice(), y.as_slice()].concat(), "the copy stands alone");
    // Its committed blocks can be committed again there.
    stage(s, "dst", "list", b"id-z", b"tail");
    s.put_block_list(&block_list_req("dst", "list", &[b"id-y", b"id-z"]), &txn()).unwrap();
    assert!(get(s, "dst", "list").unwrap().1 == [y.as_slice(), b"tail"].concat());

    put(s, "src", "empty", b"");
    copy(s, &copy_req(("src", "empty"), ("dst", "empty"))).unwrap();
    assert_eq!(get(s, "dst", "empty").unwrap().1.len(), 0);
}

pub fn copy_blob_conditions_missing_blobs_and_replays(s: &dyn BlobStore) {
    new_container(s, "box");
    let src = put(s, "box", "src", b"source");
    let dst = put(s, "box", "dst", b"target");
    assert_err!(copy(s, &copy_req(("box", "none"), ("box", "x"))), StoreError::BlobNotFound);
    assert_err!(copy(s, &copy_req(("nobox", "src"), ("box", "x"))), StoreError::ContainerNotFound);
    assert_err!(copy(s, &copy_req(("box", "src"), ("nobox", "x"))), StoreError::ContainerNotFound);
    stage(s, "box", "staged", b"id1", b"uncommitted");
    assert_err!(copy(s, &copy_req(("box", "staged"), ("box", "x"))), StoreError::BlobNotFound);

    let mut req = copy_req(("box", "src"), ("box", "dst"));
    req.source_conditions = if_match("\"0x1\"");
    assert_err!(copy(s, &req), StoreError::PreconditionFailed);
    req.source_conditions = if_match(&src.etag);
    req.conditions = if_none_match("*");
    assert_err!(copy(s, &req), StoreError::AlreadyExists);
    req.conditions = if_match("\"0x1\"");
    assert_err!(copy(s, &req), StoreError::PreconditionFailed);
    assert_eq!(get(s, "box", "dst").unwrap().1, b"target", "nothing copied by a failed condition");
    req.conditions = if_match(&dst.etag);
    let t = txn();
    let first = s.copy_blob(&req, &t).unwrap();
    assert_eq!(get(s, "box", "dst").unwrap().1, b"source");
    // A replay answers the first result (its conditions no longer hold).
    assert_eq!(s.copy_blob(&req, &t).unwrap().etag, first.etag);
    let mut create = copy_req(("box", "src"), ("box", "new"));
    create.conditions = if_none_match("*");
    copy(s, &create).unwrap();
    assert_eq!(get(s, "box", "new").unwrap().1, b"source");
}
