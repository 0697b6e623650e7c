//! `object_store` attributes ↔ the protocol's HTTP headers and metadata.
//!
//! `Content-Type`, Cache-Control, Content-Disposition, Content-Encoding,
//! Content-Language (op version 2) and user metadata (`Attribute::Metadata`)
//! have fields in the protocol and round-trip. Storage class does not:
//! writing it is `NotImplemented` rather than silently dropped. Tags are
//! ignored, as the `object_store` documentation asks of stores without
//! tagging.

use object_store::{Attribute, AttributeValue, Attributes};
use vmblob_protocol::names::{self, CONTENT_HEADER_MAX, CONTENT_TYPE_MAX};
use vmblob_protocol::ops::{BlobProperties, Conditions, ContentHeaders, Metadata};

use super::error::ObjStoreError;

/// What a write stores besides the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BlobAttributes {
    pub content_type: String,
    pub headers: ContentHeaders,
    pub metadata: Metadata,
}

fn header_slot<'a>(h: &'a mut ContentHeaders, key: &Attribute) -> Option<&'a mut String> {
    Some(match key {
        Attribute::ContentEncoding => &mut h.content_encoding,
        Attribute::ContentLanguage => &mut h.content_language,
        Attribute::ContentDisposition => &mut h.content_disposition,
        Attribute::CacheControl => &mut h.cache_control,
        _ => return None,
    })
}

impl BlobAttributes {
    pub(crate) fn from_object_store(attributes: &Attributes) -> Result<Self, ObjStoreError> {
        let mut out = BlobAttributes::default();
        let mut pairs = Vec::new();
        for (key, value) in attributes {
            match key {
                Attribute::ContentType => {
                    let v: &str = value.as_ref();
                    if v.len() > CONTENT_TYPE_MAX || names::validate_text(v).is_err() {
                        return Err(ObjStoreError::InvalidAttribute {
                            attribute: "Content-Type".into(),
                            reason: format!("at most {CONTENT_TYPE_MAX} bytes without control characters"),
                        });
                    }
                    out.content_type = v.to_owned();
                }
                Attribute::Metadata(k) => pairs.push((k.to_string(), value.to_string())),
                other => {
                    let Some(slot) = header_slot(&mut out.headers, other) else {
                        return Err(ObjStoreError::UnsupportedAttribute(format!("{other:?}")));
                    };
                    let v: &str = value.as_ref();
                    if names::validate_header_value(v).is_err() {
                        return Err(ObjStoreError::InvalidAttribute {
                            attribute: format!("{other:?}"),
                            reason: format!("at most {CONTENT_HEADER_MAX} bytes of printable ASCII"),
                        });
                    }
                    *slot = v.to_owned();
                }
            }
        }
        // Attributes iterate in hash order; stored metadata should not.
        pairs.sort();
        out.metadata = Metadata::new(pairs).map_err(|e| ObjStoreError::InvalidAttribute {
            attribute: "metadata".into(),
            reason: format!("{e} (keys are C# identifiers, at most 8 KiB in all)"),
        })?;
        Ok(out)
    }

    pub(crate) fn from_properties(props: &BlobProperties) -> Self {
        Self {
            content_type: props.content_type.clone(),
            headers: props.headers.clone(),
            metadata: props.metadata.clone(),
        }
    }

    /// The client's options for a write of these attributes.
    pub(crate) fn put_options(&self, conditions: Conditions) -> crate::PutOptions {
        crate::PutOptions {
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
            metadata: self.metadata.clone(),
            conditions,
        }
    }

    pub(crate) fn to_object_store(&self) -> Attributes {
        let mut a = Attributes::with_capacity(self.metadata.0.len() + 5);
        if !self.content_type.is_empty() {
            a.insert(Attribute::ContentType, AttributeValue::from(self.content_type.clone()));
        }
        let h = &self.headers;
        let headers = [
            (Attribute::ContentEncoding, &h.content_encoding),
            (Attribute::ContentLanguage, &h.content_language),
            (Attribute::ContentDisposition, &h.content_disposition),
            (Attribute::CacheControl, &h.cache_control),
        ];
        for (key, v) in headers.into_iter().filter(|(_, v)| !v.is_empty()) {
            a.insert(key, AttributeValue::from(v.clone()));
        }
        for (k, v) in &self.metadata.0 {
            a.insert(Attribute::Metadata(k.clone().into()), AttributeValue::from(v.clone()));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_and_metadata_round_trip() {
        let attrs = Attributes::from_iter([
            (Attribute::ContentType, "text/html; charset=utf-8"),
            (Attribute::Metadata("zeta".into()), "last"),
            (Attribute::Metadata("alpha_1".into()), "hello   world"),
        ]);
        let b = BlobAttributes::from_object_store(&attrs).unwrap();
        assert_eq!(b.content_type, "text/html; charset=utf-8");
        assert_eq!(b.metadata.0, [("alpha_1".to_owned(), "hello   world".to_owned()), ("zeta".into(), "last".into())]);
        assert_eq!(b.to_object_store(), attrs);
        assert_eq!(BlobAttributes::from_object_store(&Attributes::new()).unwrap(), BlobAttributes::default());
        assert!(BlobAttributes::default().to_object_store().is_empty());
    }

    #[test]
    fn http_headers_round_trip() {
        let attrs = Attributes::from_iter([
            (Attribute::ContentEncoding, "gzip"),
            (Attribute::ContentLanguage, "de-CH"),
            (Attribute::ContentDisposition, "attachment; filename=\"r.csv\""),
            (Attribute::CacheControl, "no-cache"),
        ]);
        let b = BlobAttributes::from_object_store(&attrs).unwrap();
        assert_eq!(b.headers.content_encoding, "gzip");
        assert_eq!(b.headers.content_language, "de-CH");
        assert_eq!(b.headers.cache_control, "no-cache");
        assert_eq!(b.to_object_store(), attrs);
        assert_eq!(b.put_options(Conditions::none()).headers, b.headers);
    }

    #[test]
    fn attributes_without_a_field_are_refused() {
        let attrs = Attributes::from_iter([(Attribute::StorageClass, "HOT")]);
        let r = BlobAttributes::from_object_store(&attrs);
        assert!(matches!(r, Err(ObjStoreError::UnsupportedAttribute(_))), "{r:?}");
    }

    #[test]
    fn values_the_protocol_refuses_are_errors() {
        let bad = [
            (Attribute::Metadata("not-an-identifier".into()), "v".to_owned()),
            (Attribute::Metadata("k".into()), "line\nbreak".to_owned()),
            (Attribute::Metadata("k".into()), "x".repeat(9000)),
            (Attribute::ContentType, "t".repeat(257)),
            (Attribute::ContentType, "a\u{7f}".to_owned()),
            (Attribute::CacheControl, "c".repeat(1025)),
            (Attribute::ContentEncoding, "a\nb".to_owned()),
            (Attribute::ContentDisposition, "attachment; filename=\"ä.txt\"".to_owned()),
        ];
        for (key, value) in bad {
            let attrs = Attributes::from_iter([(key.clone(), value)]);
            let r = BlobAttributes::from_object_store(&attrs);
            assert!(matches!(r, Err(ObjStoreError::InvalidAttribute { .. })), "{key:?}: {r:?}");
        }
        let dup =
            Attributes::from_iter([(Attribute::Metadata("Key".into()), "1"), (Attribute::Metadata("key".into()), "2")]);
        assert!(matches!(BlobAttributes::from_object_store(&dup), Err(ObjStoreError::InvalidAttribute { .. })));
    }
}
