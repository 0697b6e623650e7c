//! The lease table of a VSP on an object store, kept in the store itself
//! (`.vmblob/leases.json`): a VSP restarted elsewhere on the same store
//! finds its leases. object_store has no blob leases, so these are the
//! VSP's own: other clients of the bucket or account do not see them.

use std::io;
use std::sync::Arc;

use object_store::{ObjectStoreExt as _, PutPayload};

use super::ObjectBlobStore;
use super::bridge::is_not_found;
use crate::lease::LeaseStorage;
use crate::store::StoreError;

pub struct ObjectLeaseStorage(pub Arc<ObjectBlobStore>);

fn io_err(e: StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

impl LeaseStorage for ObjectLeaseStorage {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        let s = &self.0;
        let key = s.keys.lease_table().map_err(io_err)?;
        s.bridge
            .run(async {
                match s.store.get(&key).await {
                    Ok(r) => Ok(Some(r.bytes().await.map_err(super::bridge::store_err)?.to_vec())),
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(super::bridge::store_err(e)),
                }
            })
            .map_err(io_err)
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let s = &self.0;
        let key = s.keys.lease_table().map_err(io_err)?;
        let payload = PutPayload::from(bytes.to_vec());
        s.bridge
            .run(async { s.store.put(&key, payload).await.map(|_| ()).map_err(super::bridge::store_err) })
            .map_err(io_err)
    }

    fn describe(&self) -> String {
        self.0.keys.lease_table().map_or_else(|e| e.to_string(), |k| k.to_string())
    }
}
