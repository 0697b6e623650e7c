//! `sync`: make one side hold the other's files, copying only what is
//! missing there or differs by size or by CRC-64/NVME (the device keeps every
//! blob's; a local file's is computed while it is read). Either direction: a
//! local directory to `container/prefix`, or back.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use vmblob_protocol::ops::Conditions;
use vmblob_vsc::{BlobClient, Crc64};

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
}

pub(crate) fn sync(cli: &Cli, c: &BlobClient, src: &str, dest: &str, filter: &Filter) -> Result<Synced, CliError> {
    let local_src = device_path(src).is_none() && Path::new(src).is_dir();
    let done = if local_src {
        upload(cli, c, Path::new(src), device_path(dest).unwrap_or(dest), filter)?
    } else {
        let dest = Path::new(dest);
        if device_path(src).is_none() && Path::new(src).exists() {
            return Err(CliError::Usage(format!("sync {src}: a local source must be a directory")));
        }
        download(cli, c, device_path(src).unwrap_or(src), dest, filter)?
    };
    println!("sync: {} copied, {} already current", done.copied, done.current);
    Ok(done)
}

/// A blob a sync compares: its full name, size and CRC-64.
type Remote = (String, u64, u64);

/// Blobs under the directory `prefix` of `container`, by name relative to it.
fn remote(c: &BlobClient, container: &str, prefix: &str) -> Result<HashMap<String, Remote>, CliError> {
    let mut out = HashMap::new();
    for (name, rel, p) in blobs_under(c, container, prefix, &Filter::new(&[], &[])?)? {
        out.insert(rel, (name, p.content_length, p.content_crc64));
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

fn upload(cli: &Cli, c: &BlobClient, dir: &Path, dest: &str, filter: &Filter) -> Result<Synced, CliError> {
    let (container, prefix) = split(dest);
    let have = remote(c, container, prefix)?;
    let to = c.container(container);
    let mut done = Synced::default();
    for (path, rel) in walk(dir)? {
        if !filter.allows(&rel) {
            continue;
        }
        if let Some((_, size, crc)) = have.get(&rel)
            && same(&path, *size, *crc)?
        {
            done.current += 1;
            continue;
        }
        let options = put_options(&PutArgs::default(), &path, Conditions::none())?;
        put_file(cli, &to.blob(&join(prefix, &rel)), &path, options)?;
        done.copied += 1;
    }
    Ok(done)
}

fn download(cli: &Cli, c: &BlobClient, src: &str, dir: &Path, filter: &Filter) -> Result<Synced, CliError> {
    let (container, prefix) = split(src);
    let from = c.container(container);
    let mut done = Synced::default();
    let mut names: Vec<(String, Remote)> = remote(c, container, prefix)?.into_iter().collect();
    names.sort();
    for (rel, (name, size, crc)) in names {
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
