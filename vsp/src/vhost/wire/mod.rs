//! The wire tap: the VSP's side of a VMM connection passes through here
//! before it reaches vhost-user-backend's handler. Every message is
//! forwarded unchanged, descriptors included, both ways, and logged at
//! trace level (`RUST_LOG=vmblob_vsp::vhost::wire=trace`), because neither
//! the vhost crate nor vhost-user-backend logs the protocol, and a failing
//! handshake with a real VMM is otherwise unreadable. The tap is also where
//! a ring address outside guest memory is refused for its queue alone
//! ([`guard`]): forwarded, it would make the handler drop the connection.
//! And it is where INFLIGHT_SHMFD is implemented ([`inflight`]): offered,
//! and GET/SET_INFLIGHT_FD answered here, never forwarded, because
//! vhost-user-backend refuses both.
//!
//! Why a tap and not a patch: vhost-user-backend's request handler is
//! crate-private, so the messages can only be seen on the socket. The
//! backend is started on a private socket (a 0700 directory, unlinked once
//! connected) and the tap pumps between it and the VMM's stream, one thread
//! per direction. Requests the backend sends on its own channel
//! (`SET_BACKEND_REQ_FD`) travel on the socket that message carries, not
//! through here. The cost is one copy of each control message; the data
//! path (shared memory and eventfds) never passes through.

mod guard;
mod inflight;
mod message;

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::Listener;

use crate::vhost::inflight::InflightSlot;

use guard::{Guard, Verdict};
use inflight::{Handled, InflightWire};
pub use message::WireError;
use message::{Message, recv, send};

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("private backend socket in {dir}: {source}")]
    Private { dir: String, source: std::io::Error },
    #[error("cannot start the backend on its private socket: {0}")]
    Backend(vhost_user_backend::Error),
}

/// A running tap; dropping it ends both directions and joins the pumps.
pub struct Tap {
    vmm: Arc<UnixStream>,
    backend: Arc<UnixStream>,
    pumps: Vec<JoinHandle<()>>,
}

/// A 0700 directory for the backend's socket, removed on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> std::io::Result<PrivateDir> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        let name = format!("vmblob-vsp-{}-{:016x}", std::process::id(), u64::from_le_bytes(nonce));
        let dir = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(PrivateDir(dir))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Start the backend with `start` (which accepts one connection on the
/// listener it is given) behind a tap on `vmm`. An inflight region the
/// frontend sets lands in `slot`; `queues` is how many the backend serves.
pub fn splice(
    vmm: UnixStream,
    slot: Arc<InflightSlot>,
    queues: u16,
    start: impl FnOnce(&mut Listener) -> Result<(), vhost_user_backend::Error>,
) -> Result<Tap, TapError> {
    let dir = PrivateDir::new()
        .map_err(|source| TapError::Private { dir: std::env::temp_dir().display().to_string(), source })?;
    let dir_name = dir.0.display().to_string();
    let private = |source| TapError::Private { dir: dir_name.clone(), source };
    let path = dir.0.join("backend.sock");
    let mut listener = Listener::new(&path, true).map_err(|e| private(std::io::Error::other(e.to_string())))?;
    // Connecting before the accept is fine: the connection waits in the backlog.
    let backend = UnixStream::connect(&path).map_err(private)?;
    start(&mut listener).map_err(TapError::Backend)?;
    drop(listener);
    drop(dir);
    let vmm = Arc::new(vmm);
    let backend = Arc::new(backend);
    let vmm_writes = Arc::new(Mutex::new(()));
    let to_backend = {
        let (vmm, backend, writes) = (vmm.clone(), backend.clone(), vmm_writes.clone());
        std::thread::Builder::new()
            .name("vhost-user tap: vmm→vsp".into())
            .spawn(move || pump_requests(&vmm, &backend, &writes, InflightWire::new(slot, queues)))
    };
    let to_vmm = {
        let (vmm, backend, writes) = (vmm.clone(), backend.clone(), vmm_writes);
        std::thread::Builder::new()
            .name("vhost-user tap: vsp→vmm".into())
            .spawn(move || pump_replies(&backend, &vmm, &writes))
    };
    let pumps = [to_backend, to_vmm].into_iter().collect::<Result<Vec<_>, _>>().map_err(private)?;
    Ok(Tap { vmm, backend, pumps })
}

/// Either side gone: end both, so the backend sees the VMM leave and the VMM sees the backend
/// stop.
fn close_both(a: &UnixStream, b: &UnixStream) {
    let _ = a.shutdown(std::net::Shutdown::Both);
    let _ = b.shutdown(std::net::Shutdown::Both);
}

fn pump_requests(vmm: &UnixStream, backend: &UnixStream, vmm_writes: &Mutex<()>, mut inflight: InflightWire) {
    let mut guard = Guard::default();
    let answer = |reply: &Message| {
        trace("vsp → vmm (tap)", reply);
        let _w = vmm_writes.lock().unwrap_or_else(|e| e.into_inner());
        send(vmm, reply)
    };
    loop {
        let mut msg = match recv(vmm) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                log::warn!("vhost-user: bad message from the VMM: {e}");
                break;
            }
        };
        trace("vmm → vsp", &msg);
        let sent = match inflight.check(&mut msg) {
            Handled::Reply(reply) => reply.as_ref().map_or(Ok(()), answer),
            Handled::No => match guard.check(&msg) {
                Verdict::Forward => send(backend, &msg),
                Verdict::Answer(None) => Ok(()),
                Verdict::Answer(Some(body)) => answer(&Message::reply(&msg, body)),
            },
        };
        if let Err(e) = sent {
            log::debug!("vhost-user tap: forwarding {} failed: {e}", msg.frontend_name());
            break;
        }
    }
    close_both(vmm, backend);
}

fn pump_replies(backend: &UnixStream, vmm: &UnixStream, vmm_writes: &Mutex<()>) {
    loop {
        let mut msg = match recv(backend) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                log::debug!("vhost-user tap: reading the backend failed: {e}");
                break;
            }
        };
        inflight::offer(&mut msg);
        trace("vsp → vmm", &msg);
        let _w = vmm_writes.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = send(vmm, &msg) {
            log::debug!("vhost-user tap: replying {} failed: {e}", msg.frontend_name());
            break;
        }
    }
    close_both(backend, vmm);
}

fn trace(dir: &str, msg: &Message) {
    log::trace!(
        "{dir}: {} flags {:#x}, {} bytes{} {}",
        msg.frontend_name(),
        msg.flags,
        msg.body.len(),
        if msg.fds.is_empty() { String::new() } else { format!(", {} fds", msg.fds.len()) },
        msg.body_hex()
    );
}

impl Drop for Tap {
    fn drop(&mut self) {
        close_both(&self.vmm, &self.backend);
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }
}
