//! Listings: flat ones streamed page by page, delimited ones collected.

use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::list::{PaginatedListOptions, PaginatedListResult};
use object_store::path::{DELIMITER, Path};
use object_store::{ListResult, ObjectMeta};
use vmblob_protocol::names::{self, ContainerName};
use vmblob_protocol::ops::{
    BlobListItem, ListBlobs, MAX_DELIMITER, MAX_LIST_RESULTS, MAX_MARKER, OpRequest, OpResponse,
};

use super::blocking;
use super::error::{ObjStoreError, OnPrecondition};
use super::names::{list_prefix, prefix_path};
use super::names::{object_meta, path_of};
use crate::client::{BlobClient, Data};
use crate::error::ClientError;

/// One page after `marker`; its next marker is `None` at the end.
fn page(
    client: &BlobClient,
    container: &ContainerName,
    prefix: &str,
    delimiter: &str,
    marker: String,
    max_results: u32,
) -> Result<(Vec<BlobListItem>, Option<String>), ObjStoreError> {
    let op = OpRequest::ListBlobs(ListBlobs {
        container: container.clone(),
        prefix: prefix.into(),
        delimiter: delimiter.into(),
        marker: marker.clone(),
        max_results,
        include_metadata: false,
    });
    match client.call(&op, Data::None)?.response {
        OpResponse::BlobList { next_marker, .. } if !next_marker.is_empty() && next_marker <= marker => {
            // Markers are names in byte order: one that does not advance would loop forever.
            Err(ClientError::Protocol(format!("listing marker {next_marker:?} does not advance")).into())
        }
        OpResponse::BlobList { items, next_marker } => Ok((items, (!next_marker.is_empty()).then_some(next_marker))),
        r => Err(ClientError::Protocol(format!("unexpected response {r:?}")).into()),
    }
}

fn meta_of(name: String, props: &vmblob_protocol::ops::BlobProperties) -> object_store::Result<ObjectMeta> {
    path_of(&name).map(|p| object_meta(p, props)).map_err(|e| e.into_os(&name, OnPrecondition::Precondition))
}

/// Every object under `prefix` (whole segments), after `offset` if given, in name order.
pub(crate) fn list(
    client: Arc<BlobClient>,
    container: ContainerName,
    prefix: Option<&Path>,
    offset: Option<&Path>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    let Some(prefix) = list_prefix(prefix) else { return stream::empty().boxed() };
    let offset = offset.cloned();
    // The device starts strictly after the marker; an offset it cannot carry is filtered here only.
    let marker = offset
        .as_ref()
        .map(|o| o.as_ref().to_owned())
        .filter(|m| m.len() <= MAX_MARKER && names::validate_text(m).is_ok())
        .unwrap_or_default();
    let path = prefix.clone();
    stream::try_unfold(Some(marker), move |marker| {
        let (client, container, prefix, path) = (client.clone(), container.clone(), prefix.clone(), path.clone());
        async move {
            let Some(marker) = marker else { return Ok::<_, object_store::Error>(None) };
            let (items, next) = blocking::run(move || page(&client, &container, &prefix, "", marker, 0))
                .await
                .map_err(|e| e.into_os(&path, OnPrecondition::Precondition))?;
            let metas: Vec<_> = items
                .into_iter()
                .filter_map(|item| match item {
                    BlobListItem::Blob { name, properties } => Some(meta_of(name, &properties)),
                    BlobListItem::Prefix(_) => None,
                })
                .collect();
            Ok(Some((stream::iter(metas), next)))
        }
    })
    .try_flatten()
    .try_filter(move |m| std::future::ready(offset.as_ref().is_none_or(|o| m.location > *o)))
    .fuse()
    .boxed()
}

/// The objects directly under `prefix` and the next level's common prefixes.
pub(crate) async fn list_with_delimiter(
    client: Arc<BlobClient>,
    container: ContainerName,
    prefix: Option<&Path>,
) -> object_store::Result<ListResult> {
    let mut result = ListResult { common_prefixes: Vec::new(), objects: Vec::new(), extensions: Default::default() };
    let Some(prefix) = list_prefix(prefix) else { return Ok(result) };
    let path = prefix.clone();
    let items = blocking::run(move || {
        let mut all = Vec::new();
        let mut marker = Some(String::new());
        while let Some(m) = marker {
            let (items, next) = page(&client, &container, &prefix, DELIMITER, m, 0)?;
            all.extend(items);
            marker = next;
        }
        Ok(all)
    })
    .await
    .map_err(|e| e.into_os(&path, OnPrecondition::Precondition))?;
    for item in items {
        match item {
            BlobListItem::Blob { name, properties } => result.objects.push(meta_of(name, &properties)?),
            BlobListItem::Prefix(p) => {
                result.common_prefixes.push(prefix_path(&p).map_err(|e| e.into_os(&p, OnPrecondition::Precondition))?)
            }
        }
    }
    Ok(result)
}

/// A text field the device accepts: at most `max` bytes, no control characters.
fn sendable(s: &str, max: usize) -> bool {
    s.len() <= max && names::validate_text(s).is_ok()
}

/// One page of a raw-prefix listing (`PaginatedListStore`): the page token is
/// the device's marker, and `offset` starts the listing after that name.
pub(crate) async fn list_paginated(
    client: Arc<BlobClient>,
    container: ContainerName,
    prefix: Option<&str>,
    opts: PaginatedListOptions,
) -> object_store::Result<PaginatedListResult> {
    let prefix = prefix.unwrap_or_default().to_owned();
    let delimiter = opts.delimiter.as_deref().unwrap_or_default().to_owned();
    if !sendable(&delimiter, MAX_DELIMITER) {
        let e = ClientError::Invalid(format!("delimiter {delimiter:?}: at most {MAX_DELIMITER} bytes of text"));
        return Err(ObjStoreError::from(e).into_os(&prefix, OnPrecondition::Precondition));
    }
    let empty = ListResult { common_prefixes: Vec::new(), objects: Vec::new(), extensions: Default::default() };
    if !sendable(&prefix, vmblob_protocol::names::BLOB_NAME_MAX) {
        // No blob name can start with it.
        return Ok(PaginatedListResult { result: empty, page_token: None });
    }
    // Both are exclusive starting points: the later one wins.
    let marker = [opts.page_token, opts.offset].into_iter().flatten().filter(|m| sendable(m, MAX_MARKER)).max();
    let max = opts.max_keys.map_or(0, |k| k.clamp(1, MAX_LIST_RESULTS as usize) as u32);
    let (c, p, d) = (client, prefix.clone(), delimiter.clone());
    let (items, next) = blocking::run(move || page(&c, &container, &p, &d, marker.unwrap_or_default(), max))
        .await
        .map_err(|e| e.into_os(&prefix, OnPrecondition::Precondition))?;
    let mut result = empty;
    for item in items {
        match item {
            BlobListItem::Blob { name, properties } => result.objects.push(meta_of(name, &properties)?),
            BlobListItem::Prefix(p) => {
                let trimmed = p.strip_suffix(delimiter.as_str()).unwrap_or(&p);
                result.common_prefixes.push(path_of(trimmed).map_err(|e| e.into_os(&p, OnPrecondition::Precondition))?)
            }
        }
    }
    Ok(PaginatedListResult { result, page_token: next })
}
