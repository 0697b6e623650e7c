//! Azure naming rules, enforced on decode so nothing invalid reaches a store.

use std::fmt;

use crate::ops::DecodeError;

pub const CONTAINER_NAME_MIN: usize = 3;
pub const CONTAINER_NAME_MAX: usize = 63;
/// Azure allows 1024 characters; we bound bytes, which is stricter.
pub const BLOB_NAME_MAX: usize = 1024;
pub const BLOB_NAME_MAX_SEGMENTS: usize = 254;
pub const BLOCK_ID_MAX: usize = 64;
pub const METADATA_MAX_BYTES: usize = 8 * 1024;
pub const METADATA_KEY_MAX: usize = 256;
pub const CONTENT_TYPE_MAX: usize = 256;
/// Longest Content-Encoding, -Language, -Disposition or Cache-Control.
pub const CONTENT_HEADER_MAX: usize = 1024;
pub const ETAG_MAX: usize = 256;

/// A container name: 3–63 of `[a-z0-9-]`, starting and ending with a letter or
/// digit, no two dashes in a row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerName(String);

/// A blob name: 1–1024 bytes of UTF-8 without control characters or `\`;
/// `/`-separated segments, none empty, `.` or `..`; at most 254 segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobName(String);

/// A block id: 1–64 opaque bytes (Azure's id before base64).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(Vec<u8>);

impl ContainerName {
    pub fn new(s: &str) -> Result<Self, DecodeError> {
        let b = s.as_bytes();
        let ok_len = (CONTAINER_NAME_MIN..=CONTAINER_NAME_MAX).contains(&b.len());
        let ok_chars = b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        let ok_ends = ok_len && b[0] != b'-' && b[b.len() - 1] != b'-';
        if ok_len && ok_chars && ok_ends && !s.contains("--") {
            Ok(Self(s.to_owned()))
        } else {
            Err(DecodeError::InvalidName)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl BlobName {
    pub fn new(s: &str) -> Result<Self, DecodeError> {
        if s.is_empty() || s.len() > BLOB_NAME_MAX || s.chars().any(|c| c.is_control() || c == '\\') {
            return Err(DecodeError::InvalidName);
        }
        let mut segments = 0usize;
        for seg in s.split('/') {
            segments += 1;
            if seg.is_empty() || seg == "." || seg == ".." || segments > BLOB_NAME_MAX_SEGMENTS {
                return Err(DecodeError::InvalidName);
            }
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl BlockId {
    pub fn new(b: &[u8]) -> Result<Self, DecodeError> {
        if b.is_empty() || b.len() > BLOCK_ID_MAX {
            return Err(DecodeError::InvalidName);
        }
        Ok(Self(b.to_vec()))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A metadata key: a C#-style identifier (`[A-Za-z_][A-Za-z0-9_]*`), as Azure requires.
pub fn validate_metadata_key(k: &str) -> Result<(), DecodeError> {
    let mut chars = k.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && k.len() <= METADATA_KEY_MAX && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(DecodeError::InvalidName)
    }
}

/// Header-safe text: printable, no control characters (content type, metadata values, ETags).
pub fn validate_text(s: &str) -> Result<(), DecodeError> {
    if s.chars().any(char::is_control) { Err(DecodeError::InvalidName) } else { Ok(()) }
}

/// A value of Content-Encoding, -Language, -Disposition or Cache-Control: at
/// most [`CONTENT_HEADER_MAX`] bytes of printable ASCII, what an HTTP header
/// carries as it is (a service behind the VSP gets it as one).
pub fn validate_header_value(s: &str) -> Result<(), DecodeError> {
    if s.len() > CONTENT_HEADER_MAX {
        return Err(DecodeError::FieldTooLong { len: s.len(), max: CONTENT_HEADER_MAX });
    }
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) { Ok(()) } else { Err(DecodeError::InvalidValue) }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Display for BlobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names() {
        for ok in ["abc", "a-b-c", "0day", &"a".repeat(63)] {
            assert!(ContainerName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "-abc", "abc-", "a--b", "ABC", "a_b", "a.b", "", &"a".repeat(64), "$root", "ab\0"] {
            assert!(ContainerName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blob_names() {
        for ok in ["a", "dir/file.txt", "ünïcode/名前", "a.b", "..a", &"x".repeat(1024)] {
            assert!(BlobName::new(ok).is_ok(), "{ok}");
        }
        let deep = vec!["d"; 255].join("/");
        for bad in
            ["", "/abs", "a/", "a//b", "../x", "a/../b", "./a", "a/.", "a\0b", "a\nb", "a\\b", &"x".repeat(1025), &deep]
        {
            assert!(BlobName::new(bad).is_err(), "{bad:?}");
        }
        assert!(BlobName::new(&vec!["d"; 254].join("/")).is_ok());
    }

    #[test]
    fn metadata_keys_and_block_ids() {
        assert!(validate_metadata_key("Content_Owner1").is_ok());
        assert!(validate_metadata_key("_x").is_ok());
        for bad in ["", "1a", "a-b", "a b", "ä"] {
            assert!(validate_metadata_key(bad).is_err(), "{bad}");
        }
        assert!(BlockId::new(&[0; 64]).is_ok());
        assert!(BlockId::new(&[]).is_err());
        assert!(BlockId::new(&[0; 65]).is_err());
    }
}
