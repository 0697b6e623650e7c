//! The vhost-user face of the VSP: a `VhostUserBackend` whose queues feed the
//! engine through the runner pool, and the daemon loop serving one VMM
//! connection at a time.

mod backend;
mod chain;
mod completion;
mod daemon;
mod inflight;
mod queue;
mod request;
mod ring;
mod session;
pub mod wire;

pub use backend::{BlobBackend, QueueOptions, ShutDown};
pub use daemon::{DaemonError, Shutdown, SocketOptions, serve};
pub use request::VirtioRequest;

#[cfg(test)]
mod tests;
