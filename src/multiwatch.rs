//! One watch stream, and so one reflector store, for several namespaces.
//!
//! Kubernetes watches either one namespace or all of them, so a set of namespaces takes one
//! watch per namespace. Their events cannot go to one store as they are: a relist of one
//! namespace (`Init`, `InitApply`…, `InitDone`) would *replace* the whole store and wipe the
//! other namespaces. [`Merge`] turns each namespace's relist into plain `Apply`s and, at its
//! end, a `Delete` for every object of that namespace the relist no longer saw. The shared store
//! goes through `Init` + `InitDone` once, at the start, so it is empty and ready at once; when
//! every namespace has listed is what [`Listed`] says.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_api};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// The merged, store-applied events of one kind across namespaces.
pub type MergedStream<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// Watches `K` in each of `namespaces` (one watcher per namespace, with `config`) as one
/// stream applied to `writer`'s store, plus a handle that resolves when every namespace has
/// been listed once. `api_for(ns)` must be an `Api` of namespace `ns`: the events of a
/// namespace are tracked under the name it was watched by.
///
/// Each namespace's watcher gets kube's default backoff *before* the merge: a backoff on the
/// merged stream would stop polling every namespace while one of them fails. Errors still pass
/// through (after their backoff), so the caller sees them. A namespace given twice is watched
/// once. The store is ready (`Store::wait_until_ready`) as soon as the stream is first polled,
/// before anything is listed: wait on [`Listed`] instead.
pub fn watch_namespaces<K, F>(
    api_for: F,
    namespaces: &[String],
    config: watcher::Config,
    writer: Writer<K>,
) -> (MergedStream<K>, Listed)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    F: Fn(&str) -> Api<K>,
{
    let unique: BTreeSet<&String> = namespaces.iter().collect();
    let streams = unique.into_iter().map(|ns| {
        (
            ns.clone(),
            watch_api(api_for(ns), config.clone()).default_backoff(),
        )
    });
    merge_streams(streams, writer)
}

/// Merges already-built per-namespace watch streams (each tagged with its namespace) into one
/// stream applied to `writer`'s store; [`watch_namespaces`] with the caller's own per-namespace
/// wrapping (backoff, readiness reporting). A stream whose namespace was already given is
/// dropped: two watches of one namespace would share its relist bookkeeping and delete each
/// other's objects.
pub fn merge_streams<K, S>(
    streams: impl IntoIterator<Item = (String, S)>,
    writer: Writer<K>,
) -> (MergedStream<K>, Listed)
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let mut names = Vec::new();
    let mut tagged = Vec::new();
    for (ns, stream) in streams {
        if names.contains(&ns) {
            tracing::warn!(namespace = %ns, "namespace given twice: watched once");
            continue;
        }
        let tag: Arc<str> = Arc::from(ns.as_str());
        names.push(ns);
        tagged.push(stream.map(move |result| (Arc::clone(&tag), result)).boxed());
    }
    let merge = Merge::new(names, writer.as_reader());
    let (listed_tx, listed_rx) = watch::channel(merge.all_listed());
    let state = Pump {
        events: stream::select_all(tagged),
        merge,
        listed: listed_tx,
    };
    // `unfold` drops the state, and so the `Listed` sender, when the streams end: a waiter
    // then learns that listing never completed instead of waiting for good.
    let rest = stream::unfold(state, |mut state| async move {
        let (ns, result) = state.events.next().await?;
        let out: Vec<_> = match result {
            Ok(event) => state.merge.push(&ns, event).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        if state.merge.all_listed() {
            state
                .listed
                .send_if_modified(|l| !std::mem::replace(l, true));
        }
        Some((stream::iter(out), state))
    })
    .flatten();
    // The store applies each event before the next one is pulled from the merge, so at a
    // relist's end the store holds every object `Merge` has emitted: its `Delete`s carry them.
    let merged = stream::iter(Merge::<K>::first().into_iter().map(Ok))
        .chain(rest)
        .reflect(writer)
        .boxed();
    (merged, Listed(listed_rx))
}

