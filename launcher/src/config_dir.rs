//! Reads plugin configuration from mounted directories: one file per key, its content the value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A plugin configuration: key → value.
pub type Config = HashMap<String, String>;

/// A configuration directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("config directory {path}: {source}")]
pub struct ConfigDirError {
    path: String,
    source: std::io::Error,
}

/// Where the kubelet keeps the current snapshot of a ConfigMap, Secret or projected volume:
/// a symlink to a hidden timestamped directory, replaced atomically on every update.
const KUBELET_DATA: &str = "..data";

/// How often a directory is read again when the kubelet replaced its snapshot while it was
/// being read (the old snapshot's files vanish).
const SNAPSHOT_ATTEMPTS: usize = 3;

/// Collects `key → value` from every regular file of each directory, later directories
/// overriding earlier ones. Entries starting with `..` are skipped: Kubernetes volume
/// mounts keep their atomic-update bookkeeping there.
///
/// A directory the kubelet manages (it has a `..data` directory) is read from the snapshot
/// `..data` points to, resolved once: the per-key symlinks are replaced one by one after the
/// snapshot, so reading through them could mix two versions or miss a key just added.
pub fn read(dirs: &[impl AsRef<Path>]) -> Result<Config, ConfigDirError> {
    let mut config = HashMap::new();
    for dir in dirs {
        let dir = dir.as_ref();
        let mut attempt = 1;
        loop {
            match read_one(dir) {
                Ok(entries) => {
                    config.extend(entries);
                    break;
                }
                Err(e)
                    if attempt < SNAPSHOT_ATTEMPTS
                        && e.source.kind() == std::io::ErrorKind::NotFound
                        && is_kubelet_volume(dir) =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(config)
}

fn is_kubelet_volume(dir: &Path) -> bool {
    dir.join(KUBELET_DATA).is_dir()
}

/// The directory to read keys from: the current kubelet snapshot, or `dir` itself.
fn snapshot(dir: &Path) -> PathBuf {
    if !is_kubelet_volume(dir) {
        return dir.to_path_buf();
    }
    match std::fs::read_link(dir.join(KUBELET_DATA)) {
        // Relative, as the kubelet writes it: `..2026_11_30_07_00_00.123456`.
        Ok(target) => dir.join(target),
        // A real directory rather than a symlink: read it as it is.
        Err(_) => dir.join(KUBELET_DATA),
    }
}

fn read_one(dir: &Path) -> Result<Vec<(String, String)>, ConfigDirError> {
    let source_dir = snapshot(dir);
    let err = |source| ConfigDirError {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(&source_dir)
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort_by_key(|e| e.file_name());
    let mut config = Vec::with_capacity(entries.len());
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
        // Named by the directory as configured, not the snapshot's hidden name.
        let value = std::fs::read_to_string(&path).map_err(|source| ConfigDirError {
            path: dir.join(&name).display().to_string(),
            source,
        })?;
        config.push((name, value));
    }
    Ok(config)
}

/// Values shorter than this are left in messages: masking `true` or `10` would garble them,
/// and no secret is that short.
const MIN_MASKED_CHARS: usize = 4;

/// `text` with every configuration value of at least four characters replaced by
/// `[redacted]`: a plugin's refusal often quotes the value it refused, and values may be
/// secrets.
pub fn redact<'a>(text: &str, values: impl IntoIterator<Item = &'a String>) -> String {
    let mut masks: Vec<String> = values
        .into_iter()
        .map(|v| v.trim())
        .filter(|v| v.chars().count() >= MIN_MASKED_CHARS)
        // Also as `{:?}` quotes it, with escapes.
        .flat_map(|v| [v.to_string(), v.escape_debug().to_string()])
        .collect();
    // Longest first, so that a value containing another is masked whole.
    masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
    masks.dedup();
    let mut text = text.to_string();
    for mask in masks {
        text = text.replace(&mask, "[redacted]");
    }
    text
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

    #[test]
    fn reads_a_kubelet_volume_from_its_current_snapshot() -> Result<(), Box<dyn std::error::Error>>
    {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let old = "..2026_11_30_07_00_00.000001";
        let new = "..2026_11_30_07_01_00.000002";
        std::fs::create_dir(d.join(old))?;
        std::fs::write(d.join(old).join("prefix"), "old")?;
        std::fs::create_dir(d.join(new))?;
        std::fs::write(d.join(new).join("prefix"), "new")?;
        std::fs::write(d.join(new).join("model"), "m2")?;
        symlink(old, d.join("..data"))?;
        symlink("..data/prefix", d.join("prefix"))?;
        assert_eq!(read(&[d])?, Config::from([("prefix".into(), "old".into())]));
        // The kubelet's order: the snapshot first, the per-key symlinks after. In between,
        // the new key is already part of the configuration.
        symlink(new, d.join("..data_tmp"))?;
        std::fs::rename(d.join("..data_tmp"), d.join("..data"))?;
        assert_eq!(
            read(&[d])?,
            Config::from([
                ("prefix".into(), "new".into()),
                ("model".into(), "m2".into())
            ])
        );
        Ok(())
    }

    #[test]
    fn redacts_values_in_messages() {
        let config = Config::from([
            ("api_key".into(), "sk-abc\"def".into()),
            ("max_tokens".into(), " lots ".into()),
            ("short".into(), "10".into()),
            ("inner".into(), "sk-abc".into()),
        ]);
        assert_eq!(
            redact(
                "key max_tokens: \"lots\" is not an integer; api_key sk-abc\"def / \"sk-abc\\\"def\"; 10 tries",
                config.values()
            ),
            "key max_tokens: \"[redacted]\" is not an integer; api_key [redacted] / \"[redacted]\"; 10 tries"
        );
    }
}
