//! `object_store::ObjectStore` over the device: code that speaks
//! `object_store` (DataFusion, Polars, delta-rs, …) stores its objects in one
//! vmblob container without changes.
//!
//! ```no_run
//! # async fn demo(client: vmblob_vsc::BlobClient) -> object_store::Result<()> {
//! use object_store::{ObjectStore, ObjectStoreExt, path::Path};
//! let store = vmblob_vsc::objstore::VmblobStoreBuilder::new()
//!     .with_client(client)
//!     .with_container_name("tables")
//!     .build()?;
//! store.create_container_if_missing().await?;
//! store.put(&Path::from("a/b.parquet"), "bytes".into()).await?;
//! # Ok(()) }
//! ```
//!
//! | object_store | vmblob |
//! | --- | --- |
//! | store | one container; [`VmblobStore::create_container_if_missing`] creates it, nothing else does |
//! | `Path` | blob name = the path's encoded form; paths the naming rules refuse are `NotSupported` |
//! | `put_opts` | PutBlob, or blocks + PutBlockList above one block; `Create` = If-None-Match `*`, `Update` = If-Match ETag |
//! | attributes | Content-Type, Content-Encoding, -Language, -Disposition, Cache-Control (op version 2) and metadata stored and returned; storage class `NotImplemented`; tags ignored |
//! | `put_multipart_opts` | PutBlock per part (unique ids), `complete` = PutBlockList, `abort` commits nothing |
//! | `get_opts` | ranged GetBlobs (bounded, offset, suffix); If-Match / If-None-Match and (op version 2) the dates on the device, whatever it cannot take checked on the properties read; `head` = GetBlobProperties; versions `NotSupported` |
//! | `delete` | DeleteBlob; a missing object is `NotFound` (as Azure) |
//! | `list*` | ListBlobs by pages; `list_with_offset` passes the offset as the marker; [`PaginatedListStore`]: one ListBlobs, page token = marker, any delimiter up to 16 bytes |
//! | `copy*` / `rename*` | CopyBlob inside the device where it has the `COPY` capability, else read through the guest and rewritten with one commit; either way pinned to the source's ETag, `copy_if_not_exists` atomic (If-None-Match `*` at commit), and rename deletes the source only if it is still the version copied |
//!
//! Every request goes through the client's handles ([`ContainerClient`],
//! [`crate::BlobHandle`], [`crate::BlockUploader`]); every client call runs
//! off the caller's executor ([`blocking`]).

mod attributes;
mod blocking;
mod copy;
mod error;
mod list;
mod multipart;
mod names;
mod read;
mod write;

use std::fmt;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::list::{PaginatedListOptions, PaginatedListResult, PaginatedListStore};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, RenameTargetMode,
};
use vmblob_protocol::BlobError;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{Conditions, ETag};

use self::attributes::BlobAttributes;
pub use self::error::ObjStoreError;
use self::error::{OnPrecondition, STORE};
use self::write::UploadTag;
use crate::client::{BlobClient, BlobHandle, ContainerClient};

/// An `ObjectStore` on one container of a vmblob device.
#[derive(Clone)]
pub struct VmblobStore {
    container: ContainerClient,
}

/// Builds a [`VmblobStore`]; no I/O happens here.
#[derive(Default)]
pub struct VmblobStoreBuilder {
    client: Option<BlobClient>,
    container: Option<String>,
}

impl VmblobStoreBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The connected client the store sends its requests through.
    pub fn with_client(mut self, client: BlobClient) -> Self {
        self.client = Some(client);
        self
    }

    /// The container holding the store's objects (3–63 of `[a-z0-9-]`).
    pub fn with_container_name(mut self, name: impl Into<String>) -> Self {
        self.container = Some(name.into());
        self
    }

    pub fn build(self) -> object_store::Result<VmblobStore> {
        let missing =
            |what: &str| object_store::Error::Generic { store: STORE, source: format!("no {what} given").into() };
        let client = self.client.ok_or_else(|| missing("client"))?;
        let name = self.container.ok_or_else(|| missing("container name"))?;
        ContainerName::new(&name).map_err(|e| object_store::Error::Generic {
            store: STORE,
            source: format!("invalid container name {name:?}: {e}").into(),
        })?;
        Ok(VmblobStore { container: client.container(&name) })
    }
}

fn fail(path: &Path, on: OnPrecondition) -> impl FnOnce(ObjStoreError) -> object_store::Error + '_ {
    move |e| e.into_os(path.as_ref(), on)
}

impl VmblobStore {
    pub fn container(&self) -> &str {
        self.container.name()
    }

    pub fn client(&self) -> &BlobClient {
        self.container.client()
    }

