//! The `BlobStore` contract as tests every store runs: each `pub fn` takes a
//! fresh, empty store. `conformance_tests!` turns them into `#[test]`s for one
//! implementation (see the bottom of `memory.rs` and `fs/tests.rs`).

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use vmblob_protocol::names::{BlobName, BlockId, ContainerName};
use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, BlobRef, BlobWritten, BlockInfo, BlockListType, ByteRange, Conditions, ETag, GetBlob,
    ListBlobs, ListContainers, Metadata, PutBlob, PutBlockList,
};

use super::{BlobStore, DataSink, DataSource, StoreError, TxnId, crc64};

/// A PUT's bytes from a `Vec`, handed out in chunks of at most `chunk` bytes;
/// optionally cancelled once `cancel_at` bytes were read, or claiming more
/// bytes than it has.
pub struct VecSource {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    claimed: u64,
    cancel_at: Option<usize>,
}

impl VecSource {
    pub fn new(data: &[u8]) -> Self {
        Self { data: data.to_vec(), pos: 0, chunk: usize::MAX, claimed: data.len() as u64, cancel_at: None }
    }
    /// Gives at most `chunk` bytes per read (exercises partial reads).
    pub fn chunked(data: &[u8], chunk: usize) -> Self {
        Self { chunk, ..Self::new(data) }
    }
    /// Fails with `Cancelled` once `at` bytes were read.
    pub fn cancel_at(data: &[u8], at: usize) -> Self {
        Self { cancel_at: Some(at), chunk: 4096, ..Self::new(data) }
    }
    /// Says it holds `claimed` bytes but ends after `data`.
    pub fn short(data: &[u8], claimed: u64) -> Self {
        Self { claimed, ..Self::new(data) }
    }
}

impl DataSource for VecSource {
    fn len(&self) -> u64 {
        self.claimed
    }
    fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        if self.cancel_at.is_some_and(|at| self.pos >= at) {
            return Err(StoreError::Cancelled);
        }
        let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A GET's buffer of `capacity` bytes.
pub struct VecSink {
    pub data: Vec<u8>,
    capacity: u64,
}

impl VecSink {
    pub fn new(capacity: u64) -> Self {
        Self { data: Vec::new(), capacity }
    }
}

impl DataSink for VecSink {
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn fill_from_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> Result<(), StoreError> {
        assert!(self.data.len() as u64 + len <= self.capacity, "sink overfilled");
        let start = self.data.len();
        self.data.resize(start + len as usize, 0);
        file.read_exact_at(&mut self.data[start..], offset)?;
        Ok(())
    }
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        assert!((self.data.len() + bytes.len()) as u64 <= self.capacity, "sink overfilled");
        self.data.extend_from_slice(bytes);
        Ok(())
    }
}

static TXN_SEQ: AtomicU64 = AtomicU64::new(1);

/// A transaction id never used before in this process.
pub fn txn() -> TxnId {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&TXN_SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    t[8..].copy_from_slice(b"conform!");
    t
}

pub fn cname(s: &str) -> ContainerName {
    ContainerName::new(s).unwrap()
}

pub fn bref(c: &str, b: &str) -> BlobRef {
    BlobRef { container: cname(c), blob: BlobName::new(b).unwrap() }
}

pub fn bid(id: &[u8]) -> BlockId {
    BlockId::new(id).unwrap()
}

pub fn meta(pairs: &[(&str, &str)]) -> Metadata {
    Metadata::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
}

pub fn etag(s: &str) -> ETag {
    ETag::new(s).unwrap()
}

pub fn if_match(e: &str) -> Conditions {
    Conditions { if_match: Some(etag(e)), if_none_match: None }
}

pub fn if_none_match(e: &str) -> Conditions {
    Conditions { if_match: None, if_none_match: Some(etag(e)) }
}

/// Deterministic, position-dependent bytes (so misplaced ranges show).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(u32::from(seed % 31)) as u8 ^ seed).collect()
}

pub fn put_req(c: &str, b: &str) -> PutBlob {
    PutBlob {
        target: bref(c, b),
        content_type: "application/octet-stream".into(),
        metadata: Metadata::default(),
        conditions: Conditions::none(),
        content_md5: None,
        content_crc64: None,
    }
}

