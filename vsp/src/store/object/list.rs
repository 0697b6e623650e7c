//! Listings over the object store's flat, ordered key listing: Azure's
//! prefix, delimiter and marker rules (as in `store::listing`) applied while
//! streaming, then one HEAD per blob for its properties.

use futures::{StreamExt as _, TryStreamExt as _, stream};
use object_store::ObjectMeta;
use object_store::path::Path;
use vmblob_protocol::names::ContainerName;
use vmblob_protocol::ops::{
    BlobListItem, BlobRef, ContainerEntry, ListBlobs, ListContainers, MAX_LIST_RESULTS, Metadata,
};

use super::bridge::store_err;
use super::{ObjectBlobStore, attrs};
use crate::store::listing::azure_cmp;
use crate::store::{Page, StoreError};

/// HEADs in flight while filling in a page's properties.
const HEADS_IN_FLIGHT: usize = 16;

fn page_limit(max_results: u32) -> usize {
    match max_results {
        0 => MAX_LIST_RESULTS as usize,
        n => n.min(MAX_LIST_RESULTS) as usize,
    }
}

/// A listing entry before its properties are known.
enum Entry {
    Blob(String),
    Prefix(String),
}

/// Where a listing may start (exclusive): at the marker, or just before the
/// prefix. Only a hint for backends that list from an offset; every name is
/// still checked, so any key not above the first wanted name will do.
fn start_after(dir: &Path, prefix: &str, marker: &str) -> Option<Path> {
    let from = if !marker.is_empty() && marker >= prefix {
        marker.to_owned()
    } else {
        let mut p = prefix.to_owned();
        p.pop();
        p
    };
    if from.is_empty() {
        return None;
    }
    // `parse` drops a trailing `/`, which only moves the start earlier.
    Path::parse(format!("{dir}/{from}")).ok()
}

impl ObjectBlobStore {
    fn keys_stream(
        &self,
        dir: &Path,
        after: Option<Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
        match after.filter(|_| self.opts.offset_listing) {
            Some(offset) => self.store.list_with_offset(Some(dir), &offset),
            None => self.store.list(Some(dir)),
        }
    }

    pub(super) fn list_blobs_page(&self, req: &ListBlobs) -> Result<Page<BlobListItem>, StoreError> {
        self.ensure_container(&req.container)?;
        let dir = self.keys.container_dir(&req.container)?;
        let limit = page_limit(req.max_results);
        let (prefix, delim, marker) = (req.prefix.as_str(), req.delimiter.as_str(), req.marker.as_str());
        let mut keys = self.keys_stream(&dir, start_after(&dir, prefix, marker));
        let mut entries: Vec<Entry> = Vec::new();
        let mut more = false;
        // The last rolled-up prefix: names under it are skipped.
        let mut skip: Option<String> = None;
        let cmp = |a: &str, b: &str| if self.opts.utf16_order { azure_cmp(a, b) } else { a.cmp(b) };
        while let Some(meta) = self.bridge.run(async { keys.next().await.transpose().map_err(store_err) })? {
            let Some(name) = self.keys.blob_name(&dir, &meta.location) else { continue };
            if !name.starts_with(prefix) {
                // Keys come in order: once past the prefix, nothing more matches.
                if cmp(name, prefix).is_gt() {
                    break;
                }
                continue;
            }
            if cmp(name, marker).is_le() || skip.as_deref().is_some_and(|s| name.starts_with(s)) {
                continue;
            }
            let rest = &name[prefix.len()..];
            let rolled = if delim.is_empty() { None } else { rest.find(delim) };
            let entry = match rolled {
                Some(at) => {
                    let p = name[..prefix.len() + at + delim.len()].to_owned();
                    skip = Some(p.clone());
                    if !marker.is_empty() && cmp(&p, marker).is_le() {
                        continue;
                    }
                    Entry::Prefix(p)
                }
                None => Entry::Blob(name.to_owned()),
            };
            if entries.len() == limit {
                more = true;
                break;
            }
            entries.push(entry);
        }
        drop(keys);
        let items = self.with_properties(&req.container, entries, req.include_metadata)?;
        let next_marker = match (more, items.last()) {
            (true, Some(BlobListItem::Blob { name, .. } | BlobListItem::Prefix(name))) => name.clone(),
            _ => String::new(),
        };
        Ok(Page { items, next_marker })
    }

    /// HEADs the page's blobs, a few at a time; a blob deleted meanwhile is left out.
    fn with_properties(
        &self,
        container: &ContainerName,
        entries: Vec<Entry>,
        include_metadata: bool,
    ) -> Result<Vec<BlobListItem>, StoreError> {
        let store = &*self.store;
        let keys = &self.keys;
        let fetch = stream::iter(entries.into_iter().map(|e| async move {
            match e {
                Entry::Prefix(p) => Ok(Some(BlobListItem::Prefix(p))),
                Entry::Blob(name) => {
                    let blob = vmblob_protocol::names::BlobName::new(&name)
                        .map_err(|_| StoreError::Remote(format!("listed key is not a blob name: {name:?}")))?;
                    let key = keys.blob(&BlobRef { container: container.clone(), blob })?;
                    Ok(Self::head_async(store, &key).await?.map(|d| {
                        let mut properties = d.blob;
                        if !include_metadata {
                            properties.metadata = Metadata::default();
                        }
                        BlobListItem::Blob { name, properties }
                    }))
                }
            }
        }))
        .buffered(HEADS_IN_FLIGHT)
        .try_filter_map(|i| futures::future::ready(Ok(i)))
        .try_collect();
        self.bridge.run(fetch)
    }

    pub(super) fn list_containers_page(&self, req: &ListContainers) -> Result<Page<ContainerEntry>, StoreError> {
        let dir = self.keys.markers_dir()?;
        let limit = page_limit(req.max_results);
        let (prefix, marker) = (req.prefix.as_str(), req.marker.as_str());
        let mut keys = self.keys_stream(&dir, start_after(&dir, prefix, marker));
        let mut names = Vec::new();
        let mut more = false;
        while let Some(meta) = self.bridge.run(async { keys.next().await.transpose().map_err(store_err) })? {
            let Some(name) = self.keys.blob_name(&dir, &meta.location) else { continue };
            let Ok(name) = ContainerName::new(name) else { continue };
            if !name.as_str().starts_with(prefix) || name.as_str() <= marker {
                continue;
            }
            if names.len() == limit {
                more = true;
                break;
            }
            names.push(name);
        }
        drop(keys);
        let store = &*self.store;
        let keys = &self.keys;
        let fetch = stream::iter(names.into_iter().map(|name| async move {
            let d = Self::head_async(store, &keys.marker(&name)?).await?;
            Ok::<_, StoreError>(d.map(|d| {
                let mut properties = attrs::container_props(d);
                if !req.include_metadata {
                    properties.metadata = Metadata::default();
                }
                ContainerEntry { name: name.as_str().to_owned(), properties }
            }))
        }))
        .buffered(HEADS_IN_FLIGHT)
        .try_filter_map(|i| futures::future::ready(Ok(i)))
        .try_collect::<Vec<_>>();
        let items = self.bridge.run(fetch)?;
        let next_marker = match (more, items.last()) {
            (true, Some(e)) => e.name.clone(),
            _ => String::new(),
        };
        Ok(Page { items, next_marker })
    }
}