/// What the merged stream carries between events.
struct Pump<K, E>
where
    K: Resource + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    events: E,
    merge: Merge<K>,
    listed: watch::Sender<bool>,
}

/// Resolves once every namespace of a merged stream has completed its first list.
#[derive(Clone, Debug)]
pub struct Listed(watch::Receiver<bool>);

impl Listed {
    /// Waits until every namespace has listed once: `true`, or `false` when the merged stream
    /// was dropped or ended first. Any number of waiters wake.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        rx.wait_for(|listed| *listed).await.is_ok()
    }

    /// Whether every namespace has listed once.
    pub fn is_listed(&self) -> bool {
        *self.0.borrow()
    }
}

/// What the adapter remembers of one namespace: names only, the store holds the objects.
#[derive(Debug, Default)]
struct Namespace {
    /// Names of this namespace's objects that the shared store holds.
    known: HashSet<String>,
    /// Names the relist under way has delivered; `None` outside a relist.
    seen: Option<HashSet<String>>,
    /// Whether this namespace has completed a list.
    listed: bool,
}

/// Turns per-namespace watcher events into events for one shared store.
pub struct Merge<K>
where
    K: Resource + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    namespaces: HashMap<String, Namespace>,
    unlisted: usize,
}

impl<K> Merge<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    /// An adapter for `namespaces` whose output goes, directly, to the store `store` reads.
    pub fn new(namespaces: impl IntoIterator<Item = String>, store: Store<K>) -> Self {
        let namespaces: HashMap<_, _> = namespaces
            .into_iter()
            .map(|ns| (ns, Namespace::default()))
            .collect();
        Self {
            store,
            unlisted: namespaces.len(),
            namespaces,
        }
    }

    /// What the shared store receives first: emptied and ready, once.
    pub fn first() -> Vec<Event<K>> {
        vec![Event::Init, Event::InitDone]
    }

    /// The store's events for `event` of namespace `ns`'s watcher.
    pub fn push(&mut self, ns: &str, event: Event<K>) -> Vec<Event<K>> {
        let state = match self.namespaces.get_mut(ns) {
            Some(state) => state,
            // Not one of ours: the watcher was built for another namespace. Its objects are
            // tracked like any others; it has no say in `Listed`.
            None => self.namespaces.entry(ns.to_owned()).or_insert(Namespace {
                listed: true,
                ..Namespace::default()
            }),
        };
        match event {
            Event::Init => {
                // A relist restarted after an error starts its count afresh; what the aborted
                // one applied is in `known`, so it is deleted if this one does not see it.
                state.seen = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                let name = obj.name_any();
                if let Some(seen) = &mut state.seen {
                    seen.insert(name.clone());
                }
                state.known.insert(name);
                vec![Event::Apply(obj)]
            }
            Event::Delete(obj) => {
                let name = obj.name_any();
                if let Some(seen) = &mut state.seen {
                    seen.remove(&name);
                }
                state.known.remove(&name);
                vec![Event::Delete(obj)]
            }
            Event::InitDone => {
                if !state.listed {
                    state.listed = true;
                    self.unlisted -= 1;
                }
                // An end without a start has seen nothing reliable: deleting on its word
                // would empty the namespace.
                let Some(seen) = state.seen.take() else {
                    return Vec::new();
                };
                let before = std::mem::replace(&mut state.known, seen);
                let mut out = Vec::new();
                for name in before.difference(&state.known) {
                    let key = ObjectRef::<K>::new(name).within(ns);
                    // The store's copy is the last one applied, with the labels and owner
                    // references that map the deletion to the object to reconcile.
                    // Absent from the store, it has nothing to delete there.
                    if let Some(obj) = self.store.get(&key) {
                        out.push(Event::Delete(K::clone(&obj)));
                    }
                }
                if !out.is_empty() {
                    tracing::debug!(
                        namespace = ns,
                        deleted = out.len(),
                        "relist: objects gone while the watch was down"
                    );
                }
                out
            }
        }
    }

    /// Whether every namespace given to [`Merge::new`] has completed its first list.
    pub fn all_listed(&self) -> bool {
        self.unlisted == 0
    }

    /// How many names the adapter holds (known objects plus those of relists under way).
    pub fn tracked(&self) -> usize {
        self.namespaces
            .values()
            .map(|ns| ns.known.len() + ns.seen.as_ref().map_or(0, HashSet::len))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    use futures::FutureExt;
    use futures::channel::mpsc;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector;

    use super::*;

    fn cm(ns: &str, name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([("plugin".to_string(), name.to_string())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
            ..ConfigMap::default()
        }
    }

    /// The store's content as sorted `ns/name=value`.
    fn content(store: &Store<ConfigMap>) -> Vec<String> {
        let mut all: Vec<String> = store
            .state()
            .iter()
            .map(|cm| {
                let value = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .cloned()
                    .unwrap_or_default();
                format!(
                    "{}/{}={value}",
                    cm.namespace().unwrap_or_default(),
                    cm.name_any()
                )
            })
            .collect();
        all.sort();
        all
    }

    fn describe(events: &[Event<ConfigMap>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Apply(o) => format!(
                    "Apply({}/{})",
                    o.namespace().unwrap_or_default(),
                    o.name_any()
                ),
                Event::Delete(o) => format!(
                    "Delete({}/{})",
                    o.namespace().unwrap_or_default(),
                    o.name_any()
                ),
                Event::Init => "Init".into(),
                Event::InitApply(o) => format!("InitApply({})", o.name_any()),
                Event::InitDone => "InitDone".into(),
            })
            .collect()
    }

    /// A `Merge` over `namespaces` and the store it feeds, already through `first()`.
    struct Fixture {
        merge: Merge<ConfigMap>,
        writer: Writer<ConfigMap>,
        store: Store<ConfigMap>,
    }

    impl Fixture {
        fn new(namespaces: &[&str]) -> Self {
            let (store, mut writer) = reflector::store();
            for event in Merge::<ConfigMap>::first() {
                writer.apply_watcher_event(&event);
            }
            let merge = Merge::new(namespaces.iter().map(|s| s.to_string()), store.clone());
            Self {
                merge,
                writer,
                store,
            }
        }

        /// Pushes `event` of `ns` and applies the output; returns the output, described.
        fn push(&mut self, ns: &str, event: Event<ConfigMap>) -> Vec<String> {
            let out = self.merge.push(ns, event);
            for event in &out {
                self.writer.apply_watcher_event(event);
            }
            describe(&out)
        }

        fn list(&mut self, ns: &str, objects: &[(&str, &str)]) -> Vec<String> {
            let mut out = self.push(ns, Event::Init);
            for (name, value) in objects {
                out.extend(self.push(ns, Event::InitApply(cm(ns, name, value))));
            }
            out.extend(self.push(ns, Event::InitDone));
            out
        }
    }

    #[test]
    fn first_events_leave_the_store_empty_and_ready() {
        let fx = Fixture::new(&["a", "b"]);
        assert!(content(&fx.store).is_empty());
        assert!(
            matches!(fx.store.wait_until_ready().now_or_never(), Some(Ok(()))),
            "the shared store is ready before any namespace lists"
        );
        assert!(!fx.merge.all_listed());
    }

    #[test]
    fn objects_of_two_namespaces_coexist_even_with_interleaved_lists() {
        let mut fx = Fixture::new(&["a", "b"]);
        assert!(fx.push("a", Event::Init).is_empty());
        assert!(fx.push("b", Event::Init).is_empty());
        assert_eq!(
            fx.push("a", Event::InitApply(cm("a", "x", "1"))),
            ["Apply(a/x)"]
        );
        assert_eq!(
            fx.push("b", Event::InitApply(cm("b", "y", "1"))),
            ["Apply(b/y)"]
        );
        assert!(fx.push("b", Event::InitDone).is_empty());
        assert!(!fx.merge.all_listed(), "a has not finished its list");
        assert!(fx.push("a", Event::InitDone).is_empty());
        assert!(fx.merge.all_listed());
        assert_eq!(content(&fx.store), ["a/x=1", "b/y=1"]);
        assert_eq!(
            fx.push("b", Event::Apply(cm("b", "z", "2"))),
            ["Apply(b/z)"]
        );
        assert_eq!(content(&fx.store), ["a/x=1", "b/y=1", "b/z=2"]);
    }

    #[test]
    fn a_relist_deletes_exactly_what_it_lost_and_keeps_other_namespaces() {
        let mut fx = Fixture::new(&["a", "b"]);
        fx.list("a", &[("x", "1"), ("y", "1")]);
        fx.list("b", &[("y", "1"), ("z", "1")]);
        fx.push("a", Event::Apply(cm("a", "y", "2")));
        // a's watch broke; y went away meanwhile, x changed.
        let out = fx.list("a", &[("x", "3")]);
        assert_eq!(out, ["Apply(a/x)", "Delete(a/y)"]);
        assert_eq!(content(&fx.store), ["a/x=3", "b/y=1", "b/z=1"]);
        // The Delete carries the store's last copy, labels included, so a deletion still maps
        // to what owns or watches the object.
        let mut merge_fx = Fixture::new(&["a"]);
        merge_fx.list("a", &[("gone", "7")]);
        merge_fx.push("a", Event::Init);
        let out = merge_fx.merge.push("a", Event::InitDone);
        let [Event::Delete(gone)] = out.as_slice() else {
            panic!("expected one Delete, got {:?}", describe(&out));
        };
        assert_eq!(gone, &cm("a", "gone", "7"));
    }

    #[test]
    fn an_object_deleted_and_added_again_is_in_the_store_once_with_its_new_content() {
        let mut fx = Fixture::new(&["a", "b"]);
        fx.list("a", &[("x", "1")]);
        fx.list("b", &[("x", "1")]);
        assert_eq!(
            fx.push("a", Event::Delete(cm("a", "x", "1"))),
            ["Delete(a/x)"]
        );
        assert_eq!(
            content(&fx.store),
            ["b/x=1"],
            "b's object of the same name stays"
        );
        assert_eq!(fx.merge.tracked(), 1);
        assert_eq!(
            fx.push("a", Event::Apply(cm("a", "x", "2"))),
            ["Apply(a/x)"]
        );
        assert_eq!(content(&fx.store), ["a/x=2", "b/x=1"]);
        // Deleted and recreated while the watch was down: the relist sees it, deletes nothing.
        assert_eq!(fx.list("a", &[("x", "3")]), ["Apply(a/x)"]);
        assert_eq!(content(&fx.store), ["a/x=3", "b/x=1"]);
        // Deleted during a relist, after the relist delivered it: not deleted twice.
        fx.push("a", Event::Init);
        fx.push("a", Event::InitApply(cm("a", "x", "3")));
        fx.push("a", Event::Delete(cm("a", "x", "3")));
        assert!(fx.push("a", Event::InitDone).is_empty());
        assert_eq!(content(&fx.store), ["b/x=1"]);
    }

    #[test]
    fn a_relist_cut_short_is_settled_by_the_next_one() {
        let mut fx = Fixture::new(&["a"]);
        fx.list("a", &[("x", "1"), ("y", "1")]);
        // A relist that failed after one page: its end never came.
        fx.push("a", Event::Init);
        fx.push("a", Event::InitApply(cm("a", "new", "1")));
        assert_eq!(content(&fx.store), ["a/new=1", "a/x=1", "a/y=1"]);
        // The retry sees x only: y and the short-lived `new` are gone.
        let mut out = fx.list("a", &[("x", "1")]);
        out.sort();
        assert_eq!(out, ["Apply(a/x)", "Delete(a/new)", "Delete(a/y)"]);
        assert_eq!(content(&fx.store), ["a/x=1"]);
    }

    #[test]
    fn an_end_of_list_without_a_start_deletes_nothing() {
        let mut fx = Fixture::new(&["a"]);
        fx.list("a", &[("x", "1")]);
        assert!(fx.push("a", Event::InitDone).is_empty());
        assert_eq!(content(&fx.store), ["a/x=1"]);
    }

    #[test]
    fn one_namespace_alone_lists_relists_and_is_listed() {
        let mut fx = Fixture::new(&["only"]);
        assert!(!fx.merge.all_listed());
        fx.list("only", &[("x", "1"), ("y", "1")]);
        assert!(fx.merge.all_listed());
        assert_eq!(content(&fx.store), ["only/x=1", "only/y=1"]);
        assert_eq!(
            fx.list("only", &[("y", "2")]),
            ["Apply(only/y)", "Delete(only/x)"]
        );
        assert_eq!(content(&fx.store), ["only/y=2"]);
        assert!(
            fx.merge.all_listed(),
            "a relist does not undo the first list"
        );
        // An empty relist empties the namespace: nothing left behind.
        assert_eq!(fx.list("only", &[]), ["Delete(only/y)"]);
        assert!(content(&fx.store).is_empty());
        assert_eq!(fx.merge.tracked(), 0);
    }

    #[test]
    fn the_adapter_keeps_one_name_per_live_object_however_many_relists() {
        let mut fx = Fixture::new(&["a", "b"]);
        fx.list("b", &[("steady", "1")]);
        for round in 0..200 {
            // Every relist replaces half the namespace's objects with new names.
            let names: Vec<String> = (round..round + 10).map(|i| format!("o{i}")).collect();
            let objects: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
            fx.list("a", &objects);
            fx.push("a", Event::Apply(cm("a", &format!("extra{round}"), "v")));
            fx.push("a", Event::Delete(cm("a", &format!("extra{round}"), "v")));
            assert_eq!(fx.merge.tracked(), fx.store.state().len(), "round {round}");
        }
        assert_eq!(fx.store.state().len(), 11);
    }

    #[test]
    fn events_of_an_undeclared_namespace_are_applied_without_holding_up_listed() {
        let mut fx = Fixture::new(&["a"]);
        fx.list("other", &[("x", "1")]);
        assert!(!fx.merge.all_listed());
        fx.list("a", &[]);
        assert!(fx.merge.all_listed());
        assert_eq!(content(&fx.store), ["other/x=1"]);
    }

    type Feed = mpsc::UnboundedSender<Result<Event<ConfigMap>, watcher::Error>>;

    /// Merged stream of two channel-fed namespaces, with its store and `Listed`.
    fn merged(
        namespaces: &[&str],
    ) -> (Vec<Feed>, MergedStream<ConfigMap>, Store<ConfigMap>, Listed) {
        let (store, writer) = reflector::store();
        let mut feeds = Vec::new();
        let mut streams = Vec::new();
        for ns in namespaces {
            let (tx, rx) = mpsc::unbounded();
            feeds.push(tx);
            streams.push((ns.to_string(), rx));
        }
        let (stream, listed) = merge_streams(streams, writer);
        (feeds, stream, store, listed)
    }

    /// Everything the stream yields without waiting; `None` marks its end.
    fn drain(stream: &mut MergedStream<ConfigMap>) -> Vec<Option<Result<String, String>>> {
        let mut out = Vec::new();
        while let Some(item) = stream.next().now_or_never() {
            let end = item.is_none();
            out.push(item.map(|r| {
                r.map(|e| describe(&[e]).remove(0))
                    .map_err(|e| e.to_string())
            }));
            if end {
                break;
            }
        }
        out
    }

    fn send(feed: &Feed, events: Vec<Result<Event<ConfigMap>, watcher::Error>>) {
        for event in events {
            assert!(
                feed.unbounded_send(event).is_ok(),
                "stream dropped its input"
            );
        }
    }

    #[test]
    fn the_merged_stream_starts_ready_passes_errors_and_keeps_a_failing_namespace() {
        let (feeds, mut stream, store, listed) = merged(&["a", "b"]);
        send(
            &feeds[0],
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(cm("a", "x", "1"))),
                Ok(Event::InitDone),
            ],
        );
        send(
            &feeds[1],
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(cm("b", "y", "1"))),
                Ok(Event::InitDone),
            ],
        );
        let out = drain(&mut stream);
        assert_eq!(
            out[..2],
            [Some(Ok("Init".into())), Some(Ok("InitDone".into()))]
        );
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(listed.is_listed());
        // a's watch fails, b goes on.
        send(&feeds[0], vec![Err(watcher::Error::NoResourceVersion)]);
        send(&feeds[1], vec![Ok(Event::Apply(cm("b", "z", "1")))]);
        let out = drain(&mut stream);
        assert!(
            out.contains(&Some(Err(watcher::Error::NoResourceVersion.to_string()))),
            "{out:?}"
        );
        assert!(out.contains(&Some(Ok("Apply(b/z)".into()))), "{out:?}");
        assert_eq!(
            content(&store),
            ["a/x=1", "b/y=1", "b/z=1"],
            "a keeps its objects"
        );
        // a recovers with a relist that lost x.
        send(&feeds[0], vec![Ok(Event::Init), Ok(Event::InitDone)]);
        assert_eq!(drain(&mut stream), [Some(Ok("Delete(a/x)".into()))]);
        assert_eq!(content(&store), ["b/y=1", "b/z=1"]);
        assert!(listed.is_listed());
    }

    #[test]
    fn listed_resolves_only_after_every_namespace_listed_once() {
        let (feeds, mut stream, _store, listed) = merged(&["a", "b"]);
        let waiter = listed.clone();
        let mut wait = Box::pin(async move { waiter.wait().await });
        send(&feeds[0], vec![Ok(Event::Init), Ok(Event::InitDone)]);
        send(
            &feeds[1],
            vec![Ok(Event::Init), Ok(Event::InitApply(cm("b", "y", "1")))],
        );
        drain(&mut stream);
        assert!(!listed.is_listed());
        assert_eq!(
            (&mut wait).now_or_never(),
            None,
            "b has not finished its list"
        );
        send(&feeds[1], vec![Ok(Event::InitDone)]);
        drain(&mut stream);
        assert_eq!((&mut wait).now_or_never(), Some(true));
        assert_eq!(
            listed.wait().now_or_never(),
            Some(true),
            "later waiters too"
        );
        // Once listed, listed for good: the stream ending does not take it back.
        drop(feeds);
        assert_eq!(drain(&mut stream).last(), Some(&None));
        assert_eq!(listed.wait().now_or_never(), Some(true));
    }

    #[test]
    fn listed_is_false_when_the_streams_end_before_every_namespace_listed() {
        let (feeds, mut stream, _store, listed) = merged(&["a", "b"]);
        send(&feeds[0], vec![Ok(Event::Init), Ok(Event::InitDone)]);
        drop(feeds);
        assert_eq!(drain(&mut stream).last(), Some(&None));
        assert_eq!(listed.wait().now_or_never(), Some(false));
        let (_feeds, stream, _store, listed) = merged(&["a"]);
        drop(stream);
        assert_eq!(listed.wait().now_or_never(), Some(false), "stream dropped");
    }

    #[test]
    fn a_namespace_given_twice_is_merged_once() {
        let (feeds, mut stream, store, listed) = merged(&["a", "a"]);
        assert!(feeds[1].is_closed(), "the second stream of a was dropped");
        send(
            &feeds[0],
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(cm("a", "x", "1"))),
                Ok(Event::InitDone),
            ],
        );
        drain(&mut stream);
        assert!(listed.is_listed());
        assert_eq!(content(&store), ["a/x=1"]);
    }

    #[test]
    fn no_namespace_is_listed_at_once_and_ends() {
        let (_feeds, mut stream, store, listed) = merged(&[]);
        assert!(listed.is_listed());
        assert_eq!(drain(&mut stream).last(), Some(&None));
        assert!(content(&store).is_empty());
    }

    /// A fake API server: lists ConfigMaps per namespace from `objects`, answers 403 for
    /// `forbidden`, and opens every watch with one added ConfigMap `watched`, then holds it.
    #[derive(Clone)]
    struct FakeApi {
        objects: Arc<BTreeMap<&'static str, Vec<&'static str>>>,
        forbidden: &'static str,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl tower::Service<http::Request<kube::client::Body>> for FakeApi {
        type Response = http::Response<axum::body::Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
            let uri = req.uri().to_string();
            if let Ok(mut requests) = self.requests.lock() {
                requests.push(uri.clone());
            }
            let ns = uri
                .strip_prefix("/api/v1/namespaces/")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default()
                .to_string();
            let response = if ns == self.forbidden {
                http::Response::builder()
                    .status(403)
                    .body(axum::body::Body::from(
                        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"forbidden"}"#,
                    ))
            } else if uri.contains("watch=true") {
                // Comes after the namespace's InitDone: a store that InitDone had replaced
                // would hold this one alone.
                let added = serde_json::json!({"type": "ADDED", "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched", "namespace": ns, "resourceVersion": "2"}}});
                let line = format!("{added}\n").into_bytes();
                http::Response::builder().body(axum::body::Body::from_stream(
                    stream::iter([Ok::<_, Infallible>(line)]).chain(stream::pending()),
                ))
            } else {
                let items: Vec<_> = self
                    .objects
                    .get(ns.as_str())
                    .into_iter()
                    .flatten()
                    .map(|name| serde_json::json!({"metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}}))
                    .collect();
                let list = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "1"}, "items": items});
                http::Response::builder().body(axum::body::Body::from(list.to_string()))
            };
            let response =
                response.unwrap_or_else(|_| http::Response::new(axum::body::Body::empty()));
            Box::pin(async move { Ok(response) })
        }
    }

    #[tokio::test]
    async fn watch_namespaces_lists_each_namespace_once_into_one_store() {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let api = FakeApi {
            objects: Arc::new(BTreeMap::from([("a", vec!["x", "y"]), ("b", vec!["z"])])),
            forbidden: "denied",
            requests: Arc::clone(&requests),
        };
        let client = kube::Client::new(api, "default");
        let (store, writer) = reflector::store::<ConfigMap>();
        let namespaces = ["a", "b", "a", "denied"].map(String::from);
        let (mut stream, listed) = watch_namespaces(
            |ns| Api::namespaced(client.clone(), ns),
            &namespaces,
            watcher::Config::default().labels("app=demo"),
            writer,
        );
        let mut errors = Vec::new();
        // Both readable namespaces list; the forbidden one fails, without holding them up.
        while content(&store).len() < 5 || errors.is_empty() {
            match stream.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => errors.push(e.to_string()),
                None => panic!("the merged stream ended"),
            }
        }
        assert_eq!(
            content(&store),
            ["a/watched=", "a/x=", "a/y=", "b/watched=", "b/z="]
        );
        assert!(errors.iter().all(|e| e.contains("forbidden")), "{errors:?}");
        assert!(!listed.is_listed(), "the forbidden namespace never listed");
        let requests = requests.lock().map(|r| r.clone()).unwrap_or_default();
        let lists: Vec<&String> = requests
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .collect();
        let lists_of = |ns: &str| {
            let prefix = format!("/api/v1/namespaces/{ns}/configmaps?");
            lists.iter().filter(|r| r.starts_with(&prefix)).count()
        };
        assert_eq!(lists_of("a"), 1, "a given twice, listed once: {requests:?}");
        assert_eq!(lists_of("b"), 1, "{requests:?}");
        // Its backoff may have let a retry through on a slow machine.
        assert!(lists_of("denied") >= 1, "{requests:?}");
        assert_eq!(lists.len(), 2 + lists_of("denied"), "{requests:?}");
        assert!(
            requests
                .iter()
                .all(|r| r.contains("labelSelector=app%3Ddemo")),
            "every request carries the config's selector: {requests:?}"
        );
    }
}
