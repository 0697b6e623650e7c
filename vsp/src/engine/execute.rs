//! Running one decoded operation on the store.

use vm_memory::GuestMemoryMmap;
use vmblob_protocol::framing::BufferLayout;
use vmblob_protocol::ops::{
    BlobListItem, BlobRef, BlockListType, Conditions, ContainerEntry, ETag, Entity, LeaseBlob, LeaseId, LeaseResult,
    OP_HEADER_SIZE, OpRequest, OpResponse,
};
use vmblob_protocol::sg::sub_range;
use vmblob_protocol::{BlobError, Segment};

use super::Engine;
use super::cancel::{CancelReason, CancelToken};
use super::guest_io::{GuestSink, GuestSource};
use crate::lease::{LeaseError, Refused, WriteGuard};
use crate::store::context::with_cancel;
use crate::store::{StoreError, TxnId};

/// An operation's failure as returned to the guest.
pub type OpFailure = (BlobError, String);

fn fail(e: BlobError, msg: impl Into<String>) -> OpFailure {
    (e, msg.into())
}

impl Engine {
    pub(super) fn store_failure(&self, e: StoreError, cancel: &CancelToken) -> OpFailure {
        let status = match (&e, cancel.reason()) {
            (StoreError::Cancelled, Some(CancelReason::TimedOut)) => BlobError::Timeout,
            (StoreError::Cancelled, _) => BlobError::Rescinded,
            _ => e.status(),
        };
        if let StoreError::Io(io) = &e {
            log::warn!("store I/O error: {io}");
        }
        (status, e.to_string())
    }

    fn lease_failure(&self, e: Refused, cancel: &CancelToken) -> OpFailure {
        match e {
            Refused::Lease(LeaseError::Conflict(m)) => fail(BlobError::LeaseConflict, m),
            Refused::Lease(LeaseError::Precondition(m)) => fail(BlobError::PreconditionFailed, m),
            Refused::Cancelled => self.store_failure(StoreError::Cancelled, cancel),
            Refused::Full => fail(BlobError::TooLarge, e.to_string()),
            Refused::Raced => fail(BlobError::Busy, e.to_string()),
            Refused::Io(_) => {
                log::warn!("{e}");
                fail(BlobError::Io, e.to_string())
            }
        }
    }

