//! Prometheus metrics of the operator, served on `/metrics`.
//!
//! Per-plugin series (`plugin_*`, `probe_*`) carry `namespace` and `plugin` labels: one set
//! per HectorPlugin, removed when the plugin is deleted, and dropped by a replica that stops
//! leading (the leader exports them). Every name is listed in docs/operator.md.

pub mod process;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::Phase;
use crate::index::PluginKey;

type Labels = Vec<(&'static str, String)>;

/// The media type of [`Metrics::render`]: OpenMetrics text. Served as `text/plain`, a scraper
/// would read it as the older Prometheus format, where a counter's `_total` samples do not
/// belong to its `# TYPE` line and lose their type and help.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every phase, in the order the `plugins` gauge lists them.
const PHASES: [Phase; 5] = [
    Phase::Pending,
    Phase::Progressing,
    Phase::Ready,
    Phase::Degraded,
    Phase::Failed,
];

/// The `state` label values of `plugin_endpoints`.
const ENDPOINT_STATES: [&str; 3] = ["desired", "ready", "published"];

fn buckets() -> impl Iterator<Item = f64> {
    // 0.5 ms .. ~16 s.
    exponential_buckets(0.0005, 2.0, 16)
}

fn histogram_family() -> Family<Labels, Histogram> {
    Family::new_with_constructor(|| Histogram::new(buckets()))
}

fn plugin_labels(key: &PluginKey) -> Labels {
    vec![
        ("namespace", key.namespace.clone()),
        ("plugin", key.name.clone()),
    ]
}

fn with(mut labels: Labels, name: &'static str, value: &str) -> Labels {
    labels.push((name, value.to_string()));
    labels
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What the metrics know of one plugin, so that its series can all be removed with it.
#[derive(Default)]
struct PluginSeries {
    phase: Option<Phase>,
    /// Its `probes_total` series, kept so that a probe costs no label lookup.
    probes: Option<Counter>,
    /// The `reason` labels its probe failures were counted under.
    failure_reasons: BTreeSet<String>,
}

/// One plugin's state as its latest reconcile computed it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PluginState {
    /// Its phase (`None`: not determined yet).
    pub phase: Option<Phase>,
    /// Endpoints it should have: its replicas, or 1 for an external endpoint.
    pub desired_endpoints: usize,
    /// Endpoints that pass their probes.
    pub ready_endpoints: usize,
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    reconcile_duration: Family<Labels, Histogram>,
    probe_duration: Histogram,
    probe_rpcs: Counter,
    probe_reconnects: Counter,
    ready_before_healthy: Counter,
    probe_targets: Gauge,
    probes: Family<Labels, Counter>,
    probe_failures: Family<Labels, Counter>,
    reconcile_queue: Histogram,
    plugins: Family<Labels, Gauge>,
    plugin_ready: Family<Labels, Gauge>,
    plugin_endpoints: Family<Labels, Gauge>,
    endpoints_published: Family<Labels, Gauge>,
    publication_duration: Histogram,
    configmap_writes: Family<Labels, Counter>,
    api_writes: Family<Labels, Counter>,
    fenced_writes: Counter,
    watch_errors: Family<Labels, Counter>,
    leader: Gauge,
    rss: Gauge,
    known: Mutex<HashMap<PluginKey, PluginSeries>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        // The standard process metrics keep their standard, unprefixed names.
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("hector_operator");

        let build_info = Family::<Labels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the labels say which build of the operator runs",
            build_info.clone(),
        );
        build_info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                (
                    "git_commit",
                    option_env!("HECTOR_GIT_COMMIT")
                        .filter(|c| !c.is_empty())
                        .unwrap_or("unknown")
                        .to_string(),
                ),
                ("rustc", env!("HECTOR_RUSTC_VERSION").to_string()),
            ])
            .set(1);
        let reconciles = Family::<Labels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations by result (ok, or the error kind)",
            reconciles.clone(),
        );
        let reconcile_duration = histogram_family();
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            reconcile_duration.clone(),
        );
        let probe_duration = Histogram::new(buckets());
        registry.register(
            "probe_duration_seconds",
            "Time one probe of one address took (shared by every plugin naming it)",
            probe_duration.clone(),
        );
        let probe_rpcs = Counter::default();
        registry.register(
            "probe_rpcs",
            "RPCs the prober sent, all addresses together",
            probe_rpcs.clone(),
        );
        let probe_reconnects = Counter::default();
        registry.register(
            "probe_reconnects",
            "Probes of a new address started over on a new connection because the connect was late or its Pod turned Ready before it connected",
            probe_reconnects.clone(),
        );
        let ready_before_healthy = Counter::default();
        registry.register(
            "pods_ready_before_healthy",
            "Plugin Pods seen turning Ready before a probe of theirs had passed, so that their publication waited for a probe",
            ready_before_healthy.clone(),
        );
        let probe_targets = Gauge::default();
        registry.register(
            "probe_targets",
            "Distinct addresses probed, one connection each, whatever the number of plugins naming them",
            probe_targets.clone(),
        );
        let probes = Family::<Labels, Counter>::default();
        registry.register(
            "probes",
            "Probe results recorded, by plugin (one per plugin endpoint per probe of its address)",
            probes.clone(),
        );
        // Up to ~4 min: after a bulk apply the queue can lag far past the usual 16 s top.
        let reconcile_queue = Histogram::new(exponential_buckets(0.0005, 2.0, 20));
        registry.register(
            "reconcile_queue_seconds",
            "Time from a plugin's change seen on the watch to the start of its reconcile",
            reconcile_queue.clone(),
        );
        let probe_failures = Family::<Labels, Counter>::default();
        registry.register(
            "probe_failures",
            "Failed probes by plugin and reason",
            probe_failures.clone(),
        );
        let plugins = Family::<Labels, Gauge>::default();
        registry.register("plugins", "HectorPlugins by phase", plugins.clone());
        for p in PHASES {
            plugins.get_or_create(&phase_labels(p)).set(0);
        }
        let plugin_ready = Family::<Labels, Gauge>::default();
        registry.register(
            "plugin_ready",
            "1 while the plugin's phase is Ready, else 0",
            plugin_ready.clone(),
        );
        let plugin_endpoints = Family::<Labels, Gauge>::default();
        registry.register(
            "plugin_endpoints",
            "Endpoints of the plugin: desired (replicas), ready (passing probes), published",
            plugin_endpoints.clone(),
        );
        let endpoints_published = Family::<Labels, Gauge>::default();
        registry.register(
            "endpoints_published",
            "Endpoints in the endpoints ConfigMap, by namespace",
            endpoints_published.clone(),
        );
        let publication_duration = Histogram::new(buckets());
        registry.register(
            "publication_duration_seconds",
            "Time from a request to publish a namespace to its endpoints ConfigMap written",
            publication_duration.clone(),
        );
        let configmap_writes = Family::<Labels, Counter>::default();
        registry.register(
            "configmap_writes",
            "Writes of the endpoints ConfigMap, by namespace",
            configmap_writes.clone(),
        );
        let api_writes = Family::<Labels, Counter>::default();
        registry.register(
            "api_writes",
            "Write requests to the Kubernetes API, by resource",
            api_writes.clone(),
        );
        let fenced_writes = Counter::default();
        registry.register(
            "fenced_writes",
            "Write requests refused or cut short because this replica did not hold the lease",
            fenced_writes.clone(),
        );
        let watch_errors = Family::<Labels, Counter>::default();
        registry.register(
            "watch_errors",
            "Failed list or watch requests, by resource",
            watch_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let rss = Gauge::default();
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the operator process (as process_resident_memory_bytes)",
            rss.clone(),
        );
        Self {
            registry: root,
            reconciles,
            reconcile_duration,
            probe_duration,
            probe_rpcs,
            probe_reconnects,
            ready_before_healthy,
            probe_targets,
            probes,
            probe_failures,
            reconcile_queue,
            plugins,
            plugin_ready,
            plugin_endpoints,
            endpoints_published,
            publication_duration,
            configmap_writes,
            api_writes,
            fenced_writes,
            watch_errors,
            leader,
            rss,
            known: Mutex::default(),
        }
    }
}

