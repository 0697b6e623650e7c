//! The lease table of a VSP on an object store, kept in the store itself
//! (`.vmblob/leases.json`): a VSP restarted elsewhere on the same store
//! finds its leases. object_store has no blob leases, so these are the
//! VSP's own: other clients of the bucket or account do not see them.
//!
//! Each save is conditional on the version this VSP last loaded or saved, so
//! a second VSP on the same store cannot silently overwrite the first's
//! leases: its save fails, and the lease change with it.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::ObjectBlobStore;
use super::bridge::is_not_found;
use crate::lease::LeaseStorage;
use crate::store::StoreError;

pub struct ObjectLeaseStorage {
    store: Arc<ObjectBlobStore>,
    /// The table's version in the store as this VSP last saw it (None: absent).
    seen: Mutex<Option<UpdateVersion>>,
}

impl ObjectLeaseStorage {
    pub fn new(store: Arc<ObjectBlobStore>) -> Self {
        Self { store, seen: Mutex::new(None) }
    }
}

fn io_err(e: StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

impl LeaseStorage for ObjectLeaseStorage {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        let s = &self.store;
        let key = s.keys.lease_table().map_err(io_err)?;
        let got = s
            .bridge
            .run(async {
                match s.store.get(&key).await {
                    Ok(r) => {
                        let version = UpdateVersion { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone() };
                        Ok(Some((version, r.bytes().await.map_err(super::bridge::store_err)?.to_vec())))
                    }
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(super::bridge::store_err(e)),
                }
            })
            .map_err(io_err)?;
        let (version, bytes) = got.unzip();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = version;
        Ok(bytes)
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let s = &self.store;
        let key = s.keys.lease_table().map_err(io_err)?;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mode = seen.clone().map_or(PutMode::Create, PutMode::Update);
        let opts = PutOptions { mode, ..Default::default() };
        let payload = PutPayload::from(bytes.to_vec());
        let put = s.bridge.run(async {
            match s.store.put_opts(&key, payload, opts).await {
                Ok(r) => Ok(r),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    Err(StoreError::Remote("another VSP changed the lease table in this store".into()))
                }
                Err(e) => Err(super::bridge::store_err(e)),
            }
        });
        let r = put.map_err(io_err)?;
        *seen = Some(UpdateVersion { e_tag: r.e_tag, version: r.version });
        Ok(())
    }

    fn describe(&self) -> String {
        self.store.keys.lease_table().map_or_else(|e| e.to_string(), |k| k.to_string())
    }
}
