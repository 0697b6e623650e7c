//! Listings: flat ones streamed page by page, delimited ones collected.

use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::{DELIMITER, Path};
use object_store::{ListResult, ObjectMeta};
use vmblob_protocol::names::{self, ContainerName};
use vmblob_protocol::ops::{BlobListItem, ListBlobs, MAX_MARKER, OpRequest, OpResponse};

use super::blocking;
use super::error::{ObjStoreError, OnPrecondition};
use super::names::{list_prefix, object_meta, path_of, prefix_path};
use crate::client::{BlobClient, Data};
use crate::error::ClientError;

/// One page after `marker`; its next marker is `None` at the end.
fn page(
    client: &BlobClient,
    container: &ContainerName,
    prefix: &str,
    delimiter: &str,
    marker: String,
) -> Result<(Vec<BlobListItem>, Option<String>), ObjStoreError> {
    let op = OpRequest::ListBlobs(ListBlobs {
        container: container.clone(),
        prefix: prefix.into(),
        delimiter: delimiter.into(),
        marker: marker.clone(),
        max_results: 0,
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
            let (items, next) = blocking::run(move || page(&client, &container, &prefix, "", marker))
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
            let (items, next) = page(&client, &container, &prefix, DELIMITER, m)?;
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
