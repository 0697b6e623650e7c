//! `object_store::path::Path` ↔ blob names.
//!
//! A path's encoded form (`Path::as_ref`, percent-encoding and all) is the
//! blob name, so every name a store writes lists back as the same path. The
//! protocol's rules are stricter than `Path`'s in three ways (no `\`, no
//! Unicode control characters, at most 1024 bytes and 254 segments); such
//! paths are refused before anything is sent.

use chrono::{DateTime, Utc};
use object_store::ObjectMeta;
use object_store::path::{DELIMITER, Path};
use vmblob_protocol::names::{self, BLOB_NAME_MAX, BLOB_NAME_MAX_SEGMENTS, BlobName};
use vmblob_protocol::ops::BlobProperties;

use super::error::ObjStoreError;

/// The blob name of `path`.
pub(crate) fn blob_name(path: &Path) -> Result<BlobName, ObjStoreError> {
    let s = path.as_ref();
    BlobName::new(s).map_err(|_| ObjStoreError::InvalidBlobName { path: s.to_owned(), reason: why_invalid(s) })
}

fn why_invalid(s: &str) -> &'static str {
    if s.is_empty() {
        "the root is not an object"
    } else if s.len() > BLOB_NAME_MAX {
        "longer than 1024 bytes"
    } else if s.split('/').count() > BLOB_NAME_MAX_SEGMENTS {
        "more than 254 segments"
    } else {
        "it holds a backslash or a control character"
    }
}

/// The ListBlobs prefix for an `object_store` prefix, which matches whole
/// segments (`foo` lists `foo/x`, not `foo.bar/y` nor `foo` itself). `None`
/// when no blob name can start with it, so the listing is empty.
pub(crate) fn list_prefix(prefix: Option<&Path>) -> Option<String> {
    let p = prefix.map_or("", |p| p.as_ref());
    if p.is_empty() {
        return Some(String::new());
    }
    let with_delim = format!("{p}{DELIMITER}");
    (with_delim.len() < BLOB_NAME_MAX && names::validate_text(&with_delim).is_ok()).then_some(with_delim)
}

/// The path of a listed blob name.
pub(crate) fn path_of(name: &str) -> Result<Path, ObjStoreError> {
    Path::parse(name).map_err(|source| ObjStoreError::UnrepresentableName { name: name.to_owned(), source })
}

/// The path of a rolled-up prefix (`a/b/` → `a/b`).
pub(crate) fn prefix_path(prefix: &str) -> Result<Path, ObjStoreError> {
    path_of(prefix.strip_suffix(DELIMITER).unwrap_or(prefix))
}

/// A device timestamp (ms since the epoch); out-of-range values read as the epoch.
pub(crate) fn timestamp(ms: u64) -> DateTime<Utc> {
    i64::try_from(ms).ok().and_then(DateTime::from_timestamp_millis).unwrap_or_default()
}

pub(crate) fn object_meta(location: Path, props: &BlobProperties) -> ObjectMeta {
    ObjectMeta {
        location,
        last_modified: timestamp(props.last_modified_ms),
        size: props.content_length,
        e_tag: (!props.etag.is_empty()).then(|| props.etag.clone()),
        version: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_blob_names_in_their_encoded_form() {
        let p = Path::from_iter(["a", "b/c", "d e.parquet"]);
        assert_eq!(blob_name(&p).unwrap().as_str(), "a/b%2Fc/d e.parquet");
        assert_eq!(path_of(blob_name(&p).unwrap().as_str()).unwrap(), p);
        let emoji = Path::from("🙀/😀.parquet");
        assert_eq!(path_of(blob_name(&emoji).unwrap().as_str()).unwrap(), emoji);
        // Path::from encodes what the protocol refuses; Path::parse keeps it.
        assert_eq!(blob_name(&Path::from("a\\b")).unwrap().as_str(), "a%5Cb");
    }

    #[test]
    fn paths_the_protocol_refuses_are_errors_not_panics() {
        let long = Path::from("x".repeat(1025).as_str());
        let deep = Path::parse(vec!["d"; 255].join("/")).unwrap();
        let c1 = Path::parse("a\u{85}b").unwrap();
        let cases = [
            (Path::from(""), "root"),
            (long, "1024"),
            (deep, "254"),
            (Path::parse("a\\b").unwrap(), "backslash"),
            (c1, "control"),
        ];
        for (path, why) in cases {
            match blob_name(&path) {
                Err(ObjStoreError::InvalidBlobName { reason, .. }) => assert!(reason.contains(why), "{reason} / {why}"),
                other => panic!("{path:?}: expected InvalidBlobName, got {other:?}"),
            }
        }
        assert!(blob_name(&Path::parse(vec!["d"; 254].join("/")).unwrap()).is_ok());
        assert!(blob_name(&Path::from("x".repeat(1024).as_str())).is_ok());
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(list_prefix(None).as_deref(), Some(""));
        assert_eq!(list_prefix(Some(&Path::from("/"))).as_deref(), Some(""));
        assert_eq!(list_prefix(Some(&Path::from("foo"))).as_deref(), Some("foo/"));
        assert_eq!(list_prefix(Some(&Path::from("a/b c"))).as_deref(), Some("a/b c/"));
        assert_eq!(list_prefix(Some(&Path::from("x".repeat(1023).as_str()))), None, "no name fits below it");
        assert_eq!(list_prefix(Some(&Path::parse("a\u{85}").unwrap())), None, "no name holds a control character");
        assert_eq!(prefix_path("a/b/").unwrap(), Path::from("a/b"));
    }

    #[test]
    fn names_path_cannot_hold_are_errors() {
        for bad in ["a//b", "a/./b", "x\u{1}"] {
            assert!(matches!(path_of(bad), Err(ObjStoreError::UnrepresentableName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn metadata_from_properties() {
        let props = BlobProperties {
            etag: "\"0x1\"".into(),
            last_modified_ms: 1_700_000_000_123,
            content_length: 42,
            ..BlobProperties::default()
        };
        let m = object_meta(Path::from("a"), &props);
        assert_eq!((m.size, m.e_tag.as_deref(), m.version), (42, Some("\"0x1\""), None));
        assert_eq!(m.last_modified.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(timestamp(u64::MAX), DateTime::<Utc>::default(), "a hostile timestamp does not panic");
    }
}
