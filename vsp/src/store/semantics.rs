//! Semantics both stores share: ETags and clocks, streaming a PUT's bytes
//! through the checksums, replay and condition checks, block-list resolution
//! and per-name write locks (listings are in `listing`).
//!
//! It lives under `fs/` only because `store/mod.rs` is frozen; the memory
//! store imports it from here so that both stores behave identically.

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use md5::Digest as _;
use vmblob_protocol::ops::{
    BlobProperties, BlobUpdate, BlobWritten, Conditions, ContentHeaders, ETag, Entity, ListedBlock, MAX_BLOCKS,
    Metadata, PutBlob, PutBlockList, ReadVerdict,
};

use crate::store::{DataSource, StoreError, TxnId};

/// Largest blob unless the constructor says otherwise.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 1 << 40;
/// Most uncommitted blocks one blob may have (Azure's limit).
pub const MAX_STAGED_BLOCKS: usize = 100_000;
/// Most entries in a committed block list (Azure's limit, as the decoder enforces).
pub const MAX_COMMITTED_BLOCKS: usize = MAX_BLOCKS;
/// Size of the buffer a PUT's bytes pass through on their way to the store.
pub const CHUNK_SIZE: usize = 256 * 1024;

// Poisoning only says another thread panicked while holding the lock; every
// critical section here leaves its data consistent, so carry on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// 100 ns ticks between 1601-01-01 (Windows FILETIME, what Azure ETags count) and the Unix epoch.
const FILETIME_UNIX_OFFSET: u64 = 116_444_736_000_000_000;
/// The last tick handed out, so that ETags stay unique even if the clock stalls or steps back.
static LAST_TICK: AtomicU64 = AtomicU64::new(0);

/// A fresh ETag: the current FILETIME tick in quoted hex, e.g. `"0x1DC5E2F3A4B5C6D"`,
/// strictly greater than every ETag produced (or observed) before in this process.
pub(crate) fn next_etag() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos() / 100).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .saturating_add(FILETIME_UNIX_OFFSET);
    let next = |last: u64| now.max(last.saturating_add(1));
    let prev = LAST_TICK.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(next(last))).unwrap_or(0);
    format!("\"0x{:X}\"", next(prev))
}

