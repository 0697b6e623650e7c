//! Blob and container properties as object attributes (HTTP headers).
//!
//! Content type and the other HTTP headers (Content-Encoding, -Language,
//! -Disposition, Cache-Control) travel as those headers; everything else as metadata
//! (`x-ms-meta-*` on Azure, `x-amz-meta-*` on S3):
//!
//! - user metadata under its own key, so other tools see it; services fold the
//!   case of header names, so `vmblob_keys` lists the original keys in order;
//! - values that are not plain printable ASCII (non-ASCII, empty, leading or
//!   trailing spaces, or starting with `=?`) are stored as an RFC 2047
//!   encoded word, `=?UTF-8?B?<base64 of the UTF-8 bytes>?=`;
//! - our own fields under `vmblob_*` (a prefix user keys may not use):
//!   `vmblob_txn`, `vmblob_crc64`, `vmblob_md5`, `vmblob_mtime` and `vmblob_ctime`
//!   (ms), `vmblob_blocks`, `vmblob_typecleared`.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use object_store::{Attribute, AttributeValue, Attributes, ObjectMeta};
use vmblob_protocol::ops::{BlobProperties, ContainerProperties, ContentHeaders, Metadata};

use crate::store::semantics::{content_type_or_default, hex, unhex};
use crate::store::{StoreError, TxnId};

const RESERVED: &str = "vmblob_";
const KEYS: &str = "vmblob_keys";
const TXN: &str = "vmblob_txn";
const CRC64: &str = "vmblob_crc64";
const MD5: &str = "vmblob_md5";
const MTIME: &str = "vmblob_mtime";
/// The creation time (ms); objects written before it was kept have none (0).
const CTIME: &str = "vmblob_ctime";
const BLOCKS: &str = "vmblob_blocks";
/// Set when the content type is empty (services fill in a default otherwise).
const NO_TYPE: &str = "vmblob_notype";
/// Set when a SetBlobProperties cleared the content type: it reads as none
/// (Azure's answer), where a blob written without one reads as the default.
const CLEARED_TYPE: &str = "vmblob_typecleared";

const WORD_START: &str = "=?UTF-8?B?";
const WORD_END: &str = "?=";

/// A metadata value as a header value.
pub(crate) fn encode_value(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !v.starts_with(' ')
        && !v.ends_with(' ')
        && !v.starts_with("=?");
    if plain { v.to_owned() } else { format!("{WORD_START}{}{WORD_END}", B64.encode(v.as_bytes())) }
}

pub(crate) fn decode_value(v: &str) -> Option<String> {
    match v.strip_prefix(WORD_START).and_then(|w| w.strip_suffix(WORD_END)) {
        Some(b64) => String::from_utf8(B64.decode(b64).ok()?).ok(),
        None => Some(v.to_owned()),
    }
}

/// What a write stores besides the bytes.
pub(crate) struct Stored<'a> {
    pub content_type: &'a str,
    pub headers: &'a ContentHeaders,
    pub metadata: &'a Metadata,
    pub txn: &'a TxnId,
    pub mtime_ms: u64,
    pub created_ms: u64,
    pub crc64: Option<u64>,
    pub md5: Option<[u8; 16]>,
    pub committed_blocks: u32,
}

fn meta_key(k: &str) -> Attribute {
    Attribute::Metadata(k.to_owned().into())
}

pub(crate) fn check_user_keys(metadata: &Metadata) -> Result<(), StoreError> {
    match metadata.0.iter().find(|(k, _)| k.to_ascii_lowercase().starts_with(RESERVED)) {
        Some((k, _)) => Err(StoreError::InvalidName(format!("metadata key {k:?} uses the reserved prefix {RESERVED}"))),
        None => Ok(()),
    }
}

pub(crate) fn encode(s: &Stored<'_>) -> Result<Attributes, StoreError> {
    check_user_keys(s.metadata)?;
    let mut a = Attributes::new();
    let mut put = |k: &str, v: String| a.insert(meta_key(k), AttributeValue::from(v));
    let keys: Vec<&str> = s.metadata.0.iter().map(|(k, _)| k.as_str()).collect();
    for (k, v) in &s.metadata.0 {
        put(&k.to_ascii_lowercase(), encode_value(v));
    }
    if !keys.is_empty() {
        put(KEYS, keys.join(","));
    }
    put(TXN, hex(s.txn));
    put(MTIME, s.mtime_ms.to_string());
    put(CTIME, s.created_ms.to_string());
    if let Some(crc) = s.crc64 {
        put(CRC64, format!("{crc:016x}"));
    }
    if let Some(md5) = s.md5 {
        put(MD5, hex(&md5));
    }
    if s.committed_blocks > 0 {
        put(BLOCKS, s.committed_blocks.to_string());
    }
    a.insert(Attribute::ContentType, AttributeValue::from(content_type_or_default(s.content_type).to_owned()));
    for (attr, v) in header_attributes(s.headers) {
        if !v.is_empty() {
            a.insert(attr, AttributeValue::from(v.to_owned()));
        }
    }
    Ok(a)
}

