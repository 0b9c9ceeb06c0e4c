//! Secondary indexes of the watch caches: which objects (by namespace and name) carry a
//! given key — a Pod's plugin, a ReplicaSet's controller, an Event's Pod — kept in step with
//! the watch events, relists included. A reconcile looks up its own few objects here and
//! reads them from the store by name, so its cost does not grow with the number of objects
//! cached.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

/// An object of the cache, by namespace and name.
pub type Name = (String, String);

#[derive(Default)]
struct Entries {
    by_key: HashMap<String, BTreeSet<Name>>,
    key_of: HashMap<Name, String>,
    /// What a relist in progress has seen so far; it replaces everything when it ends.
    relist: Option<HashMap<Name, String>>,
}

impl Entries {
    fn insert(&mut self, name: Name, key: Option<String>) {
        self.remove(&name);
        if let Some(key) = key {
            self.by_key
                .entry(key.clone())
                .or_default()
                .insert(name.clone());
            self.key_of.insert(name, key);
        }
    }

    fn remove(&mut self, name: &Name) {
        let Some(key) = self.key_of.remove(name) else {
            return;
        };
        if let Some(names) = self.by_key.get_mut(&key) {
            names.remove(name);
            if names.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }
}

/// Object names of one watch cache by a key computed from each object.
pub struct CacheIndex<K> {
    key: fn(&K) -> Option<String>,
    entries: Mutex<Entries>,
    /// Lookups, and names they returned: what a test counts to show per-object work is flat.
    lookups: AtomicU64,
    visited: AtomicU64,
}

fn name_of<K: ResourceExt>(obj: &K) -> Name {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

impl<K: kube::Resource> CacheIndex<K> {
    /// An empty index keyed by `key` (objects for which it is `None` are not indexed).
    pub fn new(key: fn(&K) -> Option<String>) -> Self {
        Self {
            key,
            entries: Mutex::default(),
            lookups: AtomicU64::new(0),
            visited: AtomicU64::new(0),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every update leaves the maps consistent; a panic elsewhere must not stop lookups.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows one watch event, as the reflector applies it to the store.
    pub fn apply(&self, event: &Event<K>) {
        let mut entries = self.entries();
        match event {
            Event::Apply(obj) => entries.insert(name_of(obj), (self.key)(obj)),
            Event::Delete(obj) => entries.remove(&name_of(obj)),
            Event::Init => entries.relist = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let Some(key) = (self.key)(obj) {
                    entries
                        .relist
                        .get_or_insert_with(HashMap::new)
                        .insert(name_of(obj), key);
                }
            }
            Event::InitDone => {
                let seen = entries.relist.take().unwrap_or_default();
                entries.by_key.clear();
                entries.key_of.clear();
                for (name, key) in seen {
                    entries.insert(name, Some(key));
                }
            }
        }
    }

    /// The objects indexed under `key`.
    pub fn get(&self, key: &str) -> Vec<Name> {
        let names: Vec<Name> = self
            .entries()
            .by_key
            .get(key)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.visited
            .fetch_add(names.len() as u64, Ordering::Relaxed);
        names
    }

    /// Every key with at least one object under it.
    pub fn keys(&self) -> Vec<String> {
        self.entries().by_key.keys().cloned().collect()
    }

    /// (lookups, names returned) since the start.
    pub fn work(&self) -> (u64, u64) {
        (
            self.lookups.load(Ordering::Relaxed),
            self.visited.load(Ordering::Relaxed),
        )
    }

    /// Number of objects indexed.
    pub fn len(&self) -> usize {
        self.entries().key_of.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A watch cache read by name; a read of the whole cache is counted, so that a test can show
/// the per-reconcile path makes none.
pub struct Cache<K: kube::Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    scanned: AtomicU64,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Cache<K> {
    /// Reads of `store`.
    pub fn new(store: Store<K>) -> Self {
        Self {
            store,
            scanned: AtomicU64::new(0),
        }
    }

    /// One object by reference.
    pub fn get(&self, r: &ObjectRef<K>) -> Option<Arc<K>> {
        self.store.get(r)
    }

    /// The objects of `names`, skipping those gone from the cache meanwhile.
    pub fn get_all(&self, names: Vec<Name>) -> Vec<Arc<K>> {
        names
            .into_iter()
            .filter_map(|(ns, name)| self.get(&ObjectRef::new(&name).within(&ns)))
            .collect()
    }

    /// Every object: a whole-cache read, for periodic sweeps only (counted).
    pub fn scan(&self) -> Vec<Arc<K>> {
        let all = self.store.state();
        self.scanned.fetch_add(all.len() as u64, Ordering::Relaxed);
        all
    }

    /// Objects returned by [`Cache::scan`] since the start.
    pub fn scanned(&self) -> u64 {
        self.scanned.load(Ordering::Relaxed)
    }
}

/// `namespace/value`: a key scoped to a namespace.
pub fn scoped(namespace: &str, value: &str) -> String {
    format!("{namespace}/{value}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    fn pod(ns: &str, name: &str, plugin: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: plugin.map(|p| [("plugin".to_string(), p.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn by_plugin(p: &Pod) -> Option<String> {
        Some(scoped(&p.namespace()?, p.labels().get("plugin")?))
    }

    fn names(v: Vec<Name>) -> Vec<String> {
        v.into_iter().map(|(ns, n)| format!("{ns}/{n}")).collect()
    }

    #[test]
    fn follows_applies_relabels_and_deletes() {
        let index = CacheIndex::new(by_plugin);
        index.apply(&Event::Apply(pod("a", "p1", Some("x"))));
        index.apply(&Event::Apply(pod("a", "p2", Some("x"))));
        index.apply(&Event::Apply(pod("b", "p1", Some("x"))));
        index.apply(&Event::Apply(pod("a", "q", None)));
        assert_eq!(names(index.get("a/x")), ["a/p1", "a/p2"]);
        assert_eq!(names(index.get("b/x")), ["b/p1"]);
        // A label changed: the Pod moves to its new key.
        index.apply(&Event::Apply(pod("a", "p2", Some("y"))));
        assert_eq!(names(index.get("a/x")), ["a/p1"]);
        assert_eq!(names(index.get("a/y")), ["a/p2"]);
        index.apply(&Event::Delete(pod("a", "p1", Some("x"))));
        assert!(index.get("a/x").is_empty());
        assert_eq!(index.len(), 2, "unindexed objects take no room");
        assert_eq!(index.work(), (5, 5), "five lookups returned five names");
    }

    #[test]
    fn a_relist_replaces_everything_when_it_ends() {
        let index = CacheIndex::new(by_plugin);
        index.apply(&Event::Apply(pod("a", "gone", Some("x"))));
        index.apply(&Event::Apply(pod("a", "kept", Some("x"))));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("a", "kept", Some("x"))));
        index.apply(&Event::InitApply(pod("a", "new", Some("x"))));
        // Until the relist ends, lookups see the old state, as the store does.
        assert_eq!(names(index.get("a/x")), ["a/gone", "a/kept"]);
        index.apply(&Event::InitDone);
        assert_eq!(names(index.get("a/x")), ["a/kept", "a/new"]);
        assert_eq!(index.len(), 2);
    }
}
