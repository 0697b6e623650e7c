//! Blob leases, kept by the VSP for every store (Azure's Lease Blob; op
//! version 3). The store knows nothing of them: the engine asks the table
//! before each blob operation and fills the lease into the properties it
//! answers.
//!
//! A lease must not slip in between a write's check and its commit, so the
//! table also locks names: a write holds its blob's name shared from the
//! check until the store has committed ([`WriteGuard`]), an acquire holds it
//! alone. An acquire therefore waits for the writes in flight on that blob
//! (and new ones wait for it), as if it came after them. The other actions
//! do not wait: the holder must be able to renew its lease while its own
//! long upload is in flight.

mod persist;
mod state;

pub use persist::{FileStorage, LeaseStorage};
pub use state::{Answer, Lease, LeaseError, Phase};

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{BlobListItem, BlobRef, LeaseAction, LeaseId, LeaseProperties};

use crate::engine::CancelToken;
use crate::store::context::current_cancel;

/// Most leases (held, expired or broken) the table keeps: a bound on its
/// memory and on the bytes rewritten per change. Past it an acquire first
/// forgets spent leases, then is refused.
pub const MAX_LEASES: usize = 10_000;

/// How often a waiter looks at its request's cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Why the table refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The request was cancelled (rescind or timeout) while it waited.
    #[error("cancelled while waiting for the blob's lease lock")]
    Cancelled,
    #[error("more than {MAX_LEASES} leases")]
    Full,
    /// The table could not be saved: the change was not made.
    #[error("cannot save the lease table: {0}")]
    Io(io::Error),
    /// Containers kept being deleted while the acquire looked at the blob.
    #[error("the container changed while the lease was taken; try again")]
    Raced,
}

/// The blob a lease is on: `container/blob` (a container name has no `/`).
fn key(t: &BlobRef) -> String {
    format!("{}/{}", t.container.as_str(), t.blob.as_str())
}

/// A key's container and blob.
fn split(k: &str) -> Option<(String, String)> {
    k.split_once('/').map(|(c, b)| (c.to_owned(), b.to_owned()))
}

fn saved(k: &str, lease: Lease) -> Option<persist::SavedLease> {
    split(k).map(|(container, blob)| persist::SavedLease { container, blob, lease })
}

#[derive(Default)]
struct Busy {
    writers: usize,
    exclusive: bool,
    /// Lease actions waiting: new writes wait behind them, so a stream of
    /// writes cannot starve an acquire.
    exclusive_waiting: usize,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<String, Lease>,
    busy: HashMap<String, Busy>,
    /// Bumped by each DeleteContainer: an acquire whose blob check ran
    /// across one looks again, so no lease outlives its container.
    container_deletes: u64,
    /// The last save failed: what is on disk may be stale until the next one.
    dirty: bool,
    /// The storage's log asked to be folded into a whole save.
    compact_pending: bool,
}

pub type Clock = fn() -> u64;

