//! One run per size: make the plugins, wait for them to be published, then measure the
//! settled operator, the scale-up of the real plugins and the idle window.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::config::Config;
use crate::latency::{self, Latency};
use crate::metrics::{self, Sample};
use crate::namespaces::{self, Which};
use crate::plugins::{self, Layout};
use crate::report::Column;
use crate::{Error, backends, conns, published};

/// Quiet time after a burst of work before anything is measured.
const SETTLE: Duration = Duration::from_secs(30);
/// The window the settled CPU use is averaged over.
const CPU_WINDOW: Duration = Duration::from_secs(60);

/// Runs every size of `config`, adding one column each to `columns` as it goes.
pub async fn all_sizes(
    client: &Client,
    config: &Config,
    columns: &mut Vec<Column>,
) -> Result<(), Error> {
    eprintln!(
        "[bench-scale] starting {} echo-llm servers",
        config.backends
    );
    let backends = backends::start(client, config.backends, config.timeout).await?;
    for &n in &config.sizes {
        columns.push(Column::new(n));
        let Some(column) = columns.last_mut() else {
            break;
        };
        if let Err(e) = one_size(client, config, &backends, n, column).await {
            column.add("stopped by", e);
        }
        namespaces::delete_and_wait(client, Which::Plugins, config.timeout).await?;
    }
    Ok(())
}

async fn one_size(
    client: &Client,
    config: &Config,
    backends: &[String],
    n: usize,
    column: &mut Column,
) -> Result<(), Error> {
    let layout = Layout::new(n, backends);
    let real = layout.real().count();
    column.add(
        "plugins: endpoint / with Pods",
        format!("{} / {real}", n - real),
    );
    column.add("namespaces", layout.namespaces.len());

    let baseline = scrape(client).await;
    namespaces::apply_all(client, &layout.namespaces, plugins::CONCURRENCY).await?;
    let (watch, mut seen) = published::watch(client);
    let took = plugins::apply_all(client, &layout).await?;
    let applied = Instant::now();
    column.add(
        "apply",
        format!(
            "{:.1} s ({:.0} plugins/s)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        ),
    );
    let expected = layout.endpoint_plugins();
    let p = published::wait_all(&mut seen, &expected, applied, applied + config.timeout).await;
    drop(watch);
    column.add(
        "all endpoint plugins published, after the apply",
        match p.after {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => format!("not all published: {}/{}", p.count, p.total),
        },
    );

    column.add(
        "apply's status writes done, after the apply",
        match drained(client, applied, config.timeout).await {
            Some(d) => format!("{:.0} s", d.as_secs_f64()),
            None => "n/a".into(),
        },
    );
    settled(client, baseline.as_ref(), n, column).await;
    if let Err(e) = scale_up(client, config, &layout, column).await {
        column.add("scale-up", format!("failed: {e}"));
    }
    idle(client, config.idle, column).await;
    column.add(
        "largest hector-plugins ConfigMap",
        match published::largest(client).await {
            Ok(bytes) => format!("{:.1} KiB", bytes as f64 / 1024.0),
            Err(e) => format!("n/a ({e})"),
        },
    );
    Ok(())
}

/// How often [`drained`] looks, and how many quiet looks in a row it wants.
const DRAIN_POLL: Duration = Duration::from_secs(5);
const DRAIN_QUIET_POLLS: usize = 2;

/// Waits until the leader's API writes stop (the status writes of the apply's reconciles
/// are done), so that what is measured next is the settled operator, not the queue
/// draining; returns when they stopped, counted from `since`, or `None` after `timeout`.
async fn drained(client: &Client, since: Instant, timeout: Duration) -> Option<Duration> {
    eprintln!("[bench-scale] waiting for the apply's status writes to end");
    let deadline = Instant::now() + timeout;
    let mut last = scrape(client).await;
    let mut quiet = 0;
    let mut quiet_since = None;
    while Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
        let now = scrape(client).await;
        let wrote = match (&last, &now) {
            (Some(a), Some(b)) if a.leader == b.leader => {
                metrics::growth(a, b, "hector_operator_api_writes_total")
            }
            _ => None,
        };
        if wrote == Some(0.0) {
            quiet += 1;
            let at = *quiet_since.get_or_insert(last.as_ref().map_or_else(Instant::now, |s| s.at));
            if quiet >= DRAIN_QUIET_POLLS {
                return Some(at.saturating_duration_since(since));
            }
        } else {
            quiet = 0;
            quiet_since = None;
        }
        last = now;
    }
    eprintln!("[bench-scale] API writes still going after {timeout:?}");
    None
}

/// A scrape of the leader, or `None` (said on stderr) when it failed.
async fn scrape(client: &Client) -> Option<Sample> {
    match metrics::sample(client).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("[bench-scale] reading the leader's metrics failed: {e}");
            None
        }
    }
}

fn or_na(v: Option<f64>, unit: &str, precision: usize) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.precision$}{unit}"))
}

