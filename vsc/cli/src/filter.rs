//! `--include` / `--exclude` for the verbs over trees (`cp -r`, `sync`):
//! glob patterns over the relative path of each file or blob, as azcopy's
//! `--include-pattern` does for a pattern without `/` (it matches the last
//! name component) and `--include-path` for one with `/` (the whole path).

use globset::{GlobSet, GlobSetBuilder};

use super::CliError;

/// Which relative paths a tree verb takes.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Filter {
    /// Everything, when both lists are empty.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, CliError> {
        let include = if include.is_empty() { None } else { Some(set(include, "--include")?) };
        Ok(Self { include, exclude: set(exclude, "--exclude")? })
    }

    /// Whether `rel` (a `/`-separated path relative to the tree's root) is taken:
    /// some include matches (or there is none) and no exclude does.
    pub fn allows(&self, rel: &str) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let hit = |s: &GlobSet| s.is_match(rel) || s.is_match(name);
        self.include.as_ref().is_none_or(hit) && !hit(&self.exclude)
    }
}

fn set(patterns: &[String], flag: &str) -> Result<GlobSet, CliError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        // `*` stays within one path component, as in a shell.
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| CliError::Usage(format!("{flag} {p:?}: {e}")))?;
        b.add(glob);
    }
    b.build().map_err(|e| CliError::Usage(format!("{flag}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(include: &[&str], exclude: &[&str]) -> Filter {
        let v = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&v(include), &v(exclude)).unwrap()
    }

    #[test]
    fn names_and_paths_match_as_in_azcopy() {
        assert!(f(&[], &[]).allows("any/thing"));
        let jpg = f(&["*.jpg"], &[]);
        assert!(jpg.allows("a.jpg") && jpg.allows("deep/dir/b.jpg"), "a name pattern matches at any depth");
        assert!(!jpg.allows("a.png"));
        let dir = f(&["photos/**"], &["*.tmp"]);
        assert!(dir.allows("photos/2024/a.jpg"));
        assert!(!dir.allows("other/a.jpg"));
        assert!(!dir.allows("photos/x.tmp"), "an exclude wins");
        let star = f(&["photos/*"], &[]);
        assert!(star.allows("photos/a") && !star.allows("photos/2024/a"), "* stays in one component");
        assert!(matches!(Filter::new(&["a[".into()], &[]), Err(CliError::Usage(_))));
    }
}