/// Keeps later ETags above one read back from disk (a restart resets the counter).
pub(crate) fn observe_etag(etag: &str) {
    let hex = etag.trim_matches('"').trim_start_matches("0x");
    if let Ok(tick) = u64::from_str_radix(hex, 16) {
        LAST_TICK.fetch_max(tick, Ordering::SeqCst);
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

/// Checksums of a PUT's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digests {
    pub crc64: u64,
    pub md5: Option<[u8; 16]>,
}

/// Running CRC-64/NVME, plus MD5 when the request carried one to check.
pub(crate) struct Checksums {
    crc: vmblob_protocol::checksum::Crc64,
    md5: Option<md5::Md5>,
}

impl Checksums {
    pub fn new(with_md5: bool) -> Self {
        Self { crc: vmblob_protocol::checksum::Crc64::new(), md5: with_md5.then(md5::Md5::new) }
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.crc.write(bytes);
        if let Some(m) = &mut self.md5 {
            m.update(bytes);
        }
    }
    pub fn finish(self) -> Digests {
        Digests { crc64: self.crc.sum64(), md5: self.md5.map(|m| m.finalize().into()) }
    }
}

/// Streams all of `src` through `buf`: each chunk is copied once out of guest
/// memory, checksummed, then handed to `out`. Checksumming the copy (not the
/// guest's buffer) makes the digests describe exactly the bytes stored, even if
/// the guest scribbles on its buffer meanwhile.
pub(crate) fn ingest(
    src: &mut dyn DataSource,
    buf: &mut [u8],
    with_md5: bool,
    mut out: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<Digests, StoreError> {
    if buf.is_empty() {
        return Err(StoreError::Io(std::io::Error::other("empty transfer buffer")));
    }
    let total = src.len();
    let mut done = 0u64;
    let mut sums = Checksums::new(with_md5);
    while done < total {
        let want = usize::try_from(total - done).unwrap_or(usize::MAX).min(buf.len());
        let n = src.read_chunk(&mut buf[..want])?;
        if n == 0 || n > want {
            return Err(StoreError::GuestMemory(format!(
                "data source gave {n} bytes for a {want}-byte chunk at {done} of {total}"
            )));
        }
        let chunk = &buf[..n];
        sums.update(chunk);
        out(chunk)?;
        done += n as u64;
    }
    Ok(sums.finish())
}

/// Compares computed digests with the ones the request asked for.
pub(crate) fn verify(got: &Digests, crc64: Option<u64>, md5: Option<[u8; 16]>) -> Result<(), StoreError> {
    let crc_ok = crc64.is_none_or(|want| want == got.crc64);
    let md5_ok = md5.is_none_or(|want| got.md5 == Some(want));
    if crc_ok && md5_ok { Ok(()) } else { Err(StoreError::ChecksumMismatch) }
}

pub(crate) fn check_size(len: u64, max: u64) -> Result<(), StoreError> {
    if len > max { Err(StoreError::TooLarge(format!("{len} bytes exceed the {max}-byte limit"))) } else { Ok(()) }
}

/// Reusable transfer buffers, so a PUT does not allocate 256 KiB each time.
pub(crate) struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept for reuse; more than this are simply freed.
const POOL_KEEP: usize = 16;

impl BufPool {
    pub fn new() -> Self {
        Self { free: Mutex::new(Vec::new()) }
    }
    pub fn take(&self) -> PooledBuf<'_> {
        let buf = lock(&self.free).pop().unwrap_or_else(|| vec![0; CHUNK_SIZE]);
        PooledBuf { pool: self, buf }
    }
}

pub(crate) struct PooledBuf<'a> {
    pool: &'a BufPool,
    buf: Vec<u8>,
}

impl Deref for PooledBuf<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}
impl DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}
impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        let mut free = lock(&self.pool.free);
        if free.len() < POOL_KEEP {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Exclusive locks on blob names: every write to one blob (check, commit,
/// staging) holds its name's lock; different blobs never wait for each other.
pub(crate) struct NameLocks {
    held: Mutex<HashSet<String>>,
    freed: Condvar,
}

pub(crate) struct NameGuard<'a> {
    locks: &'a NameLocks,
    name: String,
}

impl NameLocks {
    pub fn new() -> Self {
        Self { held: Mutex::new(HashSet::new()), freed: Condvar::new() }
    }
    pub fn lock(&self, name: &str) -> NameGuard<'_> {
        let mut held = lock(&self.held);
        while held.contains(name) {
            held = self.freed.wait(held).unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(name.to_owned());
        NameGuard { locks: self, name: name.to_owned() }
    }

    /// [`NameLocks::lock`] for a store whose holders can be slow (network):
    /// gives up with `Cancelled` once the request is cancelled, so a rescind
    /// is never held past its drain bound by a wait for another request.
    pub fn lock_unless_cancelled(
        &self,
        name: &str,
        cancel: Option<&crate::engine::CancelToken>,
    ) -> Result<NameGuard<'_>, StoreError> {
        const RECHECK: std::time::Duration = std::time::Duration::from_millis(20);
        let mut held = lock(&self.held);
        while held.contains(name) {
            if cancel.is_some_and(|c| c.is_cancelled()) {
                return Err(StoreError::Cancelled);
            }
            held = self.freed.wait_timeout(held, RECHECK).unwrap_or_else(PoisonError::into_inner).0;
        }
        held.insert(name.to_owned());
        Ok(NameGuard { locks: self, name: name.to_owned() })
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        lock(&self.locks.held).remove(&self.name);
        self.locks.freed.notify_all();
    }
}

/// The ETag of a stored entity as `Conditions::check` wants it. Stores only
/// hold ETags they made (and validate them when read back), so this is `Some`.
pub(crate) fn etag(s: &str) -> Option<ETag> {
    ETag::new(s).ok()
}

