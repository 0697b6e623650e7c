//! Reads: `get_opts` as ranged GetBlobs.
//!
//! The first request carries the caller's conditions and returns the
//! object's properties with its first bytes; the rest of the range is read
//! lazily, `parallel` block-sized requests ahead, each pinned to the first
//! ETag with If-Match so an overwrite mid-read fails the stream instead of
//! mixing two versions. A read of the whole object is checked against the
//! stored CRC-64/NVME at its end.

use std::ops::Range;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResult, GetResultPayload};
use vmblob_protocol::BlobError;
use vmblob_protocol::ops::{BlobProperties, Conditions, ETag};

use super::attributes::BlobAttributes;
use super::blocking;
use super::error::{ObjStoreError, OnPrecondition};
use super::names;
use crate::client::BlobHandle;
use crate::error::{ClientError, ProtocolError};

/// Bytes asked for by the first request of a read: most objects fit, and a
/// small read does not tie up a block-sized DMA buffer.
const FIRST_READ: u64 = 1 << 20;

/// The conditions the device checks, and what its PreconditionFailed means.
/// It takes one ETag per condition, and times from op version 2 on; lists,
/// the If-None-Match of a request that also has If-Match, and times for an
/// older device are checked here on the properties read.
fn device_conditions(options: &GetOptions, op_version: u16) -> (Conditions, OnPrecondition) {
    let sendable = |v: &Option<String>| v.as_deref().filter(|s| !s.contains(',')).and_then(|s| ETag::new(s).ok());
    let if_match = sendable(&options.if_match);
    let if_none_match = if if_match.is_some() { None } else { sendable(&options.if_none_match) };
    // Before the epoch is the epoch: no blob was modified earlier. A date goes
    // only where the ETag condition that decides with it went too (else the
    // device could refuse what that condition, checked here, lets through).
    let ms = |t: &Option<chrono::DateTime<chrono::Utc>>, partner_sent: bool| {
        t.filter(|_| op_version >= 2 && partner_sent).map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0))
    };
    let if_modified_since_ms =
        ms(&options.if_modified_since, options.if_none_match.is_none() || if_none_match.is_some());
    let if_unmodified_since_ms = ms(&options.if_unmodified_since, options.if_match.is_none() || if_match.is_some());
    // A device of this build answers a read's 304 as NotModified itself; its
    // PreconditionFailed is a 412 then, and an older one's If-None-Match a 304.
    let on = if if_match.is_some() || if_unmodified_since_ms.is_some() {
        OnPrecondition::Precondition
    } else {
        OnPrecondition::NotModified
    };
    (Conditions { if_match, if_none_match, if_modified_since_ms, if_unmodified_since_ms, lease_id: None }, on)
}

fn pinned(props: &BlobProperties) -> Result<Conditions, ObjStoreError> {
    let etag = ETag::new(&props.etag).map_err(|_| ClientError::from(ProtocolError::BadETag(props.etag.clone())))?;
    Ok(Conditions::if_match(etag))
}

/// Up to `len` bytes at `offset`, if `conditions` hold: `Bytes` that own
/// the DMA buffer the device filled while the pool has room, else a copy
/// ([`crate::dma::DmaBytes::into_bytes`]).
fn read(
    blob: &BlobHandle,
    offset: u64,
    len: usize,
    conditions: Conditions,
) -> Result<(BlobProperties, Bytes), ObjStoreError> {
    let got = blob.get_bytes(offset..offset + len as u64, conditions)?;
    Ok((got.properties, got.data.into_bytes()))
}

/// Exactly `len` bytes at `offset` of the version `conditions` pins.
pub(crate) fn read_pinned(
    blob: &BlobHandle,
    offset: u64,
    len: usize,
    conditions: Conditions,
) -> Result<Bytes, ObjStoreError> {
    match read(blob, offset, len, conditions) {
        Ok((_, data)) if data.len() == len => Ok(data),
        Ok((_, data)) => {
            Err(ClientError::from(ProtocolError::ShortRead { got: data.len() as u64, want: len as u64 }).into())
        }
        Err(e) if matches!(e.status(), Some(BlobError::PreconditionFailed | BlobError::BlobNotFound)) => {
            Err(ObjStoreError::Changed)
        }
        Err(e) => Err(e),
    }
}

/// What the first request found: the properties, where it started, and its bytes.
struct FirstRead {
    props: BlobProperties,
    start: u64,
    data: Bytes,
}

