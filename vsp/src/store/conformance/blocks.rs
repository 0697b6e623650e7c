//! Block blobs: staging, committing, recommitting, limits, replays.

use super::*;

fn block_list(s: &dyn BlobStore, b: &str, t: BlockListType) -> Vec<(Vec<u8>, u64, bool)> {
    s.get_block_list(&bref("box", b), t)
        .unwrap()
        .into_iter()
        .map(|BlockInfo { id, size, committed }| (id, size, committed))
        .collect()
}

pub fn blocks_stage_and_commit(s: &dyn BlobStore) {
    new_container(s, "box");
    // The longest ids (one blob's ids all have one length, as in Azure).
    let (id_a, id_c, id_f) = ([b'A'; 64], [b'C'; 64], [0xff; 64]);
    let (a, b, c) = (pattern(300_000, 1), pattern(5, 2), pattern(70_000, 3));
    assert_eq!(stage(s, "box", "bb", &id_a, &a), crc64(&a));
    stage(s, "box", "bb", &id_c, &c);
    stage(s, "box", "bb", &id_f, &b);
    // Not a blob yet: nothing to read or list, but its uncommitted blocks show.
    assert_err!(get(s, "box", "bb"), StoreError::BlobNotFound);
    assert!(names(s, "box").is_empty());
    assert_eq!(
        block_list(s, "bb", BlockListType::Uncommitted),
        [(id_a.to_vec(), 300_000, false), (id_c.to_vec(), 70_000, false), (id_f.to_vec(), 5, false)]
    );
    assert!(block_list(s, "bb", BlockListType::Committed).is_empty());
    let mut req = block_list_req("box", "bb", &[&id_a, &id_f, &id_c]);
    req.metadata = meta(&[("k", "v")]);
    let w = s.put_block_list(&req, &txn()).unwrap();
    let whole = [&a[..], &b, &c].concat();
    assert_eq!(w.content_crc64, crc64(&whole));
    let (p, got) = get(s, "box", "bb").unwrap();
    assert!(got == whole);
    assert_eq!((p.committed_blocks, p.content_type.as_str(), p.metadata.clone()), (3, "text/plain", req.metadata));
    assert_eq!((p.etag, p.content_crc64, p.content_md5), (w.etag, crc64(&whole), None));
    assert_eq!(
        block_list(s, "bb", BlockListType::All),
        [(id_a.to_vec(), 300_000, true), (id_f.to_vec(), 5, true), (id_c.to_vec(), 70_000, true)]
    );
    assert!(block_list(s, "bb", BlockListType::Uncommitted).is_empty());
}

pub fn blocks_recommit_mixes_committed_and_staged(s: &dyn BlobStore) {
    new_container(s, "box");
    stage(s, "box", "b", b"1", b"one-");
    stage(s, "box", "b", b"2", b"two-");
    s.put_block_list(&block_list_req("box", "b", &[b"1", b"2"]), &txn()).unwrap();
    stage(s, "box", "b", b"3", b"three-");
    // A staged id shadows the committed block of the same id.
    stage(s, "box", "b", b"2", b"TWO-");
    assert_eq!(
        block_list(s, "b", BlockListType::All),
        [(b"1".to_vec(), 4, true), (b"2".to_vec(), 4, true), (b"2".to_vec(), 4, false), (b"3".to_vec(), 6, false)]
    );
    // Repeats allowed, committed blocks reusable in any order.
    let w = s.put_block_list(&block_list_req("box", "b", &[b"3", b"1", b"2", b"1", b"3"]), &txn()).unwrap();
    let whole = b"three-one-TWO-one-three-";
    assert_eq!(get(s, "box", "b").unwrap().1, whole);
    assert_eq!(w.content_crc64, crc64(whole));
    assert_eq!(
        block_list(s, "b", BlockListType::Committed).iter().map(|(i, n, _)| (i.clone(), *n)).collect::<Vec<_>>(),
        [(b"3".to_vec(), 6), (b"1".to_vec(), 4), (b"2".to_vec(), 4), (b"1".to_vec(), 4), (b"3".to_vec(), 6)]
    );
    // Only committed blocks now: a subset can be recommitted, and an empty list makes an empty blob.
    s.put_block_list(&block_list_req("box", "b", &[b"2"]), &txn()).unwrap();
    assert_eq!(get(s, "box", "b").unwrap().1, b"TWO-");
    let p = s.blob_properties(&bref("box", "b"), &Conditions::none()).unwrap();
    assert_eq!(p.committed_blocks, 1);
    s.put_block_list(&block_list_req("box", "b", &[]), &txn()).unwrap();
    assert_eq!(
        get(s, "box", "b").unwrap(),
        (s.blob_properties(&bref("box", "b"), &Conditions::none()).unwrap(), vec![])
    );
    assert!(block_list(s, "b", BlockListType::All).is_empty());
}