fn header_attributes(h: &ContentHeaders) -> [(Attribute, &str); 4] {
    [
        (Attribute::ContentEncoding, &h.content_encoding),
        (Attribute::ContentLanguage, &h.content_language),
        (Attribute::ContentDisposition, &h.content_disposition),
        (Attribute::CacheControl, &h.cache_control),
    ]
}

/// Mark `a` (from [`encode`]) as having had its content type cleared.
pub(crate) fn mark_type_cleared(a: &mut Attributes) {
    a.insert(meta_key(CLEARED_TYPE), AttributeValue::from("1".to_owned()));
}

/// Properties read back from a HEAD.
pub(crate) struct Decoded {
    pub txn: Option<TxnId>,
    pub blob: BlobProperties,
}

fn bad(what: &str) -> StoreError {
    StoreError::Remote(format!("stored object has a malformed {what} attribute"))
}

pub(crate) fn decode(meta: &ObjectMeta, attrs: &Attributes) -> Result<Decoded, StoreError> {
    let mut md: HashMap<String, &str> = HashMap::new();
    let mut content_type = String::new();
    let mut headers = ContentHeaders::default();
    for (k, v) in attrs {
        let field = match k {
            Attribute::Metadata(k) => {
                md.insert(k.to_ascii_lowercase(), v.as_ref());
                continue;
            }
            Attribute::ContentType => &mut content_type,
            Attribute::ContentEncoding => &mut headers.content_encoding,
            Attribute::ContentLanguage => &mut headers.content_language,
            Attribute::ContentDisposition => &mut headers.content_disposition,
            Attribute::CacheControl => &mut headers.cache_control,
            _ => continue,
        };
        *field = v.to_string();
    }
    // Another tool may have stored a header the protocol cannot carry (too
    // long, control characters): left out, so the object still reads and lists.
    for (name, v) in [
        ("Content-Encoding", &mut headers.content_encoding),
        ("Content-Language", &mut headers.content_language),
        ("Content-Disposition", &mut headers.content_disposition),
        ("Cache-Control", &mut headers.cache_control),
    ] {
        if vmblob_protocol::names::validate_header_value(v).is_err() {
            log::warn!("{}: leaving out a {name} header the protocol cannot carry", meta.location);
            v.clear();
        }
    }
    // Written without a type (`NO_TYPE`, by older VSPs), or by a tool that set none.
    if md.contains_key(CLEARED_TYPE) {
        content_type.clear();
    } else if md.contains_key(NO_TYPE) || content_type.is_empty() {
        content_type = content_type_or_default("").to_owned();
    }
    let mut pairs = Vec::new();
    if let Some(keys) = md.get(KEYS).filter(|k| !k.is_empty()) {
        for k in keys.split(',') {
            let v = md.get(&k.to_ascii_lowercase()).ok_or_else(|| bad("user metadata"))?;
            pairs.push((k.to_owned(), decode_value(v).ok_or_else(|| bad("user metadata"))?));
        }
    }
    let metadata = Metadata::new(pairs).map_err(|_| bad("user metadata"))?;
    let txn = match md.get(TXN) {
        Some(t) => Some(unhex(t).and_then(|b| TxnId::try_from(b).ok()).ok_or_else(|| bad(TXN))?),
        None => None,
    };
    let num = |k: &str, radix: u32| -> Result<Option<u64>, StoreError> {
        md.get(k).map(|v| u64::from_str_radix(v, radix).map_err(|_| bad(k))).transpose()
    };
    let md5 = match md.get(MD5) {
        Some(m) => Some(unhex(m).and_then(|b| <[u8; 16]>::try_from(b).ok()).ok_or_else(|| bad(MD5))?),
        None => None,
    };
    let etag = meta.e_tag.clone().ok_or_else(|| StoreError::Remote("the store returned no ETag".into()))?;
    let service_ms = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
    Ok(Decoded {
        txn,
        blob: BlobProperties {
            etag,
            last_modified_ms: num(MTIME, 10)?.unwrap_or(service_ms),
            created_ms: num(CTIME, 10)?.unwrap_or(0),
            content_length: meta.size,
            content_type,
            headers,
            content_md5: md5,
            // Objects written by other tools carry no CRC-64; 0 says "unknown".
            content_crc64: num(CRC64, 16)?.unwrap_or(0),
            committed_blocks: u32::try_from(num(BLOCKS, 10)?.unwrap_or(0)).map_err(|_| bad(BLOCKS))?,
            metadata,
            // Leases live in the VSP's lease table, not with the object.
            lease: Default::default(),
        },
    })
}