    /// Admit a write of `target` under its lease (held until the guard goes).
    fn lease_write(
        &self,
        target: &BlobRef,
        lease_id: Option<LeaseId>,
        cancel: &CancelToken,
    ) -> Result<WriteGuard<'_>, OpFailure> {
        self.leases.admit_write(target, lease_id.as_ref()).map_err(|e| self.lease_failure(e, cancel))
    }

    fn lease_read(&self, target: &BlobRef, conditions: &Conditions, cancel: &CancelToken) -> Result<(), OpFailure> {
        let given = conditions.lease_id.as_ref();
        self.leases.check_read(target, given).map_err(|e| self.lease_failure(Refused::Lease(e), cancel))
    }

    /// A lease refusal of an op on a blob that must exist is, as on Azure,
    /// the blob's (or container's) absence when it is absent.
    fn absent_first(&self, target: &BlobRef, refusal: OpFailure, cancel: &CancelToken) -> OpFailure {
        match self.store.blob_properties(target, &Conditions::none()) {
            // A name with only staged blocks is there to be leased (and deleted).
            Err(StoreError::BlobNotFound) if self.has_staged_blocks(target) => refusal,
            Err(e @ (StoreError::BlobNotFound | StoreError::ContainerNotFound)) => self.store_failure(e, cancel),
            _ => refusal,
        }
    }

    /// [`Engine::lease_write`] of an op on a blob that must exist.
    fn lease_write_existing(
        &self,
        target: &BlobRef,
        lease_id: Option<LeaseId>,
        cancel: &CancelToken,
    ) -> Result<WriteGuard<'_>, OpFailure> {
        self.lease_write(target, lease_id, cancel).map_err(|f| self.absent_first(target, f, cancel))
    }

    /// LeaseBlob: the blob must exist and its write conditions hold (judged
    /// alone on the name, with the lease change).
    fn lease_blob(&self, l: &LeaseBlob, cancel: &CancelToken) -> Result<LeaseResult, OpFailure> {
        let current = || -> Result<_, LeaseOpError> {
            let p = match self.store.blob_properties(&l.target, &Conditions::none()) {
                Ok(p) => Some(p),
                // A name with only staged blocks can be leased, as on Azure: a
                // pipeline locks a new blob before it commits it.
                Err(StoreError::BlobNotFound) if self.has_staged_blocks(&l.target) => None,
                Err(e) => return Err(self.store_failure(e, cancel).into()),
            };
            let holds = match &p {
                Some(p) => {
                    let etag =
                        ETag::new(&p.etag).map_err(|_| fail(BlobError::Internal, "the store's ETag is not valid"))?;
                    l.conditions.check(Some(Entity { etag: &etag, last_modified_ms: p.last_modified_ms }))
                }
                None => l.conditions.check(None),
            };
            if !holds {
                return Err(fail(BlobError::PreconditionFailed, "the blob's conditions do not hold").into());
            }
            Ok(p)
        };
        let (p, answer) = self.leases.act(&l.target, &l.action, current).map_err(|e| match e {
            LeaseOpError::Refused(r) => self.lease_failure(r, cancel),
            LeaseOpError::Op(f) => f,
        })?;
        let (etag, last_modified_ms) = p.map_or((String::new(), 0), |p| (p.etag, p.last_modified_ms));
        Ok(LeaseResult { etag, last_modified_ms, lease_id: answer.lease_id, lease_time_secs: answer.lease_time_secs })
    }

    fn has_staged_blocks(&self, target: &BlobRef) -> bool {
        self.store.get_block_list(target, BlockListType::Uncommitted).is_ok_and(|b| !b.is_empty())
    }

    /// Run `op`; `resp_cap` is the response buffer's size (listings are cut
    /// to fit it). The store sees `cancel` (network stores race their calls
    /// against it).
    pub(super) fn execute(
        &self,
        mem: &GuestMemoryMmap,
        op: &OpRequest,
        layout: &BufferLayout,
        txn: &TxnId,
        cancel: &CancelToken,
        resp_cap: usize,
    ) -> Result<OpResponse, OpFailure> {
        with_cancel(cancel, || self.run_op(mem, op, layout, txn, cancel, resp_cap))
    }

    fn run_op(
        &self,
        mem: &GuestMemoryMmap,
        op: &OpRequest,
        layout: &BufferLayout,
        txn: &TxnId,
        cancel: &CancelToken,
        resp_cap: usize,
    ) -> Result<OpResponse, OpFailure> {
        let store = &*self.store;
        let se = |e| self.store_failure(e, cancel);
        Ok(match op {
            OpRequest::GetDeviceConfig => OpResponse::DeviceConfig(self.device_config()),
            OpRequest::CreateContainer { container, metadata } => {
                OpResponse::ContainerCreated(store.create_container(container, metadata, txn).map_err(se)?)
            }
            OpRequest::DeleteContainer { container } => {
                store.delete_container(container).map_err(se)?;
                self.leases.forget_container(container);
                OpResponse::Deleted
            }
            OpRequest::GetContainerProperties { container } => {
                OpResponse::ContainerProperties(store.container_properties(container).map_err(se)?)
            }
            OpRequest::ListContainers(l) => {
                let page = store.list_containers(l).map_err(se)?;
                let (containers, next_marker) =
                    fit_list(page.items, page.next_marker, resp_cap, ContainerEntry::encoded_len, |c| c.name.as_str())?;
                OpResponse::ContainerList { containers, next_marker }
            }
            OpRequest::PutBlob(p) => {
                let lease = self.lease_write(&p.target, p.conditions.lease_id, cancel)?;
                let segs = self.data_out(layout)?;
                let mut src = GuestSource::new(mem, &segs, cancel);
                let written = store.put_blob(p, &mut src, txn).map_err(se)?;
                lease.committed();
                OpResponse::BlobWritten(written)
            }
            OpRequest::GetBlob(g) => {
                // The store first: a missing blob (404) or a 304 decide before the lease, as on Azure.
                let segs = layout.data.writable().unwrap_or(&[]);
                let mut sink = GuestSink::new(mem, segs, cancel);
                let (mut properties, offset, length) = store.get_blob(g, &mut sink).map_err(se)?;
                self.lease_read(&g.target, &g.conditions, cancel)?;
                properties.lease = self.leases.properties(&g.target);
                OpResponse::BlobData { properties, offset, length }
            }
            OpRequest::GetBlobProperties { target, conditions } => {
                let mut properties = store.blob_properties(target, conditions).map_err(se)?;
                self.lease_read(target, conditions, cancel)?;
                properties.lease = self.leases.properties(target);
                OpResponse::BlobProperties(properties)
            }
            OpRequest::DeleteBlob { target, conditions } => {
                let lease = self.lease_write_existing(target, conditions.lease_id, cancel)?;
                store.delete_blob(target, conditions).map_err(se)?;
                lease.deleted();
                OpResponse::Deleted
            }
            OpRequest::ListBlobs(l) => {
                let mut page = crate::store::list_blobs(store, l).map_err(se)?;
                self.leases.fill_listing(&l.container, &mut page.items);
                let (items, next_marker) =
                    fit_list(page.items, page.next_marker, resp_cap, BlobListItem::encoded_len, BlobListItem::key)?;
                OpResponse::BlobList { items, next_marker }
            }
            OpRequest::PutBlock(p) => {
                let lease = self.lease_write(&p.target, p.lease_id, cancel)?;
                let segs = self.data_out(layout)?;
                let mut src = GuestSource::new(mem, &segs, cancel);
                let content_crc64 = store.put_block(&p.target, &p.block_id, &mut src, p.content_crc64).map_err(se)?;
                lease.committed();
                OpResponse::BlockStaged { content_crc64 }
            }
            OpRequest::PutBlockList(p) => {
                let lease = self.lease_write(&p.target, p.conditions.lease_id, cancel)?;
                let written = store.put_block_list(p, txn).map_err(se)?;
                lease.committed();
                OpResponse::BlobWritten(written)
            }
            OpRequest::GetBlockList { target, list_type } => {
                OpResponse::BlockList { blocks: store.get_block_list(target, *list_type).map_err(se)? }
            }
            OpRequest::SetBlobProperties(s) => {
                let lease = self.lease_write_existing(&s.target, s.conditions.lease_id, cancel)?;
                let written = store.set_blob_properties(s, txn).map_err(se)?;
                lease.committed();
                OpResponse::BlobWritten(written)
            }
            OpRequest::CopyBlob(c) => {
                self.lease_read(&c.source, &c.source_conditions, cancel)
                    .map_err(|f| self.absent_first(&c.source, f, cancel))?;
                let lease = self.lease_write(&c.target, c.conditions.lease_id, cancel)?;
                let written = store.copy_blob(c, txn).map_err(se)?;
                lease.committed();
                OpResponse::BlobWritten(written)
            }
            OpRequest::LeaseBlob(l) => OpResponse::Lease(self.lease_blob(l, cancel)?),
        })
    }

    /// The valid bytes of a PUT's data buffer.
    fn data_out(&self, layout: &BufferLayout) -> Result<Vec<Segment>, OpFailure> {
        let valid = u64::from(layout.data_valid);
        match layout.data.readable() {
            Some(segs) => {
                sub_range(segs, 0, valid).map_err(|_| fail(BlobError::InvalidRequest, "data_valid past buffer"))
            }
            None if valid == 0 => Ok(Vec::new()),
            None => Err(fail(BlobError::InvalidRequest, "data buffer is not device-readable")),
        }
    }
}