pub fn blocks_invalid_lists(s: &dyn BlobStore) {
    new_container(s, "box");
    stage(s, "box", "b", b"1", b"one");
    stage(s, "box", "other", b"9", b"nine");
    for ids in [&[&b"2"[..]][..], &[b"1", b"9"], &[b"1", b"11"]] {
        assert_err!(s.put_block_list(&block_list_req("box", "b", ids), &txn()), StoreError::InvalidBlockList(_));
    }
    // Nothing changed: the staged block is still there and commits.
    assert_err!(get(s, "box", "b"), StoreError::BlobNotFound);
    s.put_block_list(&block_list_req("box", "b", &[b"1", b"1"]), &txn()).unwrap();
    assert_eq!(get(s, "box", "b").unwrap().1, b"oneone");
    // Blocks of a whole-blob write are not committed blocks.
    put(s, "box", "whole", b"data");
    assert_err!(s.put_block_list(&block_list_req("box", "whole", &[b"1"]), &txn()), StoreError::InvalidBlockList(_));
    assert!(block_list(s, "whole", BlockListType::All).is_empty());
    // Over the 50,000-entry limit (repeats count).
    let too_many = vec![&b"1"[..]; 50_001];
    assert_err!(s.put_block_list(&block_list_req("box", "b", &too_many), &txn()), StoreError::TooLarge(_));
}

pub fn blocks_largest_list(s: &dyn BlobStore) {
    new_container(s, "box");
    stage(s, "box", "b", b"x", b"x");
    let ids = vec![&b"x"[..]; 50_000];
    s.put_block_list(&block_list_req("box", "b", &ids), &txn()).unwrap();
    let (p, got) = get(s, "box", "b").unwrap();
    assert_eq!((p.committed_blocks, got.len()), (50_000, 50_000));
    assert_eq!(s.get_block_list(&bref("box", "b"), BlockListType::Committed).unwrap().len(), 50_000);
}

pub fn blocks_replace_same_id(s: &dyn BlobStore) {
    new_container(s, "box");
    stage(s, "box", "b", b"x", b"first");
    stage(s, "box", "b", b"x", b"second!");
    assert_eq!(block_list(s, "b", BlockListType::Uncommitted), [(b"x".to_vec(), 7, false)]);
    s.put_block_list(&block_list_req("box", "b", &[b"x"]), &txn()).unwrap();
    assert_eq!(get(s, "box", "b").unwrap().1, b"second!");
}

pub fn blocks_failed_stage_stores_nothing(s: &dyn BlobStore) {
    new_container(s, "box");
    let r = bref("box", "b");
    let data = pattern(400_000, 5);
    assert_eq!(s.put_block(&r, &bid(b"ok"), &mut VecSource::new(&data), Some(crc64(&data))).unwrap(), crc64(&data));
    let wrong = Some(crc64(&data) ^ 1);
    // Ids of the blob's one length (another length is refused before any byte is read).
    assert_err!(s.put_block(&r, &bid(b"no"), &mut VecSource::new(&data), wrong), StoreError::ChecksumMismatch);
    assert_err!(s.put_block(&r, &bid(b"ok"), &mut VecSource::new(b"zz"), Some(1)), StoreError::ChecksumMismatch);
    assert_err!(s.put_block(&r, &bid(b"cn"), &mut VecSource::cancel_at(&data, 300_000), None), StoreError::Cancelled);
    assert_eq!(block_list(s, "b", BlockListType::All), [(b"ok".to_vec(), 400_000, false)]);
}

