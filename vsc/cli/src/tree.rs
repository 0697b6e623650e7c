//! Verbs over many blobs or files: `cp` (uploads, downloads, copies inside
//! the device, `-r` for trees, `--include`/`--exclude`) and `rm -r`.

use std::path::{Path, PathBuf};

use vmblob_protocol::ops::{Conditions, LeaseId};
use vmblob_vsc::{BlobClient, BlobListItem, BlobProperties, CopyOptions, ListBlobsOptions};

use super::args::{device_etag, put_options};
use super::commands::{get_file, put_file};
use super::filter::Filter;
use super::paths::{blob, device_path, dir_prefix, join, relative, split};
use super::{Cli, CliError, PutArgs};

/// Files under `dir`, relative paths with '/' separators, sorted.
pub(crate) fn walk(dir: &Path) -> Result<Vec<(PathBuf, String)>, CliError> {
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

pub(crate) fn copy(
    cli: &Cli,
    c: &BlobClient,
    src: &str,
    dest: &str,
    recursive: bool,
    filter: &Filter,
    lease: Option<LeaseId>,
) -> Result<(), CliError> {
    if let Some(dest) = device_path(dest) {
        // Into the device: from it too (a device path, or no local file of that name) ...
        let src_remote = device_path(src).or_else(|| (!Path::new(src).exists()).then_some(src));
        if let Some(src) = src_remote {
            return copy_in_device(c, src, dest, recursive, filter, lease);
        }
        return copy(cli, c, src, dest, recursive, filter, lease);
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
                if !filter.allows(&rel) {
                    continue;
                }
                let name = join(prefix, &rel);
                let options = put_options(&PutArgs::default(), &path, Conditions::none())?;
                put_file(cli, &container.blob(&name), &path, options)?;
            }
            return Ok(());
        }
        let (container, name) = blob(dest)?;
        let options = put_options(&PutArgs::default(), src_path, Conditions::none().with_lease(lease))?;
        return put_file(cli, &c.container(container).blob(name), src_path, options);
    }
    // Download: src is container/prefix.
    let (container, prefix) = split(src);
    if !recursive {
        let (container, name) = blob(src)?;
        let conditions = Conditions::none().with_lease(lease);
        return get_file(cli, &c.container(container).blob(name), Path::new(dest), None, &conditions);
    }
    let container = c.container(container);
    for (name, rel, _) in blobs_under(c, container.name(), prefix, filter)? {
        // `relative` refused names that could leave `dest`.
        let target = Path::new(dest).join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        get_file(cli, &container.blob(&name), &target, None, &Conditions::none())?;
    }
    Ok(())
}

/// The blobs under the directory `prefix` that `filter` takes, listed whole
/// before anything is written (a copy into the listed tree must not list its
/// own output): (name, name relative to the prefix, properties).
pub(crate) fn blobs_under(
    c: &BlobClient,
    container: &str,
    prefix: &str,
    filter: &Filter,
) -> Result<Vec<(String, String, BlobProperties)>, CliError> {
    let prefix = dir_prefix(prefix);
    let mut out = Vec::new();
    for item in c.container(container).list_blobs(ListBlobsOptions::prefix(&prefix)).items() {
        if let BlobListItem::Blob { name, properties } = item? {
            let Some(rel) = relative(&name, &prefix).map(str::to_owned) else {
                log::warn!("skipping {name:?}: not a name under {prefix:?} a local path can hold");
                continue;
            };
            if filter.allows(&rel) {
                out.push((name, rel, properties));
            }
        }
    }
    Ok(out)
}

/// `rm -r`: every blob under the directory container/prefix, only with
/// `--yes` (else how many would go).
pub(crate) fn remove_under(c: &BlobClient, path: &str, yes: bool) -> Result<(), CliError> {
    let (container, prefix) = split(path);
    let names = blobs_under(c, container, prefix, &Filter::new(&[], &[])?)?;
    if !yes {
        return Err(CliError::Usage(format!(
            "rm -r {path} would delete {} blob(s); add --yes to delete them",
            names.len()
        )));
    }
    let container = c.container(container);
    for (name, _, _) in &names {
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
fn copy_in_device(
    c: &BlobClient,
    src: &str,
    dest: &str,
    recursive: bool,
    filter: &Filter,
    lease: Option<LeaseId>,
) -> Result<(), CliError> {
    if !recursive {
        let ((sc, sb), (dc, db)) = (blob(src)?, blob(dest)?);
        let options = CopyOptions { conditions: Conditions::none().with_lease(lease), ..CopyOptions::default() };
        c.container(dc).blob(db).copy_from(&c.container(sc).blob(sb), options)?;
        return Ok(());
    }
    let ((sc, prefix), (dc, dest_prefix)) = (split(src), split(dest));
    let (from, to) = (c.container(sc), c.container(dc));
    for (name, rel, props) in blobs_under(c, sc, prefix, filter)? {
        let pin = Conditions::if_match(device_etag(&props.etag)?);
        let options = CopyOptions { source_conditions: pin, ..CopyOptions::default() };
        to.blob(&join(dest_prefix, &rel)).copy_from(&from.blob(&name), options)?;
    }
    Ok(())
}