/// A lease action's failure: the table's, or the blob check's.
enum LeaseOpError {
    Refused(Refused),
    Op(OpFailure),
}

impl From<Refused> for LeaseOpError {
    fn from(e: Refused) -> Self {
        Self::Refused(e)
    }
}

impl From<OpFailure> for LeaseOpError {
    fn from(e: OpFailure) -> Self {
        Self::Op(e)
    }
}

/// Keep as many entries as fit in `cap` response bytes; when cut, the marker
/// becomes the last kept entry's name (markers are exclusive).
fn fit_list<T>(
    mut items: Vec<T>,
    next_marker: String,
    cap: usize,
    len: impl Fn(&T) -> usize,
    name: impl Fn(&T) -> &str,
) -> Result<(Vec<T>, String), OpFailure> {
    let fixed = OP_HEADER_SIZE + 4 + 2;
    let mut used = 0usize;
    let mut kept = 0usize;
    for (i, item) in items.iter().enumerate() {
        let marker_len = if i + 1 == items.len() { next_marker.len() } else { name(item).len() };
        let l = len(item);
        if fixed + used + l + marker_len > cap {
            break;
        }
        used += l;
        kept += 1;
    }
    if kept == items.len() {
        if fixed + next_marker.len() > cap {
            return Err(fail(BlobError::BufferTooSmall, "response buffer too small for a listing"));
        }
        return Ok((items, next_marker));
    }
    if kept == 0 {
        return Err(fail(BlobError::BufferTooSmall, "response buffer too small for one entry"));
    }
    items.truncate(kept);
    let marker = items.last().map(|i| name(i).to_owned()).unwrap_or_default();
    Ok((items, marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_list_cuts_and_sets_marker() {
        let items: Vec<String> = (0..10).map(|i| format!("name-{i:02}")).collect();
        let len = |s: &String| s.len() + 3;
        // Room for exactly three 10-byte entries plus the marker.
        let cap = OP_HEADER_SIZE + 6 + 30 + 7;
        let (kept, marker) = fit_list(items.clone(), String::new(), cap, len, |s| s.as_str()).unwrap();
        assert_eq!(kept.len(), 3);
        assert_eq!(marker, "name-02");
        let (kept, marker) = fit_list(items.clone(), "m".into(), 10_000, len, |s| s.as_str()).unwrap();
        assert_eq!((kept.len(), marker.as_str()), (10, "m"));
        assert_eq!(fit_list(items, String::new(), 20, len, |s| s.as_str()).unwrap_err().0, BlobError::BufferTooSmall);
    }
}
