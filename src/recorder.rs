//! Kubernetes Events (`events.k8s.io/v1`) about plugins, with repeats folded into a series
//! as client-go folds them: the same type, action and reason about the same object within
//! six minutes of the last one raises the first Event's `series.count` instead of making
//! another Event.
//!
//! What it keeps per Event is the Event's name and count, not the Event, and entries expire
//! in the order they were last seen. (kube's `Recorder` keeps every whole Event for six
//! minutes and scans them all on each new one: after a bulk apply of 10,000 plugins that is
//! tens of thousands of Events in memory and a scan of them all per Event.)

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

/// How long a repeat joins the series of an earlier Event (client-go's and kube's window).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something a person may have to look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// One Event to record.
#[derive(Clone, Debug)]
pub struct Event {
    /// Normal or Warning.
    pub type_: EventType,
    /// Why, in UpperCamelCase (e.g. `PluginUnhealthy`).
    pub reason: String,
    /// What was done or found (e.g. the condition type).
    pub action: String,
    /// For people: what happened, at most 1 KiB.
    pub note: Option<String>,
}

/// Who records: the controller's name and this replica's identity.
#[derive(Clone, Debug)]
pub struct Reporter {
    /// `reportingController`, e.g. `hector-operator`.
    pub controller: String,
    /// `reportingInstance`: this replica (the controller's name when unset).
    pub instance: Option<String>,
}

/// An Event made earlier and the repeats folded into it.
struct Entry {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<u64, Entry>,
    /// (when seen, key) in the order seen; an entry seen again is queued again, and only
    /// its latest sighting removes it.
    seen: VecDeque<(Timestamp, u64)>,
}

impl Cache {
    /// Drops the entries not seen within the window before `now`.
    fn expire(&mut self, now: Timestamp) {
        while let Some(&(at, key)) = self.seen.front() {
            if at + SERIES_WINDOW > now {
                break;
            }
            self.seen.pop_front();
            if self.entries.get(&key).is_some_and(|e| e.last == at) {
                self.entries.remove(&key);
            }
        }
    }

    /// What to write for a new sighting of `key` at `now`: a new Event, or the next count
    /// of an existing one.
    fn next(&mut self, key: u64, now: Timestamp) -> Option<(String, String, i32)> {
        self.expire(now);
        let entry = self.entries.get_mut(&key)?;
        entry.count += 1;
        entry.last = now;
        self.seen.push_back((now, key));
        Some((entry.namespace.clone(), entry.name.clone(), entry.count))
    }

    fn made(&mut self, key: u64, namespace: String, name: String, now: Timestamp) {
        self.entries.insert(
            key,
            Entry {
                namespace,
                name,
                count: 1,
                last: now,
            },
        );
        self.seen.push_back((now, key));
    }

    fn forget(&mut self, key: u64) {
        self.entries.remove(&key);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Records Events about objects; cheap to clone (clones share the series).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
}

impl Recorder {
    /// A recorder writing with `client` as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events it would fold a repeat into now.
    pub fn series_kept(&self) -> usize {
        self.cache().len()
    }

    /// Records `event` about `regarding`, in the object's namespace (`default` for a
    /// cluster-scoped one).
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = key(event, regarding);
        let repeat = self.cache().next(key, now);
        if let Some((namespace, name, count)) = repeat {
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone (the API server's own TTL, or someone deleted it): a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => self.cache().forget(key),
                Err(e) => return Err(e),
            }
        }
        let made = self.build(event, regarding, now);
        let namespace = made.metadata.namespace.clone().unwrap_or_default();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &made).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.cache().made(key, namespace, name, now);
        Ok(())
    }

    /// The Event object for a first sighting.
    pub fn build(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let object = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(event.type_.as_str().into()),
            ..Default::default()
        }
    }
}

/// Which earlier Event a new one repeats: client-go's key (type, action, reason, the
/// object), hashed so that an entry holds no copy of the object reference.
fn key(event: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    event.type_.hash(&mut h);
    event.action.hash(&mut h);
    event.reason.hash(&mut h);
    regarding.api_version.hash(&mut h);
    regarding.kind.hash(&mut h);
    regarding.namespace.hash(&mut h);
    regarding.name.hash(&mut h);
    regarding.uid.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("timestamp")
    }

    fn reference(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("hector.dev/v1alpha1".into()),
            kind: Some("HectorPlugin".into()),
            namespace: Some("agents".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            action: "Healthy".into(),
            note: Some("probe failed".into()),
        }
    }

    #[test]
    fn a_repeat_within_the_window_counts_and_a_later_one_starts_anew() {
        let mut cache = Cache::default();
        let k = key(&event("PluginUnhealthy"), &reference("a", "u1"));
        assert_eq!(cache.next(k, at(0)), None, "first sighting: a new Event");
        cache.made(k, "agents".into(), "a.1".into(), at(0));
        assert_eq!(
            cache.next(k, at(60)),
            Some(("agents".into(), "a.1".into(), 2))
        );
        assert_eq!(
            cache.next(k, at(400)),
            Some(("agents".into(), "a.1".into(), 3))
        );
        // Six minutes after the last sighting (400 s), not after the first.
        assert_eq!(cache.next(k, at(400 + 360)), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn entries_expire_in_order_and_nothing_is_kept_past_the_window() {
        let mut cache = Cache::default();
        for i in 0..1000 {
            let k = key(
                &event("Published"),
                &reference(&format!("p{i}"), &format!("u{i}")),
            );
            cache.made(k, "agents".into(), format!("p{i}.1"), at(i / 10));
        }
        assert_eq!(cache.len(), 1000);
        cache.expire(at(360 + 50));
        assert_eq!(cache.len(), 490, "those seen at 0..=50 s are gone");
        cache.expire(at(360 + 100));
        assert_eq!(cache.len(), 0);
        assert!(cache.seen.is_empty());
    }

    #[test]
    fn another_object_reason_type_or_uid_is_another_event() {
        let base = key(&event("PluginUnhealthy"), &reference("a", "u1"));
        assert_ne!(base, key(&event("Published"), &reference("a", "u1")));
        assert_ne!(base, key(&event("PluginUnhealthy"), &reference("b", "u1")));
        // The same name made again (deleted and re-created) is another object.
        assert_ne!(base, key(&event("PluginUnhealthy"), &reference("a", "u2")));
        let mut normal = event("PluginUnhealthy");
        normal.type_ = EventType::Normal;
        assert_ne!(base, key(&normal, &reference("a", "u1")));
        // The note is not part of the key (as in client-go): a repeat with another message
        // counts in the first Event's series.
        let mut other_note = event("PluginUnhealthy");
        other_note.note = Some("another message".into());
        assert_eq!(base, key(&other_note, &reference("a", "u1")));
    }
}