    /// Create the store's container unless it exists.
    pub async fn create_container_if_missing(&self) -> object_store::Result<()> {
        let container = self.container.clone();
        let created = blocking::run(move || Ok(container.create()?)).await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(BlobError::AlreadyExists) => Ok(()),
            Err(e) => Err(e.into_os(self.container.name(), OnPrecondition::Precondition)),
        }
    }

    fn target(&self, path: &Path) -> object_store::Result<BlobHandle> {
        let blob = names::blob_name(path).map_err(fail(path, OnPrecondition::Precondition))?;
        Ok(self.container.blob(blob.as_str()))
    }

    async fn delete_one(&self, path: &Path) -> object_store::Result<()> {
        let blob = self.target(path)?;
        blocking::run(move || Ok(blob.delete()?)).await.map_err(fail(path, OnPrecondition::Precondition))
    }

    /// Copy, returning the ETag of the source version copied.
    async fn copy_blob(&self, from: &Path, to: &Path, mode: CopyMode) -> object_store::Result<ETag> {
        let (f, t) = (self.target(from)?, self.target(to)?);
        let (conditions, on) = match mode {
            CopyMode::Overwrite => (Conditions::none(), OnPrecondition::Precondition),
            CopyMode::Create => (Conditions::if_none_match(ETag::any()), OnPrecondition::AlreadyExists),
        };
        blocking::run(move || copy::copy(&f, &t, &conditions)).await.map_err(|e| {
            // Only the write to the destination carries conditions.
            let at = match e.status() {
                Some(BlobError::PreconditionFailed | BlobError::AlreadyExists) => to,
                _ => from,
            };
            e.into_os(at.as_ref(), on)
        })
    }
}

impl fmt::Display for VmblobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmblobStore({})", self.container.name())
    }
}

impl fmt::Debug for VmblobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmblobStore").field("container", &self.container.name()).finish_non_exhaustive()
    }
}

#[async_trait]
impl ObjectStore for VmblobStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let t = self.target(location)?;
        let on_error = fail(location, OnPrecondition::Precondition);
        let attrs = BlobAttributes::from_object_store(&opts.attributes).map_err(on_error)?;
        let (conditions, on) = match opts.mode {
            PutMode::Overwrite => (Conditions::none(), OnPrecondition::Precondition),
            PutMode::Create => (Conditions::if_none_match(ETag::any()), OnPrecondition::AlreadyExists),
            PutMode::Update(v) => {
                let tag = v
                    .e_tag
                    .ok_or(ObjStoreError::MissingETag)
                    .and_then(|e| ETag::new(&e).map_err(|_| ObjStoreError::InvalidETag(e)));
                let tag = tag.map_err(fail(location, OnPrecondition::Precondition))?;
                (Conditions::if_match(tag), OnPrecondition::Precondition)
            }
        };
        let w = blocking::run(move || write::put_whole(&t, &payload, &attrs, conditions))
            .await
            .map_err(fail(location, on))?;
        Ok(PutResult { e_tag: Some(w.etag), version: None, extensions: Default::default() })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let t = self.target(location)?;
        let attrs = BlobAttributes::from_object_store(&opts.attributes)
            .map_err(fail(location, OnPrecondition::Precondition))?;
        Ok(Box::new(multipart::BlockUpload::new(t, attrs)))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let t = self.target(location)?;
        read::get(t, location.clone(), options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let store = self.clone();
        let ahead = self.client().options().parallel.max(1);
        locations
            .map(move |location| {
                let store = store.clone();
                async move {
                    let location = location?;
                    store.delete_one(&location).await?;
                    Ok(location)
                }
            })
            .buffered(ahead)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        list::list(self.container.clone(), prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        list::list(self.container.clone(), prefix, Some(offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        list::list_with_delimiter(self.container.clone(), prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.copy_blob(from, to, options.mode).await.map(|_| ())
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        let mode = match options.target_mode {
            RenameTargetMode::Overwrite => CopyMode::Overwrite,
            RenameTargetMode::Create => CopyMode::Create,
        };
        let etag = self.copy_blob(from, to, mode).await?;
        let source = self.target(from)?;
        // Delete only the version copied: a newer source stays, reported as a failed precondition.
        blocking::run(move || copy::delete_version(&source, etag))
            .await
            .map_err(fail(from, OnPrecondition::Precondition))
    }
}

#[async_trait]
impl MultipartStore for VmblobStore {
    async fn create_multipart(&self, path: &Path) -> object_store::Result<MultipartId> {
        self.target(path)?;
        Ok(UploadTag::random().to_string())
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        let t = self.target(path)?;
        let tag = UploadTag::parse(id).map_err(fail(path, OnPrecondition::Precondition))?;
        let ids = multipart::stage(t, tag, part_idx, data, path.as_ref()).await?;
        Ok(PartId { content_id: multipart::part_id(&ids) })
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        let t = self.target(path)?;
        let tag = UploadTag::parse(id).map_err(fail(path, OnPrecondition::Precondition))?;
        let mut blocks = Vec::new();
        for p in &parts {
            blocks.extend(
                multipart::parse_part_id(tag, &p.content_id).map_err(fail(path, OnPrecondition::Precondition))?,
            );
        }
        multipart::commit(t, blocks, BlobAttributes::default(), path.as_ref()).await
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> object_store::Result<()> {
        self.target(path)?;
        UploadTag::parse(id).map_err(fail(path, OnPrecondition::Precondition))?;
        Ok(())
    }
}

#[async_trait]
impl PaginatedListStore for VmblobStore {
    async fn list_paginated(
        &self,
        prefix: Option<&str>,
        opts: PaginatedListOptions,
    ) -> object_store::Result<PaginatedListResult> {
        list::list_paginated(self.container.clone(), prefix, opts).await
    }
}
