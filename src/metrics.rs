//! Prometheus metrics of the operator, served on `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
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

fn histogram_family() -> Family<Labels, Histogram> {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)))
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    reconcile_duration: Family<Labels, Histogram>,
    probe_duration: Family<Labels, Histogram>,
    probe_failures: Family<Labels, Counter>,
    plugins: Family<Labels, Gauge>,
    endpoints_published: Family<Labels, Gauge>,
    configmap_writes: Family<Labels, Counter>,
    api_writes: Family<Labels, Counter>,
    fenced_writes: Counter,
    watch_errors: Family<Labels, Counter>,
    leader: Gauge,
    rss: Gauge,
    phases: Mutex<HashMap<PluginKey, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hector_operator");
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
        let probe_duration = histogram_family();
        registry.register(
            "probe_duration_seconds",
            "Time one probe of one endpoint took, by plugin",
            probe_duration.clone(),
        );
        let probe_failures = Family::<Labels, Counter>::default();
        registry.register(
            "probe_failures",
            "Failed probes by plugin and reason",
            probe_failures.clone(),
        );
        let plugins = Family::<Labels, Gauge>::default();
        registry.register("plugins", "HectorPlugins by phase", plugins.clone());
        let endpoints_published = Family::<Labels, Gauge>::default();
        registry.register(
            "endpoints_published",
            "Endpoints in the endpoints ConfigMap, by namespace",
            endpoints_published.clone(),
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
            "Resident memory of the operator process",
            rss.clone(),
        );
        Self {
            registry,
            rss,
            reconciles,
            reconcile_duration,
            probe_duration,
            probe_failures,
            plugins,
            endpoints_published,
            configmap_writes,
            api_writes,
            fenced_writes,
            watch_errors,
            leader,
            phases: Mutex::default(),
        }
    }
}

impl Metrics {
    /// One reconciliation ended with `result` (`ok` or an error kind).
    pub fn reconciled(&self, result: &str, took: Duration) {
        let labels = vec![("result", result.to_string())];
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One probe of `key` took `took`; `failure` is its reason when it failed.
    pub fn observe_probe(&self, key: &PluginKey, took: Duration, failure: Option<&str>) {
        let labels = vec![
            ("namespace", key.namespace.clone()),
            ("plugin", key.name.clone()),
        ];
        self.probe_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(reason) = failure {
            let mut l = labels;
            l.push(("reason", reason.to_string()));
            self.probe_failures.get_or_create(&l).inc();
        }
    }

    /// `key` is now in `phase` (`None`: deleted).
    pub fn set_phase(&self, key: &PluginKey, phase: Option<Phase>) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        match phase {
            Some(p) => phases.insert(key.clone(), p),
            None => phases.remove(key),
        };
        for p in [
            Phase::Pending,
            Phase::Progressing,
            Phase::Ready,
            Phase::Degraded,
            Phase::Failed,
        ] {
            let n = phases.values().filter(|v| **v == p).count();
            self.plugins
                .get_or_create(&vec![("phase", format!("{p:?}"))])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// `count` endpoints are published in `namespace`.
    pub fn set_published(&self, namespace: &str, count: usize) {
        self.endpoints_published
            .get_or_create(&vec![("namespace", namespace.to_string())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
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

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_bytes() {
            self.rss.set(bytes);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Resident set size of this process, from `/proc/self/status`.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_recorded() {
        let m = Metrics::default();
        let key = PluginKey {
            namespace: "ns".into(),
            name: "p".into(),
        };
        m.reconciled("ok", Duration::from_millis(3));
        m.observe_probe(&key, Duration::from_millis(1), Some("Unreachable"));
        m.set_phase(&key, Some(Phase::Ready));
        m.configmap_written("ns");
        m.api_write("status");
        m.set_leader(true);
        let text = m.render();
        for line in [
            "hector_operator_reconciles_total{result=\"ok\"} 1",
            "hector_operator_probe_failures_total{namespace=\"ns\",plugin=\"p\",reason=\"Unreachable\"} 1",
            "hector_operator_plugins{phase=\"Ready\"} 1",
            "hector_operator_configmap_writes_total{namespace=\"ns\"} 1",
            "hector_operator_api_writes_total{resource=\"status\"} 1",
            "hector_operator_leader 1",
            "hector_operator_resident_memory_bytes ",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        m.set_phase(&key, None);
        assert!(
            m.render()
                .contains("hector_operator_plugins{phase=\"Ready\"} 0")
        );
    }
}
