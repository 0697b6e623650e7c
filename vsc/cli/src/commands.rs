//! One function per verb, and the single-blob transfers (`tree.rs` has
//! the verbs over many).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use vmblob_protocol::BlobError;
use vmblob_protocol::ops::{
    Conditions, ETag, Entity, LeaseAction, LeaseDuration, LeaseKind, LeaseProperties, MAX_BREAK_SECS,
};
use vmblob_vsc::{
    BlobClient, BlobHandle, ClientError, GetOptions, ListBlobsOptions, ListContainersOptions, PutOptions,
};

use super::args::{
    apply_headers, conditions_arg, device_etag, etag_arg, lease_id_arg, metadata_arg, name_for_type, names_headers,
    parse_range, put_options,
};
use super::filter::Filter;
use super::listing::{Listing, hex, props_json, rfc3339};
use super::paths::{blob, split};
use super::sync::{Extra, sync};
use super::tree::{copy, remove_under};
use super::{Cli, CliError, Cmd, LeaseCmd};

/// Transfers above this get a progress bar.
const PROGRESS_MIN: u64 = 4 << 20;

pub fn bar(cli: &Cli, len: u64, what: &str) -> ProgressBar {
    if cli.quiet || len < PROGRESS_MIN {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb.set_message(what.to_owned());
    pb
}

pub fn run(cli: &Cli, c: &BlobClient) -> Result<(), CliError> {
    match &cli.cmd {
        Cmd::Mb { container } => Ok(c.container(container).create().map(|_| ())?),
        Cmd::Rb { container } => Ok(c.container(container).delete()?),
        Cmd::Ls { path: None, long, json, .. } => {
            let format = Listing::of(*long, *json);
            let options = ListContainersOptions { include_metadata: *json, ..ListContainersOptions::default() };
            for e in c.list_containers(options).items() {
                println!("{}", format.container_line(&e?));
            }
            Ok(())
        }
        Cmd::Ls { path: Some(p), recursive, long, json, include_uncommitted } => {
            let (container, prefix) = split(p);
            let delim = if *recursive { "" } else { "/" };
            let options = ListBlobsOptions {
                include_metadata: *json,
                include_uncommitted: *include_uncommitted,
                ..ListBlobsOptions::prefix(prefix)
            };
            let options = options.with_delimiter(delim);
            let format = Listing::of(*long, *json);
            // Printed as the pages come: a large container is never held whole.
            for item in c.container(container).list_blobs(options).items() {
                println!("{}", format.line(&item?));
            }
            Ok(())
        }
        Cmd::Put { file, dest, props, no_overwrite, if_match, times } => {
            let (container, name) = blob(dest)?;
            let conditions = conditions_arg(etag_arg(if_match)?, no_overwrite.then(ETag::any), times)?;
            let options = put_options(props, name_for_type(file, name), conditions)?;
            put_file(cli, &c.container(container).blob(name), file, options)
        }
        Cmd::Get { src, file, offset, length, range, if_match, if_none_match, times } => {
            let (container, name) = blob(src)?;
            let b = c.container(container).blob(name);
            let conditions = conditions_arg(etag_arg(if_match)?, etag_arg(if_none_match)?, times)?;
            let (offset, length) = match range {
                Some(r) => parse_range(r)?,
                None => (*offset, *length),
            };
            // A conditional download goes the pinned, ranged way: the version the conditions
            // held for is the one read, even if the blob is replaced meanwhile.
            let ranged = offset != 0 || length.is_some() || conditions != Conditions::none();
            let range = ranged.then_some(Span { offset, length });
            match file.as_deref() {
                None => get_to_stdout(&b, range, &conditions),
                Some(p) if p == Path::new("-") => get_to_stdout(&b, range, &conditions),
                Some(p) => get_file(cli, &b, p, range, &conditions),
            }
        }
        Cmd::Stat { path, json, times } => {
            let (container, name) = blob(path)?;
            let p = c.container(container).blob(name).properties_opts(conditions_arg(None, None, times)?)?;
            if *json {
                println!("{}", props_json(&format!("{container}/{name}"), &p));
                return Ok(());
            }
            println!("name:           {container}/{name}");
            println!("content-length: {}", p.content_length);
            println!("content-type:   {}", p.content_type);
            for (header, value) in p.headers.fields().into_iter().filter(|(_, v)| !v.is_empty()) {
                println!("{:<16}{value}", format!("{}:", header.to_lowercase()));
            }
            println!("etag:           {}", p.etag);
            println!("last-modified:  {}", rfc3339(p.last_modified_ms));
            // 0: a blob the device stored before it kept creation times.
            if p.created_ms != 0 {
                println!("created:        {}", rfc3339(p.created_ms));
            }
            if let Some(md5) = p.content_md5 {
                println!("content-md5:    {}", hex(&md5));
            }
            println!("crc64:          {:016x}", p.content_crc64);
            println!("blocks:         {}", p.committed_blocks);
            println!("lease:          {}", lease_text(&p.lease));
            for (k, v) in &p.metadata.0 {
                println!("meta {k}: {v}");
            }
            Ok(())
        }
        Cmd::Set { path, content_type, headers, metadata, clear_metadata, if_match, times } => {
            let (container, name) = blob(path)?;
            let b = c.container(container).blob(name);
            let sets_headers = content_type.is_some() || names_headers(headers);
            if !sets_headers && metadata.is_empty() && !clear_metadata {
                return Err(CliError::Usage(
                    "set needs --content-type, a header flag, --metadata or --clear-metadata".into(),
                ));
            }
            let mut conditions = conditions_arg(etag_arg(if_match)?, None, times)?;
            if sets_headers {
                // Set Blob Properties replaces every header: start from the blob's own,
                // and pin the change to the version they were read from. The caller's
                // conditions are judged on that version as the device judges a write's.
                let now = b.properties()?;
                let tag = device_etag(&now.etag)?;
                if !conditions.check(Some(Entity { etag: &tag, last_modified_ms: now.last_modified_ms })) {
                    let message = "the blob does not meet the conditions".to_owned();
                    return Err(ClientError::Status { error: BlobError::PreconditionFailed, message }.into());
                }
                let mut new = now.headers.clone();
                apply_headers(headers, &mut new)?;
                let t = content_type.as_deref().unwrap_or(&now.content_type);
                let lease = conditions.lease_id;
                let w = b.set_http_headers(t, new, Conditions::if_match(tag).with_lease(lease))?;
                // The metadata change below applies to this version only.
                conditions = Conditions::if_match(device_etag(&w.etag)?).with_lease(lease);
            }
            if !metadata.is_empty() || *clear_metadata {
                b.set_metadata(metadata_arg(metadata)?, conditions)?;
            }
            Ok(())
        }
        Cmd::Rm { path, recursive: false, if_match, times, .. } => {
            let (container, name) = blob(path)?;
            Ok(c.container(container).blob(name).delete_opts(conditions_arg(etag_arg(if_match)?, None, times)?)?)
        }
        Cmd::Rm { times, recursive: true, .. } if *times != super::ConditionArgs::default() => {
            Err(CliError::Usage("rm -r takes no conditions; rm one blob at a time for that".into()))
        }
        Cmd::Rm { path, recursive: true, yes, .. } => remove_under(c, path, *yes),
        Cmd::Cp { src, dest, recursive, filter, lease_id } => {
            let filtered = !filter.include.is_empty() || !filter.exclude.is_empty();
            if filtered && !recursive {
                return Err(CliError::Usage("--include and --exclude need -r".into()));
            }
            if lease_id.is_some() && *recursive {
                return Err(CliError::Usage("--lease-id is one blob's: cp -r takes none".into()));
            }
            let lease = lease_id.as_deref().map(|id| lease_id_arg("--lease-id", id)).transpose()?;
            copy(cli, c, src, dest, *recursive, &Filter::new(&filter.include, &filter.exclude)?, lease)
        }
        Cmd::Sync { src, dest, filter, delete_destination, yes } => {
            let delete = match (delete_destination, yes) {
                (false, _) => Extra::Keep,
                (true, false) => Extra::Count,
                (true, true) => Extra::Delete,
            };
            sync(cli, c, src, dest, &Filter::new(&filter.include, &filter.exclude)?, delete).map(|_| ())
        }
        Cmd::Lease { action } => lease(c, action),
        Cmd::Demo { .. } => Err(CliError::Usage("demo needs no socket".into())),
    }
}

/// `leased (infinite)`, `breaking`, `available`, ...
fn lease_text(l: &LeaseProperties) -> String {
    match l.duration {
        Some(LeaseKind::Infinite) => format!("{} (infinite)", l.state.name()),
        Some(LeaseKind::Fixed) => format!("{} (fixed)", l.state.name()),
        None => l.state.name().to_owned(),
    }
}

fn lease(c: &BlobClient, cmd: &LeaseCmd) -> Result<(), CliError> {
    let path = match cmd {
        LeaseCmd::Acquire { path, .. }
        | LeaseCmd::Renew { path, .. }
        | LeaseCmd::Change { path, .. }
        | LeaseCmd::Release { path, .. }
        | LeaseCmd::Break { path, .. } => path,
    };
    let (container, name) = blob(path)?;
    let b = c.container(container).blob(name);
    let id = |flag, v: &str| lease_id_arg(flag, v);
    let action = match cmd {
        LeaseCmd::Acquire { duration, proposed_id, .. } => LeaseAction::Acquire {
            duration: match duration {
                None => LeaseDuration::Infinite,
                Some(s) => LeaseDuration::fixed(*s)
                    .ok_or_else(|| CliError::Usage(format!("--duration {s}: a lease lasts 15 to 60 seconds")))?,
            },
            proposed_id: proposed_id.as_deref().map(|p| id("--proposed-id", p)).transpose()?,
        },
        LeaseCmd::Renew { lease_id, .. } => LeaseAction::Renew { lease_id: id("--lease-id", lease_id)? },
        LeaseCmd::Change { lease_id, proposed_id, .. } => LeaseAction::Change {
            lease_id: id("--lease-id", lease_id)?,
            proposed_id: id("--proposed-id", proposed_id)?,
        },
        LeaseCmd::Release { lease_id, .. } => LeaseAction::Release { lease_id: id("--lease-id", lease_id)? },
        LeaseCmd::Break { break_period, .. } => match break_period {
            Some(s) if *s > MAX_BREAK_SECS => {
                return Err(CliError::Usage(format!("--break-period {s}: at most {MAX_BREAK_SECS} seconds")));
            }
            p => LeaseAction::Break { break_period_secs: *p },
        },
    };
    let answer = b.lease(action, Conditions::none())?;
    match (cmd, answer.lease_id) {
        (LeaseCmd::Break { .. }, _) => println!("{}", answer.lease_time_secs),
        (LeaseCmd::Acquire { .. } | LeaseCmd::Change { .. }, Some(id)) => println!("{id}"),
        _ => {}
    }
    Ok(())
}

/// Upload `file`: a regular file by its length, `-` (stdin) or anything else (a pipe, a
/// device) until it ends, since their metadata has no length to trust.
pub fn put_file(cli: &Cli, b: &BlobHandle, file: &Path, options: PutOptions) -> Result<(), CliError> {
    if file == Path::new("-") {
        b.put_stream_to_end(&mut std::io::stdin().lock(), options, &|_| {})?;
        return Ok(());
    }
    let f = File::open(file)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(CliError::Usage(format!("{} is a directory (use cp -r)", file.display())));
    }
    if !meta.is_file() {
        b.put_stream_to_end(&mut BufReader::new(f), options, &|_| {})?;
        return Ok(());
    }
    let len = meta.len();
    let pb = bar(cli, len, b.name());
    b.put_stream(&mut BufReader::new(f), len, options, &|n| pb.set_position(n))?;
    pb.finish_and_clear();
    Ok(())
}