/// `props` as `Conditions` judge it: its ETag and last-modified time.
pub(crate) fn entity<'a>(props: &BlobProperties, etag: &'a Option<ETag>) -> Option<Entity<'a>> {
    etag.as_ref().map(|etag| Entity { etag, last_modified_ms: props.last_modified_ms })
}

/// Deletes of an existing blob (and writes over one): its conditions must hold.
pub(crate) fn check_conditions(props: &BlobProperties, conditions: &Conditions) -> Result<(), StoreError> {
    let tag = etag(&props.etag);
    if conditions.check(entity(props, &tag)) { Ok(()) } else { Err(StoreError::PreconditionFailed) }
}

/// Reads (GET, HEAD) of an existing blob, as Azure answers them: a failed
/// If-Match or If-Unmodified-Since is `PreconditionFailed` (412), a failed
/// If-None-Match or If-Modified-Since is `NotModified` (304).
pub(crate) fn check_read_conditions(props: &BlobProperties, conditions: &Conditions) -> Result<(), StoreError> {
    let tag = etag(&props.etag);
    // Stores validate the ETags they read back, so this is for safety only:
    // judged as an entity without one, as before time conditions existed.
    let Some(e) = entity(props, &tag) else {
        return if conditions.check(None) { Ok(()) } else { Err(StoreError::PreconditionFailed) };
    };
    match conditions.check_read(e) {
        ReadVerdict::Holds => Ok(()),
        ReadVerdict::PreconditionFailed => Err(StoreError::PreconditionFailed),
        ReadVerdict::NotModified => Err(StoreError::NotModified),
    }
}

/// DeleteBlob of a name that has only uncommitted blocks deletes them, as in
/// Azure, if its conditions hold for an absent blob (none, or If-None-Match);
/// otherwise the name is missing (`BlobNotFound`) and keeps its blocks.
pub(crate) fn deletes_uncommitted(conditions: &Conditions) -> bool {
    conditions.check(None)
}

pub(crate) fn written(props: &BlobProperties) -> BlobWritten {
    BlobWritten {
        etag: props.etag.clone(),
        last_modified_ms: props.last_modified_ms,
        content_crc64: props.content_crc64,
    }
}

/// Decides a write against the blob it would replace: `Some` is a replay (the
/// current blob came from this very txn) to answer unchanged; otherwise the
/// conditions must hold.
pub(crate) fn check_write(
    current: Option<(&BlobProperties, &TxnId)>,
    conditions: &Conditions,
    txn: &TxnId,
) -> Result<Option<BlobWritten>, StoreError> {
    if let Some((props, cur_txn)) = current
        && cur_txn == txn
    {
        return Ok(Some(written(props)));
    }
    check_write_conditions(current.map(|(p, _)| p), conditions).map(|()| None)
}

/// A write's conditions, as Azure answers them: If-None-Match `*` over an
/// existing blob is `AlreadyExists` (409 BlobAlreadyExists), any other
/// condition that fails is `PreconditionFailed` (412).
pub(crate) fn check_write_conditions(
    current: Option<&BlobProperties>,
    conditions: &Conditions,
) -> Result<(), StoreError> {
    let tag = current.and_then(|p| etag(&p.etag));
    if tag.is_some() && conditions.if_none_match.as_ref().is_some_and(|e| e.is_any()) {
        return Err(StoreError::AlreadyExists);
    }
    let holds = conditions.check(current.and_then(|p| entity(p, &tag)));
    if holds { Ok(()) } else { Err(StoreError::PreconditionFailed) }
}

/// A failed condition of a SetBlobMetadata / SetBlobProperties: Azure's 412
/// for If-None-Match `*` too (409 BlobAlreadyExists is a create's answer).
pub(crate) fn update_condition(e: StoreError) -> StoreError {
    match e {
        StoreError::AlreadyExists => StoreError::PreconditionFailed,
        e => e,
    }
}