pub fn new_container(s: &dyn BlobStore, c: &str) {
    s.create_container(&cname(c), &Metadata::default(), &txn()).unwrap();
}

pub fn put(s: &dyn BlobStore, c: &str, b: &str, data: &[u8]) -> BlobWritten {
    s.put_blob(&put_req(c, b), &mut VecSource::new(data), &txn()).unwrap()
}

pub fn get_req(c: &str, b: &str) -> GetBlob {
    GetBlob { target: bref(c, b), range: None, conditions: Conditions::none() }
}

pub fn get(s: &dyn BlobStore, c: &str, b: &str) -> Result<(BlobProperties, Vec<u8>), StoreError> {
    let mut sink = VecSink::new(u64::MAX);
    let (props, offset, len) = s.get_blob(&get_req(c, b), &mut sink)?;
    assert_eq!((offset, len), (0, sink.data.len() as u64));
    Ok((props, sink.data))
}

pub fn stage(s: &dyn BlobStore, c: &str, b: &str, id: &[u8], data: &[u8]) -> u64 {
    s.put_block(&bref(c, b), &bid(id), &mut VecSource::new(data), None).unwrap()
}

pub fn block_list_req(c: &str, b: &str, ids: &[&[u8]]) -> PutBlockList {
    PutBlockList {
        target: bref(c, b),
        blocks: ids.iter().map(|i| bid(i)).collect(),
        content_type: "text/plain".into(),
        metadata: Metadata::default(),
        conditions: Conditions::none(),
    }
}

pub fn list_req(c: &str, prefix: &str, delimiter: &str, marker: &str, max: u32) -> ListBlobs {
    ListBlobs {
        container: cname(c),
        prefix: prefix.into(),
        delimiter: delimiter.into(),
        marker: marker.into(),
        max_results: max,
        include_metadata: false,
    }
}

fn item_key(i: &BlobListItem) -> &str {
    match i {
        BlobListItem::Blob { name, .. } => name,
        BlobListItem::Prefix(p) => p,
    }
}

/// Every item of a listing, page by page, checking each page's size and marker.
pub fn list_all(s: &dyn BlobStore, c: &str, prefix: &str, delimiter: &str, page: u32) -> Vec<BlobListItem> {
    let mut out = Vec::new();
    let mut marker = String::new();
    loop {
        let p = s.list_blobs(&list_req(c, prefix, delimiter, &marker, page)).unwrap();
        assert!(p.items.len() <= page as usize);
        if p.next_marker.is_empty() {
            out.extend(p.items);
            return out;
        }
        assert_eq!(p.items.len(), page as usize, "a page with a next marker is full");
        assert_eq!(p.next_marker, item_key(p.items.last().unwrap()));
        marker = p.next_marker.clone();
        out.extend(p.items);
    }
}

fn keys(items: &[BlobListItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            BlobListItem::Blob { name, .. } => name.clone(),
            BlobListItem::Prefix(p) => format!("P:{p}"),
        })
        .collect()
}

fn names(s: &dyn BlobStore, c: &str) -> Vec<String> {
    keys(&list_all(s, c, "", "", 5000))
}

macro_rules! assert_err {
    ($e:expr, $pat:pat) => {
        match $e {
            Err($pat) => {}
            other => panic!("expected {}, got {:?}", stringify!($pat), other.map(|_| ())),
        }
    };
}

// ---- containers -------------------------------------------------------------

pub fn container_lifecycle(s: &dyn BlobStore) {
    let t = txn();
    let md = meta(&[("Owner", "me")]);
    let p = s.create_container(&cname("box"), &md, &t).unwrap();
    assert!(p.etag.starts_with("\"0x"), "{}", p.etag);
    assert_eq!(p.metadata, md);
    assert_eq!(s.container_properties(&cname("box")).unwrap(), p);
    // A replay of the create answers with the container as it is; another txn conflicts.
    assert_eq!(s.create_container(&cname("box"), &Metadata::default(), &t).unwrap(), p);
    assert_err!(s.create_container(&cname("box"), &md, &txn()), StoreError::AlreadyExists);
    s.delete_container(&cname("box")).unwrap();
    assert_err!(s.container_properties(&cname("box")), StoreError::ContainerNotFound);
    assert_err!(s.delete_container(&cname("box")), StoreError::ContainerNotFound);
    let p2 = s.create_container(&cname("box"), &Metadata::default(), &txn()).unwrap();
    assert_ne!(p2.etag, p.etag);
}

