//! One function per verb.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use vmblob_protocol::ops::{Conditions, ETag, Metadata};
use vmblob_vsc::{
    BlobClient, BlobHandle, BlobListItem, CopyOptions, GetOptions, ListBlobsOptions, ListContainersOptions, PutOptions,
};

use super::listing::{Listing, hex, props_json, rfc3339};
use super::paths::{blob, device_path, join, split};
use super::{Cli, CliError, Cmd, PutArgs};

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
            let format = if *json {
                Listing::Json
            } else if *long {
                Listing::Long
            } else {
                Listing::Short
            };
            let options = ListContainersOptions { include_metadata: *json, ..ListContainersOptions::default() };
            for e in c.list_containers(options).items() {
                println!("{}", format.container_line(&e?));
            }
            Ok(())
        }
        Cmd::Ls { path: Some(p), recursive, long, json } => {
            let (container, prefix) = split(p);
            let delim = if *recursive { "" } else { "/" };
            let options = ListBlobsOptions { include_metadata: *json, ..ListBlobsOptions::prefix(prefix) };
            let options = options.with_delimiter(delim);
            let format = if *json {
                Listing::Json
            } else if *long {
                Listing::Long
            } else {
                Listing::Short
            };
            // Printed as the pages come: a large container is never held whole.
            for item in c.container(container).list_blobs(options).items() {
                println!("{}", format.line(&item?));
            }
            Ok(())
        }
        Cmd::Put { file, dest, props, no_overwrite, if_match } => {
            let (container, name) = blob(dest)?;
            let conditions = Conditions { if_match: etag_arg(if_match)?, if_none_match: no_overwrite.then(ETag::any) };
            let options = put_options(props, name_for_type(file, name), conditions)?;
            put_file(cli, &c.container(container).blob(name), file, options)
        }
        Cmd::Get { src, file, offset, length, range, if_match, if_none_match } => {
            let (container, name) = blob(src)?;
            let b = c.container(container).blob(name);
            let conditions = Conditions { if_match: etag_arg(if_match)?, if_none_match: etag_arg(if_none_match)? };
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
        Cmd::Stat { path, json } => {
            let (container, name) = blob(path)?;
            let p = c.container(container).blob(name).properties()?;
            if *json {
                println!("{}", props_json(&format!("{container}/{name}"), &p));
                return Ok(());
            }
            println!("name:           {container}/{name}");
            println!("content-length: {}", p.content_length);
            println!("content-type:   {}", p.content_type);
            println!("etag:           {}", p.etag);
            println!("last-modified:  {}", rfc3339(p.last_modified_ms));
            if let Some(md5) = p.content_md5 {
                println!("content-md5:    {}", hex(&md5));
            }
            println!("crc64:          {:016x}", p.content_crc64);
            println!("blocks:         {}", p.committed_blocks);
            for (k, v) in &p.metadata.0 {
                println!("meta {k}: {v}");
            }
            Ok(())
        }
        Cmd::Set { path, content_type, metadata, clear_metadata, if_match } => {
            let (container, name) = blob(path)?;
            let b = c.container(container).blob(name);
            if content_type.is_none() && metadata.is_empty() && !clear_metadata {
                return Err(CliError::Usage("set needs --content-type, --metadata or --clear-metadata".into()));
            }
            let mut conditions = Conditions { if_match: etag_arg(if_match)?, if_none_match: None };
            if let Some(t) = content_type {
                let w = b.set_content_type(t, conditions)?;
                // The metadata change below applies to this version only.
                conditions = Conditions { if_match: Some(device_etag(&w.etag)?), if_none_match: None };
            }
            if !metadata.is_empty() || *clear_metadata {
                b.set_metadata(metadata_arg(metadata)?, conditions)?;
            }
            Ok(())
        }
        Cmd::Rm { path, recursive: false, .. } => {
            let (container, name) = blob(path)?;
            Ok(c.container(container).blob(name).delete()?)
        }
        Cmd::Rm { path, recursive: true, yes } => remove_under(c, path, *yes),
        Cmd::Cp { src, dest, recursive } => copy(cli, c, src, dest, *recursive),
        Cmd::Demo { .. } => Err(CliError::Usage("demo needs no socket".into())),
    }
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
struct Span {
    offset: u64,
    length: Option<u64>,
}

