//! No quadratic surprises: what a reconcile reads from the watch caches and what it asks of
//! the prober, for every plugin of a world of 100 and one of 1,000 plugins (one namespace per
//! 50, each with one plugin run as Pods and 49 naming one of five shared addresses). The work
//! is counted, not timed: cache lookups and the objects they return per plugin must not grow
//! with N, the prober must run one task per distinct address (five shared ones plus one per
//! Pod), and each shared address must get exactly one connection. All traffic stays on
//! loopback: the shared addresses are listeners of this test, the Pods' addresses are closed
//! loopback ports.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use crate::crd::Phase;
use crate::recorder::{Recorder, Reporter};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{
    ContainerStatus, Event as CoreEvent, ObjectReference, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event as WatchEvent;
use tokio::net::TcpListener;

use super::*;
use crate::build::fixtures;
use crate::cache_index::{Cache, CacheIndex};

/// An API server that answers nothing: the lookups under test never call it.
#[derive(Clone)]
struct NoApi;

impl tower::Service<http::Request<kube::client::Body>> for NoApi {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<kube::client::Body>) -> Self::Future {
        let mut response = http::Response::new(axum::body::Body::from(
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#,
        ));
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        Box::pin(async move { Ok(response) })
    }
}

fn owner(kind: &str, name: &str, uid: &str) -> Option<Vec<OwnerReference>> {
    Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }])
}

fn meta(ns: &str, name: &str, uid: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        uid: Some(uid.into()),
        ..Default::default()
    }
}

fn plugin(ns: &str, name: &str, endpoint: Option<&str>) -> HectorPlugin {
    let source = match endpoint {
        Some(address) => format!("  endpoint: \"{address}\"\n"),
        None => "  image: example.org/my-llm:1.2.0\n  replicas: 2\n  secretConfig:\n    - {key: api_key, secretKeyRef: {name: llm-secrets, key: api-key}}\n".to_string(),
    };
    let yaml = format!(
        "apiVersion: hector.dev/v1alpha1\nkind: HectorPlugin\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  manifest: {{name: {name}, version: 1.0.0, type: llm_provider}}\n  health: {{periodSeconds: 1, timeoutSeconds: 1}}\n{source}"
    );
    let mut p = fixtures::plugin(&yaml);
    p.metadata.uid = Some(format!("uid-{ns}-{name}"));
    p
}

fn pod(ns: &str, plugin: &str, i: usize, rs_uid: &str, ip: &str) -> Pod {
    let name = format!("{plugin}-pod-{i}");
    let mut metadata = meta(ns, &name, &format!("uid-{ns}-{name}"));
    metadata.labels = Some([(PLUGIN_LABEL.to_string(), plugin.to_string())].into());
    metadata.owner_references = owner("ReplicaSet", "rs", rs_uid);
    Pod {
        metadata,
        spec: None,
        status: Some(PodStatus {
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "plugin".into(),
                started: Some(true),
                ready: true,
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// Fills a store and its index (if any) as a first list does.
fn list<K>(writer: &mut Writer<K>, index: Option<&CacheIndex<K>>, objects: Vec<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut events = vec![WatchEvent::Init];
    events.extend(objects.into_iter().map(WatchEvent::InitApply));
    events.push(WatchEvent::InitDone);
    for e in &events {
        writer.apply_watcher_event(e);
        if let Some(index) = index {
            index.apply(e);
        }
    }
}

/// Listeners that accept and hold connections, counting them.
async fn shared_addresses(
    n: usize,
) -> (Vec<String>, Arc<Vec<AtomicUsize>>, Arc<tokio::sync::Notify>) {
    let accepted = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
    let arrived = Arc::new(tokio::sync::Notify::new());
    let mut addresses = Vec::new();
    for i in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        addresses.push(listener.local_addr().expect("address").to_string());
        let (accepted, arrived) = (Arc::clone(&accepted), Arc::clone(&arrived));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                accepted[i].fetch_add(1, Ordering::SeqCst);
                arrived.notify_waiters();
            }
        });
    }
    (addresses, accepted, arrived)
}

struct World {
    ctx: Arc<Ctx>,
    /// The plugin cache's writer, for events a test makes the watch deliver.
    plugin_writer: Writer<HectorPlugin>,
    /// The Pod cache's writer, likewise.
    pod_writer: Writer<Pod>,
    plugins: Vec<Arc<HectorPlugin>>,
    namespaces: usize,
    accepted: Arc<Vec<AtomicUsize>>,
    arrived: Arc<tokio::sync::Notify>,
}

