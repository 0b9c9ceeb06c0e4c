//! Reads plugin configuration from mounted directories: one file per key, its content the value.

use std::collections::HashMap;
use std::path::Path;

/// A configuration directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("config directory {path}: {source}")]
pub struct ConfigDirError {
    path: String,
    source: std::io::Error,
}

/// Collects `key → value` from every regular file of each directory, later directories
/// overriding earlier ones. Entries starting with `..` are skipped: Kubernetes volume
/// mounts keep their atomic-update bookkeeping there.
pub fn read(dirs: &[impl AsRef<Path>]) -> Result<HashMap<String, String>, ConfigDirError> {
    let mut config = HashMap::new();
    for dir in dirs {
        let dir = dir.as_ref();
        let err = |source| ConfigDirError {
            path: dir.display().to_string(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("..") || name.starts_with('.') {
                continue;
            }
            // Follows symlinks, as ConfigMap and Secret mounts are made of them.
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let value = std::fs::read_to_string(&path).map_err(|source| ConfigDirError {
                path: path.display().to_string(),
                source,
            })?;
            config.insert(name, value);
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_and_skips_bookkeeping() -> Result<(), Box<dyn std::error::Error>> {
        let a = tempfile::tempdir()?;
        let b = tempfile::tempdir()?;
        std::fs::write(a.path().join("model"), "m1")?;
        std::fs::write(a.path().join("prefix"), "> ")?;
        std::fs::write(a.path().join("..data"), "skip")?;
        std::fs::create_dir(a.path().join("sub"))?;
        std::fs::write(b.path().join("prefix"), "secret-wins")?;
        let config = read(&[a.path(), b.path()])?;
        assert_eq!(config.len(), 2);
        assert_eq!(config["model"], "m1");
        assert_eq!(config["prefix"], "secret-wins");
        assert!(read(&[a.path().join("missing")]).is_err());
        Ok(())
    }
}