fn first_read(blob: &BlobHandle, range: Option<&GetRange>, conditions: Conditions) -> Result<FirstRead, ObjStoreError> {
    let (start, conditions) = match range {
        // The start depends on the size: ask for it first, then pin that version.
        Some(GetRange::Suffix(n)) => {
            let props = blob.properties_opts(conditions)?;
            (props.content_length.saturating_sub(*n), pinned(&props)?)
        }
        Some(GetRange::Bounded(r)) => (r.start, conditions),
        Some(GetRange::Offset(o)) => (*o, conditions),
        None => (0, conditions),
    };
    let (props, data) = read(blob, start, first_len(range) as usize, conditions)?;
    Ok(FirstRead { props, start, data })
}

fn first_len(range: Option<&GetRange>) -> u64 {
    match range {
        Some(GetRange::Bounded(r)) => (r.end - r.start).min(FIRST_READ),
        _ => FIRST_READ,
    }
}

/// The range `get_opts` answers, and the first read's bytes within it.
fn resolve(range: Option<&GetRange>, first: &FirstRead) -> Result<Range<u64>, ObjStoreError> {
    let size = first.props.content_length;
    let resolved = match range {
        Some(r) => r.as_range(size).map_err(|e| ObjStoreError::InvalidRange(e.to_string()))?,
        None => 0..size,
    };
    // The device returns min(asked, size - start) bytes.
    let expect = (resolved.end - resolved.start).min(first_len(range));
    if resolved.start != first.start || first.data.len() as u64 != expect {
        let got = first.data.len() as u64;
        return Err(ClientError::from(ProtocolError::ShortRead { got, want: expect }).into());
    }
    Ok(resolved)
}

pub(crate) async fn get(blob: BlobHandle, location: Path, options: GetOptions) -> object_store::Result<GetResult> {
    let path = location.to_string();
    let fail = |on: OnPrecondition| {
        let path = &path;
        move |e: ObjStoreError| e.into_os(path, on)
    };
    if options.version.is_some() {
        return Err(fail(OnPrecondition::Precondition)(ObjStoreError::VersionsUnsupported));
    }
    if let Some(r) = &options.range {
        r.is_valid().map_err(|e| fail(OnPrecondition::Precondition)(ObjStoreError::InvalidRange(e.to_string())))?;
    }
    let (conditions, on) = device_conditions(&options, blob.client().device_config().op_version());
    if options.head {
        let b = blob.clone();
        let props = blocking::run(move || Ok(b.properties_opts(conditions)?)).await.map_err(fail(on))?;
        let meta = names::object_meta(location, &props);
        options.check_preconditions(&meta)?;
        return Ok(GetResult {
            payload: GetResultPayload::Stream(stream::empty().boxed()),
            meta,
            range: 0..0,
            attributes: BlobAttributes::from_properties(&props).to_object_store(),
            extensions: Default::default(),
        });
    }
    let (b, r) = (blob.clone(), options.range.clone());
    let first = blocking::run(move || first_read(&b, r.as_ref(), conditions)).await.map_err(fail(on))?;
    let meta = names::object_meta(location.clone(), &first.props);
    options.check_preconditions(&meta)?;
    let range = resolve(options.range.as_ref(), &first).map_err(fail(on))?;
    let attributes = BlobAttributes::from_properties(&first.props).to_object_store();
    let whole = range == (0..first.props.content_length);
    let body = rest_of(blob, &first, range.end, location.to_string())?;
    let crc = first.props.content_crc64;
    let head = stream::iter((!first.data.is_empty()).then_some(Ok(first.data)));
    let mut payload = head.chain(body).boxed();
    if whole {
        payload = verify_crc(payload, crc, location.to_string());
    }
    Ok(GetResult {
        payload: GetResultPayload::Stream(payload),
        meta,
        range,
        attributes,
        extensions: Default::default(),
    })
}

/// The bytes after the first read, fetched on demand.
fn rest_of(
    blob: BlobHandle,
    first: &FirstRead,
    end: u64,
    path: String,
) -> object_store::Result<BoxStream<'static, object_store::Result<Bytes>>> {
    let from = first.start + first.data.len() as u64;
    if from >= end {
        return Ok(stream::empty().boxed());
    }
    let conditions = pinned(&first.props).map_err(|e| e.into_os(&path, OnPrecondition::Precondition))?;
    let chunk = blob.client().block_size() as u64;
    let ahead = blob.client().options().parallel.max(1);
    let chunks = (from..end).step_by(chunk as usize).map(move |off| (off, chunk.min(end - off) as usize));
    Ok(stream::iter(chunks)
        .map(move |(off, len)| {
            let (b, cond, path) = (blob.clone(), conditions.clone(), path.clone());
            async move {
                blocking::run(move || read_pinned(&b, off, len, cond))
                    .await
                    .map_err(|e| e.into_os(&path, OnPrecondition::Precondition))
            }
        })
        .buffered(ahead)
        .boxed())
}