pub fn block_list_conditions_and_replay(s: &dyn BlobStore) {
    new_container(s, "box");
    let old = put(s, "box", "b", b"old");
    stage(s, "box", "b", b"1", b"new");
    let mut req = block_list_req("box", "b", &[b"1"]);
    req.conditions = if_match("\"0x1\"");
    assert_err!(s.put_block_list(&req, &txn()), StoreError::PreconditionFailed);
    req.conditions = if_none_match("*");
    assert_err!(s.put_block_list(&req, &txn()), StoreError::AlreadyExists);
    assert_eq!(block_list(s, "b", BlockListType::Uncommitted).len(), 1, "failed commit keeps staged blocks");
    req.conditions = if_match(&old.etag);
    let t = txn();
    let w = s.put_block_list(&req, &t).unwrap();
    // The staged block is gone, so only the replay rule can make this succeed.
    assert_eq!(s.put_block_list(&req, &t).unwrap(), w);
    assert_eq!(get(s, "box", "b").unwrap().1, b"new");
    assert_err!(s.put_block_list(&req, &txn()), StoreError::PreconditionFailed);
}

pub fn whole_writes_and_deletes_discard_staged(s: &dyn BlobStore) {
    new_container(s, "box");
    stage(s, "box", "b", b"1", b"x");
    put(s, "box", "b", b"whole");
    assert!(block_list(s, "b", BlockListType::All).is_empty());
    stage(s, "box", "b", b"2", b"y");
    s.delete_blob(&bref("box", "b"), &Conditions::none()).unwrap();
    assert_err!(s.get_block_list(&bref("box", "b"), BlockListType::All), StoreError::BlobNotFound);
    assert_err!(s.put_block_list(&block_list_req("box", "b", &[b"2"]), &txn()), StoreError::InvalidBlockList(_));
    // Staged blocks belong to one blob only.
    stage(s, "box", "c", b"1", b"x");
    put(s, "box", "d", b"y");
    assert_eq!(block_list(s, "c", BlockListType::All).len(), 1);
}

pub fn deleting_a_name_with_only_staged_blocks_removes_them(s: &dyn BlobStore) {
    new_container(s, "box");
    let r = bref("box", "b");
    stage(s, "box", "b", b"1", b"x");
    stage(s, "box", "b", b"2", b"y");
    stage(s, "box", "other", b"1", b"z");
    // If-Match needs a committed blob: for it the name is missing.
    assert_err!(s.delete_blob(&r, &if_match("*")), StoreError::BlobNotFound);
    assert_eq!(block_list(s, "b", BlockListType::Uncommitted).len(), 2);
    // Without conditions the uncommitted blocks go, as in Azure.
    s.delete_blob(&r, &Conditions::none()).unwrap();
    assert_err!(s.get_block_list(&r, BlockListType::All), StoreError::BlobNotFound);
    assert_err!(s.put_block_list(&block_list_req("box", "b", &[b"1"]), &txn()), StoreError::InvalidBlockList(_));
    // Then the name is missing, as a replayed delete finds it.
    assert_err!(s.delete_blob(&r, &Conditions::none()), StoreError::BlobNotFound);
    // If-None-Match holds for an absent blob.
    stage(s, "box", "b", b"3", b"w");
    s.delete_blob(&r, &if_none_match("*")).unwrap();
    assert_err!(s.get_block_list(&r, BlockListType::All), StoreError::BlobNotFound);
    // Other names keep theirs.
    assert_eq!(block_list(s, "other", BlockListType::Uncommitted).len(), 1);
    assert!(names(s, "box").is_empty());
}

/// Run on a store built with a 100-byte blob limit.
pub fn max_blob_size(s: &dyn BlobStore) {
    new_container(s, "box");
    let r = bref("box", "b");
    assert_err!(s.put_blob(&put_req("box", "b"), &mut VecSource::new(&[0; 101]), &txn()), StoreError::TooLarge(_));
    assert_err!(get(s, "box", "b"), StoreError::BlobNotFound);
    put(s, "box", "b", &[1; 100]);
    assert_err!(s.put_block(&r, &bid(b"1"), &mut VecSource::new(&[0; 101]), None), StoreError::TooLarge(_));
    stage(s, "box", "b", b"1", &[2; 60]);
    assert_err!(s.put_block_list(&block_list_req("box", "b", &[b"1", b"1"]), &txn()), StoreError::TooLarge(_));
    assert_eq!(get(s, "box", "b").unwrap().1, [1; 100]);
}