pub(crate) fn container_props(d: Decoded) -> ContainerProperties {
    ContainerProperties { etag: d.blob.etag, last_modified_ms: d.blob.last_modified_ms, metadata: d.blob.metadata }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::meta;

    #[test]
    fn values_round_trip_through_header_safe_text() {
        for v in ["plain", "two words", "", " lead", "trail ", "ünïcode 名前 😀", "=?UTF-8?B?eA==?=", "=?x", "a\u{7f}"]
        {
            let e = encode_value(v);
            assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)) && !e.starts_with(' ') && !e.is_empty(), "{e:?}");
            assert_eq!(decode_value(&e).as_deref(), Some(v), "{e:?}");
        }
        assert_eq!(encode_value("plain"), "plain");
        assert_eq!(encode_value("é"), "=?UTF-8?B?w6k=?=");
    }

    #[test]
    fn properties_round_trip_with_case_and_order_folded_by_the_service() {
        let md = meta(&[("Zeta", "ünï"), ("alpha", "1"), ("B_2", "")]);
        let txn = [7u8; 16];
        let headers = ContentHeaders {
            content_encoding: "gzip".into(),
            content_language: String::new(),
            content_disposition: "attachment; filename=\"a b.txt\"".into(),
            cache_control: "max-age=60".into(),
        };
        let stored = Stored {
            content_type: "",
            headers: &headers,
            metadata: &md,
            txn: &txn,
            mtime_ms: 1234,
            created_ms: 1000,
            crc64: Some(0xdead_beef),
            md5: Some([9; 16]),
            committed_blocks: 3,
        };
        // What a service hands back: header names lower-cased, in its own order.
        let mut back: Vec<(Attribute, AttributeValue)> = encode(&stored)
            .unwrap()
            .iter()
            .map(|(k, v)| match k {
                Attribute::Metadata(n) => (Attribute::Metadata(n.to_ascii_lowercase().into()), v.clone()),
                other => (other.clone(), v.clone()),
            })
            .collect();
        back.reverse();
        back.push((Attribute::ContentType, "application/octet-stream".into()));
        let attrs: Attributes = back.into_iter().collect();
        let meta = ObjectMeta {
            location: "x".into(),
            last_modified: Default::default(),
            size: 10,
            e_tag: Some("\"0x1\"".into()),
            version: None,
        };
        let d = decode(&meta, &attrs).unwrap();
        assert_eq!(d.txn, Some(txn));
        assert_eq!(
            d.blob,
            BlobProperties {
                lease: Default::default(),
                etag: "\"0x1\"".into(),
                last_modified_ms: 1234,
                created_ms: 1000,
                content_length: 10,
                content_type: "application/octet-stream".into(),
                headers,
                content_md5: Some([9; 16]),
                content_crc64: 0xdead_beef,
                committed_blocks: 3,
                metadata: md,
            }
        );
        let reserved = meta_reserved();
        assert!(matches!(check_user_keys(&reserved), Err(StoreError::InvalidName(_))));
    }

    #[test]
    fn a_foreign_header_the_protocol_cannot_carry_is_left_out() {
        let attrs = Attributes::from_iter([
            (Attribute::CacheControl, "no-store".to_owned()),
            (Attribute::ContentDisposition, "x".repeat(2000)),
            (Attribute::ContentLanguage, "a\u{7}b".to_owned()),
            (Attribute::ContentEncoding, "ünï".to_owned()),
        ]);
        let meta = ObjectMeta {
            location: "x".into(),
            last_modified: Default::default(),
            size: 1,
            e_tag: Some("\"e\"".into()),
            version: None,
        };
        let h = decode(&meta, &attrs).unwrap().blob.headers;
        assert_eq!(h, ContentHeaders { cache_control: "no-store".into(), ..Default::default() });
    }

    fn meta_reserved() -> Metadata {
        meta(&[("VMBLOB_txn", "x")])
    }
}
