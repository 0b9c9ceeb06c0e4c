//! Keeping a [`Pool`]'s endpoints up to date: a published plugin is followed as the operator
//! republishes it (endpoints and their certificates come and go), DNS names are resolved
//! again from time to time, and endpoints out of the rotation are probed until they answer
//! again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

use crate::directory::Directory;
use crate::pool::{Pool, ProbeError};
use crate::resolve::Resolver;
use crate::secure::PluginTls;
use crate::target::{HostPort, published_targets};

/// How often DNS names are resolved again (answers are cached for
/// [`crate::resolve::DNS_REFRESH`]).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often endpoints out of the rotation are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Where a pool's endpoints come from.
#[derive(Clone, Debug)]
pub enum Target {
    /// A fixed list of addresses; names among them are resolved again from time to time.
    Addresses(Vec<HostPort>),
    /// Plugin `name` of a directory, followed as it is republished.
    Published {
        /// The published plugins.
        directory: Directory,
        /// The plugin's key.
        name: String,
    },
}

/// The targets plugin `name` has in `directory` now: none when it is not published (calls
/// then fail `UNAVAILABLE` until it is back), `None` when its entry is unusable (the last
/// targets are kept).
pub fn current_targets(directory: &Directory, name: &str) -> Option<Vec<HostPort>> {
    match directory.get(name) {
        None => {
            tracing::warn!(
                plugin = name,
                place = directory.place(),
                "plugin unpublished; calls fail until it is back"
            );
            Some(Vec::new())
        }
        Some(plugin) => match published_targets(&plugin) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(plugin = name, error = %e, "unusable published entry; keeping the last endpoints");
                None
            }
        },
    }
}

/// Starts following `target` (whose targets are `targets` now) and probing `service` on
/// endpoints out of the rotation; the tasks run until aborted.
pub fn spawn(
    pool: Arc<Pool>,
    target: Target,
    targets: Vec<HostPort>,
    resolver: Resolver,
    service: String,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(follow(pool.clone(), target, targets, resolver)),
        tokio::spawn(probe_down(pool, service)),
    ]
}

async fn follow(
    pool: Arc<Pool>,
    target: Target,
    mut targets: Vec<HostPort>,
    mut resolver: Resolver,
) {
    let mut published = match target {
        Target::Addresses(list) if list.iter().all(|t| t.literal().is_some()) => {
            // Fixed IP addresses: nothing can change.
            return;
        }
        Target::Addresses(_) => None,
        Target::Published { directory, name } => Some((directory.subscribe(), directory, name)),
    };
    let mut open = true;
    loop {
        let changed = match published.as_mut() {
            // A change is acted on at once, not at the next tick.
            Some((rx, _, _)) if open => tokio::select! {
                c = rx.changed() => {
                    open = c.is_ok();
                    c.is_ok()
                }
                _ = tokio::time::sleep(REFRESH_INTERVAL) => false,
            },
            _ => {
                tokio::time::sleep(REFRESH_INTERVAL).await;
                false
            }
        };
        if changed && let Some((rx, directory, name)) = published.as_mut() {
            rx.borrow_and_update();
            // Pins first, so that connections to new endpoints are made under them. An
            // unpublished plugin keeps its last pins: it has no endpoint to use them on.
            if let Some(plugin) = directory.get(name) {
                pool.set_tls(PluginTls::for_published(name, &plugin));
            }
            if let Some(t) = current_targets(directory, name) {
                targets = t;
            }
        }
        let resolved = resolver.resolve(&targets).await;
        for (target, reason) in &resolved.failed {
            tracing::debug!(%target, reason, "cannot resolve");
        }
        pool.set_endpoints(resolved.addrs);
    }
}

/// Calls `service`'s `Health` on every endpoint in `addrs` at once and updates the rotation
/// with the answers: healthy ones are in, the others out with the reason.
pub async fn probe(
    pool: &Arc<Pool>,
    addrs: &[SocketAddr],
    service: &str,
    timeout: Duration,
) -> Vec<(SocketAddr, Result<(), ProbeError>)> {
    let mut set = JoinSet::new();
    for &addr in addrs {
        let pool = pool.clone();
        let service = service.to_string();
        set.spawn(async move {
            let result = match pool.health(addr, &service, timeout).await {
                Ok(h) if h.healthy => Ok(()),
                Ok(h) if h.message.is_empty() => {
                    Err(ProbeError::Failed("reports unhealthy".to_string()))
                }
                Ok(h) => Err(ProbeError::Failed(format!(
                    "reports unhealthy: {}",
                    h.message
                ))),
                Err(e) => Err(e),
            };
            match &result {
                Ok(()) => pool.mark_up(addr),
                Err(e) => pool.mark_down(addr, &e.to_string()),
            }
            (addr, result)
        });
    }
    let mut results = Vec::with_capacity(addrs.len());
    while let Some(joined) = set.join_next().await {
        if let Ok(r) = joined {
            results.push(r);
        }
    }
    results.sort_by_key(|(addr, _)| *addr);
    results
}

/// Probes the endpoints that are down, and those whose ejection has run out, and puts back
/// those that answer.
async fn probe_down(pool: Arc<Pool>, service: String) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let down = pool.to_probe();
        if !down.is_empty() {
            probe(&pool, &down, &service, PROBE_INTERVAL).await;
        }
    }
}
