//! Garbage collection in the bucket: what no request can still use.
//!
//! One pass ([`ObjectBlobStore::sweep`]) lists the hidden folders and the
//! top-level prefixes and removes:
//! - a blob's staged blocks once none of them is younger than
//!   `staged_block_ttl` (Azure's rule: uncommitted blocks go a week after the
//!   blob's last PutBlock);
//! - temp objects of whole-blob PUTs (`.vmblob/tmp/`) older than
//!   [`TEMP_GRACE`]: a temp object is copied and removed as soon as its upload
//!   completes, so an old one is the leftover of a crash;
//! - blobs, staged blocks and block lists of a container whose marker is
//!   gone: a `DeleteContainer` removes the marker first, so a crash in its
//!   middle leaves them. The marker is looked at again with the container's
//!   gate closed, so a container created since the listing is left alone.
//!
//! Only objects the listing saw are removed, so a block staged after the
//! listing stays. The daemon runs a pass at start and then every
//! `interval` on a background thread that holds the store weakly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, SystemTime};

use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectMeta;
use object_store::path::Path;
use vmblob_protocol::names::ContainerName;

use super::ObjectBlobStore;
use super::bridge::{is_not_found, store_err};
use crate::store::StoreError;

/// Age past which a temp object is a crash's leftover.
pub const TEMP_GRACE: Duration = Duration::from_secs(3600);

/// How often the daemon's janitor runs: an eighth of the TTL, between a
/// minute and ten (each pass lists the hidden folders, which costs requests).
pub fn interval(ttl: Duration) -> Duration {
    (ttl / 8).clamp(Duration::from_secs(60), Duration::from_secs(600))
}

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Expired staged blocks of live containers.
    pub staged: usize,
    pub temps: usize,
    /// Containers without a marker whose objects (blobs, staged blocks, block lists) were removed.
    pub dead_containers: usize,
}

impl Swept {
    fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// `.vmblob/<kind>/<container>/<blob hash>/<leaf>`: the container and the blob folder.
fn owner<'a>(base: &Path, key: &'a Path) -> Option<(&'a str, &'a str)> {
    let rest = key.as_ref().strip_prefix(base.as_ref())?.strip_prefix('/')?;
    let (container, rest) = rest.split_once('/')?;
    let (blob, _leaf) = rest.split_once('/')?;
    Some((container, blob))
}

fn modified(m: &ObjectMeta) -> SystemTime {
    SystemTime::from(m.last_modified)
}

impl ObjectBlobStore {
    fn list_all(&self, dir: &Path) -> Result<Vec<ObjectMeta>, StoreError> {
        let store = &*self.store;
        self.bridge.run(async { store.list(Some(dir)).try_collect().await.map_err(store_err) })
    }

    /// Deletes exactly `keys`, batched by the backend (`delete_stream`, as `delete_under`).
    fn delete_listed(&self, keys: Vec<Path>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        let listed = futures::stream::iter(keys.into_iter().map(Ok)).boxed();
        self.bridge.commit(async move {
            let mut results = store.delete_stream(listed);
            // Every key is tried: one already gone does not stop the rest.
            while let Some(r) = results.next().await {
                match r {
                    Err(e) if !is_not_found(&e) => return Err(store_err(e)),
                    _ => {}
                }
            }
            Ok(())
        })
    }

    /// Names of the live containers (those with a marker).
    fn live_containers(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.keys.markers_dir()?;
        Ok(self.list_all(&dir)?.iter().filter_map(|m| m.location.filename().map(str::to_owned)).collect())
    }

