//! How `ls` and `stat` print: short (size, name), long (size, last-modified,
//! ETag, content type, name) and JSON (every property; one object per line
//! for listings, so scripts can stream them).

use serde_json::{Value, json};
use vmblob_protocol::ops::{BlobProperties, ContainerEntry, LeaseKind};
use vmblob_vsc::BlobListItem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Short,
    Long,
    Json,
}

impl Listing {
    /// The format `-l` / `--json` ask for (`--json` wins).
    pub fn of(long: bool, json: bool) -> Self {
        match (long, json) {
            (_, true) => Listing::Json,
            (true, false) => Listing::Long,
            (false, false) => Listing::Short,
        }
    }

    /// One listing entry as one line.
    pub fn line(self, item: &BlobListItem) -> String {
        match (self, item) {
            (Listing::Short, BlobListItem::Blob { name, properties: p }) => format!("{:>14}  {name}", p.content_length),
            (Listing::Long, BlobListItem::Blob { name, properties: p }) => format!(
                "{:>14}  {}  {:<22}  {:<24}  {name}",
                p.content_length,
                rfc3339(p.last_modified_ms),
                p.etag,
                p.content_type
            ),
            (Listing::Json, BlobListItem::Blob { name, properties }) => props_json(name, properties).to_string(),
            (Listing::Short | Listing::Long, BlobListItem::Prefix(p)) => format!("{:>14}  {p}", "DIR"),
            (Listing::Json, BlobListItem::Prefix(p)) => json!({ "prefix": p }).to_string(),
            (Listing::Short | Listing::Long, BlobListItem::Uncommitted(n)) => format!("{:>14}  {n}", "UNCOMMITTED"),
            (Listing::Json, BlobListItem::Uncommitted(n)) => json!({ "name": n, "uncommitted": true }).to_string(),
        }
    }

    pub fn container_line(self, c: &ContainerEntry) -> String {
        let p = &c.properties;
        match self {
            Listing::Short => c.name.clone(),
            Listing::Long => format!("{}  {:<22}  {}", rfc3339(p.last_modified_ms), p.etag, c.name),
            Listing::Json => json!({
                "name": c.name,
                "etag": p.etag,
                "last_modified": rfc3339(p.last_modified_ms),
                "metadata": metadata_json(&p.metadata.0),
            })
            .to_string(),
        }
    }
}

/// Every property of a blob, for `stat --json` and `ls --json`.
pub fn props_json(name: &str, p: &BlobProperties) -> Value {
    json!({
        "name": name,
        "content_length": p.content_length,
        "content_type": p.content_type,
        "content_encoding": p.headers.content_encoding,
        "content_language": p.headers.content_language,
        "content_disposition": p.headers.content_disposition,
        "cache_control": p.headers.cache_control,
        "etag": p.etag,
        "last_modified": rfc3339(p.last_modified_ms),
        // null: stored before the device kept creation times.
        "created": (p.created_ms != 0).then(|| rfc3339(p.created_ms)),
        "content_md5": p.content_md5.map(|m| hex(&m)),
        "content_crc64": format!("{:016x}", p.content_crc64),
        "committed_blocks": p.committed_blocks,
        "metadata": metadata_json(&p.metadata.0),
        "lease_state": p.lease.state.name(),
        "lease_status": if p.lease.state.is_locked() { "locked" } else { "unlocked" },
        "lease_duration": p.lease.duration.map(|k| match k {
            LeaseKind::Infinite => "infinite",
            LeaseKind::Fixed => "fixed",
        }),
    })
}

fn metadata_json(pairs: &[(String, String)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

/// Milliseconds since the epoch as RFC 3339 in UTC (`2026-12-03T06:50:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| format!("{ms} ms"), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use vmblob_protocol::ops::Metadata;

    use super::*;

    fn props() -> BlobProperties {
        BlobProperties {
            lease: Default::default(),
            etag: "\"0x1\"".into(),
            last_modified_ms: 1_764_744_600_123,
            created_ms: 1_764_744_000_000,
            content_length: 42,
            content_type: "text/plain".into(),
            headers: vmblob_protocol::ops::ContentHeaders { cache_control: "no-cache".into(), ..Default::default() },
            content_md5: Some([0xab; 16]),
            content_crc64: 0x1234,
            committed_blocks: 2,
            metadata: Metadata(vec![("k".into(), "v".into())]),
        }
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_744_600_123), "2025-12-03T06:50:00.123Z");
        assert_eq!(rfc3339(u64::MAX), format!("{} ms", u64::MAX), "out of range: said as is");
    }

    #[test]
    fn every_format_shows_what_it_promises() {
        let item = BlobListItem::Blob { name: "a/b.txt".into(), properties: props() };
        assert_eq!(Listing::Short.line(&item).trim(), "42  a/b.txt");
        let long = Listing::Long.line(&item);
        for part in ["42", "2025-12-03T06:50:00.123Z", "\"0x1\"", "text/plain", "a/b.txt"] {
            assert!(long.contains(part), "{long}");
        }
        let v: Value = serde_json::from_str(&Listing::Json.line(&item)).unwrap();
        assert_eq!(v["name"], "a/b.txt");
        assert_eq!(v["content_length"], 42);
        assert_eq!(v["content_md5"], "ab".repeat(16));
        assert_eq!(v["metadata"]["k"], "v");
        assert_eq!((&v["cache_control"], &v["content_encoding"]), (&json!("no-cache"), &json!("")));
        assert_eq!(v["created"], "2025-12-03T06:40:00.000Z");
        let unknown = BlobProperties { created_ms: 0, ..props() };
        assert_eq!(props_json("x", &unknown)["created"], Value::Null, "stored before creation times were kept");
        let dir: Value = serde_json::from_str(&Listing::Json.line(&BlobListItem::Prefix("a/".into()))).unwrap();
        assert_eq!(dir, json!({ "prefix": "a/" }));
        let staged = BlobListItem::Uncommitted("up/load".into());
        assert_eq!(Listing::Short.line(&staged).trim(), "UNCOMMITTED  up/load");
        let v: Value = serde_json::from_str(&Listing::Json.line(&staged)).unwrap();
        assert_eq!(v, json!({ "name": "up/load", "uncommitted": true }));
    }
}
