//! Command-line values as protocol values: ETags, ranges, metadata, the
//! options an upload stores.

use std::path::Path;

use vmblob_protocol::ops::{Conditions, ContentHeaders, ETag, LeaseId, Metadata};
use vmblob_vsc::PutOptions;

use super::{CliError, ConditionArgs, HeaderArgs, PutArgs};

pub(crate) fn etag_arg(arg: &Option<String>) -> Result<Option<ETag>, CliError> {
    arg.as_deref().map(|e| ETag::new(e).map_err(|_| CliError::Usage(format!("{e:?} is not an ETag")))).transpose()
}

/// The path whose extension names the content type: the file's, or for stdin the blob's.
pub(crate) fn name_for_type<'a>(file: &'a Path, blob: &'a str) -> &'a Path {
    if file == Path::new("-") { Path::new(blob) } else { file }
}

/// What `put` stores: the given content type or the one `path`'s extension suggests, the
/// metadata pairs, the conditions.
pub(crate) fn put_options(args: &PutArgs, path: &Path, conditions: Conditions) -> Result<PutOptions, CliError> {
    let content_type = match &args.content_type {
        Some(t) => t.clone(),
        // Nothing guessed: the device's default (application/octet-stream).
        None => mime_guess::from_path(path).first_raw().unwrap_or_default().to_owned(),
    };
    let mut headers = ContentHeaders::default();
    apply_headers(&args.headers, &mut headers)?;
    Ok(PutOptions { content_type, headers, metadata: metadata_arg(&args.metadata)?, conditions })
}

/// `headers` with the ones `args` names replaced.
pub(crate) fn apply_headers(args: &HeaderArgs, headers: &mut ContentHeaders) -> Result<(), CliError> {
    let given = [
        (&args.content_encoding, &mut headers.content_encoding),
        (&args.content_language, &mut headers.content_language),
        (&args.content_disposition, &mut headers.content_disposition),
        (&args.cache_control, &mut headers.cache_control),
    ];
    for (arg, field) in given {
        if let Some(v) = arg {
            field.clone_from(v);
        }
    }
    headers.validate().map_err(|e| CliError::Usage(format!("HTTP header: {e}")))
}

/// Whether `args` names any header.
pub(crate) fn names_headers(args: &HeaderArgs) -> bool {
    *args != HeaderArgs::default()
}

/// An RFC 3339 time (`2026-12-03T10:00:00Z`) or an HTTP date
/// (`Thu, 03 Dec 2026 10:00:00 GMT`) as ms since the epoch.
pub(crate) fn time_arg(flag: &str, arg: &Option<String>) -> Result<Option<u64>, CliError> {
    let Some(t) = arg else { return Ok(None) };
    let parsed = chrono::DateTime::parse_from_rfc3339(t).or_else(|_| chrono::DateTime::parse_from_rfc2822(t));
    let ms = parsed.ok().and_then(|d| u64::try_from(d.timestamp_millis()).ok());
    ms.map(Some).ok_or_else(|| CliError::Usage(format!("{flag} {t:?}: expected a time like 2026-12-03T10:00:00Z")))
}

/// The conditions of a verb: ETags, times and the lease.
pub(crate) fn conditions_arg(
    if_match: Option<ETag>,
    if_none_match: Option<ETag>,
    times: &ConditionArgs,
) -> Result<Conditions, CliError> {
    Ok(Conditions {
        lease_id: times.lease_id.as_deref().map(|id| lease_id_arg("--lease-id", id)).transpose()?,
        if_match,
        if_none_match,
        if_modified_since_ms: time_arg("--if-modified-since", &times.if_modified_since)?,
        if_unmodified_since_ms: time_arg("--if-unmodified-since", &times.if_unmodified_since)?,
    })
}

/// A lease id argument (a GUID).
pub(crate) fn lease_id_arg(flag: &str, id: &str) -> Result<LeaseId, CliError> {
    id.parse().map_err(|e| CliError::Usage(format!("{flag} {id:?}: {e}")))
}