async fn world(n: usize) -> World {
    let namespaces = n / 50;
    let (shared_addrs, accepted, arrived) = shared_addresses(5).await;
    let client = Client::new(NoApi, "default");
    let metrics = Arc::new(Metrics::default());
    let (changes, _) = broadcast::channel(16);
    let prober = Prober::new(
        Arc::new(Mutex::new(crate::index::Index::default())),
        changes.clone(),
        Arc::clone(&metrics),
        hector_plugin_sdk::token::TokenSource::none(),
    );
    let shared = Arc::new(Shared {
        client: client.clone(),
        settings: fixtures::settings(),
        configmap: "hector-plugins".into(),
        plugin_dir: "/opt/hector/plugins".into(),
        prober,
        metrics,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "hector-operator".into(),
                instance: None,
            },
        ),
        changes,
        written: Default::default(),
        readiness: Arc::new(Readiness::default()),
        left_out: Default::default(),
        concurrency: 8,
    });

    let mut plugins = Vec::new();
    let (mut deployments, mut sets, mut pods, mut events) = (vec![], vec![], vec![], vec![]);
    for k in 0..namespaces {
        let ns = format!("team-{k}");
        for j in 0..49 {
            let address = &shared_addrs[(k * 49 + j) % shared_addrs.len()];
            plugins.push(plugin(&ns, &format!("ext-{j}"), Some(address)));
        }
        let run = plugin(&ns, "run", None);
        let plugin_uid = run.metadata.uid.clone().unwrap_or_default();
        let mut d = meta(&ns, "run", &format!("d-{ns}"));
        d.owner_references = owner("HectorPlugin", "run", &plugin_uid);
        deployments.push(Deployment {
            metadata: d,
            ..Default::default()
        });
        let rs_uid = format!("rs-{ns}");
        let mut rs = meta(&ns, "run-rs", &rs_uid);
        rs.labels = Some([(PLUGIN_LABEL.to_string(), "run".to_string())].into());
        rs.owner_references = owner("Deployment", "run", &format!("d-{ns}"));
        sets.push(ReplicaSet {
            metadata: rs,
            ..Default::default()
        });
        for i in 0..2 {
            // Closed loopback ports: a probe is refused at once.
            let n = 2 * k + i;
            let ip = format!("127.0.{}.{}", 1 + n / 250, 1 + n % 250);
            let p = pod(&ns, "run", i, &rs_uid, &ip);
            pods.push(p);
        }
        events.push(CoreEvent {
            metadata: meta(&ns, "run-pod-0.mount", &format!("ev-{ns}")),
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                name: Some("run-pod-0".into()),
                namespace: Some(ns.clone()),
                uid: Some(format!("uid-{ns}-run-pod-0")),
                ..Default::default()
            },
            reason: Some("FailedMount".into()),
            message: Some("secret \"llm-secrets\" not found".into()),
            ..Default::default()
        });
        plugins.push(run);
    }

    let indexes = Indexes::default();
    let (plugin_store, mut plugin_writer) = reflector::store();
    list(&mut plugin_writer, Some(&indexes.plugins), plugins.clone());
    let (pod_store, mut pod_writer) = reflector::store();
    list(&mut pod_writer, Some(&indexes.pods), pods);
    let (rs_store, mut w) = reflector::store();
    list(&mut w, Some(&indexes.replicasets), sets);
    let (event_store, mut w) = reflector::store();
    list(&mut w, Some(&indexes.events), events);
    let (deployment_store, mut w) = reflector::store();
    list(&mut w, None, deployments);
    let (service_store, mut w) = reflector::store::<Service>();
    list(&mut w, None, vec![]);
    let (np_store, mut w) = reflector::store::<NetworkPolicy>();
    list(&mut w, None, vec![]);
    let (cm_store, mut w) = reflector::store::<ConfigMap>();
    list(&mut w, None, vec![]);
    let (publish_tx, _) = mpsc::unbounded_channel();
    let (_, synced) = watch::channel(true);
    let ctx = Arc::new(Ctx {
        shared,
        plugins: Cache::new(plugin_store),
        pods: Cache::new(pod_store),
        replicasets: Cache::new(rs_store),
        deployments: Cache::new(deployment_store),
        services: Cache::new(service_store),
        network_policies: Cache::new(np_store),
        configmaps: Cache::new(cm_store),
        mount_events: Cache::new(event_store),
        indexes,
        seen: Mutex::default(),
        requested: Mutex::default(),
        publish: PublishRequests::new(publish_tx),
        events: crate::event_queue::EventQueue::new(1, 1).0,
        synced,
    });
    let plugins = ctx.plugins.scan();
    World {
        ctx,
        plugin_writer,
        pod_writer,
        plugins,
        namespaces,
        accepted,
        arrived,
    }
}