pub fn delete_container_removes_contents(s: &dyn BlobStore) {
    new_container(s, "box");
    put(s, "box", "a", b"1");
    put(s, "box", "dir/b", b"2");
    stage(s, "box", "c", b"blk", b"3");
    s.delete_container(&cname("box")).unwrap();
    assert_err!(get(s, "box", "a"), StoreError::ContainerNotFound);
    new_container(s, "box");
    assert!(names(s, "box").is_empty());
    assert_err!(get(s, "box", "a"), StoreError::BlobNotFound);
    assert_err!(s.get_block_list(&bref("box", "c"), BlockListType::All), StoreError::BlobNotFound);
}

pub fn list_containers_paging(s: &dyn BlobStore) {
    for i in 0..12 {
        let md = meta(&[("n", &i.to_string())]);
        s.create_container(&cname(&format!("c{i:02}")), &md, &txn()).unwrap();
    }
    new_container(s, "other");
    let req = |prefix: &str, marker: &str, max, include_metadata| ListContainers {
        prefix: prefix.into(),
        marker: marker.into(),
        max_results: max,
        include_metadata,
    };
    let p1 = s.list_containers(&req("c", "", 5, false)).unwrap();
    let n1: Vec<_> = p1.items.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(n1, ["c00", "c01", "c02", "c03", "c04"]);
    assert_eq!(p1.next_marker, "c04");
    assert!(p1.items.iter().all(|e| e.properties.metadata.0.is_empty()));
    let p2 = s.list_containers(&req("c", "c04", 5, true)).unwrap();
    assert_eq!(p2.items[0].name, "c05");
    assert_eq!(p2.items[0].properties.metadata, meta(&[("n", "5")]));
    let p3 = s.list_containers(&req("c", &p2.next_marker, 5, false)).unwrap();
    let n3: Vec<_> = p3.items.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(n3, ["c10", "c11"]);
    assert_eq!(p3.next_marker, "");
    // Exactly a page's worth left: no marker.
    assert_eq!(s.list_containers(&req("c1", "", 2, false)).unwrap().next_marker, "");
    let all = s.list_containers(&req("", "", 0, false)).unwrap();
    assert_eq!(all.items.len(), 13);
    assert_eq!(all.items.last().unwrap().name, "other");
    assert!(s.list_containers(&req("zz", "", 0, false)).unwrap().items.is_empty());
}

pub fn missing_container(s: &dyn BlobStore) {
    let r = bref("nope", "a");
    let n = Conditions::none();
    assert_err!(s.put_blob(&put_req("nope", "a"), &mut VecSource::new(b"x"), &txn()), StoreError::ContainerNotFound);
    assert_err!(get(s, "nope", "a"), StoreError::ContainerNotFound);
    assert_err!(s.blob_properties(&r, &n), StoreError::ContainerNotFound);
    assert_err!(s.delete_blob(&r, &n), StoreError::ContainerNotFound);
    assert_err!(s.list_blobs(&list_req("nope", "", "", "", 0)), StoreError::ContainerNotFound);
    assert_err!(s.put_block(&r, &bid(b"1"), &mut VecSource::new(b"x"), None), StoreError::ContainerNotFound);
    assert_err!(s.put_block_list(&block_list_req("nope", "a", &[]), &txn()), StoreError::ContainerNotFound);
    assert_err!(s.get_block_list(&r, BlockListType::All), StoreError::ContainerNotFound);
}