pub struct LeaseTable {
    inner: Mutex<Inner>,
    changed: Condvar,
    storage: Option<Box<dyn LeaseStorage>>,
    /// Held from taking a snapshot until it is saved, so the last save is of
    /// the newest table.
    saving: Mutex<()>,
    clock: Clock,
    /// Whether any lease is kept: a read of a blob while none is (the usual
    /// case) shows "available" without taking the lock.
    any: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch: lease times survive a restart.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_id() -> LeaseId {
    let mut id = [0u8; 16];
    if getrandom::fill(&mut id).is_err() {
        // No entropy: time and a counter still make ids that do not repeat here.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        id[..8].copy_from_slice(&now_ms().to_le_bytes());
        id[8..].copy_from_slice(&N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
    // A version-4 GUID, as Azure makes them.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    LeaseId(id)
}

impl LeaseTable {
    /// A table kept in memory only (tests, and a VSP told not to persist).
    pub fn in_memory() -> Self {
        Self::build(None, now_ms)
    }

    /// The table `storage` last saved; changes are saved there.
    pub fn open(storage: Box<dyn LeaseStorage>) -> io::Result<Self> {
        let saved = match storage.load()? {
            Some(bytes) => persist::decode(&bytes)
                .map_err(|e| io::Error::new(e.kind(), format!("lease table {}: {e}", storage.describe())))?,
            None => persist::Saved::default(),
        };
        let table = Self::build(Some(storage), now_ms);
        let mut g = lock(&table.inner);
        for s in saved.leases {
            let names_ok =
                ContainerName::new(&s.container).is_ok() && vmblob_protocol::names::BlobName::new(&s.blob).is_ok();
            if !s.lease.is_valid() || !names_ok {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("lease table: bad lease {s:?}")));
            }
            g.leases.insert(format!("{}/{}", s.container, s.blob), s.lease);
        }
        table.any.store(!g.leases.is_empty(), Ordering::Release);
        drop(g);
        Ok(table)
    }

    fn build(storage: Option<Box<dyn LeaseStorage>>, clock: Clock) -> Self {
        let any = AtomicBool::new(false);
        Self { inner: Mutex::default(), changed: Condvar::new(), storage, saving: Mutex::new(()), clock, any }
    }

    /// The same table reading time from `clock` (ms since the Unix epoch).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Wait on the condvar until `blocked` is false; a cancelled request stops.
    fn wait_while<'a>(
        &self,
        mut g: MutexGuard<'a, Inner>,
        cancel: Option<&CancelToken>,
        blocked: impl Fn(&Inner) -> bool,
    ) -> Result<MutexGuard<'a, Inner>, (MutexGuard<'a, Inner>, Refused)> {
        while blocked(&g) {
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return Err((g, Refused::Cancelled));
            }
            g = self.changed.wait_timeout(g, CANCEL_POLL).unwrap_or_else(PoisonError::into_inner).0;
        }
        Ok(g)
    }

    /// Admit a write (or delete) of `target` naming `given`: refused if the
    /// lease does not allow it; otherwise the name is held shared until the
    /// guard goes.
    pub fn admit_write(&self, target: &BlobRef, given: Option<&LeaseId>) -> Result<WriteGuard<'_>, Refused> {
        let k = key(target);
        let cancel = current_cancel();
        let g = lock(&self.inner);
        let blocked = |i: &Inner| i.busy.get(&k).is_some_and(|b| b.exclusive || b.exclusive_waiting > 0);
        let mut g = self.wait_while(g, cancel.as_ref(), blocked).map_err(|(_, e)| e)?;
        let now = self.now();
        let lease = g.leases.get(&k).copied();
        state::check_write(lease.as_ref(), given, now)?;
        g.busy.entry(k.clone()).or_default().writers += 1;
        Ok(WriteGuard { table: self, key: k, spent: lease.filter(|l| l.is_spent(now)) })
    }

    /// Whether a read of `target` naming `given` may go ahead.
    pub fn check_read(&self, target: &BlobRef, given: Option<&LeaseId>) -> Result<(), LeaseError> {
        if given.is_none() {
            return Ok(());
        }
        state::check_read(lock(&self.inner).leases.get(&key(target)), given, self.now())
    }

    /// The blob's lease as its properties show it.
    pub fn properties(&self, target: &BlobRef) -> LeaseProperties {
        if !self.any.load(Ordering::Acquire) {
            return LeaseProperties::default();
        }
        let g = lock(&self.inner);
        g.leases.get(&key(target)).map(|l| l.properties(self.now())).unwrap_or_default()
    }

    /// Fill in the lease of every blob in a listing page of `container`.
    pub fn fill_listing(&self, container: &ContainerName, items: &mut [BlobListItem]) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let g = lock(&self.inner);
        let now = self.now();
        let mut k = String::new();
        for item in items {
            if let BlobListItem::Blob { name, properties } = item {
                k.clear();
                k.push_str(container.as_str());
                k.push('/');
                k.push_str(name);
                properties.lease = g.leases.get(&k).map(|l| l.properties(now)).unwrap_or_default();
            }
        }
    }

    /// Run `action` on `target`'s lease (an acquire alone on the name).
    /// `current` is asked first whether the blob exists and its conditions
    /// hold; its error is returned as it is.
    pub fn act<T, E: From<Refused>>(
        &self,
        target: &BlobRef,
        action: &LeaseAction,
        mut current: impl FnMut() -> Result<T, E>,
    ) -> Result<(T, Answer), E> {
        let k = key(target);
        let _alone = match action {
            LeaseAction::Acquire { .. } => Some(self.alone(&k)?),
            _ => None,
        };
        for _ in 0..3 {
            let deletes = lock(&self.inner).container_deletes;
            let blob = current()?;
            match self.apply(&k, action, deletes) {
                Err(Refused::Raced) => continue,
                r => return Ok((blob, r?)),
            }
        }
        Err(Refused::Raced.into())
    }

    /// Hold `k` alone: wait for the writes in flight, keep new ones out.
    fn alone(&self, k: &str) -> Result<Alone<'_>, Refused> {
        let cancel = current_cancel();
        let mut g = lock(&self.inner);
        g.busy.entry(k.to_owned()).or_default().exclusive_waiting += 1;
        let waited =
            self.wait_while(g, cancel.as_ref(), |i| i.busy.get(k).is_some_and(|b| b.exclusive || b.writers > 0));
        let mut g = match waited {
            Ok(g) => g,
            Err((mut g, e)) => {
                self.release(&mut g, k, |b| b.exclusive_waiting -= 1);
                return Err(e);
            }
        };
        let b = g.busy.entry(k.to_owned()).or_default();
        b.exclusive_waiting -= 1;
        b.exclusive = true;
        Ok(Alone { table: self, key: k.to_owned() })
    }

    /// Apply `action` to `k`'s lease: saved first, then made in memory, so
    /// a change that cannot be saved is not made (a lease a restart would
    /// lose is no lock). The table lock is not held while saving.
    fn apply(&self, k: &str, action: &LeaseAction, deletes_seen: u64) -> Result<Answer, Refused> {
        let saving = lock(&self.saving);
        let (after, evict, answer, dirty, live) = {
            let g = lock(&self.inner);
            if g.container_deletes != deletes_seen {
                return Err(Refused::Raced);
            }
            let now = self.now();
            let before = g.leases.get(k).copied();
            let (after, answer) = state::apply(before.as_ref(), action, now, random_id())?;
            if after == before {
                return Ok(answer);
            }
            let mut evict = HashSet::new();
            if before.is_none() && g.leases.len() >= MAX_LEASES {
                evict = g.leases.iter().filter(|(_, l)| l.is_spent(now)).map(|(k, _)| k.clone()).collect();
                if g.leases.len() - evict.len() >= MAX_LEASES {
                    return Err(Refused::Full);
                }
            }
            let live = g.leases.len() - evict.len() + usize::from(before.is_none()) - usize::from(after.is_none());
            (after, evict, answer, g.dirty, live)
        };
        let mut gone: Vec<String> = evict.iter().cloned().collect();
        if after.is_none() {
            gone.push(k.to_owned());
        }
        let change = persist::Change {
            set: after.and_then(|l| saved(k, l)),
            gone: gone.iter().filter_map(|k| split(k)).collect(),
        };
        let compact = self.persist(&change, live, dirty, || {
            let g = lock(&self.inner);
            let own = k.to_owned();
            let kept = g.leases.iter().filter(|(key, _)| key.as_str() != k && !evict.contains(*key));
            self.encode(kept.chain(after.as_ref().map(|l| (&own, l))))
        })?;
        let mut g = lock(&self.inner);
        g.leases.retain(|key, _| !evict.contains(key));
        match after {
            Some(l) => g.leases.insert(k.to_owned(), l),
            None => g.leases.remove(k),
        };
        self.any.store(!g.leases.is_empty(), Ordering::Release);
        drop(g);
        drop(saving);
        if compact {
            self.compact();
        }
        Ok(answer)
    }

    /// Make `change` durable (the caller holds `saving`): appended to the
    /// storage's log, or, where it keeps none or the last save failed, the
    /// whole table `whole` gives. Whether the log asks to be compacted.
    fn persist(
        &self,
        change: &persist::Change,
        live: usize,
        dirty: bool,
        whole: impl FnOnce() -> Result<Option<Vec<u8>>, Refused>,
    ) -> Result<bool, Refused> {
        let Some(storage) = &self.storage else { return Ok(false) };
        match (!dirty).then(|| storage.record(change, live)).flatten() {
            Some(Ok(r)) => {
                let compact = r == persist::Recorded::Compact;
                lock(&self.inner).compact_pending |= compact;
                Ok(compact)
            }
            Some(Err(e)) => {
                // Not made, so it must not come back: the whole table as it
                // stands is saved over it (if that fails too, `dirty` makes
                // the next change a whole save).
                let _ = self.encode(lock(&self.inner).leases.iter()).and_then(|b| self.save(b));
                Err(Refused::Io(e))
            }
            None => self.save(whole()?).map(|()| false),
        }
    }

    /// Save the whole table, emptying the log; a failure is logged (the log
    /// still holds every change).
    fn compact(&self) {
        let _saving = lock(&self.saving);
        // Several changes may have asked; one save does for all of them.
        let bytes = {
            let mut g = lock(&self.inner);
            if !std::mem::take(&mut g.compact_pending) {
                return;
            }
            self.encode(g.leases.iter())
        };
        if let Err(e) = bytes.and_then(|b| self.save(b)) {
            log::warn!("cannot compact the lease log: {e}");
        }
    }

    /// The table's bytes (None: it is kept in memory only).
    fn encode<'a>(&self, leases: impl Iterator<Item = (&'a String, &'a Lease)>) -> Result<Option<Vec<u8>>, Refused> {
        if self.storage.is_none() {
            return Ok(None);
        }
        let leases = leases.filter_map(|(k, l)| saved(k, *l)).collect();
        persist::encode(&persist::Saved { leases, through: 0 }).map(Some).map_err(Refused::Io)
    }

    /// Save `bytes` whole (the caller holds `saving`). Not cut short by the
    /// request's cancel token: a save the store may still complete must not
    /// be reported as not made.
    fn save(&self, bytes: Option<Vec<u8>>) -> Result<(), Refused> {
        let (Some(storage), Some(bytes)) = (&self.storage, bytes) else { return Ok(()) };
        let uncancelled = CancelToken::new(None);
        let r = crate::store::context::with_cancel(&uncancelled, || storage.save(&bytes));
        lock(&self.inner).dirty = r.is_err();
        r.map_err(Refused::Io)
    }

    /// Forget the leases `gone` names. The write that ended them has
    /// committed, so they go from memory even if the save fails (logged; the
    /// next save of the table rewrites it).
    fn forget(&self, gone: impl Fn(&str, &Lease) -> bool) {
        let saving = lock(&self.saving);
        let (keys, dirty, live) = {
            let mut g = lock(&self.inner);
            let keys: Vec<String> = g.leases.iter().filter(|(k, l)| gone(k, l)).map(|(k, _)| k.clone()).collect();
            if keys.is_empty() && !g.dirty {
                return;
            }
            for k in &keys {
                g.leases.remove(k);
            }
            self.any.store(!g.leases.is_empty(), Ordering::Release);
            (keys, g.dirty, g.leases.len())
        };
        let change = persist::Change { set: None, gone: keys.iter().filter_map(|k| split(k)).collect() };
        match self.persist(&change, live, dirty, || self.encode(lock(&self.inner).leases.iter())) {
            Ok(true) => {
                drop(saving);
                self.compact();
            }
            Ok(false) => {}
            Err(e) => log::warn!("{e} (a deleted or rewritten blob's old lease is on disk until the next save)"),
        }
    }

    /// The container is gone, and its blobs' leases with it.
    pub fn forget_container(&self, container: &ContainerName) {
        let prefix = format!("{}/", container.as_str());
        let any = {
            // Under `saving`: an acquire's check and its lease change (made
            // under it too) fall wholly before this, and its lease is seen
            // here, or wholly after, and it sees the count moved.
            let _saving = lock(&self.saving);
            let mut g = lock(&self.inner);
            g.container_deletes += 1;
            g.leases.keys().any(|k| k.starts_with(&prefix))
        };
        if any {
            self.forget(|k, _| k.starts_with(&prefix));
        }
    }

    fn release(&self, g: &mut Inner, k: &str, f: impl FnOnce(&mut Busy)) {
        if let Some(b) = g.busy.get_mut(k) {
            f(b);
            if b.writers == 0 && !b.exclusive && b.exclusive_waiting == 0 {
                g.busy.remove(k);
            }
        }
        self.changed.notify_all();
    }
}

