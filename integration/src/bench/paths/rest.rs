//! The REST path users have today: `object_store` over loopback HTTP to
//! Azurite (Azure Blob REST) or s3s-fs (S3 REST). `qd` operations in flight
//! are `qd` async tasks on a tokio runtime with one thread per core.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};

use super::{BenchError, BenchPath, CHUNK, CONTAINER, OpKind, OpsSample, OpsSpec, Result, TRANSFER_PARALLEL};
use vmblob_vsp::store::object::azurite::Azurite;
use vmblob_vsp::store::object::backend::{EMULATOR_ACCOUNT, EMULATOR_KEY};

use crate::bench::servers::{self, Server};

/// The REST server a path talks to.
enum Peer {
    /// The same Azurite rig the object-store tests use.
    Azurite(Azurite),
    S3sFs(Server),
}

impl Peer {
    fn pid(&self) -> Option<u32> {
        match self {
            Peer::Azurite(a) => a.server_pid(),
            Peer::S3sFs(s) => Some(s.pid()),
        }
    }
}

pub struct RestPath {
    name: &'static str,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    server: Peer,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Generous timeouts: a slow peer is measured, not failed.
fn client_options() -> ClientOptions {
    ClientOptions::new().with_allow_http(true).with_timeout(Duration::from_secs(300))
}

impl RestPath {
    /// Azurite (its data in a temporary location), reached through object_store's Azure client.
    pub fn azurite() -> Result<RestPath> {
        let azurite = Azurite::start().map_err(BenchError::Other)?.ok_or_else(|| {
            BenchError::Other("Node.js (or npm, to install Azurite) is not installed, so Azurite cannot run".into())
        })?;
        let spec = azurite.spec(CONTAINER);
        spec.ensure_container().map_err(|e| BenchError::Other(format!("creating the Azurite container: {e}")))?;
        let store = MicrosoftAzureBuilder::new()
            .with_account(EMULATOR_ACCOUNT)
            .with_access_key(EMULATOR_KEY)
            .with_endpoint(azurite.endpoint())
            .with_container_name(CONTAINER)
            .with_client_options(client_options())
            .build()?;
        Ok(RestPath { name: "azurite", store: Arc::new(store), runtime: runtime()?, server: Peer::Azurite(azurite) })
    }

    /// s3s-fs serving `dir`, reached through object_store's S3 client.
    pub fn s3s_fs(dir: &Path) -> Result<RestPath> {
        // A bucket is a directory of the served root.
        std::fs::create_dir_all(dir.join(CONTAINER))?;
        let server = servers::start_s3s_fs(dir).map_err(BenchError::Other)?;
        let store = AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{}", server.port))
            .with_region("us-east-1")
            .with_bucket_name(CONTAINER)
            .with_access_key_id(servers::S3_ACCESS_KEY)
            .with_secret_access_key(servers::S3_SECRET_KEY)
            .with_client_options(client_options())
            .build()?;
        Ok(RestPath { name: "s3s-fs", store: Arc::new(store), runtime: runtime()?, server: Peer::S3sFs(server) })
    }

    /// Run `task(t, deadline)` as `n` tasks at once and merge their samples.
    fn on_tasks<F, Fut>(&self, n: usize, duration: Duration, task: F) -> Result<OpsSample>
    where
        F: Fn(usize, Instant) -> Fut,
        Fut: Future<Output = Result<OpsSample>> + Send + 'static,
    {
        self.runtime.block_on(async {
            let start = Instant::now();
            let deadline = start + duration;
            let handles: Vec<_> = (0..n).map(|t| tokio::spawn(task(t, deadline))).collect();
            let mut total = OpsSample::default();
            for h in handles {
                total.merge(h.await.map_err(|e| BenchError::Other(format!("bench task: {e}")))??);
            }
            total.wall = start.elapsed();
            Ok(total)
        })
    }
}

async fn get_exact(store: &dyn ObjectStore, path: &ObjectPath, offset: u64, len: usize) -> Result<Bytes> {
    let data = store.get_range(path, offset..offset + len as u64).await?;
    if data.len() != len {
        return Err(BenchError::Other(format!("{path}: got {} of {len} bytes", data.len())));
    }
    Ok(data)
}

impl BenchPath for RestPath {
    fn name(&self) -> &'static str {
        self.name
    }

    fn store_blob(&self, blob: &str, data: &[u8]) -> Result<()> {
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        self.runtime.block_on(self.store.put(&ObjectPath::from(blob), payload))?;
        Ok(())
    }

    fn ops(&self, spec: &OpsSpec, data: &[u8]) -> Result<OpsSample> {
        let payload = Bytes::copy_from_slice(data);
        let qd = spec.qd.max(1);
        self.on_tasks(qd, spec.duration, |t, deadline| {
            let (store, spec, payload) = (self.store.clone(), spec.clone(), payload.clone());
            async move {
                let mut out = OpsSample::default();
                let mut i = t as u64;
                while Instant::now() < deadline {
                    let path = ObjectPath::from(spec.blob(i));
                    let t0 = Instant::now();
                    match spec.kind {
                        OpKind::Get => drop(get_exact(store.as_ref(), &path, 0, spec.size).await?),
                        OpKind::Put => drop(store.put(&path, PutPayload::from(payload.clone())).await?),
                    }
                    out.latencies.push(t0.elapsed());
                    out.ops += 1;
                    i += qd as u64;
                }
                Ok(out)
            }
        })
    }

    /// PUT is one request (object_store's `put`); GET is [`CHUNK`] ranges,
    /// [`TRANSFER_PARALLEL`] in flight, as the vmblob client downloads.
    fn transfer(&self, kind: OpKind, blob: &str, data: &[u8]) -> Result<Duration> {
        let path = ObjectPath::from(blob);
        let start = Instant::now();
        match kind {
            OpKind::Put => {
                let payload = PutPayload::from(Bytes::copy_from_slice(data));
                self.runtime.block_on(self.store.put(&path, payload))?;
            }
            OpKind::Get => self.runtime.block_on(async {
                let store = self.store.as_ref();
                let mut parts = futures::stream::iter(super::ranges(data.len() as u64, CHUNK))
                    .map(|(off, len)| get_exact(store, &path, off, len))
                    .buffered(TRANSFER_PARALLEL);
                while let Some(part) = parts.next().await {
                    drop(part?);
                }
                Ok::<(), BenchError>(())
            })?,
        }
        Ok(start.elapsed())
    }

    fn readers(&self, blobs: &[String], blob_size: u64, range: usize) -> Result<Duration> {
        let sample = self.on_tasks(blobs.len(), Duration::ZERO, |t, _| {
            let (store, path) = (self.store.clone(), ObjectPath::from(blobs[t].as_str()));
            async move {
                for (off, len) in super::ranges(blob_size, range) {
                    drop(get_exact(store.as_ref(), &path, off, len).await?);
                }
                Ok(OpsSample::default())
            }
        })?;
        Ok(sample.wall)
    }

    fn server_pid(&self) -> Option<u32> {
        self.server.pid()
    }
}