/// What Azure answers for a blob written without a content type.
pub(crate) const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The content type a blob is stored with: the one given, or Azure's default.
pub(crate) fn content_type_or_default(given: &str) -> &str {
    if given.is_empty() { DEFAULT_CONTENT_TYPE } else { given }
}

/// What a whole write (PutBlob, PutBlockList) says of the blob besides its bytes.
#[derive(Clone, Copy)]
pub(crate) struct Described<'a> {
    pub content_type: &'a str,
    pub headers: &'a ContentHeaders,
    pub metadata: &'a Metadata,
}

impl<'a> From<&'a PutBlob> for Described<'a> {
    fn from(r: &'a PutBlob) -> Self {
        Self { content_type: &r.content_type, headers: &r.headers, metadata: &r.metadata }
    }
}

impl<'a> From<&'a PutBlockList> for Described<'a> {
    fn from(r: &'a PutBlockList) -> Self {
        Self { content_type: &r.content_type, headers: &r.headers, metadata: &r.metadata }
    }
}

/// Properties of a freshly written blob: created now, as Azure creates the
/// blob anew on every whole write.
pub(crate) fn new_props(d: Described<'_>, len: u64, digests: &Digests, committed_blocks: u32) -> BlobProperties {
    let now = now_ms();
    BlobProperties {
        etag: next_etag(),
        last_modified_ms: now,
        created_ms: now,
        content_length: len,
        content_type: content_type_or_default(d.content_type).to_owned(),
        headers: d.headers.clone(),
        content_md5: digests.md5,
        content_crc64: digests.crc64,
        committed_blocks,
        metadata: d.metadata.clone(),
        lease: Default::default(),
    }
}

/// A committed blob's properties after a SetBlobMetadata / SetBlobProperties:
/// a new ETag and last-modified time, the update applied, the rest (the
/// creation time too) as it was.
pub(crate) fn updated_props(props: &BlobProperties, update: &BlobUpdate) -> BlobProperties {
    let mut p = props.clone();
    p.etag = next_etag();
    p.last_modified_ms = now_ms();
    match update {
        BlobUpdate::Metadata(m) => p.metadata = m.clone(),
        // All replaced; an empty one is cleared, not defaulted: Azure's Set
        // Blob Properties without a type leaves none.
        BlobUpdate::Properties { content_type, headers } => {
            p.content_type = content_type.clone();
            if let Some(h) = headers {
                p.headers = h.clone();
            }
        }
    }
    p
}

/// A CopyBlob target's properties: the source's content, HTTP headers,
/// digests and blocks, its metadata unless new metadata is given, a new ETag,
/// and created now (the target is a new blob).
pub(crate) fn copied_props(source: &BlobProperties, metadata: Option<&Metadata>) -> BlobProperties {
    let mut p = source.clone();
    p.etag = next_etag();
    p.last_modified_ms = now_ms();
    p.created_ms = p.last_modified_ms;
    if let Some(m) = metadata {
        p.metadata = m.clone();
    }
    p
}

/// The bytes a GET returns: `(offset, length)` clipped to the blob's end and
/// the sink's capacity.
pub(crate) fn clip_range(
    range: Option<vmblob_protocol::ops::ByteRange>,
    size: u64,
    capacity: u64,
) -> Result<(u64, u64), StoreError> {
    let offset = range.map_or(0, |r| r.offset);
    if offset > size {
        return Err(StoreError::InvalidRange);
    }
    let avail = size - offset;
    let want = range.map_or(avail, |r| r.length);
    Ok((offset, want.min(avail).min(capacity)))
}

/// One entry of a committed block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommittedBlock {
    pub id: Vec<u8>,
    pub size: u64,
}

/// Where one block of a new block list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartSource {
    /// The staged (uncommitted) block with this id.
    Staged,
    /// The current blob's bytes at this offset.
    Committed { offset: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub id: Vec<u8>,
    pub size: u64,
    pub source: PartSource,
    /// The CRC-64 the committer listed for the block, if it did.
    pub listed_crc: Option<u64>,
}