fn phase_labels(phase: Phase) -> Labels {
    vec![("phase", format!("{phase:?}"))]
}

impl Metrics {
    fn known(&self) -> MutexGuard<'_, HashMap<PluginKey, PluginSeries>> {
        // A panic elsewhere must not stop the metrics; each update leaves the map consistent.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One reconciliation ended with `result` (`ok` or an error kind).
    pub fn reconciled(&self, result: &str, took: Duration) {
        let labels = vec![("result", result.to_string())];
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One probe of an address took `took` and sent `rpcs` RPCs.
    pub fn observe_probe_round(&self, took: Duration, rpcs: u64) {
        self.probe_duration.observe(took.as_secs_f64());
        self.probe_rpcs.inc_by(rpcs);
    }

    /// A probe of a new address started over on a new connection.
    pub fn probe_reconnected(&self) {
        self.probe_reconnects.inc();
    }

    /// A plugin Pod turned Ready before any probe of it had passed.
    pub fn ready_before_healthy(&self) {
        self.ready_before_healthy.inc();
    }

    /// The number of distinct addresses probed.
    pub fn set_probe_targets(&self, n: usize) {
        self.probe_targets.set(gauge_value(n));
    }

    /// A plugin's reconcile started `waited` after the change that asked for it was seen.
    pub fn reconcile_queued(&self, waited: Duration) {
        self.reconcile_queue.observe(waited.as_secs_f64());
    }

    /// A probe result was recorded for `key`; `failure` is its reason when it failed.
    pub fn observe_probe(&self, key: &PluginKey, failure: Option<&str>) {
        let mut known = self.known();
        // Looked up before inserting: a clone of the key per probe is what this avoids.
        let series = match known.get_mut(key) {
            Some(series) => series,
            None => known.entry(key.clone()).or_default(),
        };
        series
            .probes
            .get_or_insert_with(|| self.probes.get_or_create(&plugin_labels(key)).clone())
            .inc();
        if let Some(reason) = failure {
            if !series.failure_reasons.contains(reason) {
                series.failure_reasons.insert(reason.to_string());
            }
            self.probe_failures
                .get_or_create(&with(plugin_labels(key), "reason", reason))
                .inc();
        }
    }

    /// The latest reconcile of `key` computed `state`.
    pub fn set_plugin(&self, key: &PluginKey, state: PluginState) {
        let mut known = self.known();
        let series = known.entry(key.clone()).or_default();
        self.move_phase(series.phase, state.phase);
        series.phase = state.phase;
        let labels = plugin_labels(key);
        self.plugin_ready
            .get_or_create(&labels)
            .set(i64::from(state.phase == Some(Phase::Ready)));
        for (state_label, n) in [
            ("desired", state.desired_endpoints),
            ("ready", state.ready_endpoints),
        ] {
            self.plugin_endpoints
                .get_or_create(&with(labels.clone(), "state", state_label))
                .set(gauge_value(n));
        }
        // 0 published until the publisher says otherwise; what it said is kept.
        let _ = self
            .plugin_endpoints
            .get_or_create(&with(labels, "state", "published"));
    }

    /// Keeps the per-phase counts in step with one plugin moving from `from` to `to`,
    /// without recounting every plugin.
    fn move_phase(&self, from: Option<Phase>, to: Option<Phase>) {
        if from == to {
            return;
        }
        if let Some(p) = from {
            self.plugins.get_or_create(&phase_labels(p)).dec();
        }
        if let Some(p) = to {
            self.plugins.get_or_create(&phase_labels(p)).inc();
        }
    }

    /// `key` was deleted: every series of it goes.
    pub fn forget_plugin(&self, key: &PluginKey) {
        let mut known = self.known();
        if let Some(series) = known.remove(key) {
            self.remove_series(key, series);
        }
    }

    /// Forgets every plugin for which `keep` is false (plugins that vanished unseen).
    pub fn retain_plugins(&self, mut keep: impl FnMut(&PluginKey) -> bool) {
        let mut known = self.known();
        let gone: Vec<PluginKey> = known.keys().filter(|k| !keep(k)).cloned().collect();
        for key in gone {
            if let Some(series) = known.remove(&key) {
                self.remove_series(&key, series);
            }
        }
    }

    fn remove_series(&self, key: &PluginKey, series: PluginSeries) {
        self.move_phase(series.phase, None);
        let labels = plugin_labels(key);
        self.plugin_ready.remove(&labels);
        self.probes.remove(&labels);
        for state in ENDPOINT_STATES {
            self.plugin_endpoints
                .remove(&with(labels.clone(), "state", state));
        }
        for reason in &series.failure_reasons {
            self.probe_failures
                .remove(&with(labels.clone(), "reason", reason));
        }
    }

    /// The publisher rendered `namespace`'s ConfigMap with these plugins (by name) and
    /// endpoint counts.
    pub fn set_published(
        &self,
        namespace: &str,
        plugins: impl IntoIterator<Item = (String, usize)>,
    ) {
        let known = self.known();
        let mut total = 0;
        for (name, count) in plugins {
            total += count;
            let key = PluginKey {
                namespace: namespace.to_string(),
                name,
            };
            // A plugin deleted meanwhile gets no series back.
            if known.contains_key(&key) {
                self.plugin_endpoints
                    .get_or_create(&with(plugin_labels(&key), "state", "published"))
                    .set(gauge_value(count));
            }
        }
        self.endpoints_published
            .get_or_create(&vec![("namespace", namespace.to_string())])
            .set(gauge_value(total));
    }

    /// A publication that wrote the ConfigMap ended `took` after it was first asked for.
    pub fn published_after(&self, took: Duration) {
        self.publication_duration.observe(took.as_secs_f64());
    }

    /// The endpoints ConfigMap of `namespace` was written.
    pub fn configmap_written(&self, namespace: &str) {
        self.configmap_writes
            .get_or_create(&vec![("namespace", namespace.to_string())])
            .inc();
    }

    /// One write request to the API for `resource`.
    pub fn api_write(&self, resource: &str) {
        self.api_writes
            .get_or_create(&vec![("resource", resource.to_string())])
            .inc();
    }

    /// A write was refused or cut short by the lease fence.
    pub fn fenced_write(&self) {
        self.fenced_writes.inc();
    }

    /// A list or watch of `resource` failed.
    pub fn watch_error(&self, resource: &str) {
        self.watch_errors
            .get_or_create(&vec![("resource", resource.to_string())])
            .inc();
    }

    /// Whether this replica leads. One that stops leading drops its per-plugin series, phase
    /// counts and publication gauges: they are the new leader's to report, and stale copies
    /// would double them in sums and keep alerts firing.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        if !leading {
            let mut known = self.known();
            let all: Vec<(PluginKey, PluginSeries)> = known.drain().collect();
            for (key, series) in all {
                self.remove_series(&key, series);
            }
            self.endpoints_published.clear();
            for p in PHASES {
                self.plugins.get_or_create(&phase_labels(p)).set(0);
            }
        }
    }

    /// The OpenMetrics text exposition (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        if let Some(bytes) = process::ProcessStats::read().resident_bytes {
            self.rss.set(bytes);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> PluginKey {
        PluginKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn state(phase: Phase, desired: usize, ready: usize) -> PluginState {
        PluginState {
            phase: Some(phase),
            desired_endpoints: desired,
            ready_endpoints: ready,
        }
    }

    /// The value of the series `series` (name and labels exactly as rendered), if present.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_what_was_recorded() {
        let m = Metrics::default();
        let key = key("ns", "p");
        m.reconciled("ok", Duration::from_millis(3));
        m.observe_probe(&key, Some("Unreachable"));
        m.observe_probe_round(Duration::from_millis(1), 3);
        m.set_probe_targets(1);
        m.reconcile_queued(Duration::from_millis(5));
        m.set_plugin(&key, state(Phase::Ready, 2, 1));
        m.set_published("ns", [("p".to_string(), 1)]);
        m.published_after(Duration::from_millis(40));
        m.configmap_written("ns");
        m.api_write("status");
        m.set_leader(true);
        let text = m.render();
        for line in [
            "hector_operator_reconciles_total{result=\"ok\"} 1",
            "hector_operator_probe_failures_total{namespace=\"ns\",plugin=\"p\",reason=\"Unreachable\"} 1",
            "hector_operator_probes_total{namespace=\"ns\",plugin=\"p\"} 1",
            "hector_operator_probe_duration_seconds_count 1",
            "hector_operator_probe_rpcs_total 3",
            "hector_operator_probe_targets 1",
            "hector_operator_reconcile_queue_seconds_count 1",
            "hector_operator_plugins{phase=\"Ready\"} 1",
            "hector_operator_plugins{phase=\"Failed\"} 0",
            "hector_operator_plugin_ready{namespace=\"ns\",plugin=\"p\"} 1",
            "hector_operator_plugin_endpoints{namespace=\"ns\",plugin=\"p\",state=\"desired\"} 2",
            "hector_operator_plugin_endpoints{namespace=\"ns\",plugin=\"p\",state=\"ready\"} 1",
            "hector_operator_plugin_endpoints{namespace=\"ns\",plugin=\"p\",state=\"published\"} 1",
            "hector_operator_endpoints_published{namespace=\"ns\"} 1",
            "hector_operator_publication_duration_seconds_count 1",
            "hector_operator_configmap_writes_total{namespace=\"ns\"} 1",
            "hector_operator_api_writes_total{resource=\"status\"} 1",
            "hector_operator_leader 1",
            "hector_operator_resident_memory_bytes ",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn build_info_is_one_with_the_version() {
        let text = Metrics::default().render();
        let line = text
            .lines()
            .find(|l| l.starts_with("hector_operator_build_info{"))
            .unwrap_or_else(|| panic!("no build_info in\n{text}"));
        assert!(
            line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
        assert!(line.contains("git_commit=\""), "{line}");
        assert!(line.contains("rustc=\"1."), "{line}");
        assert!(line.ends_with("} 1"), "{line}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_present_and_plausible() {
        let text = Metrics::default().render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {}", name.trim_end_matches("_total"))),
                "no TYPE of {name} in\n{text}"
            );
        }
        assert!(value(&text, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0));
        assert!(value(&text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
        assert!(value(&text, "process_open_fds").is_some_and(|v| v > 0.0));
        assert!(value(&text, "process_start_time_seconds").is_some_and(|v| v > 1.5e9));
        // The operator's own RSS gauge says the same as the standard one, in the same unit.
        assert!(value(&text, "hector_operator_resident_memory_bytes").is_some_and(|v| v > 0.0));
        assert!(
            !text.contains("hector_operator_process_"),
            "process metrics keep their standard names"
        );
    }

    #[test]
    fn a_deleted_plugin_leaves_no_series() {
        let m = Metrics::default();
        let gone = key("team-a", "gone");
        let stays = key("team-a", "stays");
        for k in [&gone, &stays] {
            m.set_plugin(k, state(Phase::Degraded, 1, 0));
            m.observe_probe(k, Some("Unreachable"));
            m.observe_probe(k, Some("IdentityMismatch"));
        }
        m.set_published(
            "team-a",
            [("gone".to_string(), 0), ("stays".to_string(), 0)],
        );
        assert!(m.render().contains("plugin=\"gone\""));
        m.forget_plugin(&gone);
        let text = m.render();
        assert!(
            !text.contains("plugin=\"gone\""),
            "series of a deleted plugin left:\n{text}"
        );
        assert_eq!(
            text.matches("plugin=\"stays\"").count(),
            // ready; endpoints x3; two failure reasons; probes.
            1 + 3 + 2 + 1,
            "{text}"
        );
        assert_eq!(
            value(&text, "hector_operator_plugins{phase=\"Degraded\"}"),
            Some(1.0)
        );
        // A late publication of the deleted plugin does not bring its series back.
        m.set_published("team-a", [("gone".to_string(), 1)]);
        assert!(!m.render().contains("plugin=\"gone\""));
        // Nor does forgetting it twice count its phase twice.
        m.forget_plugin(&gone);
        assert_eq!(
            value(&m.render(), "hector_operator_plugins{phase=\"Degraded\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn plugins_that_vanished_unseen_are_dropped_by_retain() {
        let m = Metrics::default();
        for name in ["a", "b", "c"] {
            m.set_plugin(&key("ns", name), state(Phase::Ready, 1, 1));
        }
        m.retain_plugins(|k| k.name == "b");
        let text = m.render();
        assert!(text.contains("plugin=\"b\""));
        assert!(
            !text.contains("plugin=\"a\"") && !text.contains("plugin=\"c\""),
            "{text}"
        );
        assert_eq!(
            value(&text, "hector_operator_plugins{phase=\"Ready\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn phase_counts_follow_each_plugin_incrementally() {
        let m = Metrics::default();
        let count = |m: &Metrics, p: &str| {
            value(
                &m.render(),
                &format!("hector_operator_plugins{{phase=\"{p}\"}}"),
            )
        };
        for p in ["Pending", "Progressing", "Ready", "Degraded", "Failed"] {
            assert_eq!(
                count(&m, p),
                Some(0.0),
                "every phase is there from the start"
            );
        }
        let (a, b) = (key("ns", "a"), key("ns", "b"));
        m.set_plugin(&a, state(Phase::Progressing, 1, 0));
        m.set_plugin(&b, state(Phase::Progressing, 1, 0));
        assert_eq!(count(&m, "Progressing"), Some(2.0));
        m.set_plugin(&a, state(Phase::Ready, 1, 1));
        m.set_plugin(&a, state(Phase::Ready, 1, 1));
        assert_eq!(count(&m, "Progressing"), Some(1.0));
        assert_eq!(
            count(&m, "Ready"),
            Some(1.0),
            "the same phase twice counts once"
        );
        m.set_plugin(
            &b,
            PluginState {
                phase: None,
                desired_endpoints: 1,
                ready_endpoints: 0,
            },
        );
        assert_eq!(count(&m, "Progressing"), Some(0.0));
        let text = m.render();
        assert_eq!(
            value(
                &text,
                "hector_operator_plugin_ready{namespace=\"ns\",plugin=\"b\"}"
            ),
            Some(0.0)
        );
        m.forget_plugin(&a);
        assert_eq!(count(&m, "Ready"), Some(0.0));
    }

    #[test]
    fn a_replica_that_stops_leading_drops_the_plugin_series() {
        let m = Metrics::default();
        m.set_leader(true);
        let k = key("ns", "p");
        m.set_plugin(&k, state(Phase::Ready, 1, 1));
        m.observe_probe(&k, None);
        m.set_published("ns", [("p".to_string(), 1)]);
        m.reconciled("ok", Duration::from_millis(1));
        m.set_leader(false);
        let text = m.render();
        assert_eq!(value(&text, "hector_operator_leader"), Some(0.0));
        assert!(!text.contains("plugin=\"p\""), "{text}");
        assert!(
            !text.contains("hector_operator_endpoints_published{"),
            "{text}"
        );
        assert_eq!(
            value(&text, "hector_operator_plugins{phase=\"Ready\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "hector_operator_reconciles_total{result=\"ok\"}"),
            Some(1.0),
            "counters of its own work stay"
        );
        // Leading again, it counts from what it sees then.
        m.set_leader(true);
        m.set_plugin(&k, state(Phase::Ready, 1, 1));
        assert_eq!(
            value(&m.render(), "hector_operator_plugins{phase=\"Ready\"}"),
            Some(1.0)
        );
    }

    /// The exposition parses as Prometheus text: every sample line is `name{labels} value`,
    /// every name has a TYPE, and no name is used by two metrics.
    #[test]
    fn exposition_is_well_formed() {
        let m = Metrics::default();
        m.set_plugin(&key("ns", "p"), state(Phase::Ready, 1, 1));
        m.observe_probe(&key("ns", "p"), Some("PluginUnhealthy"));
        m.observe_probe_round(Duration::from_millis(1), 3);
        m.reconciled("api_error", Duration::from_millis(1));
        let text = m.render();
        let mut typed = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(typed.insert(name.to_string()), "{name} typed twice");
            }
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, v) = line.rsplit_once(' ').expect("name and value");
            assert!(v.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap_or_default();
            assert!(
                typed.iter().any(|t| name == t
                    || ["_total", "_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(t))),
                "{name} has no TYPE"
            );
        }
    }
}
