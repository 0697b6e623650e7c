//! Writes: whole blobs, staged blocks and block-list commits, and the
//! uploads behind them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;

use bytes::Bytes;
use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{Attributes, GetOptions, GetRange, MultipartUpload, PutMultipartOptions, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use vmblob_protocol::BlockId;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{
    BlobProperties, BlobRef, BlobUpdate, BlobWritten, BlockInfo, BlockListType, CopyBlob, PutBlob, PutBlockList,
    SetBlobProperties,
};

use super::attrs::{self, Decoded, Stored, decode_value, encode_value};
use super::bridge::{is_not_found, store_err};
use super::crc::combine;
use super::gate::Pass;
use super::{Current, ObjectBlobStore, decide_write, put_mode};
use crate::store::semantics::NameGuard;
use crate::store::semantics::{
    CommittedBlock, Digests, PartSource, check_conditions, check_size, check_stage_room, copied_props, ingest, now_ms,
    resolve_block_list, unhex, update_condition, updated_props, verify,
};
use crate::store::{DataSource, StoreError, TxnId, crc64};

/// Reads of a CopyBlob source that another writer keeps replacing.
const COPY_ATTEMPTS: usize = 3;
/// The metadata key of a staged block that names its blob.
const STAGED_NAME: &str = "vmblob_blob";
/// Blocks of one blob asked for its name before it counts as unnamed.
const NAME_PROBES: usize = 4;
/// Blobs looked up at once when listing uncommitted ones.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// One committed block as the block-list object records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ListedBlock {
    /// Hex of the block id.
    id: String,
    size: u64,
    crc64: u64,
}

/// Bytes a commit copies: a range of a staged block or of the current blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Piece {
    key: Path,
    range: Range<u64>,
    /// The version read must still be current (committed blocks).
    etag: Option<String>,
}

/// An open multipart upload and its parts in flight.
struct Upload {
    upload: Box<dyn MultipartUpload>,
    part: Vec<u8>,
    inflight: VecDeque<JoinHandle<Result<(), object_store::Error>>>,
}

impl ObjectBlobStore {
    fn start_upload(&self, key: &Path, attributes: Attributes) -> Result<Upload, StoreError> {
        let store = &*self.store;
        let opts = PutMultipartOptions { attributes, ..Default::default() };
        let upload = self.bridge.run(async { store.put_multipart_opts(key, opts).await.map_err(store_err) })?;
        Ok(Upload { upload, part: Vec::with_capacity(self.opts.part_size), inflight: VecDeque::new() })
    }

    fn wait_part(&self, up: &mut Upload) -> Result<(), StoreError> {
        match up.inflight.pop_front() {
            Some(h) => self.bridge.run(async {
                h.await.map_err(|e| StoreError::Remote(format!("part upload: {e}")))?.map_err(store_err)
            }),
            None => Ok(()),
        }
    }

    fn send_part(&self, up: &mut Upload) -> Result<(), StoreError> {
        while up.inflight.len() >= self.opts.parallel_parts.max(1) {
            self.wait_part(up)?;
        }
        let bytes = std::mem::replace(&mut up.part, Vec::with_capacity(self.opts.part_size));
        let fut = up.upload.put_part(PutPayload::from(bytes));
        up.inflight.push_back(self.bridge.handle().spawn(fut));
        Ok(())
    }

    fn feed(&self, up: &mut Upload, mut bytes: &[u8]) -> Result<(), StoreError> {
        while !bytes.is_empty() {
            let n = (self.opts.part_size - up.part.len()).min(bytes.len());
            up.part.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if up.part.len() == self.opts.part_size {
                self.send_part(up)?;
            }
        }
        Ok(())
    }

    /// Uploads the last part and waits for all of them; the upload is then
    /// ready to complete.
    fn flush(&self, up: &mut Upload) -> Result<(), StoreError> {
        if !up.part.is_empty() {
            self.send_part(up)?;
        }
        while !up.inflight.is_empty() {
            self.wait_part(up)?;
        }
        Ok(())
    }