impl Part {
    /// A listed CRC must be that of the block the store holds (`held`):
    /// otherwise the id was staged by another writer, and committing it
    /// would make a blob nobody wrote. The store then commits nothing.
    pub fn check_crc(&self, held: u64) -> Result<(), StoreError> {
        match self.listed_crc {
            Some(want) if want != held => Err(StoreError::InvalidBlockList(format!(
                "block {} holds CRC-64 {held:016x}, not the listed {want:016x}: another writer staged it",
                hex(&self.id)
            ))),
            _ => Ok(()),
        }
    }
}

/// Resolves a PutBlockList: each id names a staged block of the blob, else
/// one of its committed blocks (staged wins, as Azure's "Latest" does).
/// Returns the parts in order and the new blob's size.
pub(crate) fn resolve_block_list(
    ids: &[ListedBlock],
    staged_size: impl Fn(&[u8]) -> Option<u64>,
    committed: &[CommittedBlock],
    max_size: u64,
) -> Result<(Vec<Part>, u64), StoreError> {
    if ids.len() > MAX_COMMITTED_BLOCKS {
        return Err(StoreError::TooLarge(format!(
            "{} blocks exceed the {MAX_COMMITTED_BLOCKS}-block limit",
            ids.len()
        )));
    }
    let mut offsets: HashMap<&[u8], (u64, u64)> = HashMap::new();
    let mut at = 0u64;
    for b in committed {
        offsets.entry(&b.id).or_insert((at, b.size));
        at = at.saturating_add(b.size);
    }
    // Azure: all block ids of one blob have the same length (it refuses
    // others with InvalidBlobOrBlock), so code that mixes them fails here too.
    if let Some(first) = ids.first()
        && let Some(other) = ids.iter().find(|b| b.id.as_bytes().len() != first.id.as_bytes().len())
    {
        return Err(StoreError::InvalidBlockList(format!(
            "block ids of different lengths ({} and {} bytes) in one list",
            first.id.as_bytes().len(),
            other.id.as_bytes().len()
        )));
    }
    let mut parts = Vec::with_capacity(ids.len());
    let mut total = 0u64;
    for listed in ids {
        let id = listed.id.as_bytes();
        let (size, source) = match (staged_size(id), offsets.get(id)) {
            (Some(size), _) => (size, PartSource::Staged),
            (None, Some(&(offset, size))) => (size, PartSource::Committed { offset }),
            (None, None) => return Err(StoreError::InvalidBlockList(format!("unknown block id {}", hex(id)))),
        };
        total = total.saturating_add(size);
        parts.push(Part { id: id.to_vec(), size, source, listed_crc: listed.crc64 });
    }
    check_size(total, max_size)?;
    Ok((parts, total))
}

