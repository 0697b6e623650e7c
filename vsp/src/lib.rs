//! The vmblob host service (VSP): a transport-agnostic engine serving blob
//! requests out of guest memory, pluggable stores, and the vhost-user daemon.
#![forbid(unsafe_code)]

pub mod args;
pub mod engine;
pub mod store;
pub mod vhost;

use std::sync::Arc;

pub use args::{Args, StoreSpec, VspConfig};
pub use vhost::Shutdown;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum VspError {
    #[error("cannot open store: {0}")]
    Store(std::io::Error),
    #[error(transparent)]
    Daemon(#[from] vhost::DaemonError),
}

/// Open the configured store.
pub fn open_store(spec: &StoreSpec, limits: &engine::Limits) -> Result<Arc<dyn store::BlobStore>, VspError> {
    match spec {
        StoreSpec::Dir(dir) => {
            let options = store::fs::FsOptions { max_blob_size: limits.max_blob_size, ..Default::default() };
            Ok(Arc::new(store::fs::FsStore::open_with(dir, options).map_err(VspError::Store)?))
        }
    }
}

/// Run the daemon until `shutdown` is requested (or `max_connections` served).
pub fn run(config: &VspConfig, shutdown: &Shutdown) -> Result<(), VspError> {
    let store = open_store(&config.store, &config.limits)?;
    let engine = Arc::new(engine::Engine::new(store, config.limits.clone(), config.queues as u16));
    let queues = vhost::QueueOptions {
        queues: config.queues,
        queue_size: config.queue_size,
        workers: config.workers,
        poll: config.poll,
    };
    vhost::serve(&config.socket_path, engine, &queues, shutdown, config.max_connections)?;
    Ok(())
}