    /// Makes the upload's object visible.
    fn complete(&self, mut up: Upload) -> Result<Option<String>, StoreError> {
        let r = self.bridge.commit(async { up.upload.complete().await.map_err(store_err) });
        if r.is_err() {
            self.abort(up);
        }
        Ok(r?.e_tag)
    }

    fn abort(&self, mut up: Upload) {
        for h in up.inflight.drain(..) {
            h.abort();
        }
        // Best effort, in the background: on S3 this is a network call that a
        // stalled endpoint can hold for minutes, and aborts run on the cancel
        // path, which must finish within the drain bound. Azure drops
        // uncommitted blocks by itself after a week.
        let mut upload = up.upload;
        drop(self.bridge.handle().spawn(async move {
            let _ = upload.abort().await;
        }));
    }

    /// Streams all of `data` into `up`, then flushes it; aborts on failure.
    fn upload_source(
        &self,
        mut up: Upload,
        data: &mut dyn DataSource,
        with_md5: bool,
    ) -> Result<(Upload, Digests), StoreError> {
        let mut buf = self.bufs.take();
        let sent = ingest(data, &mut buf, with_md5, |chunk| self.feed(&mut up, chunk)).and_then(|d| {
            self.flush(&mut up)?;
            Ok(d)
        });
        match sent {
            Ok(d) => Ok((up, d)),
            Err(e) => {
                self.abort(up);
                Err(e)
            }
        }
    }

