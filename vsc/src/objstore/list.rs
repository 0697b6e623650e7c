//! Listings: flat ones streamed page by page, delimited ones collected.

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::list::{PaginatedListOptions, PaginatedListResult};
use object_store::path::{DELIMITER, Path};
use object_store::{ListResult, ObjectMeta};
use vmblob_protocol::names;
use vmblob_protocol::ops::{BlobListItem, MAX_DELIMITER, MAX_LIST_RESULTS, MAX_MARKER};

use super::blocking;
use super::error::{ObjStoreError, OnPrecondition};
use super::names::{list_prefix, prefix_path};
use super::names::{object_meta, path_of};
use crate::client::{ContainerClient, ListBlobsOptions, Page, Pages};

/// The next page of `pages` off the caller's executor, and the pages to go on with.
async fn next_page(
    mut pages: Pages<BlobListItem>,
) -> Result<Option<(Page<BlobListItem>, Pages<BlobListItem>)>, ObjStoreError> {
    blocking::run(move || match pages.next() {
        None => Ok(None),
        Some(page) => Ok(Some((page?, pages))),
    })
    .await
}

fn meta_of(name: String, props: &vmblob_protocol::ops::BlobProperties) -> object_store::Result<ObjectMeta> {
    path_of(&name).map(|p| object_meta(p, props)).map_err(|e| e.into_os(&name, OnPrecondition::Precondition))
}

/// Every object under `prefix` (whole segments), after `offset` if given, in name order.
pub(crate) fn list(
    container: ContainerClient,
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
    let pages = container.list_blobs(ListBlobsOptions { marker, ..ListBlobsOptions::prefix(prefix) });
    stream::try_unfold(Some(pages), move |pages| {
        let path = path.clone();
        async move {
            let Some(pages) = pages else { return Ok::<_, object_store::Error>(None) };
            let Some((page, pages)) =
                next_page(pages).await.map_err(|e| e.into_os(&path, OnPrecondition::Precondition))?
            else {
                return Ok(None);
            };
            let metas: Vec<_> = page
                .items
                .into_iter()
                .filter_map(|item| match item {
                    BlobListItem::Blob { name, properties } => Some(meta_of(name, &properties)),
                    // Not asked for: object_store has no uncommitted objects.
                    BlobListItem::Prefix(_) | BlobListItem::Uncommitted(_) => None,
                })
                .collect();
            Ok(Some((stream::iter(metas), Some(pages))))
        }
    })
    .try_flatten()
    .try_filter(move |m| std::future::ready(offset.as_ref().is_none_or(|o| m.location > *o)))
    .fuse()
    .boxed()
}

/// The objects directly under `prefix` and the next level's common prefixes.
pub(crate) async fn list_with_delimiter(
    container: ContainerClient,
    prefix: Option<&Path>,
) -> object_store::Result<ListResult> {
    let mut result = ListResult { common_prefixes: Vec::new(), objects: Vec::new(), extensions: Default::default() };
    let Some(prefix) = list_prefix(prefix) else { return Ok(result) };
    let path = prefix.clone();
    let options = ListBlobsOptions::prefix(prefix.clone()).with_delimiter(DELIMITER);
    // The answer is one value: every page is collected.
    let items = blocking::run(move || Ok(container.list_blobs(options).items().collect::<Result<Vec<_>, _>>()?))
        .await
        .map_err(|e| e.into_os(&path, OnPrecondition::Precondition))?;
    for item in items {
        match item {
            BlobListItem::Blob { name, properties } => result.objects.push(meta_of(name, &properties)?),
            BlobListItem::Prefix(p) => {
                result.common_prefixes.push(prefix_path(&p).map_err(|e| e.into_os(&p, OnPrecondition::Precondition))?)
            }
            BlobListItem::Uncommitted(_) => {}
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
    container: ContainerClient,
    prefix: Option<&str>,
    opts: PaginatedListOptions,
) -> object_store::Result<PaginatedListResult> {
    let prefix = prefix.unwrap_or_default().to_owned();
    let delimiter = opts.delimiter.as_deref().unwrap_or_default().to_owned();
    if !sendable(&delimiter, MAX_DELIMITER) {
        return Err(ObjStoreError::InvalidDelimiter(delimiter).into_os(&prefix, OnPrecondition::Precondition));
    }
    let empty = ListResult { common_prefixes: Vec::new(), objects: Vec::new(), extensions: Default::default() };
    if !sendable(&prefix, vmblob_protocol::names::BLOB_NAME_MAX) {
        // No blob name can start with it.
        return Ok(PaginatedListResult { result: empty, page_token: None });
    }
    // Both are exclusive starting points: the later one wins.
    let marker = [opts.page_token, opts.offset].into_iter().flatten().filter(|m| sendable(m, MAX_MARKER)).max();
    let max = opts.max_keys.map_or(0, |k| k.clamp(1, MAX_LIST_RESULTS as usize) as u32);
    let options = ListBlobsOptions {
        marker: marker.unwrap_or_default(),
        max_results: max,
        ..ListBlobsOptions::prefix(prefix.clone()).with_delimiter(delimiter.clone())
    };
    let page =
        next_page(container.list_blobs(options)).await.map_err(|e| e.into_os(&prefix, OnPrecondition::Precondition))?;
    let Page { items, next_marker } = page.map_or(Page { items: Vec::new(), next_marker: None }, |(page, _)| page);
    let mut result = empty;
    for item in items {
        match item {
            BlobListItem::Blob { name, properties } => result.objects.push(meta_of(name, &properties)?),
            BlobListItem::Prefix(p) => {
                let trimmed = p.strip_suffix(delimiter.as_str()).unwrap_or(&p);
                result.common_prefixes.push(path_of(trimmed).map_err(|e| e.into_os(&p, OnPrecondition::Precondition))?)
            }
            BlobListItem::Uncommitted(_) => {}
        }
    }
    Ok(PaginatedListResult { result, page_token: next_marker })
}
