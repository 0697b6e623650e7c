//! The transaction record end to end through `Engine::serve`: a write
//! re-sent with its transaction id answers its first result, whatever
//! happened to the blob since, and across a restart of the engine.

use super::*;
use crate::engine::{TxnRecord, TxnRecordLimits};

fn persistent(store: Arc<dyn crate::store::BlobStore>, dir: &std::path::Path) -> Engine {
    let record = TxnRecord::open(dir, 0o700, TxnRecordLimits::default()).unwrap();
    Engine::with_record(store, Limits::default(), 1, record)
}

fn delete_op(c: &str, b: &str) -> OpRequest {
    OpRequest::DeleteBlob { target: blob_ref(c, b), conditions: Conditions::none() }
}

fn serve(h: &Harness, s: &Sent) -> VspResponse {
    h.engine.serve(&h.mem, &s.request, &CancelToken::new(None))
}

#[test]
fn a_put_replayed_after_a_delete_answers_its_first_result_and_the_blob_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::with_engine(persistent(Arc::new(MemoryStore::new()), dir.path()));
    h.mkcontainer("box");
    let put = h.prepare(&put_op("box", "b", Conditions::none()), b"first", 0, 4096);
    let first = serve(&h, &put);
    let written = h.decode(&put, &first).unwrap();
    h.ok(&delete_op("box", "b"), &[]);
    let again = serve(&h, &put);
    assert_eq!(again, first);
    assert_eq!(h.decode(&put, &again).unwrap(), written, "the first execution's BlobWritten");
    assert_eq!(h.get("box", "b", None, 64).unwrap_err(), BlobError::BlobNotFound, "not written a second time");
}

#[test]
fn a_delete_replayed_after_a_recreate_leaves_the_new_blob() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::with_engine(persistent(Arc::new(MemoryStore::new()), dir.path()));
    h.mkcontainer("box");
    h.ok(&put_op("box", "b", Conditions::none()), b"old");
    let del = h.prepare(&delete_op("box", "b"), &[], 0, 4096);
    let first = serve(&h, &del);
    assert_eq!(first.error.get(), 0);
    h.ok(&put_op("box", "b", Conditions::none()), b"new");
    assert_eq!(serve(&h, &del), first, "answered as the first time");
    assert_eq!(h.get("box", "b", None, 64).unwrap(), b"new", "the new blob is not deleted");
}

#[test]
fn a_failed_delete_replayed_after_a_create_does_not_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::with_engine(persistent(Arc::new(MemoryStore::new()), dir.path()));
    h.mkcontainer("box");
    let del = h.prepare(&delete_op("box", "late"), &[], 0, 4096);
    assert_eq!(h.decode(&del, &serve(&h, &del)).unwrap_err(), BlobError::BlobNotFound);
    h.ok(&put_op("box", "late", Conditions::none()), b"made after");
    assert_eq!(h.decode(&del, &serve(&h, &del)).unwrap_err(), BlobError::BlobNotFound, "its first result");
    assert_eq!(h.get("box", "late", None, 64).unwrap(), b"made after");
}

#[test]
fn outcomes_survive_a_restart_of_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn crate::store::BlobStore> = Arc::new(MemoryStore::new());
    let mut h = Harness::with_engine(persistent(store.clone(), dir.path()));
    h.mkcontainer("box");
    let put = h.prepare(&put_op("box", "b", Conditions::none()), b"first", 0, 4096);
    let first = serve(&h, &put);
    h.ok(&delete_op("box", "b"), &[]);
    // A new daemon over the same store and record directory.
    h.engine = Arc::new(persistent(store, dir.path()));
    assert_eq!(serve(&h, &put), first);
    assert_eq!(h.get("box", "b", None, 64).unwrap_err(), BlobError::BlobNotFound);
}