    /// One garbage-collection pass as of `now` (the module comment says what goes).
    pub fn sweep(&self, now: SystemTime) -> Result<Swept, StoreError> {
        let ttl = self.opts.staged_block_ttl;
        let live: BTreeSet<String> = self.live_containers()?.into_iter().collect();
        // Containers seen without a marker; each is checked again under its gate.
        let mut dead = BTreeSet::new();
        let mut swept = Swept::default();

        let staged_root = self.keys.staged_root()?;
        let mut by_blob: BTreeMap<(String, String), Vec<ObjectMeta>> = BTreeMap::new();
        for m in self.list_all(&staged_root)? {
            if let Some((c, b)) = owner(&staged_root, &m.location) {
                by_blob.entry((c.to_owned(), b.to_owned())).or_default().push(m);
            }
        }
        for ((container, _), blocks) in by_blob {
            if !live.contains(&container) {
                dead.insert(container);
                continue;
            }
            let newest = blocks.iter().map(modified).max().unwrap_or(now);
            if newest.checked_add(ttl).is_some_and(|t| t <= now) {
                swept.staged += blocks.len();
                self.delete_listed(blocks.into_iter().map(|m| m.location).collect())?;
            }
        }

        let lists_root = self.keys.block_lists_root()?;
        for m in self.list_all(&lists_root)? {
            if let Some((c, _)) = owner(&lists_root, &m.location).filter(|(c, _)| !live.contains(*c)) {
                dead.insert(c.to_owned());
            }
        }
        dead.extend(self.top_level_prefixes()?.into_iter().filter(|p| !live.contains(p)));

        let temps: Vec<Path> = self
            .list_all(&self.keys.temp_dir()?)?
            .into_iter()
            .filter(|m| modified(m).checked_add(TEMP_GRACE).is_some_and(|t| t <= now))
            .map(|m| m.location)
            .collect();
        swept.temps = temps.len();
        self.delete_listed(temps)?;

        for name in dead {
            // `.vmblob` and anything else that is no container name is not ours to judge.
            let Ok(container) = ContainerName::new(&name) else { continue };
            if self.clear_dead_container(&container)? {
                swept.dead_containers += 1;
            }
        }
        Ok(swept)
    }

    /// The first path segments under the root (guest containers' blob folders, and `.vmblob`).
    fn top_level_prefixes(&self) -> Result<Vec<String>, StoreError> {
        let root = self.keys.root_dir();
        let store = &*self.store;
        let listed = self.bridge.run(async { store.list_with_delimiter(root.as_ref()).await.map_err(store_err) })?;
        Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect())
    }

    /// Removes a container's leftovers if, with its gate closed, it still has no marker.
    fn clear_dead_container(&self, name: &ContainerName) -> Result<bool, StoreError> {
        let _gate = self.close_gate(name)?;
        if self.head(&self.keys.marker(name)?)?.is_some() {
            return Ok(false);
        }
        self.clear_container_objects(name)?;
        Ok(true)
    }
}

/// The background janitor; stops (and is joined) when dropped.
pub struct Janitor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    id: Option<ThreadId>,
}

