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
    }
}