fn queue_quantile(a: Option<&Sample>, b: Option<&Sample>, q: f64) -> String {
    let (Some(a), Some(b)) = (a, b) else {
        return "n/a".into();
    };
    match metrics::quantile_between(a, b, "hector_operator_reconcile_queue_seconds", q) {
        Ok(secs) => format!("{:.1} ms", secs * 1000.0),
        Err(why) => why,
    }
}

/// After the apply's work has settled: memory, CPU, queue latency of the apply, probing.
async fn settled(client: &Client, baseline: Option<&Sample>, n: usize, column: &mut Column) {
    eprintln!("[bench-scale] settling for {SETTLE:?}, then reading CPU over {CPU_WINDOW:?}");
    tokio::time::sleep(SETTLE).await;
    let start = scrape(client).await;
    tokio::time::sleep(CPU_WINDOW).await;
    let end = scrape(client).await;
    let rss = |s: Option<&Sample>| {
        s.and_then(|s| metrics::value(&s.text, "process_resident_memory_bytes"))
    };
    let mib = 1024.0 * 1024.0;
    column.add(
        "RSS, settled",
        or_na(rss(end.as_ref()).map(|b| b / mib), " MiB", 1),
    );
    let same_leader =
        matches!((baseline, end.as_ref()), (Some(a), Some(b)) if a.leader == b.leader);
    let growth = match (rss(baseline), rss(end.as_ref())) {
        (Some(before), Some(after)) if same_leader => {
            Some((after - before) / mib / n as f64 * 1000.0)
        }
        _ => None,
    };
    column.add("RSS growth per 1,000 plugins", or_na(growth, " MiB", 1));
    let cpu = match (&start, &end) {
        (Some(a), Some(b)) => metrics::cpu_percent(a, b),
        _ => None,
    };
    column.add("CPU settled, % of one core", or_na(cpu, " %", 1));
    column.add(
        "reconcile queue p50 (apply)",
        queue_quantile(baseline, end.as_ref(), 0.5),
    );
    column.add(
        "reconcile queue p99 (apply)",
        queue_quantile(baseline, end.as_ref(), 0.99),
    );
    let targets = end
        .as_ref()
        .and_then(|s| metrics::value(&s.text, "hector_operator_probe_targets"));
    column.add("probe targets (metric)", or_na(targets, "", 0));
    let (plugins, api) = match &end {
        Some(s) => match conns::established(client, &s.leader).await {
            Ok(c) => (c.plugins.to_string(), c.api.to_string()),
            Err(e) => (format!("n/a ({e})"), "n/a".into()),
        },
        None => ("n/a".into(), "n/a".into()),
    };
    column.add("leader's TCP connections to plugins (counted)", plugins);
    column.add("leader's TCP connections to the API server", api);
}

/// Waits until every real plugin has its Service (so the EndpointSlice controller has its
/// slice to fill), then measures their scale-up.
async fn scale_up(
    client: &Client,
    config: &Config,
    layout: &Layout,
    column: &mut Column,
) -> Result<(), Error> {
    for ns in &layout.namespaces {
        namespaces::wait_default_account(client, ns, config.timeout).await?;
    }
    wait_services(client, layout.real().count(), config.timeout).await?;
    let before = scrape(client).await;
    let mut used = HashSet::new();
    let mut merged: Option<Latency> = None;
    let mut previous = before.clone();
    for round in 1..=config.rounds {
        if round > 1 {
            plugins::scale_real(client, layout, 0).await?;
            wait_no_real_pods(client, config.timeout).await?;
        }
        eprintln!("[bench-scale] round {round} of {}", config.rounds);
        let l = latency::scale_up(client, layout, config.timeout, &mut used).await?;
        let now = scrape(client).await;
        let grew = |name| {
            previous
                .as_ref()
                .zip(now.as_ref())
                .and_then(|(a, b)| metrics::growth(a, b, name))
        };
        let p50 = |v: &[f64]| or_na(latency::percentile(v, 0.5), " ms", 0);
        eprintln!(
            "[bench-scale] round {round}: Ready → EndpointSlice p50 {}, → hector-plugins p50 {}, first in hector-plugins {} of {}, Ready before a passing probe {}",
            p50(&l.slice_ms),
            p50(&l.published_ms),
            l.published_first,
            l.in_both,
            or_na(
                grew("hector_operator_pods_ready_before_healthy_total"),
                "",
                0
            ),
        );
        previous = now;
        merged = Some(match merged {
            Some(m) => m.merge(l),
            None => l,
        });
    }
    let Some(l) = merged else {
        return Err("no scale-up round ran".into());
    };
    let after = scrape(client).await;
    report_latency(&l, column);
    report_publication_path(before.as_ref(), after.as_ref(), column);
    Ok(())
}