impl Janitor {
    /// Runs a pass at once and then every `interval` for as long as `store` lives.
    pub fn start(store: &Arc<ObjectBlobStore>, interval: Duration) -> std::io::Result<Self> {
        let weak: Weak<ObjectBlobStore> = Arc::downgrade(store);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new().name("vmblob-janitor".into()).spawn(move || {
            loop {
                let Some(store) = weak.upgrade() else { return };
                match store.sweep(SystemTime::now()) {
                    Ok(s) if s.any() => log::info!("object store janitor removed {s:?}"),
                    Ok(_) => {}
                    Err(e) => log::warn!("object store janitor: {e}"),
                }
                drop(store);
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })?;
        let id = Some(thread.thread().id());
        Ok(Self { stop: Some(stop), thread: Some(thread), id })
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        // The last reference to the store can go on the janitor's own thread,
        // mid-pass: it must not wait for itself.
        if self.id == Some(thread::current().id()) {
            return;
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::warn!("the object store janitor panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::{ObjectStore, ObjectStoreExt as _};

    use super::*;
    use crate::store::BlobStore as _;
    use crate::store::conformance::{bref, get, names, new_container, put, stage};
    use crate::store::object::ObjectOptions;
    use vmblob_protocol::ops::BlockListType;

    const TTL: Duration = Duration::from_secs(3600);

    fn store(root: &str) -> (ObjectBlobStore, Arc<InMemory>) {
        let backend = Arc::new(InMemory::new());
        let opts = ObjectOptions { staged_block_ttl: TTL, ..Default::default() };
        (ObjectBlobStore::new(backend.clone(), root, opts).unwrap(), backend)
    }

    fn all_keys(backend: &InMemory) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let metas: Vec<ObjectMeta> = rt.block_on(backend.list(None).try_collect()).unwrap();
        metas.into_iter().map(|m| m.location.to_string()).collect()
    }

    fn put_raw(backend: &InMemory, key: &str) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(backend.put(&key.into(), b"x".to_vec().into())).unwrap();
    }

    fn delete_raw(backend: &InMemory, key: &str) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(backend.delete(&key.into())).unwrap();
    }

    fn staged_count(s: &ObjectBlobStore, b: &str) -> usize {
        s.get_block_list(&bref("box", b), BlockListType::Uncommitted).map(|l| l.len()).unwrap_or(0)
    }

    #[test]
    fn staged_blocks_expire_after_the_ttl_and_not_before() {
        for root in ["", "root/pre"] {
            let (s, _) = store(root);
            new_container(&s, "box");
            stage(&s, "box", "up", b"1", b"one");
            stage(&s, "box", "up", b"2", b"two");
            let now = SystemTime::now();
            assert_eq!(s.sweep(now + TTL / 2).unwrap(), Swept::default(), "young blocks were swept ({root:?})");
            assert_eq!(staged_count(&s, "up"), 2);
            let swept = s.sweep(now + TTL + Duration::from_secs(1)).unwrap();
            assert_eq!(swept, Swept { staged: 2, ..Swept::default() }, "{root:?}");
            assert_eq!(staged_count(&s, "up"), 0, "{root:?}");
        }
    }

    #[test]
    fn a_crash_in_the_middle_of_a_container_delete_leaves_nothing_that_reappears() {
        for root in ["", "root/pre"] {
            let p = |k: &str| if root.is_empty() { k.to_owned() } else { format!("{root}/{k}") };
            // Recreated before any sweep: the new container starts empty.
            let (s, backend) = store(root);
            new_container(&s, "box");
            put(&s, "box", "old", b"old bytes");
            stage(&s, "box", "half", b"1", b"staged");
            delete_raw(&backend, &p(".vmblob/containers/box"));
            new_container(&s, "box");
            assert!(names(&s, "box").is_empty(), "the old container's blobs reappeared ({root:?})");
            assert_eq!(staged_count(&s, "half"), 0, "{root:?}");

            // Swept while dead: nothing of it is left in the bucket.
            put(&s, "box", "again", b"bytes");
            stage(&s, "box", "half", b"1", b"staged");
            delete_raw(&backend, &p(".vmblob/containers/box"));
            let swept = s.sweep(SystemTime::now()).unwrap();
            assert_eq!(swept, Swept { dead_containers: 1, ..Swept::default() }, "{root:?}");
            assert_eq!(all_keys(&backend), Vec::<String>::new(), "{root:?}");
        }
    }

    #[test]
    fn live_containers_and_their_blobs_are_left_alone() {
        let (s, backend) = store("");
        new_container(&s, "box");
        put(&s, "box", "kept", b"kept bytes");
        stage(&s, "box", "up", b"1", b"staged");
        let before = all_keys(&backend);
        assert_eq!(s.sweep(SystemTime::now()).unwrap(), Swept::default());
        assert_eq!(all_keys(&backend), before);
        assert_eq!(get(&s, "box", "kept").unwrap().1, b"kept bytes");
    }

    #[test]
    fn old_temp_objects_go() {
        let (s, backend) = store("");
        put_raw(&backend, ".vmblob/tmp/00ff");
        let now = SystemTime::now();
        assert_eq!(s.sweep(now).unwrap().temps, 0, "a temp object in transit was swept");
        assert_eq!(s.sweep(now + TEMP_GRACE + Duration::from_secs(1)).unwrap().temps, 1);
        assert_eq!(all_keys(&backend), Vec::<String>::new());
    }
}
