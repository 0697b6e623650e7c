//! One function per verb.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use vmblob_protocol::ops::BlobListItem;

use super::paths::{blob, join, split};
use super::{Cli, Cmd};
use vmblob_vsc::{BlobClient, ClientError};

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

pub fn run(cli: &Cli, c: &BlobClient) -> Result<(), ClientError> {
    match &cli.cmd {
        Cmd::Mb { container } => c.create_container(container).map(|_| ()),
        Cmd::Rb { container } => c.delete_container(container),
        Cmd::Ls { path: None, .. } => {
            for e in c.list_containers("")? {
                println!("{}", e.name);
            }
            Ok(())
        }
        Cmd::Ls { path: Some(p), recursive } => {
            let (container, prefix) = split(p);
            let delim = if *recursive { "" } else { "/" };
            for item in c.list(container, prefix, delim)? {
                match item {
                    BlobListItem::Blob { name, properties } => println!("{:>14}  {name}", properties.content_length),
                    BlobListItem::Prefix(p) => println!("{:>14}  {p}", "DIR"),
                }
            }
            Ok(())
        }
        Cmd::Put { file, dest } => {
            let (container, name) = blob(dest)?;
            put_file(cli, c, file, container, name)
        }
        Cmd::Get { src, file } => {
            let (container, name) = blob(src)?;
            match file.as_deref() {
                None => get_to_stdout(c, container, name),
                Some(p) if p == Path::new("-") => get_to_stdout(c, container, name),
                Some(p) => get_file(cli, c, container, name, p),
            }
        }
        Cmd::Stat { path } => {
            let (container, name) = blob(path)?;
            let p = c.stat(container, name)?;
            println!("name:           {container}/{name}");
            println!("content-length: {}", p.content_length);
            println!("etag:           {}", p.etag);
            println!("last-modified:  {} ms", p.last_modified_ms);
            println!("content-type:   {}", p.content_type);
            println!("crc64:          {:016x}", p.content_crc64);
            println!("blocks:         {}", p.committed_blocks);
            for (k, v) in &p.metadata.0 {
                println!("meta {k}: {v}");
            }
            Ok(())
        }
        Cmd::Rm { path } => {
            let (container, name) = blob(path)?;
            c.delete(container, name)
        }
        Cmd::Cp { src, dest, recursive } => copy(cli, c, src, dest, *recursive),
        Cmd::Demo { .. } => Err(ClientError::Invalid("demo needs no socket".into())),
    }
}

pub fn put_file(cli: &Cli, c: &BlobClient, file: &Path, container: &str, name: &str) -> Result<(), ClientError> {
    let f = File::open(file)?;
    let len = f.metadata()?.len();
    let pb = bar(cli, len, name);
    c.put_stream(container, name, &mut BufReader::new(f), len, &|n| pb.set_position(n))?;
    pb.finish_and_clear();
    Ok(())
}

fn get_file(cli: &Cli, c: &BlobClient, container: &str, name: &str, path: &Path) -> Result<(), ClientError> {
    let props = c.stat(container, name)?;
    // Write beside the target and rename, so a failed download leaves no torn file.
    let tmp = path.with_extension("vmblob-partial");
    let mut out = BufWriter::new(File::create(&tmp)?);
    let pb = bar(cli, props.content_length, name);
    let result = c.get_to_writer(container, name, &mut out, &|n| pb.set_position(n));
    pb.finish_and_clear();
    if let Err(e) = result.and_then(|_| out.flush().map_err(ClientError::Io)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn get_to_stdout(c: &BlobClient, container: &str, name: &str) -> Result<(), ClientError> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    c.get_to_writer(container, name, &mut out, &|_| {})?;
    out.flush()?;
    Ok(())
}

/// Files under `dir`, relative paths with '/' separators, sorted.
fn walk(dir: &Path) -> Result<Vec<(PathBuf, String)>, ClientError> {
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
                let rel = path.strip_prefix(dir).map_err(|e| ClientError::Invalid(e.to_string()))?;
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

fn copy(cli: &Cli, c: &BlobClient, src: &str, dest: &str, recursive: bool) -> Result<(), ClientError> {
    let src_path = Path::new(src);
    if src_path.exists() {
        if src_path.is_dir() {
            if !recursive {
                return Err(ClientError::Invalid(format!("{src} is a directory (use -r)")));
            }
            let (container, prefix) = split(dest);
            for (path, rel) in walk(src_path)? {
                put_file(cli, c, &path, container, &join(prefix, &rel))?;
            }
            return Ok(());
        }
        let (container, name) = blob(dest)?;
        return put_file(cli, c, src_path, container, name);
    }
    // Download: src is container/prefix.
    let (container, prefix) = split(src);
    if !recursive {
        let (container, name) = blob(src)?;
        return get_file(cli, c, container, name, Path::new(dest));
    }
    for item in c.list(container, prefix, "")? {
        if let BlobListItem::Blob { name, .. } = item {
            let rel = name.strip_prefix(prefix).unwrap_or(&name).trim_start_matches('/');
            // Blob names never contain '..' or empty segments (protocol rule),
            // so `rel` stays inside `dest`.
            let target = Path::new(dest).join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            get_file(cli, c, container, &name, &target)?;
        }
    }
    Ok(())
}
