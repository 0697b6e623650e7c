//! The vmblob host service (VSP): a transport-agnostic engine serving blob
//! requests out of guest memory, pluggable stores, and the vhost-user daemon.
#![forbid(unsafe_code)]

pub mod args;
pub mod engine;
pub mod lease;
pub mod runner;
pub mod store;
pub mod vhost;
pub mod vmbus;

use std::sync::Arc;

pub use args::{Args, StoreSpec, VspConfig};
pub use vhost::Shutdown;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum VspError {
    #[error("cannot open store: {0}")]
    Store(std::io::Error),
    #[error("cannot open object store: {0}")]
    ObjectStore(store::StoreError),
    #[error("cannot open the transaction record in {0}: {1}")]
    TxnRecord(std::path::PathBuf, std::io::Error),
    #[error("cannot open the lease table {0}: {1}")]
    Leases(String, std::io::Error),
    #[error(transparent)]
    Fault(#[from] engine::fault::BadFault),
    #[error(transparent)]
    Daemon(#[from] vhost::DaemonError),
}

/// A store, and where an object store keeps the VSP's leases (in itself).
type Opened = (Arc<dyn store::BlobStore>, Option<Box<dyn lease::LeaseStorage>>);

/// Open the configured store.
pub fn open_store(
    spec: &StoreSpec,
    limits: &engine::Limits,
    group_access: bool,
) -> Result<Arc<dyn store::BlobStore>, VspError> {
    open_store_and_leases(spec, limits, group_access).map(|(s, _)| s)
}

fn open_store_and_leases(spec: &StoreSpec, limits: &engine::Limits, group_access: bool) -> Result<Opened, VspError> {
    match spec {
        StoreSpec::Dir(dir) => {
            let options = store::fs::FsOptions {
                max_blob_size: limits.max_blob_size,
                staged_block_ttl: limits.staged_block_ttl,
                group_access,
                ..Default::default()
            };
            Ok((Arc::new(store::fs::FsStore::open_with(dir, options).map_err(VspError::Store)?), None))
        }
        StoreSpec::Azure(az) => {
            az.ensure_container().map_err(VspError::ObjectStore)?;
            // Listing from an offset needs `startFrom`, which Azurite lacks.
            object_store(az.build(), &az.prefix, ListingOrder::Azure, limits)
        }
        StoreSpec::S3(s3) => object_store(s3.build(), &s3.prefix, ListingOrder::S3, limits),
    }
}

/// How a backend lists: Azure by UTF-16 code units, scanned from the start
/// (`startFrom` is missing in Azurite); S3 by bytes, from an offset (start-after).
#[derive(PartialEq, Eq)]
enum ListingOrder {
    Azure,
    S3,
}

fn object_store(
    backend: Result<Arc<dyn object_store::ObjectStore>, store::StoreError>,
    root: &str,
    order: ListingOrder,
    limits: &engine::Limits,
) -> Result<Opened, VspError> {
    let options = store::object::ObjectOptions {
        max_blob_size: limits.max_blob_size,
        offset_listing: order == ListingOrder::S3,
        utf16_order: order == ListingOrder::Azure,
        // A rescind waits `drain_timeout` for everything: leave commits half of it.
        commit_grace: limits.drain_timeout / 2,
        staged_block_ttl: limits.staged_block_ttl,
        janitor_interval: store::object::janitor::interval(limits.staged_block_ttl),
        ..Default::default()
    };
    let backend = backend.map_err(VspError::ObjectStore)?;
    let store = Arc::new(store::object::ObjectBlobStore::new(backend, root, options).map_err(VspError::ObjectStore)?);
    store.start_janitor().map_err(|e| VspError::ObjectStore(e.into()))?;
    let leases = store::object::leases::ObjectLeaseStorage::new(store.clone());
    Ok((store, Some(Box::new(leases))))
}

/// The transaction record, persisted where the config says (opened after the
/// store, so the embedded store's lock already guards `<root>/txn`).
fn open_txn_record(config: &VspConfig) -> Result<engine::TxnRecord, VspError> {
    let limits = config.limits.txn_record;
    match &config.txn_record_dir {
        Some(dir) => {
            let mode = if config.store_group_access { 0o770 } else { 0o700 };
            engine::TxnRecord::open(dir, mode, limits).map_err(|e| VspError::TxnRecord(dir.clone(), e))
        }
        None => {
            log::warn!("no --txn-record-dir: write outcomes are remembered in memory only (lost on restart)");
            Ok(engine::TxnRecord::in_memory(limits))
        }
    }
}

/// The lease table: in `--lease-dir` (the embedded store's default is
/// `<root>/leases`), else in the object store itself.
fn open_leases(
    config: &VspConfig,
    in_store: Option<Box<dyn lease::LeaseStorage>>,
) -> Result<lease::LeaseTable, VspError> {
    let storage: Box<dyn lease::LeaseStorage> = match (&config.lease_dir, in_store) {
        (Some(dir), _) => {
            let mode = if config.store_group_access { 0o770 } else { 0o700 };
            Box::new(lease::FileStorage::open(dir, mode).map_err(|e| VspError::Leases(dir.display().to_string(), e))?)
        }
        (None, Some(s)) => s,
        (None, None) => return Ok(lease::LeaseTable::in_memory()),
    };
    let name = storage.describe();
    lease::LeaseTable::open(storage).map_err(|e| VspError::Leases(name, e))
}

/// Run the daemon until `shutdown` is requested (or `max_connections` served).
pub fn run(config: &VspConfig, shutdown: &Shutdown) -> Result<(), VspError> {
    let (store, lease_storage) = open_store_and_leases(&config.store, &config.limits, config.store_group_access)?;
    let record = open_txn_record(config)?;
    let leases = open_leases(config, lease_storage)?;
    let crash = engine::fault::CrashHook::from_env()?;
    let engine = engine::Engine::with_record(store, config.limits.clone(), config.queues as u16, record);
    let engine = Arc::new(engine.with_leases(leases).with_crash_hook(crash));
    let queues = vhost::QueueOptions {
        queues: config.queues,
        queue_size: config.queue_size,
        workers: config.workers,
        poll: config.poll,
    };
    let socket = vhost::SocketOptions { path: config.socket_path.clone(), group: config.socket_group };
    vhost::serve(&socket, engine, &queues, shutdown, config.max_connections)?;
    Ok(())
}