/// Passes `inner` through and fails at its end if the bytes' CRC-64/NVME is not `expected`.
fn verify_crc(
    inner: BoxStream<'static, object_store::Result<Bytes>>,
    expected: u64,
    path: String,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let state = Some((inner, crate::Crc64::new()));
    stream::unfold(state, move |state| {
        let path = path.clone();
        async move {
            let (mut inner, mut digest) = state?;
            match inner.next().await {
                Some(Ok(b)) => {
                    digest.write(&b);
                    Some((Ok(b), Some((inner, digest))))
                }
                Some(Err(e)) => Some((Err(e), None)),
                None if digest.sum64() == expected => None,
                None => {
                    let e = ClientError::checksum_mismatch("object read back");
                    Some((Err(ObjStoreError::from(e).into_os(&path, OnPrecondition::Precondition)), None))
                }
            }
        }
    })
    // Callers may poll on after the end (object_store's collect_bytes does).
    .fuse()
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    #[test]
    fn one_etag_per_condition_goes_to_the_device() {
        let o = GetOptions::new().with_if_match(Some("\"a\"")).with_if_none_match(Some("\"b\""));
        let (c, on) = device_conditions(&o, 2);
        assert_eq!((c.if_match.unwrap().as_str(), c.if_none_match, on), ("\"a\"", None, OnPrecondition::Precondition));
        let (c, on) = device_conditions(&GetOptions::new().with_if_none_match(Some("*")), 2);
        assert_eq!((c.if_match, c.if_none_match.unwrap().is_any(), on), (None, true, OnPrecondition::NotModified));
        let (c, _) = device_conditions(&GetOptions::new().with_if_match(Some("\"a\", \"b\"")), 2);
        assert_eq!(c, Conditions::none(), "lists are checked by the guest");
        let (c, _) = device_conditions(&GetOptions::new().with_if_match(Some("bad\n")), 2);
        assert_eq!(c, Conditions::none());
    }

    #[test]
    fn dates_go_to_a_version_2_device_beside_the_etag_condition_they_defer_to() {
        let t = chrono::DateTime::from_timestamp(1_000, 0).unwrap();
        let o = GetOptions { if_modified_since: Some(t), if_unmodified_since: Some(t), ..GetOptions::new() };
        let (c, on) = device_conditions(&o, 2);
        assert_eq!((c.if_modified_since_ms, c.if_unmodified_since_ms), (Some(1_000_000), Some(1_000_000)));
        assert_eq!(on, OnPrecondition::Precondition, "a 412 of If-Unmodified-Since is a precondition");
        let (c, _) = device_conditions(&o, 1);
        assert!(!c.has_times(), "a version-1 device has no place for them: checked here");
        // If-None-Match is withheld beside If-Match, so If-Modified-Since is too
        // (the device would answer 304 where the If-None-Match, checked here, serves).
        let both = GetOptions { if_match: Some("\"a\"".into()), if_none_match: Some("\"b\"".into()), ..o.clone() };
        let (c, _) = device_conditions(&both, 2);
        assert_eq!((c.if_modified_since_ms, c.if_unmodified_since_ms), (None, Some(1_000_000)));
        let list = GetOptions { if_match: Some("\"a\", \"b\"".into()), ..o };
        let (c, _) = device_conditions(&list, 2);
        assert_eq!((c.if_match, c.if_unmodified_since_ms), (None, None), "beside an If-Match list, checked here");
    }

    #[test]
    fn crc_is_checked_at_the_end_of_a_whole_read() {
        let chunks = || stream::iter([Ok(Bytes::from_static(b"1234")), Ok(Bytes::from_static(b"56789"))]).boxed();
        let ok = futures::executor::block_on(
            verify_crc(chunks(), crate::crc64(b"123456789"), "p".into()).try_collect::<Vec<_>>(),
        );
        assert_eq!(ok.unwrap().concat(), b"123456789");
        let bad = futures::executor::block_on(verify_crc(chunks(), 1, "p".into()).try_collect::<Vec<_>>());
        assert!(matches!(bad, Err(object_store::Error::Generic { .. })), "{bad:?}");
        let mut s = verify_crc(stream::empty().boxed(), crate::crc64(b""), "p".into());
        futures::executor::block_on(async {
            assert!(s.next().await.is_none());
            assert!(s.next().await.is_none(), "polling past the end is allowed");
        });
    }
}