/// Part of a blob: `length` bytes from `offset` (`None`: to the end).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    offset: u64,
    length: Option<u64>,
}

/// Download `range` (or the whole blob) into `out`, if `conditions` hold (a ranged download).
fn download(
    b: &BlobHandle,
    range: Option<Span>,
    conditions: &Conditions,
    out: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> Result<(), CliError> {
    match range {
        None => b.get_to_writer(out, progress).map(|_| ()).map_err(CliError::from),
        Some(span) => get_span(b, span, conditions, out, progress),
    }
}

/// A ranged download: one version (pinned by its ETag, so an overwrite in the middle fails
/// instead of mixing), read in device-sized pieces.
fn get_span(
    b: &BlobHandle,
    span: Span,
    conditions: &Conditions,
    out: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> Result<(), CliError> {
    let props = b.properties_opts(conditions.clone())?;
    let end = span.length.map_or(props.content_length, |n| span.offset.saturating_add(n)).min(props.content_length);
    let etag = device_etag(&props.etag)?;
    let piece = b.client().block_size().max(1) as u64;
    let mut at = span.offset;
    while at < end {
        let want = (end - at).min(piece);
        let conditions = Conditions::if_match(etag.clone()).with_lease(conditions.lease_id);
        let got = b.get_opts(GetOptions { range: Some(at..at + want), conditions })?;
        if got.data.len() as u64 != want {
            return Err(CliError::Usage(format!("short read at {at}: {} of {want} bytes", got.data.len())));
        }
        out.write_all(&got.data)?;
        at += want;
        progress(at - span.offset);
    }
    Ok(())
}

pub(crate) fn get_file(
    cli: &Cli,
    b: &BlobHandle,
    path: &Path,
    range: Option<Span>,
    conditions: &Conditions,
) -> Result<(), CliError> {
    // Into a directory: under the blob's last name component, as cp does.
    let target;
    let path = if path.is_dir() {
        let leaf = b.name().rsplit('/').next().filter(|l| !l.is_empty() && *l != "." && *l != "..");
        let leaf = leaf.ok_or_else(|| CliError::Usage(format!("{} is a directory", path.display())))?;
        target = path.join(leaf);
        if target.is_dir() {
            return Err(CliError::Usage(format!("{} is a directory", target.display())));
        }
        target.as_path()
    } else {
        path
    };
    // Conditions first: a current local copy (or a failed If-Match) leaves nothing behind.
    let props = b.properties_opts(conditions.clone())?;
    // Write beside the target and rename, so a failed download leaves no torn file.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".vmblob-partial");
    let tmp = path.with_file_name(tmp_name);
    let mut out = BufWriter::new(File::create(&tmp)?);
    let pb = bar(cli, props.content_length, b.name());
    let result = download(b, range, conditions, &mut out, &|n| pb.set_position(n));
    pb.finish_and_clear();
    if let Err(e) = result.and_then(|_| out.flush().map_err(CliError::Io)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

fn get_to_stdout(b: &BlobHandle, range: Option<Span>, conditions: &Conditions) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    download(b, range, conditions, &mut out, &|_| {})?;
    out.flush()?;
    Ok(())
}
