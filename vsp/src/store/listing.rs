//! Listings both stores share: Azure's prefix, delimiter and marker rules
//! over names held in byte order.

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

/// The smallest string above every name that starts with `prefix` except
/// those continuing with U+10FFFF (skipped one by one by the caller).
fn past_prefix(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 4);
    s.push_str(prefix);
    s.push(char::MAX);
    s
}

/// One page of a blob listing over names held in byte order.
///
/// Azure's delimiter semantics: a name whose remainder after `prefix` holds
/// the delimiter is rolled up into one `Prefix` entry (up to and including the
/// delimiter), emitted where its first name sorts. Items are compared with the
/// marker by their emitted string, so a marker equal to a returned prefix
/// skips every name under it.
pub(crate) fn list_blobs_page<E>(
    map: &BTreeMap<String, E>,
    req: &ListBlobs,
    props: impl Fn(&E) -> BlobProperties,
) -> Page<BlobListItem> {
    let limit = page_limit(req.max_results);
    let (prefix, delim, marker) = (req.prefix.as_str(), req.delimiter.as_str(), req.marker.as_str());
    let mut items = Vec::new();
    let mut more = false;
    let mut start = if !marker.is_empty() && marker >= prefix {
        Bound::Excluded(marker.to_owned())
    } else {
        Bound::Included(prefix.to_owned())
    };
    // The last rolled-up prefix: names under it are skipped.
    let mut skip: Option<String> = None;
    'scan: loop {
        let mut reseek = None;
        for (name, entry) in map.range::<str, _>((start.as_ref().map(String::as_str), Bound::Unbounded)) {
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
                if marker.is_empty() || p > marker {
                    if items.len() == limit {
                        more = true;
                        break 'scan;
                    }
                    items.push(BlobListItem::Prefix(p.to_owned()));
                }
                skip = Some(p.to_owned());
                reseek = Some(past_prefix(p));
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
    fn model(names: &BTreeMap<String, ()>, prefix: &str, delim: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in names.keys().filter(|n| n.starts_with(prefix)) {
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

    fn paged(names: &BTreeMap<String, ()>, prefix: &str, delim: &str, page: u32) -> Vec<String> {
        let mut req = ListBlobs {
            container: vmblob_protocol::ContainerName::new("box").unwrap(),
            prefix: prefix.into(),
            delimiter: delim.into(),
            marker: String::new(),
            max_results: page,
            include_metadata: false,
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
            }));
            if !more {
                return out;
            }
            assert!(p.next_marker > req.marker, "marker must advance (else paging never ends)");
            req.marker = p.next_marker;
        }
    }

    proptest::proptest! {
        #[test]
        fn listing_pages_match_the_model(
            names in proptest::collection::btree_set(
                proptest::collection::vec(proptest::sample::select(vec!['a', 'b', '/', 'é', char::MAX]), 1..7)
                    .prop_map(String::from_iter),
                0..60,
            ),
            prefix in proptest::sample::select(vec!["", "a", "a/", "é", "b/"]),
            delim in proptest::sample::select(vec!["", "/", "b/", "é", "\u{10FFFF}"]),
            page in 1u32..8,
        ) {
            let names: BTreeMap<String, ()> = names.into_iter().map(|n| (n, ())).collect();
            let want = model(&names, prefix, delim);
            proptest::prop_assert_eq!(paged(&names, prefix, delim, 5000), want.clone());
            proptest::prop_assert_eq!(paged(&names, prefix, delim, page), want);
        }
    }
}
