//! Which plugin process new connections and requests go to. After a configuration change a
//! second plugin is started; once it accepted its configuration it becomes current, and the
//! old one keeps only what it already had, until that is done.

use std::sync::{Arc, PoisonError, RwLock};

use hector_plugin_sdk::LifecycleClient;

use crate::drain::{Drain, Tracked};
use crate::proxy::Forward;

/// One running plugin as the server loop sees it.
#[derive(Debug)]
pub struct Backend {
    /// 1 for the plugin started first, then one more for each started after a change.
    pub generation: u64,
    /// Where the plugin listens (`HOST:PORT` or `unix:/path`).
    pub address: String,
    /// The launcher's own HTTP/2 connection to it, for requests forwarded one by one.
    pub forward: Forward,
    /// The plugin's lifecycle RPCs, for the health mirror.
    pub lifecycle: LifecycleClient,
    /// This plugin's connections and calls: counted while open, told to go away on retirement.
    pub drain: Drain,
}

/// The current backend, shared by the accept loop, the request forwarder and the health
/// mirror; clones share it.
#[derive(Clone, Debug)]
pub struct Backends {
    current: Arc<RwLock<Arc<Backend>>>,
}

impl Backends {
    /// Starts with `first` as the current backend.
    pub fn new(first: Arc<Backend>) -> Self {
        Self {
            current: Arc::new(RwLock::new(first)),
        }
    }

    /// The current backend, with a connection or call counted as its own. Both under one
    /// lock, so that once [`Backends::switch`] returned, the old backend's count only goes
    /// down: nothing can pick it any more and then be missed by its drain.
    pub fn pick(&self) -> (Arc<Backend>, Tracked) {
        // Nothing panics while holding the lock; a poisoned one still holds a valid Arc.
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let tracked = current.drain.track();
        (current.clone(), tracked)
    }

    /// The current backend.
    pub fn current(&self) -> Arc<Backend> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `next` current and returns the backend it replaces.
    pub fn switch(&self, next: Arc<Backend>) -> Arc<Backend> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *current, next)
    }
}
