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
    ListBlobs, ListContainers, ListedBlock, Metadata, PutBlob, PutBlockList,
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
    Conditions::if_match(etag(e))
}

pub fn if_none_match(e: &str) -> Conditions {
    Conditions::if_none_match(etag(e))
}

/// Deterministic, position-dependent bytes (so misplaced ranges show).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(u32::from(seed % 31)) as u8 ^ seed).collect()
}

pub fn put_req(c: &str, b: &str) -> PutBlob {
    PutBlob {
        target: bref(c, b),
        content_type: "application/octet-stream".into(),
        headers: Default::default(),
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
        blocks: ids.iter().map(|i| bid(i).into()).collect(),
        content_type: "text/plain".into(),
        headers: Default::default(),
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
        include_uncommitted: false,
    }
}

pub fn item_key(i: &BlobListItem) -> &str {
    match i {
        BlobListItem::Blob { name, .. } => name,
        BlobListItem::Prefix(p) | BlobListItem::Uncommitted(p) => p,
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
        assert!(
            super::listing::azure_cmp(&p.next_marker, &marker).is_gt(),
            "marker must advance in Azure's order (else paging never ends)"
        );
        marker = p.next_marker.clone();
        out.extend(p.items);
    }
}

pub fn keys(items: &[BlobListItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            BlobListItem::Blob { name, .. } => name.clone(),
            BlobListItem::Prefix(p) => format!("P:{p}"),
            BlobListItem::Uncommitted(n) => format!("U:{n}"),
        })
        .collect()
}

pub fn names(s: &dyn BlobStore, c: &str) -> Vec<String> {
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

mod blobs;
mod blocks;
mod containers;
mod copy;
mod fidelity;
mod headers_and_times;
mod listing;
mod properties;

pub use blobs::*;
pub use blocks::*;
pub use containers::*;
pub use copy::*;
pub use fidelity::*;
pub use headers_and_times::*;
pub use listing::*;
pub use properties::*;

macro_rules! conformance_tests {
    ($make:expr, $make_limited:expr) => {
        $crate::store::conformance::conformance_tests!($make, $make_limited, longest_name = 1024);
    };
    // A store that keeps blobs under a longer key may accept shorter names only.
    ($make:expr, $make_limited:expr, longest_name = $longest:expr) => {
        #[test]
        fn odd_names_round_trip() {
            let (store, _keep) = ($make)();
            $crate::store::conformance::odd_names_with_longest(&store, $longest);
        }
        $crate::store::conformance::conformance_tests!(@cases $make;
            container_lifecycle, delete_container_removes_contents, list_containers_paging, missing_container,
            put_get_round_trip, empty_blob, overwrite_replaces_content_and_etag, ranged_reads,
            checksums_checked_and_nothing_stored_on_mismatch, failed_sources_store_nothing,
            etags_unique_across_blobs, conditional_writes, conditional_reads_and_deletes,
            replayed_put_blob_answers_unchanged, racing_conditional_creates_one_winner,
            concurrent_readers_never_see_a_mix, flat_listing_pages, listing_is_in_byte_order,
            delimiter_rolls_up_prefixes, delimiter_listing_pages, blocks_stage_and_commit,
            blocks_recommit_mixes_committed_and_staged, blocks_invalid_lists, blocks_largest_list,
            blocks_replace_same_id, blocks_failed_stage_stores_nothing, block_list_conditions_and_replay,
            whole_writes_and_deletes_discard_staged, deleting_a_name_with_only_staged_blocks_removes_them,
            block_list_crcs_must_match_the_staged_blocks, a_losing_writers_commit_fails_and_keeps_the_winner,
        );
        $crate::store::conformance::conformance_tests!(@cases $make;
            etags_match_with_or_without_quotes, block_ids_of_one_blob_have_one_length,
            absent_content_type_reads_as_octet_stream, listing_is_in_utf16_order,
            set_metadata_and_content_type_keep_the_bytes, set_properties_conditions_missing_blobs_and_replays,
            set_properties_keeps_committed_and_staged_blocks, copy_blob_copies_content_and_properties,
            copy_blob_conditions_missing_blobs_and_replays, http_headers_and_creation_time_are_kept,
            time_conditions_on_reads_and_writes, listing_includes_uncommitted_blobs,
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
