//! What `/readyz` reports: standing by, or leading with every watch listed and none failing.
//! A leader whose watches cannot list (a missing permission, a missing CRD) is not ready: it
//! would reconcile from empty caches, so it says so instead of `leading`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// What a watch that has not listed yet reports.
const NOT_LISTED: &str = "not listed yet";

/// The replica's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Starting up.
    Starting = 0,
    /// Waiting for the lease.
    Standby = 1,
    /// Holding the lease: controllers run.
    Leading = 2,
    /// Shutting down.
    Stopping = 3,
}

/// Readiness shared by the HTTP handler, the lease loop and the watches.
#[derive(Debug, Default)]
pub struct Readiness {
    role: AtomicU8,
    /// Watches of the current term: resource → `None` (listed) or the last error.
    watches: Mutex<BTreeMap<&'static str, Option<String>>>,
}

impl Readiness {
    /// Sets the role; a new term forgets the watches of the last one.
    pub fn set_role(&self, role: Role) {
        if role != Role::Leading {
            self.lock().clear();
        }
        self.role.store(role as u8, Ordering::SeqCst);
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::SeqCst) {
            1 => Role::Standby,
            2 => Role::Leading,
            3 => Role::Stopping,
            _ => Role::Starting,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Option<String>>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch of `resource` starts; it counts as not synced until it has listed.
    pub fn watch_started(&self, resource: &'static str) {
        self.lock().insert(resource, Some(NOT_LISTED.to_string()));
    }

    /// The watch of `resource` listed (or received an event).
    pub fn watch_ok(&self, resource: &'static str) {
        if let Some(state) = self.lock().get_mut(resource) {
            *state = None;
        }
    }

    /// The watch of `resource` failed; returns whether this is news (it was fine or had not
    /// listed yet), so a failure is logged once, not at every retry.
    pub fn watch_failed(&self, resource: &'static str, error: String) -> bool {
        let mut watches = self.lock();
        let state = watches.entry(resource).or_insert(None);
        let news = state.as_deref().is_none_or(|s| s == NOT_LISTED);
        *state = Some(error);
        news
    }

    /// HTTP status and body of `/readyz`.
    pub fn report(&self) -> (u16, String) {
        match self.role() {
            Role::Standby => (200, "standby".into()),
            Role::Starting => (503, "starting".into()),
            Role::Stopping => (503, "stopping".into()),
            Role::Leading => {
                let watches = self.lock();
                let failing: Vec<String> = watches
                    .iter()
                    .filter_map(|(r, e)| e.as_ref().map(|e| format!("{r}: {e}")))
                    .collect();
                if watches.is_empty() {
                    (503, "leading, controllers starting".into())
                } else if failing.is_empty() {
                    (200, "leading".into())
                } else {
                    (
                        503,
                        format!("leading, but not synced: {}", failing.join("; ")),
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_is_ready_only_when_every_watch_listed() {
        let r = Readiness::default();
        assert_eq!(r.report().0, 503);
        r.set_role(Role::Standby);
        assert_eq!(r.report(), (200, "standby".into()));
        r.set_role(Role::Leading);
        assert_eq!(r.report().0, 503, "no controller yet");
        r.watch_started("pods");
        r.watch_started("hectorplugins");
        assert_eq!(r.report().0, 503);
        assert!(
            r.watch_failed("hectorplugins", "403".into()),
            "a watch failing before it ever listed is news"
        );
        r.watch_ok("pods");
        r.watch_ok("hectorplugins");
        assert_eq!(r.report(), (200, "leading".into()));
        assert!(r.watch_failed("pods", "403 Forbidden: cannot list pods".into()));
        let (code, body) = r.report();
        assert_eq!(code, 503);
        assert!(body.contains("pods: 403 Forbidden"), "{body}");
        assert!(!r.watch_failed("pods", "again".into()), "already failing");
        r.watch_ok("pods");
        assert_eq!(r.report().0, 200);
        r.set_role(Role::Standby);
        r.set_role(Role::Leading);
        assert_eq!(r.report().0, 503, "a new term starts unsynced");
    }
}