/// What reconciling every plugin reads and asks: the lookups of [`reconcile_plugin`] and
/// the prober's `set`.
fn reconcile_all(w: &World) {
    for p in &w.plugins {
        let deployment = w.ctx.own_deployment(p);
        let _ = w.ctx.secret_problems(p);
        let _ = w.ctx.rollout(p, deployment.as_deref());
        let plan = w.ctx.probe_plan(p);
        w.ctx.shared.prober.set(
            &key_of(p),
            plan.spec,
            plan.threshold,
            &plan.wanted,
            &[],
            None,
        );
    }
}

/// Objects read by whole-cache scans.
fn scanned(ctx: &Ctx) -> u64 {
    ctx.plugins.scanned()
        + ctx.pods.scanned()
        + ctx.replicasets.scanned()
        + ctx.deployments.scanned()
        + ctx.services.scanned()
        + ctx.network_policies.scanned()
        + ctx.configmaps.scanned()
        + ctx.mount_events.scanned()
}

fn work(ctx: &Ctx) -> u64 {
    let i = &ctx.indexes;
    [
        i.plugins.work(),
        i.pods.work(),
        i.replicasets.work(),
        i.events.work(),
    ]
    .iter()
    .map(|(lookups, visited)| lookups + visited)
    .sum()
}

/// Waits until every shared address has had a connection; fails after 20 s.
async fn connected(w: &World) {
    let all = || w.accepted.iter().all(|a| a.load(Ordering::SeqCst) >= 1);
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while !all() {
            let arrived = w.arrived.notified();
            if all() {
                break;
            }
            arrived.await;
        }
    })
    .await;
    assert!(waited.is_ok(), "not every shared address was connected to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_plugin_work_does_not_grow_with_the_number_of_plugins() {
    let mut per_plugin = Vec::new();
    for n in [100, 1_000] {
        let w = world(n).await;
        assert_eq!(w.plugins.len(), n);
        let scans_before = scanned(&w.ctx);
        reconcile_all(&w);
        let first = work(&w.ctx);
        assert_eq!(
            scanned(&w.ctx),
            scans_before,
            "no reconcile reads a whole cache"
        );
        // Every Pod plugin's reconcile found its own two Pods, and only those.
        for p in w.plugins.iter().filter(|p| p.spec.endpoint.is_none()) {
            assert_eq!(w.ctx.probe_plan(p).wanted.len(), 2, "{}", key_of(p));
            assert_eq!(w.ctx.plugin_pods(p).len(), 2);
            assert_eq!(w.ctx.secret_problems(p).len(), 1, "the Event of its Pod");
        }
        let targets = w.ctx.shared.prober.target_count();
        assert_eq!(
            targets,
            5 + 2 * w.namespaces,
            "one probe task per shared address and per Pod, none per plugin"
        );
        connected(&w).await;
        // A second round changes nothing: no new task, no new connection.
        reconcile_all(&w);
        assert_eq!(w.ctx.shared.prober.target_count(), targets);
        // Probes run every second: three periods of them reuse the one connection each.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let accepted: Vec<usize> = w
            .accepted
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .collect();
        assert_eq!(
            accepted, [1; 5],
            "one connection per shared address, {n} plugins"
        );
        per_plugin.push((n, first));
        w.ctx.shared.prober.stop_all();
    }
    let [(small, small_work), (large, large_work)] = per_plugin[..] else {
        unreachable!("two worlds")
    };
    assert!(small_work > 0, "lookups are counted");
    // The same per-plugin work in both worlds (their namespaces hold the same plugins).
    assert_eq!(
        large_work * small as u64,
        small_work * large as u64,
        "work per plugin: {} at {small}, {} at {large}",
        small_work as f64 / small as f64,
        large_work as f64 / large as f64
    );
}