/// `--metadata KEY=VALUE` arguments as metadata (the value may hold '=').
pub(crate) fn metadata_arg(args: &[String]) -> Result<Metadata, CliError> {
    let pairs = args
        .iter()
        .map(|kv| {
            let (k, v) =
                kv.split_once('=').ok_or_else(|| CliError::Usage(format!("--metadata {kv:?}: not KEY=VALUE")))?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    Metadata::new(pairs).map_err(|e| CliError::Usage(format!("--metadata: {e}")))
}

/// An ETag the device answered with, as a condition.
pub(crate) fn device_etag(etag: &str) -> Result<ETag, CliError> {
    ETag::new(etag).map_err(|_| CliError::Usage(format!("the device sent a bad ETag {etag:?}")))
}

/// `START-END` (both included, as in an HTTP Range) or `START-`: the offset and length.
pub(crate) fn parse_range(range: &str) -> Result<(u64, Option<u64>), CliError> {
    let bad = || CliError::Usage(format!("--range {range:?}: expected START-END or START-"));
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    match end.trim() {
        "" => Ok((start, None)),
        end => {
            let end: u64 = end.parse().map_err(|_| bad())?;
            let len = end.checked_sub(start).and_then(|n| n.checked_add(1)).ok_or_else(bad)?;
            Ok((start, Some(len)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_like_http() {
        assert_eq!(parse_range("0-99").unwrap(), (0, Some(100)));
        assert_eq!(parse_range("10-10").unwrap(), (10, Some(1)));
        assert_eq!(parse_range("4096-").unwrap(), (4096, None));
        for bad in ["", "5", "9-3", "a-b", "-5", "1-18446744073709551615x"] {
            assert!(matches!(parse_range(bad), Err(CliError::Usage(_))), "{bad:?}");
        }
        assert_eq!(parse_range("0-18446744073709551615").ok(), None, "length overflows");
    }

    #[test]
    fn times_are_rfc3339_or_http_dates() {
        let t = |s: &str| time_arg("--t", &Some(s.to_owned()));
        assert_eq!(t("2026-12-03T10:00:00Z").unwrap(), Some(1_796_292_000_000));
        assert_eq!(t("2026-12-03T11:00:00.5+01:00").unwrap(), Some(1_796_292_000_500));
        assert_eq!(t("Thu, 03 Dec 2026 10:00:00 GMT").unwrap(), Some(1_796_292_000_000));
        assert_eq!(time_arg("--t", &None).unwrap(), None);
        for bad in ["yesterday", "2026-12-03", "1969-12-31T23:59:59Z"] {
            assert!(matches!(t(bad), Err(CliError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn headers_replace_only_the_ones_named() {
        let mut h = ContentHeaders { cache_control: "no-cache".into(), ..Default::default() };
        let args = HeaderArgs { content_encoding: Some("gzip".into()), ..Default::default() };
        assert!(names_headers(&args) && !names_headers(&HeaderArgs::default()));
        apply_headers(&args, &mut h).unwrap();
        assert_eq!((h.content_encoding.as_str(), h.cache_control.as_str()), ("gzip", "no-cache"));
        let clear = HeaderArgs { cache_control: Some(String::new()), ..Default::default() };
        apply_headers(&clear, &mut h).unwrap();
        assert_eq!(h.cache_control, "");
        for bad in ["a\nb", "dé"] {
            let bad = HeaderArgs { content_language: Some(bad.into()), ..Default::default() };
            assert!(matches!(apply_headers(&bad, &mut h), Err(CliError::Usage(_))));
        }
    }

    #[test]
    fn content_type_is_given_or_guessed_and_metadata_parsed() {
        let args =
            PutArgs { content_type: None, metadata: vec!["a=1".into(), "b=x=y".into()], headers: Default::default() };
        let o = put_options(&args, Path::new("dir/cat.JPG"), Conditions::none()).unwrap();
        assert_eq!(o.content_type, "image/jpeg");
        assert_eq!(o.metadata.0, vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]);
        let o = put_options(&PutArgs::default(), Path::new("data.unknownext"), Conditions::none()).unwrap();
        assert_eq!(o.content_type, "", "nothing guessed: the device's default");
        let given = PutArgs { content_type: Some("text/csv".into()), ..Default::default() };
        assert_eq!(put_options(&given, Path::new("x.json"), Conditions::none()).unwrap().content_type, "text/csv");
        for bad in ["novalue", "a=1,a=2", "bad key=1"] {
            let meta = bad.split(',').map(str::to_owned).collect();
            let args = PutArgs { metadata: meta, ..Default::default() };
            assert!(matches!(put_options(&args, Path::new("x"), Conditions::none()), Err(CliError::Usage(_))), "{bad}");
        }
        assert_eq!(name_for_type(Path::new("-"), "c/x.html"), Path::new("c/x.html"));
    }
}