/// What the operator's side of the scale-up's publications consisted of: Pods that turned
/// Ready before a probe of theirs had passed (their publication waited for one), first probes
/// started over, and the time from a request to publish to the ConfigMap written.
fn report_publication_path(a: Option<&Sample>, b: Option<&Sample>, column: &mut Column) {
    let grew = |name| a.zip(b).and_then(|(a, b)| metrics::growth(a, b, name));
    column.add(
        "scale-up: Pods Ready before a passing probe",
        or_na(
            grew("hector_operator_pods_ready_before_healthy_total"),
            "",
            0,
        ),
    );
    column.add(
        "scale-up: first probes started over",
        or_na(grew("hector_operator_probe_reconnects_total"), "", 0),
    );
    let q = |q| {
        a.zip(b).and_then(|(a, b)| {
            metrics::quantile_between(a, b, "hector_operator_publication_duration_seconds", q)
                .ok()
                .map(|s| s * 1000.0)
        })
    };
    column.add(
        "scale-up: publish request → ConfigMap written p50 / p99",
        format!("{} / {}", or_na(q(0.5), " ms", 1), or_na(q(0.99), " ms", 1)),
    );
}

/// Waits until every real plugin's Pod is gone, and a little longer, so that the next round
/// starts from a cluster where no plugin Pod is starting or stopping.
async fn wait_no_real_pods(client: &Client, timeout: Duration) -> Result<(), Error> {
    wait_plugin_objects::<Pod>(client, timeout, "plugin Pods left", |left| left == 0).await?;
    tokio::time::sleep(ROUND_SETTLE).await;
    Ok(())
}

/// The pause between the last Pod of a round gone and the next round's scale-up.
const ROUND_SETTLE: Duration = Duration::from_secs(5);

async fn wait_services(client: &Client, want: usize, timeout: Duration) -> Result<(), Error> {
    let what = format!("plugin Services, of {want}");
    wait_plugin_objects::<Service>(client, timeout, &what, |have| have >= want).await
}

/// Counts the plugins' objects of kind `K` in the bench's namespaces every 500 ms until
/// `done` accepts the count; after `timeout`, an error with `what` and the last count.
async fn wait_plugin_objects<K>(
    client: &Client,
    timeout: Duration,
    what: &str,
    done: impl Fn(usize) -> bool,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let selector = ListParams::default().labels("app.kubernetes.io/component=hector-plugin");
    let deadline = Instant::now() + timeout;
    loop {
        let count = api
            .list(&selector)
            .await?
            .items
            .iter()
            .filter(|o| o.namespace().is_some_and(|n| namespaces::is_plugins(&n)))
            .count();
        if done(count) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: {count} after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn report_latency(l: &Latency, column: &mut Column) {
    let p = |v: &[f64], q| latency::percentile(v, q);
    let pair = |v: &[f64]| {
        format!(
            "{} / {}",
            or_na(p(v, 0.5), " ms", 0),
            or_na(p(v, 0.99), " ms", 0)
        )
    };
    column.add(
        "scale-up: Ready → EndpointSlice p50 / p99",
        pair(&l.slice_ms),
    );
    column.add(
        "scale-up: Ready → hector-plugins p50 / p99",
        pair(&l.published_ms),
    );
    let ratio = match (p(&l.published_ms, 0.5), p(&l.slice_ms, 0.5)) {
        (Some(b), Some(a)) if a > 0.0 => Some(b / a),
        _ => None,
    };
    column.add(
        "scale-up: p50 ratio hector-plugins / EndpointSlice",
        or_na(ratio, "", 2),
    );
    column.add(
        "scale-up: Pods in hector-plugins no later than in their EndpointSlice",
        format!("{} of {}", l.published_first, l.in_both),
    );
    let all = l.ready == l.expected && l.in_slice == l.ready && l.published == l.ready;
    column.add(
        "scale-up: Pods Ready, in slice, published",
        format!(
            "{}/{}, {}, {}{} ({:.1} s)",
            l.ready,
            l.expected,
            l.in_slice,
            l.published,
            if all { "" } else { " — incomplete" },
            l.took.as_secs_f64()
        ),
    );
}

/// The idle window: API writes, CPU and probe RPCs while nothing changes.
async fn idle(client: &Client, window: Duration, column: &mut Column) {
    eprintln!("[bench-scale] settling for {SETTLE:?}, then idle for {window:?}");
    tokio::time::sleep(SETTLE).await;
    let start = scrape(client).await;
    tokio::time::sleep(window).await;
    let end = scrape(client).await;
    let (writes, cpu, rpcs) = match (&start, &end) {
        (Some(a), Some(b)) => (
            metrics::growth(a, b, "hector_operator_api_writes_total"),
            metrics::cpu_percent(a, b),
            metrics::rate(a, b, "hector_operator_probe_rpcs_total"),
        ),
        _ => (None, None, None),
    };
    let secs = window.as_secs();
    column.add(&format!("idle {secs} s: API writes"), or_na(writes, "", 0));
    column.add(
        &format!("idle {secs} s: CPU, % of one core"),
        or_na(cpu, " %", 1),
    );
    column.add(&format!("idle {secs} s: probe RPCs/s"), or_na(rpcs, "", 1));
    // An upper bound: every idle cycle counted against the probes.
    let per_rpc = match (cpu, rpcs) {
        (Some(cpu), Some(rpcs)) if rpcs > 0.0 => Some(cpu * 10.0 / rpcs),
        _ => None,
    };
    column.add(
        &format!("idle {secs} s: CPU per probe RPC, all counted"),
        or_na(per_rpc, " ms", 2),
    );
}