/// The copy of a plugin's last written status lives only until the watch cache shows that
/// status, in either order of the write's response and the watch event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_status_is_held_only_until_the_cache_shows_it() {
    let mut w = world(100).await;
    let status = |phase| HectorPluginStatus {
        phase: Some(phase),
        ..Default::default()
    };
    let copies = |w: &World| lock(&w.ctx.shared.written).len();
    let seen = |w: &mut World, p: &HectorPlugin| {
        let event = WatchEvent::Apply(p.clone());
        w.plugin_writer.apply_watcher_event(&event);
        w.ctx.caught_up(p);
    };

    // The response first: the copy is kept while the cache shows the old status...
    let mut a = (*w.plugins[0]).clone();
    let a_key = key_of(&a);
    w.ctx.remember_written(&a_key, &status(Phase::Ready));
    assert_eq!(copies(&w), 1);
    a.status = Some(status(Phase::Pending));
    seen(&mut w, &a);
    assert_eq!(copies(&w), 1, "an older status shown: the copy stays");
    // ...and goes when the watch shows the written one.
    a.status = Some(status(Phase::Ready));
    seen(&mut w, &a);
    assert_eq!(copies(&w), 0, "the cache shows it: no copy");

    // The watch event first: no copy is made at all.
    let mut b = (*w.plugins[1]).clone();
    b.status = Some(status(Phase::Degraded));
    seen(&mut w, &b);
    w.ctx
        .remember_written(&key_of(&b), &status(Phase::Degraded));
    assert_eq!(copies(&w), 0, "already in the cache: nothing kept");

    // Every plugin written and then seen: nothing is held twice.
    for p in w.plugins.clone() {
        w.ctx.remember_written(&key_of(&p), &status(Phase::Failed));
    }
    assert_eq!(copies(&w), 100);
    for p in w.plugins.clone() {
        let mut p = (*p).clone();
        p.status = Some(status(Phase::Failed));
        seen(&mut w, &p);
    }
    assert_eq!(copies(&w), 0);
}

/// `hector_operator_pods_ready_before_healthy_total` counts a Pod first seen already Ready (no
/// probe of it can have passed), and not one whose probe passed while it was starting, nor
/// one listed already Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_first_seen_ready_counts_as_ready_before_a_passing_probe() {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning};
    let mut w = world(100).await;
    // As the Pod watch does: the cache and its index first, then the fast path.
    let deliver = |w: &mut World, pod: Pod| {
        let event = WatchEvent::Apply(pod);
        w.pod_writer.apply_watcher_event(&event);
        w.ctx.indexes.pods.apply(&event);
        w.ctx.pod_readiness(&Ok(event));
    };
    let counted = |w: &World| {
        w.ctx
            .shared
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("hector_operator_pods_ready_before_healthy_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let run = w
        .ctx
        .plugins
        .get(&ObjectRef::new("run").within("team-0"))
        .expect("plugin run");
    let key = key_of(&run);
    assert_eq!(counted(&w), 0.0);

    // Seen for the first time already Ready: publication has to wait for a probe.
    let ready = pod("team-0", "run", 7, "rs-team-0", "127.0.200.1");
    deliver(&mut w, ready);
    assert_eq!(counted(&w), 1.0);

    // Seen starting, found healthy, then Ready: published at once, not counted.
    let mut starting = pod("team-0", "run", 8, "rs-team-0", "127.0.200.2");
    if let Some(status) = starting.status.as_mut() {
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "False".into(),
            ..Default::default()
        }]);
        status.container_statuses = Some(vec![ContainerStatus {
            name: "plugin".into(),
            started: Some(false),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    }
    deliver(&mut w, starting);
    let address = endpoint_address("127.0.200.2", run.spec.port);
    assert!(w.ctx.shared.prober.index().is_starting(&key, &address));
    w.ctx
        .shared
        .prober
        .index()
        .record(&key, &address, &crate::index::ProbeOutcome::Healthy(None));
    w.ctx.pod_readiness(&Ok(WatchEvent::Apply(pod(
        "team-0",
        "run",
        8,
        "rs-team-0",
        "127.0.200.2",
    ))));
    assert!(w.ctx.shared.prober.index().usable(&key, &address));
    assert_eq!(counted(&w), 1.0);

    // Listed already Ready (a new leader's first list, or a list again after the watch
    // lost its place): it was not seen turning Ready, and what its status carries stays
    // published meanwhile, so it is not counted.
    let listed = WatchEvent::InitApply(pod("team-0", "run", 9, "rs-team-0", "127.0.200.3"));
    w.pod_writer.apply_watcher_event(&listed);
    w.ctx.indexes.pods.apply(&listed);
    w.ctx.pod_readiness(&Ok(listed));
    assert_eq!(counted(&w), 1.0);
    w.ctx.shared.prober.stop_all();
}