// ---- whole blobs ------------------------------------------------------------

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
            etag: w.etag.clone(),
            last_modified_ms: w.last_modified_ms,
            content_length: data.len() as u64,
            content_type: "image/png".into(),
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
    new_container(s, "box");
    let deep = vec!["d"; 254].join("/");
    let long = "n".repeat(1024);
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
    assert_err!(put_if(if_none_match("*"), b"two"), StoreError::PreconditionFailed);
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
    assert_err!(get_if(if_none_match(&w.etag)), StoreError::PreconditionFailed);
    assert_err!(get_if(if_none_match("*")), StoreError::PreconditionFailed);
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
                    Err(StoreError::PreconditionFailed) => {}
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

// ---- listings ---------------------------------------------------------------

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

// ---- blocks -----------------------------------------------------------------

fn block_list(s: &dyn BlobStore, b: &str, t: BlockListType) -> Vec<(Vec<u8>, u64, bool)> {
    s.get_block_list(&bref("box", b), t)
        .unwrap()
        .into_iter()
        .map(|BlockInfo { id, size, committed }| (id, size, committed))
        .collect()
}

pub fn blocks_stage_and_commit(s: &dyn BlobStore) {
    new_container(s, "box");
    let (a, b, c) = (pattern(300_000, 1), pattern(5, 2), pattern(70_000, 3));
    assert_eq!(stage(s, "box", "bb", b"A", &a), crc64(&a));
    stage(s, "box", "bb", b"C", &c);
    stage(s, "box", "bb", &[0xff; 64], &b);
    // Not a blob yet: nothing to read or list, but its uncommitted blocks show.
    assert_err!(get(s, "box", "bb"), StoreError::BlobNotFound);
    assert!(names(s, "box").is_empty());
    assert_eq!(
        block_list(s, "bb", BlockListType::Uncommitted),
        [(b"A".to_vec(), 300_000, false), (b"C".to_vec(), 70_000, false), (vec![0xff; 64], 5, false)]
    );
    assert!(block_list(s, "bb", BlockListType::Committed).is_empty());
    let mut req = block_list_req("box", "bb", &[b"A", &[0xff; 64], b"C"]);
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
        [(b"A".to_vec(), 300_000, true), (vec![0xff; 64], 5, true), (b"C".to_vec(), 70_000, true)]
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
    assert_err!(s.put_block(&r, &bid(b"bad"), &mut VecSource::new(&data), wrong), StoreError::ChecksumMismatch);
    assert_err!(s.put_block(&r, &bid(b"ok"), &mut VecSource::new(b"zz"), Some(1)), StoreError::ChecksumMismatch);
    assert_err!(s.put_block(&r, &bid(b"can"), &mut VecSource::cancel_at(&data, 300_000), None), StoreError::Cancelled);
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
    assert_err!(s.put_block_list(&req, &txn()), StoreError::PreconditionFailed);
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

macro_rules! conformance_tests {
    ($make:expr, $make_limited:expr) => {
        $crate::store::conformance::conformance_tests!(@cases $make;
            container_lifecycle, delete_container_removes_contents, list_containers_paging, missing_container,
            put_get_round_trip, empty_blob, overwrite_replaces_content_and_etag, ranged_reads,
            checksums_checked_and_nothing_stored_on_mismatch, failed_sources_store_nothing,
            etags_unique_across_blobs, odd_names_round_trip, conditional_writes, conditional_reads_and_deletes,
            replayed_put_blob_answers_unchanged, racing_conditional_creates_one_winner,
            concurrent_readers_never_see_a_mix, flat_listing_pages, listing_is_in_byte_order,
            delimiter_rolls_up_prefixes, delimiter_listing_pages, blocks_stage_and_commit,
            blocks_recommit_mixes_committed_and_staged, blocks_invalid_lists, blocks_largest_list,
            blocks_replace_same_id, blocks_failed_stage_stores_nothing, block_list_conditions_and_replay,
            whole_writes_and_deletes_discard_staged,
        );
        #[test]
        fn max_blob_size() {
            let (store, _keep) = ($make_limited)(100);
            $crate::store::conformance::max_blob_size(&store);
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (store, _keep) = ($make)();
                $crate::store::conformance::$case(&store);
            }
        )*
    };
}
pub(crate) use conformance_tests;