fn etag_arg(arg: &Option<String>) -> Result<Option<ETag>, CliError> {
    arg.as_deref().map(|e| ETag::new(e).map_err(|_| CliError::Usage(format!("{e:?} is not an ETag")))).transpose()
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
        let conditions = Conditions { if_match: Some(etag.clone()), if_none_match: None };
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

fn get_file(
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

/// Files under `dir`, relative paths with '/' separators, sorted.
fn walk(dir: &Path) -> Result<Vec<(PathBuf, String)>, CliError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let rel = path.strip_prefix(dir).map_err(|e| CliError::Usage(e.to_string()))?;
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((path, name));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

fn copy(cli: &Cli, c: &BlobClient, src: &str, dest: &str, recursive: bool) -> Result<(), CliError> {
    if let Some(dest) = device_path(dest) {
        // Into the device: from it too (a device path, or no local file of that name) ...
        let src_remote = device_path(src).or_else(|| (!Path::new(src).exists()).then_some(src));
        if let Some(src) = src_remote {
            return copy_in_device(c, src, dest, recursive);
        }
        return copy(cli, c, src, dest, recursive);
    }
    let (src, src_on_device) = match device_path(src) {
        Some(s) => (s, true),
        None => (src, false),
    };
    let src_path = Path::new(src);
    if !src_on_device && src_path.exists() {
        if src_path.is_dir() {
            if !recursive {
                return Err(CliError::Usage(format!("{src} is a directory (use -r)")));
            }
            let (container, prefix) = split(dest);
            let container = c.container(container);
            for (path, rel) in walk(src_path)? {
                let name = join(prefix, &rel);
                let options = put_options(&PutArgs::default(), &path, Conditions::none())?;
                put_file(cli, &container.blob(&name), &path, options)?;
            }
            return Ok(());
        }
        let (container, name) = blob(dest)?;
        let options = put_options(&PutArgs::default(), src_path, Conditions::none())?;
        return put_file(cli, &c.container(container).blob(name), src_path, options);
    }
    // Download: src is container/prefix.
    let (container, prefix) = split(src);
    if !recursive {
        let (container, name) = blob(src)?;
        return get_file(cli, &c.container(container).blob(name), Path::new(dest), None, &Conditions::none());
    }
    let container = c.container(container);
    for item in container.list_blobs(ListBlobsOptions::prefix(prefix)).items() {
        if let BlobListItem::Blob { name, .. } = item? {
            let rel = name.strip_prefix(prefix).unwrap_or(&name).trim_start_matches('/');
            // Blob names never contain '..' or empty segments (protocol rule),
            // so `rel` stays inside `dest`.
            let target = Path::new(dest).join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            get_file(cli, &container.blob(&name), &target, None, &Conditions::none())?;
        }
    }
    Ok(())
}

/// The path whose extension names the content type: the file's, or for stdin the blob's.
fn name_for_type<'a>(file: &'a Path, blob: &'a str) -> &'a Path {
    if file == Path::new("-") { Path::new(blob) } else { file }
}

/// What `put` stores: the given content type or the one `path`'s extension suggests, the
/// metadata pairs, the conditions.
fn put_options(args: &PutArgs, path: &Path, conditions: Conditions) -> Result<PutOptions, CliError> {
    let content_type = match &args.content_type {
        Some(t) => t.clone(),
        // Nothing guessed: the device's default (application/octet-stream).
        None => mime_guess::from_path(path).first_raw().unwrap_or_default().to_owned(),
    };
    Ok(PutOptions { content_type, metadata: metadata_arg(&args.metadata)?, conditions })
}

/// `--metadata KEY=VALUE` arguments as metadata (the value may hold '=').
fn metadata_arg(args: &[String]) -> Result<Metadata, CliError> {
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
fn device_etag(etag: &str) -> Result<ETag, CliError> {
    ETag::new(etag).map_err(|_| CliError::Usage(format!("the device sent a bad ETag {etag:?}")))
}

/// `START-END` (both included, as in an HTTP Range) or `START-`: the offset and length.
fn parse_range(range: &str) -> Result<(u64, Option<u64>), CliError> {
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

/// `rm -r`: every blob under container/prefix, only with `--yes` (else how many would go).
fn remove_under(c: &BlobClient, path: &str, yes: bool) -> Result<(), CliError> {
    let (container, prefix) = split(path);
    let container = c.container(container);
    let mut names = Vec::new();
    for item in container.list_blobs(ListBlobsOptions::prefix(prefix)).items() {
        if let BlobListItem::Blob { name, .. } = item? {
            names.push(name);
        }
    }
    if !yes {
        return Err(CliError::Usage(format!(
            "rm -r {path} would delete {} blob(s); add --yes to delete them",
            names.len()
        )));
    }
    for name in &names {
        match container.blob(name).delete() {
            // Someone else deleted it meanwhile: it is gone either way.
            Err(e) if e.is_not_found() => {}
            r => r?,
        }
    }
    Ok(())
}

/// `cp vmblob://c/a vmblob://c/b` (`-r`: every blob under the prefix) inside
/// the device: CopyBlob, the source pinned to the ETag it was listed with.
fn copy_in_device(c: &BlobClient, src: &str, dest: &str, recursive: bool) -> Result<(), CliError> {
    if !recursive {
        let ((sc, sb), (dc, db)) = (blob(src)?, blob(dest)?);
        c.container(dc).blob(db).copy_from(&c.container(sc).blob(sb), CopyOptions::default())?;
        return Ok(());
    }
    let ((sc, prefix), (dc, dest_prefix)) = (split(src), split(dest));
    let (from, to) = (c.container(sc), c.container(dc));
    for item in from.list_blobs(ListBlobsOptions::prefix(prefix)).items() {
        if let BlobListItem::Blob { name, properties } = item? {
            let rel = name.strip_prefix(prefix).unwrap_or(&name).trim_start_matches('/');
            let pin = Conditions { if_match: Some(device_etag(&properties.etag)?), if_none_match: None };
            let options = CopyOptions { source_conditions: pin, ..CopyOptions::default() };
            to.blob(&join(dest_prefix, rel)).copy_from(&from.blob(&name), options)?;
        }
    }
    Ok(())
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
    fn content_type_is_given_or_guessed_and_metadata_parsed() {
        let args = PutArgs { content_type: None, metadata: vec!["a=1".into(), "b=x=y".into()] };
        let o = put_options(&args, Path::new("dir/cat.JPG"), Conditions::none()).unwrap();
        assert_eq!(o.content_type, "image/jpeg");
        assert_eq!(o.metadata.0, vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]);
        let o = put_options(&PutArgs::default(), Path::new("data.unknownext"), Conditions::none()).unwrap();
        assert_eq!(o.content_type, "", "nothing guessed: the device's default");
        let given = PutArgs { content_type: Some("text/csv".into()), metadata: vec![] };
        assert_eq!(put_options(&given, Path::new("x.json"), Conditions::none()).unwrap().content_type, "text/csv");
        for bad in ["novalue", "a=1,a=2", "bad key=1"] {
            let meta = bad.split(',').map(str::to_owned).collect();
            let args = PutArgs { content_type: None, metadata: meta };
            assert!(matches!(put_options(&args, Path::new("x"), Conditions::none()), Err(CliError::Usage(_))), "{bad}");
        }
        assert_eq!(name_for_type(Path::new("-"), "c/x.html"), Path::new("c/x.html"));
    }
}