/// A write admitted under its blob's lease; the name stays held until it goes.
pub struct WriteGuard<'a> {
    table: &'a LeaseTable,
    key: String,
    /// The expired or broken lease the write was admitted over.
    spent: Option<Lease>,
}

impl WriteGuard<'_> {
    /// The write committed: the expired or broken lease it was admitted
    /// over is forgotten, as a write on Azure forgets it (its holder can no
    /// longer renew it). One that ran out while the write was in flight
    /// stays renewable.
    pub fn committed(self) {
        if let Some(spent) = self.spent {
            self.table.forget(|k, l| k == self.key && *l == spent);
        }
    }

    /// The blob was deleted, and its lease with it.
    pub fn deleted(self) {
        if lock(&self.table.inner).leases.contains_key(&self.key) {
            self.table.forget(|k, _| k == self.key);
        }
    }
}

/// An acquire's hold of its name.
struct Alone<'a> {
    table: &'a LeaseTable,
    key: String,
}

impl Drop for Alone<'_> {
    // In Drop, so that a panic in the blob check cannot leave the name locked.
    fn drop(&mut self) {
        let mut g = lock(&self.table.inner);
        self.table.release(&mut g, &self.key, |b| b.exclusive = false);
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let mut g = lock(&self.table.inner);
        self.table.release(&mut g, &self.key, |b| b.writers -= 1);
    }
}

#[cfg(test)]
mod tests;
