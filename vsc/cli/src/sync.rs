//! `sync`: make one side hold the other's files, copying only what is
//! missing there or differs by size or by CRC-64/NVME (the device keeps every
//! blob's; a local file's is computed while it is read). Either direction: a
//! local directory to `container/prefix`, or back. With `--delete-destination`
//! it also deletes what only the destination has, among the names the
//! filters pass (as azcopy does), and only when confirmed.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use vmblob_protocol::BlobError;
use vmblob_protocol::ops::{Conditions, ETag};
use vmblob_vsc::{BlobClient, ClientError, Crc64, ProtocolError};

use super::args::put_options;
use super::commands::{get_file, put_file};
use super::filter::Filter;
use super::paths::{device_path, join, split};
use super::tree::{blobs_under, walk};
use super::{Cli, CliError, PutArgs};

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub copied: usize,
    pub current: usize,
    /// Names only the destination had: deleted, or (unconfirmed) counted.
    pub extra: usize,
}

/// What to do with what only the destination has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    Keep,
    /// `--delete-destination` without `--yes`: say how many would go.
    Count,
    Delete,
}

pub(crate) fn sync(
    cli: &Cli,
    c: &BlobClient,
    src: &str,
    dest: &str,
    filter: &Filter,
    extra: Extra,
) -> Result<Synced, CliError> {
    let local_src = device_path(src).is_none() && Path::new(src).is_dir();
    let done = if local_src {
        upload(cli, c, Path::new(src), device_path(dest).unwrap_or(dest), filter, extra)?
    } else {
        let dest = Path::new(dest);
        if device_path(src).is_none() && Path::new(src).exists() {
            return Err(CliError::Usage(format!("sync {src}: a local source must be a directory")));
        }
        download(cli, c, device_path(src).unwrap_or(src), dest, filter, extra)?
    };
    let tail = match extra {
        Extra::Keep => String::new(),
        Extra::Count => format!(", {} would be deleted (add --yes to delete them)", done.extra),
        Extra::Delete => format!(", {} deleted", done.extra),
    };
    println!("sync: {} copied, {} already current{tail}", done.copied, done.current);
    Ok(done)
}

/// A blob a sync compares.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Remote {
    name: String,
    size: u64,
    crc: u64,
    etag: String,
}

/// Blobs under the directory `prefix` of `container`, by name relative to it.
fn remote(c: &BlobClient, container: &str, prefix: &str) -> Result<HashMap<String, Remote>, CliError> {
    let mut out = HashMap::new();
    for (name, rel, p) in blobs_under(c, container, prefix, &Filter::new(&[], &[])?)? {
        out.insert(rel, Remote { name, size: p.content_length, crc: p.content_crc64, etag: p.etag });
    }
    Ok(out)
}

/// Whether the local `path` has `size` bytes whose CRC-64 is `crc` (the size first: no read if it differs).
fn same(path: &Path, size: u64, crc: u64) -> Result<bool, CliError> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(false) };
    if !meta.is_file() || meta.len() != size {
        return Ok(false);
    }
    let mut f = File::open(path)?;
    let mut sum = Crc64::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(sum.sum64() == crc);
        }
        sum.write(&buf[..n]);
    }
}

fn upload(
    cli: &Cli,
    c: &BlobClient,
    dir: &Path,
    dest: &str,
    filter: &Filter,
    extra: Extra,
) -> Result<Synced, CliError> {
    let (container, prefix) = split(dest);
    let mut have = remote(c, container, prefix)?;
    let to = c.container(container);
    let mut done = Synced::default();
    let local = walk(dir)?;
    for (path, rel) in &local {
        let (path, rel) = (path.as_path(), rel.as_str());
        if !filter.allows(rel) {
            continue;
        }
        if let Some(r) = have.get(rel)
            && same(path, r.size, r.crc)?
        {
            done.current += 1;
            continue;
        }
        let options = put_options(&PutArgs::default(), path, Conditions::none())?;
        put_file(cli, &to.blob(&join(prefix, rel)), path, options)?;
        done.copied += 1;
    }
    if extra == Extra::Keep {
        return Ok(done);
    }
    for (_, rel) in &local {
        have.remove(rel);
    }
    let mut only_here: Vec<(String, Remote)> = have.into_iter().filter(|(rel, _)| filter.allows(rel)).collect();
    only_here.sort();
    done.extra = only_here.len();
    if extra == Extra::Delete {
        for (_, r) in only_here {
            // Only the version listed: a blob rewritten meanwhile is someone else's now (412).
            let if_match = ETag::new(&r.etag).map_err(|_| ClientError::from(ProtocolError::BadETag(r.etag.clone())))?;
            match to.blob(&r.name).delete_opts(Conditions::if_match(if_match)) {
                Err(e) if e.blob_error() != Some(BlobError::BlobNotFound) => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(done)
}

fn download(
    cli: &Cli,
    c: &BlobClient,
    src: &str,
    dir: &Path,
    filter: &Filter,
    extra: Extra,
) -> Result<Synced, CliError> {
    let (container, prefix) = split(src);
    let from = c.container(container);
    let mut done = Synced::default();
    let mut names: Vec<(String, Remote)> = remote(c, container, prefix)?.into_iter().collect();
    names.sort();
    if extra != Extra::Keep && dir.is_dir() {
        let remote_names: std::collections::HashSet<&str> = names.iter().map(|(rel, _)| rel.as_str()).collect();
        let only_here: Vec<_> = walk(dir)?
            .into_iter()
            .filter(|(_, rel)| filter.allows(rel) && !remote_names.contains(rel.as_str()))
            .collect();
        done.extra = only_here.len();
        if extra == Extra::Delete {
            for (path, _) in only_here {
                std::fs::remove_file(path)?;
            }
        }
    }
    for (rel, Remote { name, size, crc, .. }) in names {
        if !filter.allows(&rel) {
            continue;
        }
        // Blob names never hold `..` or empty segments (protocol rule), so this stays in `dir`.
        let target = dir.join(&rel);
        if same(&target, size, crc)? {
            done.current += 1;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        get_file(cli, &from.blob(&name), &target, None, &Conditions::none())?;
        done.copied += 1;
    }
    Ok(done)
}
