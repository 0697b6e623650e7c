//! `container/blob` paths on the command line.

use super::CliError;

/// Split `container/rest` (rest may be empty).
pub fn split(path: &str) -> (&str, &str) {
    match path.split_once('/') {
        Some((c, rest)) => (c, rest),
        None => (path, ""),
    }
}

/// `container/blob` with a non-empty blob.
pub fn blob(path: &str) -> Result<(&str, &str), CliError> {
    match split(path) {
        (c, b) if !c.is_empty() && !b.is_empty() => Ok((c, b)),
        _ => Err(CliError::Usage(format!("{} is not container/blob", vmblob_vsc::error::shown(path)))),
    }
}

/// What marks a `cp` argument as a device path, never a local one.
pub const DEVICE_SCHEME: &str = "vmblob://";

/// `vmblob://container/...` as `container/...`; `None` for any other argument.
pub fn device_path(arg: &str) -> Option<&str> {
    arg.strip_prefix(DEVICE_SCHEME)
}

/// A tree verb's prefix as a directory: `logs` is `logs/`, so `logs-old/a`
/// is not under it (`""`, the whole container, and `a/` stay as they are).
pub fn dir_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') { prefix.to_owned() } else { format!("{prefix}/") }
}

/// `name` relative to the directory `prefix` (from [`dir_prefix`]); `None`
/// for a name the device should not have listed under it, or one that could
/// leave a local directory (the device is not trusted to keep the naming rules).
pub fn relative<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let rel = name.strip_prefix(prefix)?;
    let safe = vmblob_protocol::BlobName::new(name).is_ok()
        && !rel.is_empty()
        && rel.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    safe.then_some(rel)
}

/// Join a prefix and a relative name with exactly one '/'.
pub fn join(prefix: &str, name: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() { name.to_owned() } else { format!("{p}/{name}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(split("c/a/b"), ("c", "a/b"));
        assert_eq!(split("c"), ("c", ""));
        assert!(blob("c").is_err());
        assert!(blob("c/").is_err());
        assert_eq!(blob("c/x").unwrap(), ("c", "x"));
        assert_eq!(join("p/", "x"), "p/x");
        assert_eq!(join("", "x"), "x");
        assert_eq!(device_path("vmblob://c/a"), Some("c/a"));
        assert_eq!(device_path("c/a"), None);
        assert_eq!(
            (dir_prefix("logs"), dir_prefix("logs/"), dir_prefix("")),
            ("logs/".into(), "logs/".into(), "".into())
        );
        assert_eq!(relative("logs/a/b", "logs/"), Some("a/b"));
        assert_eq!(relative("logs-old/a", "logs/"), None, "not under the directory");
        assert_eq!(relative("logs/", "logs/"), None, "nothing left to name a file");
        assert_eq!(relative("logs/../../etc/x", "logs/"), None, "a lying device cannot escape");
        assert_eq!(relative("x", ""), Some("x"));
    }
}