/// The staging limit: a new id may not push a blob past `MAX_STAGED_BLOCKS`.
/// Whether block `id` may be staged next to the blob's `staged` uncommitted
/// blocks, of which `other` is one (any: they share one length).
pub(crate) fn check_stage_room(
    staged: usize,
    replaces: bool,
    other: Option<&[u8]>,
    id: &[u8],
) -> Result<(), StoreError> {
    if !replaces && staged >= MAX_STAGED_BLOCKS {
        return Err(StoreError::TooLarge(format!("blob already has {MAX_STAGED_BLOCKS} uncommitted blocks")));
    }
    // Azure refuses a block whose id length differs from the uncommitted
    // ones' (400 InvalidBlobOrBlock) at the PutBlock, not only at the commit.
    match other {
        Some(o) if o.len() != id.len() => Err(StoreError::InvalidBlockList(format!(
            "block id of {} bytes, the blob's uncommitted blocks have {}-byte ids",
            id.len(),
            o.len()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmblob_protocol::BlockId;

    #[test]
    fn etags_are_unique_quoted_hex_and_increasing() {
        let a = next_etag();
        let b = next_etag();
        assert_ne!(a, b);
        let parse = |s: &str| u64::from_str_radix(s.trim_matches('"').trim_start_matches("0x"), 16).unwrap();
        assert!(a.starts_with("\"0x") && a.ends_with('"'), "{a}");
        assert!(parse(&b) > parse(&a));
        // A tick read back from disk ahead of the clock (10 ms here) keeps later ETags above it.
        let ahead = format!("\"0x{:X}\"", parse(&b) + 100_000);
        observe_etag(&ahead);
        assert!(LAST_TICK.load(Ordering::SeqCst) >= parse(&ahead));
        assert!(parse(&next_etag()) > parse(&ahead));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é0"), None);
    }

    #[test]
    fn clip_range_rules() {
        use vmblob_protocol::ops::ByteRange;
        assert_eq!(clip_range(None, 10, 100).unwrap(), (0, 10));
        assert_eq!(clip_range(None, 10, 4).unwrap(), (0, 4));
        assert_eq!(clip_range(Some(ByteRange { offset: 10, length: 5 }), 10, 100).unwrap(), (10, 0));
        assert_eq!(clip_range(Some(ByteRange { offset: 3, length: 100 }), 10, 100).unwrap(), (3, 7));
        assert!(matches!(
            clip_range(Some(ByteRange { offset: 11, length: 0 }), 10, 100),
            Err(StoreError::InvalidRange)
        ));
    }

    #[test]
    fn a_listed_crc_must_match_the_held_block() {
        let part = |listed_crc| Part { id: b"a".to_vec(), size: 1, source: PartSource::Staged, listed_crc };
        assert!(part(None).check_crc(7).is_ok());
        assert!(part(Some(7)).check_crc(7).is_ok());
        assert!(matches!(part(Some(7)).check_crc(8), Err(StoreError::InvalidBlockList(_))));
    }

    #[test]
    fn resolve_prefers_staged_and_checks_ids() {
        let committed =
            vec![CommittedBlock { id: b"a".to_vec(), size: 3 }, CommittedBlock { id: b"b".to_vec(), size: 4 }];
        let staged = |id: &[u8]| (id == b"b" || id == b"c").then_some(10);
        let ids: Vec<ListedBlock> =
            [&b"b"[..], b"a", b"c", b"a"].iter().map(|i| BlockId::new(i).unwrap().into()).collect();
        let (parts, total) = resolve_block_list(&ids, staged, &committed, 1000).unwrap();
        assert_eq!(total, 10 + 3 + 10 + 3);
        assert_eq!(parts[0].source, PartSource::Staged);
        assert_eq!(parts[1].source, PartSource::Committed { offset: 0 });
        assert_eq!(parts[3].source, PartSource::Committed { offset: 0 });
        let bad = [BlockId::new(b"zz").unwrap().into()];
        assert!(matches!(resolve_block_list(&bad, staged, &committed, 1000), Err(StoreError::InvalidBlockList(_))));
        assert!(matches!(resolve_block_list(&ids, staged, &committed, 25), Err(StoreError::TooLarge(_))));
    }

    #[test]
    fn a_cancelled_request_stops_waiting_for_a_name() {
        use crate::engine::{CancelReason, CancelToken};
        let locks = NameLocks::new();
        let token = CancelToken::new(None);
        std::thread::scope(|s| {
            let held = locks.lock("a");
            let waiter = s.spawn(|| locks.lock_unless_cancelled("a", Some(&token)).map(|_| ()));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "waits while the name is held");
            token.cancel(CancelReason::Rescinded);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !waiter.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // Released either way, so a lock that ignores the cancel fails here instead of hanging.
            drop(held);
            assert!(matches!(waiter.join().unwrap(), Err(StoreError::Cancelled)), "the wait ignored the cancel");
        });
        // A free name is granted even to a cancelled request; so is a released one.
        assert!(locks.lock_unless_cancelled("b", Some(&token)).is_ok());
        assert!(locks.lock_unless_cancelled("a", None).is_ok());
    }
}
