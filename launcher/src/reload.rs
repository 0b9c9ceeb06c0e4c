//! Watching the config directories: the kubelet rewrites a mounted ConfigMap or Secret in
//! place when it changes, and the plugin only reads its configuration in `Initialize`, so the
//! launcher compares the files with the configuration the plugin runs with and says when a
//! new plugin is due.
//!
//! Polling rather than inotify: the kubelet replaces a symlink (`..data`) rather than
//! writing to files, ConfigMap updates reach the Pod only every minute or so anyway, and
//! reading a few small files every couple of seconds costs nothing worth saving.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

use crate::config_dir::{self, Config};

/// Which keys differ between two configurations. Names only: values may be secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Keys only the new configuration has.
    pub added: Vec<String>,
    /// Keys only the old configuration has.
    pub removed: Vec<String>,
    /// Keys whose value differs.
    pub changed: Vec<String>,
}

impl KeyChanges {
    /// The differences from `old` to `new`, each list sorted.
    pub fn between(old: &Config, new: &Config) -> Self {
        let mut c = KeyChanges::default();
        for (key, value) in new {
            match old.get(key) {
                None => c.added.push(key.clone()),
                Some(v) if v != value => c.changed.push(key.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        c.added.sort();
        c.removed.sort();
        c.changed.sort();
        c
    }
}

/// What the files say now.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// They hold a configuration that is neither the running one nor one that already failed.
    Changed {
        /// The new configuration.
        config: Config,
        /// How it differs from the running one.
        keys: KeyChanges,
    },
    /// They were changed back to the running configuration after a change had failed.
    BackToRunning,
}

/// Polls the config directories and compares them with the running configuration.
#[derive(Debug)]
pub struct Watcher {
    dirs: Vec<PathBuf>,
    /// `None` when there is nothing to watch.
    ticks: Option<Interval>,
    running: Config,
    /// The last configuration a new plugin could not be started with: not tried again until
    /// the files change once more.
    refused: Option<Config>,
    /// The last read error, logged once rather than at every poll.
    unreadable: Option<String>,
}

impl Watcher {
    /// Watches `dirs` every `every` (never, if zero or no directories), the plugin running
    /// with `running`.
    pub fn new(dirs: Vec<PathBuf>, every: Duration, running: Config) -> Self {
        let ticks = (!dirs.is_empty() && !every.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        Self {
            dirs,
            ticks,
            running,
            refused: None,
            unreadable: None,
        }
    }

    /// Resolves at the next poll whose outcome matters. Cancel-safe: no change is lost when
    /// the future is dropped, as every poll compares with the running configuration afresh.
    pub async fn next_event(&mut self) -> Event {
        let Some(ticks) = self.ticks.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            ticks.tick().await;
            let config = match config_dir::read(&self.dirs) {
                Ok(c) => {
                    if self.unreadable.take().is_some() {
                        tracing::info!("configuration readable again");
                    }
                    c
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.unreadable.as_ref() != Some(&text) {
                        tracing::warn!(error = %text, "cannot read the configuration; the plugin keeps the one it runs with");
                        self.unreadable = Some(text);
                    }
                    continue;
                }
            };
            if config == self.running {
                if self.refused.take().is_some() {
                    return Event::BackToRunning;
                }
                continue;
            }
            if self.refused.as_ref() == Some(&config) {
                continue;
            }
            let keys = KeyChanges::between(&self.running, &config);
            return Event::Changed { config, keys };
        }
    }

    /// The plugin now runs with `config`.
    pub fn applied(&mut self, config: Config) {
        self.running = config;
        self.refused = None;
    }

    /// No plugin could be started with `config`; wait for the files to change again.
    pub fn refused(&mut self, config: Config) {
        self.refused = Some(config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_the_keys_that_differ() {
        let old = config(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let new = config(&[("b", "2"), ("c", "4"), ("d", "5")]);
        assert_eq!(
            KeyChanges::between(&old, &new),
            KeyChanges {
                added: vec!["d".into()],
                removed: vec!["a".into()],
                changed: vec!["c".into()],
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reports_changes_once_and_retries_a_refused_one_only_after_another_change()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let write = |v: &str| std::fs::write(dir.path().join("prefix"), v);
        write("one")?;
        let every = Duration::from_secs(2);
        let mut w = Watcher::new(
            vec![dir.path().to_path_buf()],
            every,
            config(&[("prefix", "one")]),
        );
        // Unchanged files: nothing to report (time is paused, so this waits exactly 10 s).
        let quiet = tokio::time::timeout(Duration::from_secs(10), w.next_event()).await;
        assert!(quiet.is_err(), "no event for unchanged files: {quiet:?}");

        write("two")?;
        let two = config(&[("prefix", "two")]);
        let expected = Event::Changed {
            config: two.clone(),
            keys: KeyChanges {
                changed: vec!["prefix".into()],
                ..Default::default()
            },
        };
        assert_eq!(w.next_event().await, expected);
        // Reported again while nobody acted on it (a dropped event is not lost)...
        assert_eq!(w.next_event().await, expected);
        // ...but not once refused.
        w.refused(two);
        let quiet = tokio::time::timeout(Duration::from_secs(10), w.next_event()).await;
        assert!(
            quiet.is_err(),
            "a refused configuration is not retried: {quiet:?}"
        );

        write("three")?;
        let three = config(&[("prefix", "three")]);
        assert!(matches!(w.next_event().await, Event::Changed { config, .. } if config == three));
        w.refused(three);
        write("one")?;
        assert_eq!(w.next_event().await, Event::BackToRunning);
        write("four")?;
        assert!(matches!(w.next_event().await, Event::Changed { .. }));
        w.applied(config(&[("prefix", "four")]));
        let quiet = tokio::time::timeout(Duration::from_secs(10), w.next_event()).await;
        assert!(quiet.is_err(), "applied: {quiet:?}");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn watches_nothing_without_directories_or_interval() {
        let mut w = Watcher::new(vec![], Duration::from_secs(1), Config::new());
        assert!(
            tokio::time::timeout(Duration::from_secs(60), w.next_event())
                .await
                .is_err()
        );
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Watcher::new(
            vec![dir.path().to_path_buf()],
            Duration::ZERO,
            Config::new(),
        );
        std::fs::write(dir.path().join("k"), "v").expect("write");
        assert!(
            tokio::time::timeout(Duration::from_secs(60), w.next_event())
                .await
                .is_err()
        );
    }
}
