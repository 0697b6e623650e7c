//! Listings both stores share: Azure's prefix, delimiter and marker rules
//! over names held in Azure's order (UTF-16 code units, [`NameKey`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use vmblob_protocol::ops::{
    BlobListItem, BlobProperties, ContainerEntry, ContainerProperties, ListBlobs, ListContainers, MAX_LIST_RESULTS,
    Metadata,
};

use crate::store::Page;

fn page_limit(max_results: u32) -> usize {
    match max_results {
        0 => MAX_LIST_RESULTS as usize,
        n => n.min(MAX_LIST_RESULTS) as usize,
    }
}

/// Azure's name order: by UTF-16 code units, so U+1F600 (surrogates
/// D83D DE00) sorts before U+FF01, where UTF-8 bytes would put it after.
pub(crate) fn azure_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// A blob name as a map key, ordered as Azure lists names. It cannot be
/// `Borrow<str>` (str's order is byte order), so a lookup builds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct NameKey(pub String);

impl NameKey {
    pub fn of(name: &str) -> Self {
        Self(name.to_owned())
    }
}

impl Ord for NameKey {
    fn cmp(&self, other: &Self) -> Ordering {
        azure_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for NameKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The smallest string above every name that starts with `prefix` except
/// those continuing with U+FFFF (skipped one by one by the caller): in UTF-16
/// order U+FFFF is the largest code unit, above every surrogate.
fn past_prefix(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 3);
    s.push_str(prefix);
    s.push('\u{FFFF}');
    s
}

/// One page of a blob listing over names held in Azure's order.
///
/// Azure's delimiter semantics: a name whose remainder after `prefix` holds
/// the delimiter is rolled up into one `Prefix` entry (up to and including the
/// delimiter), emitted where its first name sorts. Items are compared with the
/// marker by their emitted string, so a marker equal to a returned prefix
/// skips every name under it.
pub(crate) fn list_blobs_page<E>(
    map: &BTreeMap<NameKey, E>,
    req: &ListBlobs,
    props: impl Fn(&E) -> BlobProperties,
) -> Page<BlobListItem> {
    let limit = page_limit(req.max_results);
    let (prefix, delim, marker) = (req.prefix.as_str(), req.delimiter.as_str(), req.marker.as_str());
    let mut items = Vec::new();
    let mut more = false;
    let mut start = if !marker.is_empty() && azure_cmp(marker, prefix).is_ge() {
        Bound::Excluded(NameKey::of(marker))
    } else {
        Bound::Included(NameKey::of(prefix))
    };
    // The last rolled-up prefix: names under it are skipped.
    let mut skip: Option<String> = None;
    'scan: loop {
        let mut reseek = None;
        for (NameKey(name), entry) in map.range((start.as_ref(), Bound::Unbounded)) {
            if !name.starts_with(prefix) {
                break 'scan;
            }
            if skip.as_deref().is_some_and(|s| name.starts_with(s)) {
                continue;
            }
            let rest = &name[prefix.len()..];
            let rolled = if delim.is_empty() { None } else { rest.find(delim) };
            if let Some(at) = rolled {
                let p = &name[..prefix.len() + at + delim.len()];
                if marker.is_empty() || azure_cmp(p, marker).is_gt() {
                    if items.len() == limit {
                        more = true;
                        break 'scan;
                    }
                    items.push(BlobListItem::Prefix(p.to_owned()));
                }
                skip = Some(p.to_owned());
                reseek = Some(NameKey(past_prefix(p)));
                break;
            }
            if items.len() == limit {
                more = true;
                break 'scan;
            }
            let mut properties = props(entry);
            if !req.include_metadata {
                properties.metadata = Metadata::default();
            }
            items.push(BlobListItem::Blob { name: name.clone(), properties });
        }
        match reseek {
            Some(next) => start = Bound::Included(next),
            None => break,
        }
    }
    let next_marker = match (more, items.last()) {
        (true, Some(BlobListItem::Blob { name, .. })) => name.clone(),
        (true, Some(BlobListItem::Prefix(p))) => p.clone(),
        _ => String::new(),
    };
    Page { items, next_marker }
}