    /// Reads a small write whole (its size is checked against `single_put_max` first).
    fn read_small(&self, data: &mut dyn DataSource, with_md5: bool) -> Result<(Vec<u8>, Digests), StoreError> {
        let mut bytes = Vec::with_capacity(usize::try_from(data.len()).unwrap_or(0));
        let mut buf = self.bufs.take();
        let digests = ingest(data, &mut buf, with_md5, |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok((bytes, digests))
    }

    /// One PUT under the service-side condition `mode`; a lost race is a failed precondition.
    fn put_once(
        &self,
        key: &Path,
        bytes: Bytes,
        mode: object_store::PutMode,
        attributes: Attributes,
    ) -> Result<String, StoreError> {
        let store = &*self.store;
        // A create-only write that lost to another writer: Azure's 409, as the pre-check answers.
        let create = matches!(mode, object_store::PutMode::Create);
        let opts = PutOptions { mode, attributes, ..Default::default() };
        let r = self
            .bridge
            .commit(async { store.put_opts(key, PutPayload::from(bytes), opts).await.map_err(store_err) })
            .map_err(|e| match e {
                StoreError::PreconditionFailed if create => StoreError::AlreadyExists,
                e => e,
            })?;
        match r.e_tag {
            Some(e) => Ok(e),
            None => self.etag_of(key),
        }
    }

    /// Deletes `key`, an object a failed write left behind; a failure only
    /// leaves it to the janitor.
    fn forget(&self, key: &Path) {
        let store = &*self.store;
        let _ = self.bridge.commit(async { object_store::ObjectStoreExt::delete(store, key).await.map_err(store_err) });
    }

    fn etag_of(&self, key: &Path) -> Result<String, StoreError> {
        self.head(key)?.map(|d| d.blob.etag).ok_or_else(|| StoreError::Remote("written object vanished".into()))
    }

    pub(super) fn write_blob(
        &self,
        req: &PutBlob,
        data: &mut dyn DataSource,
        txn: &TxnId,
    ) -> Result<BlobWritten, StoreError> {
        let key = self.keys.blob(&req.target)?;
        attrs::check_user_keys(&req.metadata)?;
        let _gate = self.write_gate(&req.target.container)?;
        self.ensure_container(&req.target.container)?;
        let len = data.len();
        check_size(len, self.opts.max_blob_size)?;
        // Early answer (replay, failed condition) before reading any data.
        if let Some(w) = decide_write(&self.head(&key)?, &req.conditions, txn)? {
            return Ok(w);
        }
        let mtime_ms = now_ms();
        let with_md5 = req.content_md5.is_some();
        let stored = |crc64, md5| Stored {
            content_type: &req.content_type,
            headers: &req.headers,
            metadata: &req.metadata,
            txn,
            mtime_ms,
            created_ms: mtime_ms,
            crc64: Some(crc64),
            md5,
            committed_blocks: 0,
        };
        let (etag, crc) = if len <= self.opts.single_put_max {
            let (bytes, d) = self.read_small(data, with_md5)?;
            verify(&d, req.content_crc64, req.content_md5)?;
            let attributes = attrs::encode(&stored(d.crc64, d.md5))?;
            let _name = self.lock_name(key.as_ref())?;
            let cur = self.head(&key)?;
            if let Some(w) = decide_write(&cur, &req.conditions, txn)? {
                return Ok(w);
            }
            (self.put_once(&key, bytes.into(), put_mode(&req.conditions, &cur), attributes)?, d.crc64)
        } else if let Some(crc) = req.content_crc64 {
            // The checksum is known up front: upload straight to the blob and
            // complete only if the bytes match it.
            // The upload is invisible until completed, so the name is locked
            // only around the final check and the completion, never while the
            // bytes stream (other writers of the name would wait that long).
            let attributes = attrs::encode(&stored(crc, req.content_md5))?;
            let (up, d) = self.upload_source(self.start_upload(&key, attributes)?, data, with_md5)?;
            if let Err(e) = verify(&d, req.content_crc64, req.content_md5) {
                self.abort(up);
                return Err(e);
            }
            let _name = match self.lock_name(key.as_ref()) {
                Ok(g) => g,
                Err(e) => {
                    self.abort(up);
                    return Err(e);
                }
            };
            let decided = self.head(&key).and_then(|cur| decide_write(&cur, &req.conditions, txn));
            match decided {
                Ok(None) => {}
                Ok(Some(w)) => {
                    self.abort(up);
                    return Ok(w);
                }
                Err(e) => {
                    self.abort(up);
                    return Err(e);
                }
            }
            (self.complete(up)?.map_or_else(|| self.etag_of(&key), Ok)?, crc)
        } else {
            // The checksum is known only at the end, the attributes are sent at
            // the start: land the bytes in a temp object, then copy it.
            let temp = self.keys.temp()?;
            let (up, d) = self.upload_source(self.start_upload(&temp, Attributes::new())?, data, with_md5)?;
            let r = verify(&d, None, req.content_md5).and_then(|()| {
                self.complete(up)?;
                let _name = self.lock_name(key.as_ref())?;
                if let Some(w) = decide_write(&self.head(&key)?, &req.conditions, txn)? {
                    return Ok(Err(w));
                }
                let piece = Piece { key: temp.clone(), range: 0..len, etag: None };
                let etag = self.copy_pieces(&key, attrs::encode(&stored(d.crc64, d.md5))?, &[piece])?;
                Ok(Ok(etag))
            });
            self.forget(&temp);
            match r? {
                Ok(etag) => (etag, d.crc64),
                Err(replayed) => return Ok(replayed),
            }
        };
        self.discard_blocks(&req.target, None)?;
        Ok(BlobWritten { etag, last_modified_ms: mtime_ms, content_crc64: crc })
    }

    /// A whole write or delete drops the blob's staged blocks and old block lists.
    pub(super) fn discard_blocks(&self, target: &BlobRef, keep_list: Option<&TxnId>) -> Result<(), StoreError> {
        self.delete_under(&self.keys.staged_dir(target)?, None)?;
        let keep = keep_list.map(|t| self.keys.block_list(target, t)).transpose()?;
        self.delete_under(&self.keys.block_lists_dir(target)?, keep.as_ref())
    }

    /// Names under `prefix` with staged blocks and no committed blob. The
    /// blobs' directories come from one delimited listing of the container's
    /// staged blocks (at most `MAX_STAGED_BLOBS` of them); then, a few at a
    /// time, the name the first blocks of each record and a HEAD of that
    /// blob. Blocks staged by a VSP from before names were recorded say none.
    pub(super) fn uncommitted(&self, c: &ContainerName, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.ensure_container(c)?;
        let dir = self.keys.staged_container_dir(c)?;
        let store = &*self.store;
        let listed = self.bridge.run(async { store.list_with_delimiter(Some(&dir)).await.map_err(store_err) })?;
        if listed.common_prefixes.len() > crate::store::MAX_STAGED_BLOBS {
            return Err(crate::store::too_many_staged());
        }
        let found = stream::iter(listed.common_prefixes.into_iter().map(|blob_dir| async move {
            let Some(name) = self.recorded_name(&blob_dir).await? else { return Ok(None) };
            let Ok(blob) = vmblob_protocol::BlobName::new(&name) else { return Ok(None) };
            let target = BlobRef { container: c.clone(), blob };
            // The directory must be this name's hash (a block copied in from elsewhere is not).
            let committed = Self::head_async(store, &self.keys.blob(&target)?).await?.is_some();
            let ours = self.keys.staged_dir(&target)? == blob_dir;
            Ok((ours && !committed && name.starts_with(prefix)).then_some(name))
        }))
        .buffered(LOOKUPS_IN_FLIGHT)
        .try_filter_map(|n| futures::future::ready(Ok(n)))
        .try_collect();
        self.bridge.run(found)
    }

    /// The blob name the first few blocks under `blob_dir` record (a block
    /// gone meanwhile, or staged before names were recorded, is passed over).
    async fn recorded_name(&self, blob_dir: &Path) -> Result<Option<String>, StoreError> {
        let store = &*self.store;
        let mut blocks = store.list(Some(blob_dir)).take(NAME_PROBES);
        while let Some(meta) = blocks.next().await.transpose().map_err(store_err)? {
            let attributes = match store.get_opts(&meta.location, GetOptions { head: true, ..Default::default() }).await
            {
                Ok(r) => r.attributes,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(store_err(e)),
            };
            let name = attributes.iter().find_map(|(k, v)| match k {
                object_store::Attribute::Metadata(n) if n.eq_ignore_ascii_case(STAGED_NAME) => decode_value(v),
                _ => None,
            });
            if name.is_some() {
                return Ok(name);
            }
        }
        Ok(None)
    }

    /// Staged blocks of a blob: id to (size, key).
    pub(super) fn staged(&self, target: &BlobRef) -> Result<BTreeMap<Vec<u8>, (u64, Path)>, StoreError> {
        let dir = self.keys.staged_dir(target)?;
        let store = &*self.store;
        let metas: Vec<_> = self.bridge.run(async { store.list(Some(&dir)).try_collect().await.map_err(store_err) })?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let id = unhex(m.location.filename()?)?;
                Some((id, (m.size, m.location)))
            })
            .collect())
    }

    pub(super) fn stage_block(
        &self,
        target: &BlobRef,
        id: &BlockId,
        data: &mut dyn DataSource,
        expected_crc64: Option<u64>,
    ) -> Result<u64, StoreError> {
        let key = self.keys.staged(target, id.as_bytes())?;
        let blob_key = self.keys.blob(target)?;
        let _gate = self.write_gate(&target.container)?;
        self.ensure_container(&target.container)?;
        let len = data.len();
        check_size(len, self.opts.max_blob_size)?;
        let staged = self.staged(target)?;
        let other = staged.keys().next().map(Vec::as_slice);
        check_stage_room(staged.len(), staged.contains_key(id.as_bytes()), other, id.as_bytes())?;
        // The block's key names the blob by hash: the name goes along, for
        // listings of uncommitted blobs (`uncommitted_names`).
        let name_attr = || {
            let mut a = Attributes::new();
            a.insert(object_store::Attribute::Metadata(STAGED_NAME.into()), encode_value(target.blob.as_str()).into());
            a
        };
        let crc_attr = |crc| {
            let mut a = name_attr();
            a.insert(object_store::Attribute::Metadata("vmblob_crc64".into()), format!("{crc:016x}").into());
            a
        };
        if len <= self.opts.single_put_max {
            let (bytes, d) = self.read_small(data, false)?;
            verify(&d, expected_crc64, None)?;
            let _name = self.lock_name(blob_key.as_ref())?;
            self.put_once(&key, bytes.into(), object_store::PutMode::Overwrite, crc_attr(d.crc64))?;
            return Ok(d.crc64);
        }
        let attributes = expected_crc64.map_or_else(name_attr, crc_attr);
        let (up, d) = self.upload_source(self.start_upload(&key, attributes)?, data, false)?;
        if let Err(e) = verify(&d, expected_crc64, None) {
            self.abort(up);
            return Err(e);
        }
        let _name = match self.lock_name(blob_key.as_ref()) {
            Ok(g) => g,
            Err(e) => {
                self.abort(up);
                return Err(e);
            }
        };
        self.complete(up)?;
        Ok(d.crc64)
    }

    fn read_block_list(&self, target: &BlobRef, cur: Option<&Decoded>) -> Result<Vec<ListedBlock>, StoreError> {
        let Some(d) = cur.filter(|d| d.blob.committed_blocks > 0) else { return Ok(Vec::new()) };
        let Some(txn) = d.txn else { return Ok(Vec::new()) };
        let key = self.keys.block_list(target, &txn)?;
        let store = &*self.store;
        let got = self.bridge.run(async {
            match store.get_opts(&key, GetOptions::default()).await {
                Ok(r) => r.bytes().await.map(Some).map_err(store_err),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(store_err(e)),
            }
        })?;
        match got {
            Some(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Remote(format!("block list object: {e}"))),
            None => {
                log::warn!("block list of {key} is missing; treating the blob as having no committed blocks");
                Ok(Vec::new())
            }
        }
    }

    pub(super) fn block_list(&self, target: &BlobRef, list_type: BlockListType) -> Result<Vec<BlockInfo>, StoreError> {
        let key = self.keys.blob(target)?;
        self.ensure_container(&target.container)?;
        let cur = self.head(&key)?;
        let staged = self.staged(target)?;
        if cur.is_none() && staged.is_empty() {
            return Err(StoreError::BlobNotFound);
        }
        let mut out = Vec::new();
        if list_type != BlockListType::Uncommitted {
            for b in self.read_block_list(target, cur.as_ref())? {
                let id = unhex(&b.id).ok_or_else(|| StoreError::Remote("block list object: bad id".into()))?;
                out.push(BlockInfo { id, size: b.size, committed: true });
            }
        }
        if list_type != BlockListType::Committed {
            out.extend(staged.into_iter().map(|(id, (size, _))| BlockInfo { id, size, committed: false }));
        }
        Ok(out)
    }

    /// The CRC-64 of a staged block, as recorded when it was staged (or read
    /// back when it was a large upload without a checksum).
    fn staged_crc(&self, key: &Path, size: u64) -> Result<u64, StoreError> {
        let store = &*self.store;
        let r = self.bridge.run(async {
            store.get_opts(key, GetOptions { head: true, ..Default::default() }).await.map_err(store_err)
        })?;
        let recorded = r.attributes.iter().find_map(|(k, v)| match k {
            object_store::Attribute::Metadata(n) if n.eq_ignore_ascii_case("vmblob_crc64") => {
                u64::from_str_radix(v, 16).ok()
            }
            _ => None,
        });
        match recorded {
            Some(c) => Ok(c),
            None => {
                let mut digest = vmblob_protocol::checksum::Crc64::new();
                self.read_piece(&Piece { key: key.clone(), range: 0..size, etag: None }, |b| {
                    digest.write(b);
                    Ok(())
                })?;
                Ok(digest.sum64())
            }
        }
    }

    /// Streams a piece's bytes to `out`.
    fn read_piece(&self, p: &Piece, mut out: impl FnMut(&[u8]) -> Result<(), StoreError>) -> Result<(), StoreError> {
        if p.range.is_empty() {
            return Ok(());
        }
        let store = &*self.store;
        let opts = GetOptions {
            if_match: p.etag.clone(),
            range: Some(GetRange::Bounded(p.range.clone())),
            ..Default::default()
        };
        let mut stream = self.bridge.run(async {
            match store.get_opts(&p.key, opts).await {
                Ok(r) => Ok(r.into_stream()),
                // The blob changed under a commit holding its name lock: another process wrote it.
                Err(e) if is_not_found(&e) => Err(StoreError::InvalidBlockList("block data missing".into())),
                Err(e) => Err(store_err(e)),
            }
        })?;
        let mut got = 0u64;
        while let Some(chunk) = self.bridge.run(async { stream.next().await.transpose().map_err(store_err) })? {
            got += chunk.len() as u64;
            out(&chunk)?;
        }
        if got != p.range.end - p.range.start {
            return Err(StoreError::Remote(format!(
                "read {got} bytes of a {}-byte block",
                p.range.end - p.range.start
            )));
        }
        Ok(())
    }

    /// Multipart upload of `pieces` in order as `key`: the commit of a large block list.
    fn copy_pieces(&self, key: &Path, attributes: Attributes, pieces: &[Piece]) -> Result<String, StoreError> {
        let mut up = self.start_upload(key, attributes)?;
        let sent = pieces
            .iter()
            .try_for_each(|p| self.read_piece(p, |b| self.feed(&mut up, b)))
            .and_then(|()| self.flush(&mut up));
        if let Err(e) = sent {
            self.abort(up);
            return Err(e);
        }
        self.complete(up)?.map_or_else(|| self.etag_of(key), Ok)
    }

    /// The start of every checked write of `target`: its container's gate, the
    /// container still there, the name locked, and what the name holds now.
    fn lock_for_write(&self, target: &BlobRef, key: &Path) -> Result<(Pass<'_>, NameGuard<'_>, Current), StoreError> {
        let gate = self.write_gate(&target.container)?;
        self.ensure_container(&target.container)?;
        let name = self.lock_name(key.as_ref())?;
        let cur = self.head(key)?;
        Ok((gate, name, cur))
    }

    pub(super) fn commit_block_list(&self, req: &PutBlockList, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        let target = &req.target;
        let key = self.keys.blob(target)?;
        attrs::check_user_keys(&req.metadata)?;
        let (_gate, _name, cur) = self.lock_for_write(target, &key)?;
        if let Some(w) = decide_write(&cur, &req.conditions, txn)? {
            return Ok(w);
        }
        let staged = self.staged(target)?;
        let old = self.read_block_list(target, cur.as_ref())?;
        let committed: Vec<CommittedBlock> =
            old.iter().map(|b| CommittedBlock { id: unhex(&b.id).unwrap_or_default(), size: b.size }).collect();
        let (parts, total) =
            resolve_block_list(&req.blocks, |id| staged.get(id).map(|(s, _)| *s), &committed, self.opts.max_blob_size)?;
        let cur_etag = cur.as_ref().map(|d| d.blob.etag.clone());
        let old_crc: HashMap<u64, u64> = {
            let mut at = 0u64;
            old.iter()
                .map(|b| {
                    let e = (at, b.crc64);
                    at += b.size;
                    e
                })
                .collect()
        };
        let pieces: Vec<(Piece, Option<u64>)> = parts
            .iter()
            .map(|p| match p.source {
                PartSource::Staged => {
                    let (size, k) =
                        staged.get(&p.id).ok_or_else(|| StoreError::InvalidBlockList("block vanished".into()))?;
                    Ok((Piece { key: k.clone(), range: 0..*size, etag: None }, None))
                }
                PartSource::Committed { offset } => Ok((
                    Piece { key: key.clone(), range: offset..offset + p.size, etag: cur_etag.clone() },
                    old_crc.get(&offset).copied(),
                )),
            })
            .collect::<Result<_, StoreError>>()?;
        let mtime_ms = now_ms();
        let count = u32::try_from(parts.len()).map_err(|_| StoreError::TooLarge("block count".into()))?;
        let small = total <= self.opts.single_put_max;
        // Each distinct piece is read (or its CRC looked up) once: a list may repeat a block 50,000 times.
        let mut data: HashMap<&Piece, (Bytes, u64)> = HashMap::new();
        let mut crcs: HashMap<&Piece, u64> = HashMap::new();
        for (piece, known) in &pieces {
            if small && !data.contains_key(piece) {
                let mut b = Vec::with_capacity(usize::try_from(piece.range.end - piece.range.start).unwrap_or(0));
                self.read_piece(piece, |c| {
                    b.extend_from_slice(c);
                    Ok(())
                })?;
                let c = crc64(&b);
                data.insert(piece, (b.into(), c));
                crcs.insert(piece, c);
            } else if !crcs.contains_key(piece) {
                let c = match known {
                    Some(c) => *c,
                    None => self.staged_crc(&piece.key, piece.range.end - piece.range.start)?,
                };
                crcs.insert(piece, c);
            }
        }
        for (p, (piece, _)) in parts.iter().zip(&pieces) {
            p.check_crc(crcs.get(piece).copied().unwrap_or_default())?;
        }
        let listed: Vec<ListedBlock> = parts
            .iter()
            .zip(&pieces)
            .map(|(p, (piece, _))| ListedBlock {
                id: crate::store::semantics::hex(&p.id),
                size: p.size,
                crc64: crcs.get(piece).copied().unwrap_or_default(),
            })
            .collect();
        let crc = listed.iter().fold(0, |acc, b| combine(acc, b.crc64, b.size));
        // The block list goes first, named by the txn the blob will carry: a
        // reader sees the new blob only once both exist.
        let list_key = self.keys.block_list(target, txn)?;
        let list_bytes = serde_json::to_vec(&listed).map_err(|e| StoreError::Remote(e.to_string()))?;
        self.put_once(&list_key, list_bytes.into(), object_store::PutMode::Overwrite, Attributes::new())?;
        let stored = Stored {
            content_type: &req.content_type,
            headers: &req.headers,
            metadata: &req.metadata,
            txn,
            mtime_ms,
            created_ms: mtime_ms,
            crc64: Some(crc),
            md5: None,
            committed_blocks: count,
        };
        let attributes = attrs::encode(&stored)?;
        let written = if small {
            let mut whole = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            for (piece, _) in &pieces {
                whole.extend_from_slice(data.get(piece).map_or(&[][..], |(b, _)| &b[..]));
            }
            self.put_once(&key, whole.into(), put_mode(&req.conditions, &cur), attributes)
        } else {
            let only: Vec<Piece> = pieces.iter().map(|(p, _)| p.clone()).collect();
            self.copy_pieces(&key, attributes, &only)
        };
        let etag = match written {
            Ok(e) => e,
            Err(e) => {
                self.forget(&list_key);
                return Err(e);
            }
        };
        self.discard_blocks(target, Some(txn))?;
        Ok(BlobWritten { etag, last_modified_ms: mtime_ms, content_crc64: crc })
    }

    /// SetBlobMetadata / SetBlobProperties. object_store cannot change an
    /// object's attributes in place, and a service-side copy keeps the old
    /// ones, so the blob is written again with the new attributes ([`Self::rewrite`]);
    /// its staged blocks stay.
    pub(super) fn set_properties(&self, req: &SetBlobProperties, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        let target = &req.target;
        let key = self.keys.blob(target)?;
        if let BlobUpdate::Metadata(m) = &req.update {
            attrs::check_user_keys(m)?;
        }
        let (_gate, _name, cur) = self.lock_for_write(target, &key)?;
        if let Some(w) = decide_write(&cur, &req.conditions, txn).map_err(update_condition)? {
            return Ok(w);
        }
        let Some(d) = cur.as_ref() else { return Err(StoreError::BlobNotFound) };
        let props = updated_props(&d.blob, &req.update);
        // Only over the version read: a writer in another process must not be undone.
        let version = object_store::UpdateVersion { e_tag: Some(d.blob.etag.clone()), version: None };
        let etag =
            self.rewrite((target, &key, d), (target, &key), &props, txn, object_store::PutMode::Update(version))?;
        // The old block list names the old transaction; the staged blocks stay.
        self.delete_under(&self.keys.block_lists_dir(target)?, Some(&self.keys.block_list(target, txn)?))?;
        Ok(BlobWritten { etag, last_modified_ms: props.last_modified_ms, content_crc64: d.blob.content_crc64 })
    }

    /// CopyBlob. A service-side copy would keep the source's attributes (its
    /// transaction id, time and block count) and name no block list of the
    /// target, so the target is written with its own ([`Self::rewrite`]).
    pub(super) fn copy(&self, req: &CopyBlob, txn: &TxnId) -> Result<BlobWritten, StoreError> {
        let (source, target) = (&req.source, &req.target);
        let (src_key, key) = (self.keys.blob(source)?, self.keys.blob(target)?);
        if let Some(m) = &req.metadata {
            attrs::check_user_keys(m)?;
        }
        let (_gate, _name, cur) = self.lock_for_write(target, &key)?;
        // A replay first: its source may be gone by now.
        if let Some(w) = decide_write(&cur, &req.conditions, txn)? {
            return Ok(w);
        }
        let mode = put_mode(&req.conditions, &cur);
        let mut attempt = 1;
        loop {
            // Read under the target's lock: a copy onto itself reads the version it replaces.
            let src = self.existing_blob(source, &src_key)?;
            check_conditions(&src.blob, &req.source_conditions)?;
            let props = copied_props(&src.blob, req.metadata.as_ref());
            match self.rewrite((source, &src_key, &src), (target, &key), &props, txn, mode.clone()) {
                Ok(etag) => {
                    self.discard_blocks(target, Some(txn))?;
                    return Ok(BlobWritten {
                        etag,
                        last_modified_ms: props.last_modified_ms,
                        content_crc64: src.blob.content_crc64,
                    });
                }
                // The source was replaced between its HEAD and its pinned read: read it again.
                Err(StoreError::PreconditionFailed)
                    if attempt < COPY_ATTEMPTS
                        && self.head(&src_key)?.is_some_and(|now| now.blob.etag != src.blob.etag) =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the bytes of `from` (read pinned to its ETag, streamed through
    /// the VSP, never the guest) as `to` with `props` and transaction `txn`,
    /// under `mode`; its block list goes along under `txn`. Returns the new
    /// ETag; a source deleted meanwhile is `BlobNotFound`. `mode` holds for a single
    /// PUT only: a blob over `single_put_max` goes up as a multipart upload,
    /// which object_store cannot make conditional, so there (as for a large
    /// block-list commit) only this process's name lock guards it.
    fn rewrite(
        &self,
        from: (&BlobRef, &Path, &Decoded),
        to: (&BlobRef, &Path),
        props: &BlobProperties,
        txn: &TxnId,
        mode: object_store::PutMode,
    ) -> Result<String, StoreError> {
        let ((from_ref, from_key, d), (to_ref, to_key)) = (from, to);
        let listed = self.read_block_list(from_ref, Some(d))?;
        let list_key = self.keys.block_list(to_ref, txn)?;
        if !listed.is_empty() {
            let bytes = serde_json::to_vec(&listed).map_err(|e| StoreError::Remote(e.to_string()))?;
            self.put_once(&list_key, bytes.into(), object_store::PutMode::Overwrite, Attributes::new())?;
        }
        let stored = Stored {
            content_type: &props.content_type,
            headers: &props.headers,
            metadata: &props.metadata,
            txn,
            mtime_ms: props.last_modified_ms,
            created_ms: props.created_ms,
            // An object another tool wrote has no CRC of ours to carry over.
            crc64: d.txn.is_some().then_some(d.blob.content_crc64),
            md5: d.blob.content_md5,
            committed_blocks: if listed.is_empty() { 0 } else { d.blob.committed_blocks },
        };
        let mut attributes = attrs::encode(&stored)?;
        if props.content_type.is_empty() {
            attrs::mark_type_cleared(&mut attributes);
        }
        let len = d.blob.content_length;
        let piece = Piece { key: from_key.clone(), range: 0..len, etag: Some(d.blob.etag.clone()) };
        let written = if len <= self.opts.single_put_max {
            let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            self.read_piece(&piece, |c| {
                bytes.extend_from_slice(c);
                Ok(())
            })
            .and_then(|()| self.put_once(to_key, bytes.into(), mode, attributes))
        } else {
            self.copy_pieces(to_key, attributes, &[piece])
        };
        if written.is_err() && !listed.is_empty() {
            self.forget(&list_key);
        }
        // Reading a piece whose object is gone says "block data missing": here the source went.
        written.map_err(|e| if matches!(e, StoreError::InvalidBlockList(_)) { StoreError::BlobNotFound } else { e })
    }
}
