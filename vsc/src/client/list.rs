//! Listings as iterators over pages: one request per page, fetched when the
//! iterator is advanced, so a large container is never held whole.

use crate::error::{ClientError, ProtocolError};

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts (a `marker` option); `None` on the last page.
    pub next_marker: Option<String>,
}

impl<T> Page<T> {
    pub(crate) fn new(items: Vec<T>, next_marker: String) -> Self {
        Self { items, next_marker: (!next_marker.is_empty()).then_some(next_marker) }
    }
}

type Fetch<T> = Box<dyn FnMut(&str) -> Result<Page<T>, ClientError> + Send>;

/// The pages of a listing, in order. Ends after the last page or the first error.
pub struct Pages<T> {
    fetch: Fetch<T>,
    /// The next page's marker; `None` once done.
    marker: Option<String>,
}

impl<T> Pages<T> {
    pub(crate) fn new(
        marker: String,
        fetch: impl FnMut(&str) -> Result<Page<T>, ClientError> + Send + 'static,
    ) -> Self {
        Self { fetch: Box::new(fetch), marker: Some(marker) }
    }

    /// The entries of every page, one at a time.
    pub fn items(self) -> Items<T> {
        Items { pages: self, current: Vec::new().into_iter() }
    }
}

/// Whether `next` comes after `marker` in either listing order a device may use.
fn advances(next: &str, marker: &str) -> bool {
    next > marker || next.encode_utf16().cmp(marker.encode_utf16()).is_gt()
}

impl<T> Iterator for Pages<T> {
    type Item = Result<Page<T>, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let marker = self.marker.take()?;
        let page = match (self.fetch)(&marker) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        match &page.next_marker {
            // Markers are names, in Azure's order (UTF-16 code units) or, on an S3-backed device,
            // in byte order: one that advances in neither would loop forever.
            Some(next) if !advances(next, &marker) => {
                return Some(Err(ProtocolError::StuckMarker(next.clone()).into()));
            }
            next => self.marker = next.clone(),
        }
        Some(Ok(page))
    }
}

/// The entries of a listing across its pages.
pub struct Items<T> {
    pages: Pages<T>,
    current: std::vec::IntoIter<T>,
}

impl<T> Iterator for Items<T> {
    type Item = Result<T, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(Ok(item));
            }
            match self.pages.next()? {
                Ok(page) => self.current = page.items.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(script: Vec<(Vec<u32>, &'static str)>) -> Pages<u32> {
        let mut script = script.into_iter();
        Pages::new(String::new(), move |_| {
            let (items, next) = script.next().expect("no fetch after the last page");
            Ok(Page::new(items, next.into()))
        })
    }

    #[test]
    fn pages_are_fetched_on_demand_and_flattened() {
        let mut p = pages(vec![(vec![1, 2], "b"), (vec![], "c"), (vec![3], "")]);
        assert_eq!(p.next().unwrap().unwrap(), Page { items: vec![1, 2], next_marker: Some("b".into()) });
        let rest: Vec<u32> = p.items().collect::<Result<_, _>>().unwrap();
        assert_eq!(rest, [3], "an empty page in the middle does not end the listing");
        let all: Vec<u32> = pages(vec![(vec![1], "a"), (vec![2], "")]).items().map(Result::unwrap).collect();
        assert_eq!(all, [1, 2]);
    }

    #[test]
    fn a_marker_that_does_not_advance_ends_with_an_error() {
        let mut p = pages(vec![(vec![1], "m"), (vec![2], "m")]);
        assert!(p.next().unwrap().is_ok());
        let e = p.next().unwrap().unwrap_err();
        assert!(matches!(e, ClientError::Protocol(ProtocolError::StuckMarker(_))), "{e:?}");
        assert!(p.next().is_none(), "done after an error");
    }

    /// U+FF01 after U+1F600 advances in Azure's order (UTF-16), not in bytes;
    /// the reverse advances in bytes (an S3-backed device). Both are fine.
    #[test]
    fn a_marker_may_advance_in_utf16_or_byte_order() {
        let all: Vec<u32> = pages(vec![(vec![1], "\u{1F600}"), (vec![2], "\u{FF01}"), (vec![3], "")])
            .items()
            .map(Result::unwrap)
            .collect();
        assert_eq!(all, [1, 2, 3]);
        let all: Vec<u32> = pages(vec![(vec![1], "\u{FF01}"), (vec![2], "\u{1F600}"), (vec![3], "")])
            .items()
            .map(Result::unwrap)
            .collect();
        assert_eq!(all, [1, 2, 3]);
    }
}