/// `page` (the committed blobs after the marker, as the store listed them)
/// with the uncommitted `names` merged in: rolled up by the delimiter as any
/// name, after the marker, in the store's order `cmp`, at most the page
/// limit. A full committed page ends the merged one where it ended (names
/// past it belong to the next page, which lists the blobs between).
pub(crate) fn with_uncommitted(
    page: Page<BlobListItem>,
    names: Vec<String>,
    req: &ListBlobs,
    cmp: fn(&str, &str) -> Ordering,
) -> Page<BlobListItem> {
    let limit = page_limit(req.max_results);
    let (prefix, delim, marker) = (req.prefix.as_str(), req.delimiter.as_str(), req.marker.as_str());
    let full = !page.next_marker.is_empty();
    let end = page.items.last().map(|i| i.key().to_owned());
    let mut items = page.items;
    for name in names.into_iter().filter(|n| n.starts_with(prefix)) {
        let rolled = if delim.is_empty() { None } else { name[prefix.len()..].find(delim) };
        let item = match rolled {
            Some(at) => BlobListItem::Prefix(name[..prefix.len() + at + delim.len()].to_owned()),
            None => BlobListItem::Uncommitted(name),
        };
        let after_marker = marker.is_empty() || cmp(item.key(), marker).is_gt();
        let within = !full || end.as_deref().is_some_and(|e| cmp(item.key(), e).is_le());
        if after_marker && within {
            items.push(item);
        }
    }
    // A committed blob wins over an uncommitted entry of its name (committed
    // after the uncommitted names were looked up); a prefix is listed once.
    let rank = |i: &BlobListItem| match i {
        BlobListItem::Blob { .. } => 0,
        BlobListItem::Prefix(_) => 1,
        BlobListItem::Uncommitted(_) => 2,
    };
    items.sort_by(|a, b| cmp(a.key(), b.key()).then(rank(a).cmp(&rank(b))));
    items.dedup_by(|later, first| later.key() == first.key());
    let more = full || items.len() > limit;
    items.truncate(limit);
    let next_marker = if more { items.last().map(|i| i.key().to_owned()).unwrap_or_default() } else { String::new() };
    Page { items, next_marker }
}

/// One page of a container listing.
pub(crate) fn list_containers_page<E>(
    map: &BTreeMap<String, E>,
    req: &ListContainers,
    props: impl Fn(&E) -> ContainerProperties,
) -> Page<ContainerEntry> {
    let limit = page_limit(req.max_results);
    let start = if !req.marker.is_empty() && req.marker >= req.prefix {
        Bound::Excluded(req.marker.as_str())
    } else {
        Bound::Included(req.prefix.as_str())
    };
    let mut items = Vec::new();
    let mut more = false;
    for (name, entry) in map.range::<str, _>((start, Bound::Unbounded)) {
        if !name.starts_with(&req.prefix) {
            break;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        let mut properties = props(entry);
        if !req.include_metadata {
            properties.metadata = Metadata::default();
        }
        items.push(ContainerEntry { name: name.clone(), properties });
    }
    let next_marker = match (more, items.last()) {
        (true, Some(e)) => e.name.clone(),
        _ => String::new(),
    };
    Page { items, next_marker }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;

    /// The listing as a naive model sees it: names in order, each rolled-up
    /// prefix once, where its first name sorts.
    fn model(names: &BTreeMap<NameKey, ()>, prefix: &str, delim: &str) -> Vec<String> {
        let mut sorted: Vec<&String> = names.keys().map(|k| &k.0).collect();
        sorted.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
        let mut out: Vec<String> = Vec::new();
        for n in sorted.into_iter().filter(|n| n.starts_with(prefix)) {
            let rest = &n[prefix.len()..];
            match rest.find(delim).filter(|_| !delim.is_empty()) {
                Some(i) => {
                    let p = format!("P:{}", &n[..prefix.len() + i + delim.len()]);
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                None => out.push(n.clone()),
            }
        }
        out
    }

    fn paged(names: &BTreeMap<NameKey, ()>, prefix: &str, delim: &str, page: u32) -> Vec<String> {
        let mut req = ListBlobs {
            container: vmblob_protocol::ContainerName::new("box").unwrap(),
            prefix: prefix.into(),
            delimiter: delim.into(),
            marker: String::new(),
            max_results: page,
            include_metadata: false,
            include_uncommitted: false,
        };
        let mut out = Vec::new();
        loop {
            let p = list_blobs_page(names, &req, |_| BlobProperties::default());
            assert!(p.items.len() <= page as usize);
            let more = !p.next_marker.is_empty();
            if more {
                assert_eq!(p.items.len(), page as usize);
            }
            out.extend(p.items.into_iter().map(|i| match i {
                BlobListItem::Blob { name, .. } => name,
                BlobListItem::Prefix(p) => format!("P:{p}"),
                BlobListItem::Uncommitted(n) => format!("U:{n}"),
            }));
            if !more {
                return out;
            }
            assert!(azure_cmp(&p.next_marker, &req.marker).is_gt(), "marker must advance (else paging never ends)");
            req.marker = p.next_marker;
        }
    }

    proptest::proptest! {
        #[test]
        fn listing_pages_match_the_model(
            names in proptest::collection::btree_set(
                proptest::collection::vec(proptest::sample::select(vec!['a', 'b', '/', 'é', '\u{FF01}', '\u{FFFF}', '😀', char::MAX]), 1..7)
                    .prop_map(String::from_iter),
                0..60,
            ),
            prefix in proptest::sample::select(vec!["", "a", "a/", "é", "b/"]),
            delim in proptest::sample::select(vec!["", "/", "b/", "é", "\u{10FFFF}", "\u{FFFF}", "😀"]),
            page in 1u32..8,
        ) {
            let names: BTreeMap<NameKey, ()> = names.into_iter().map(|n| (NameKey(n), ())).collect();
            let want = model(&names, prefix, delim);
            proptest::prop_assert_eq!(paged(&names, prefix, delim, 5000), want.clone());
            proptest::prop_assert_eq!(paged(&names, prefix, delim, page), want);
        }
    }
}