/// A list whose entries carry CRC-64s.
fn proven_list_req(b: &str, blocks: &[(&[u8], u64)]) -> PutBlockList {
    let mut req = block_list_req("box", b, &[]);
    req.blocks = blocks.iter().map(|(id, crc)| ListedBlock::proven(bid(id), *crc)).collect();
    req
}

/// The blob and its properties, to show a refused commit changed nothing.
fn snapshot(s: &dyn BlobStore, b: &str) -> (BlobProperties, Vec<u8>) {
    get(s, "box", b).unwrap()
}

pub fn block_list_crcs_must_match_the_staged_blocks(s: &dyn BlobStore) {
    new_container(s, "box");
    put(s, "box", "b", b"old");
    let before = snapshot(s, "b");
    // Two writers with the same ids: the second re-stages "1" after the first staged both.
    let (a1, a2, b1) = (pattern(300_000, 1), pattern(70_000, 2), pattern(300_000, 3));
    stage(s, "box", "b", b"1", &a1);
    stage(s, "box", "b", b"2", &a2);
    stage(s, "box", "b", b"1", &b1);
    // The first writer's commit would mix b1 with a2: refused, nothing changes.
    let first = proven_list_req("b", &[(b"1", crc64(&a1)), (b"2", crc64(&a2))]);
    assert_err!(s.put_block_list(&first, &txn()), StoreError::InvalidBlockList(_));
    assert_eq!(snapshot(s, "b"), before);
    // A wrong CRC on the last entry alone is enough.
    let last_wrong = proven_list_req("b", &[(b"1", crc64(&b1)), (b"2", crc64(&a2) ^ 1)]);
    assert_err!(s.put_block_list(&last_wrong, &txn()), StoreError::InvalidBlockList(_));
    assert_eq!(snapshot(s, "b"), before);
    assert_eq!(block_list(s, "b", BlockListType::Uncommitted).len(), 2, "a refused list discards nothing");
    // The CRCs of the blocks held commit, and so does a list mixing proven and unproven entries.
    let mut ok = proven_list_req("b", &[(b"1", crc64(&b1)), (b"2", crc64(&a2))]);
    ok.blocks.push(bid(b"2").into());
    let w = s.put_block_list(&ok, &txn()).unwrap();
    assert_eq!(snapshot(s, "b").1, [&b1[..], &a2, &a2].concat());
    assert_eq!(w.content_crc64, crc64(&[&b1[..], &a2, &a2].concat()));
    // Committed blocks are checked too.
    let committed = snapshot(s, "b");
    assert_err!(
        s.put_block_list(&proven_list_req("b", &[(b"2", crc64(&b1))]), &txn()),
        StoreError::InvalidBlockList(_)
    );
    assert_eq!(snapshot(s, "b"), committed);
    s.put_block_list(&proven_list_req("b", &[(b"2", crc64(&a2)), (b"1", crc64(&b1))]), &txn()).unwrap();
    assert_eq!(snapshot(s, "b").1, [&a2[..], &b1].concat());
}

pub fn a_losing_writers_commit_fails_and_keeps_the_winner(s: &dyn BlobStore) {
    new_container(s, "box");
    let (a, b) = (pattern(200_000, 4), pattern(200_000, 5));
    // Per-upload ids: the loser is still staging when the winner commits.
    stage(s, "box", "b", b"a-0", &a[..100_000]);
    stage(s, "box", "b", b"b-0", &b[..100_000]);
    stage(s, "box", "b", b"b-1", &b[100_000..]);
    let winner = proven_list_req("b", &[(b"b-0", crc64(&b[..100_000])), (b"b-1", crc64(&b[100_000..]))]);
    s.put_block_list(&winner, &txn()).unwrap();
    stage(s, "box", "b", b"a-1", &a[100_000..]);
    // The winner's commit discarded the loser's first block: its commit names a block that is gone.
    let loser = proven_list_req("b", &[(b"a-0", crc64(&a[..100_000])), (b"a-1", crc64(&a[100_000..]))]);
    assert_err!(s.put_block_list(&loser, &txn()), StoreError::InvalidBlockList(_));
    assert!(snapshot(s, "b").1 == b);
}
