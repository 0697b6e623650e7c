//! The vhost-user face of the VSP: a `VhostUserBackend` whose queues feed the
//! engine, and the daemon loop serving one VMM connection at a time.

mod backend;
mod daemon;
mod queue;

pub use backend::BlobBackend;
pub use daemon::{DaemonError, Shutdown, serve};
