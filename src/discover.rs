//! Hector's plugin discovery: find `*.plugin.yaml` manifests in folders, optionally in their
//! subfolders, with `~` expanded and duplicates removed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The manifest file suffix Hector looks for.
pub const MANIFEST_SUFFIX: &str = ".plugin.yaml";

/// What a scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Manifest files, sorted, each once.
    pub manifests: Vec<PathBuf>,
    /// Paths that could not be scanned, with the reason (Hector skips these too).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Expands a leading `~` to `home`.
pub fn expand_tilde(path: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// Scans `paths` (folders or manifest files) for manifests.
pub fn discover(paths: &[PathBuf], recursive: bool) -> Found {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut seen = BTreeSet::new();
    let mut found = Found::default();
    for path in paths {
        let path = expand_tilde(path, home.as_deref());
        if path.is_file() {
            add(&path, &mut seen, &mut found);
        } else {
            scan(&path, recursive, &mut seen, &mut found);
        }
    }
    found.manifests.sort();
    found
}

fn add(path: &Path, seen: &mut BTreeSet<PathBuf>, found: &mut Found) {
    // The same file reached through two listed paths (or a symlink) counts once.
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if seen.insert(key) {
        found.manifests.push(path.to_path_buf());
    }
}

fn scan(dir: &Path, recursive: bool, seen: &mut BTreeSet<PathBuf>, found: &mut Found) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            found.skipped.push((dir.to_path_buf(), e.to_string()));
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if recursive {
                scan(&path, recursive, seen, found);
            }
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(MANIFEST_SUFFIX))
        {
            add(&path, seen, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dedupes_and_recurses() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/deep"))?;
        std::fs::write(root.join("one.plugin.yaml"), "")?;
        std::fs::write(root.join("notes.yaml"), "")?;
        std::fs::write(root.join("a/two.plugin.yaml"), "")?;
        std::fs::write(root.join("a/deep/three.plugin.yaml"), "")?;

        let flat = discover(&[root.to_path_buf()], false);
        assert_eq!(flat.manifests, [root.join("one.plugin.yaml")]);

        let all = discover(
            &[
                root.to_path_buf(),
                root.join("a"),
                root.join("one.plugin.yaml"),
            ],
            true,
        );
        assert_eq!(all.manifests.len(), 3, "{:?}", all.manifests);

        let missing = discover(&[root.join("nope")], true);
        assert!(missing.manifests.is_empty());
        assert_eq!(missing.skipped.len(), 1);
        Ok(())
    }

    #[test]
    fn expands_home() {
        let home = Path::new("/home/u");
        assert_eq!(
            expand_tilde(Path::new("~/.hector/plugins"), Some(home)),
            PathBuf::from("/home/u/.hector/plugins")
        );
        assert_eq!(
            expand_tilde(Path::new("./p"), Some(home)),
            PathBuf::from("./p")
        );
    }
}
