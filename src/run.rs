//! `hector-operator run`: wires logging, the health and metrics endpoints, leader election,
//! the prober and the controller of the watched namespaces, and shuts all of it down on
//! SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use kube::Client;
use kube::client::ClientBuilder;
use tokio::sync::{broadcast, watch};

use crate::access::OperatorIdentity;
use crate::build::Settings;
use crate::crd::ImagePullPolicy;
use crate::fence::{Fence, FenceLayer};
use crate::index::Index;
use crate::leader::{LeaseConfig, LeaseError, LeaseThread, Release};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::readiness::{Readiness, Role};
use crate::reconcile::{Scope, Shared, run_scope};
use crate::recorder::{Recorder, Reporter};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `hector-operator run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Namespaces to watch, comma-separated (default: all namespaces).
    #[arg(long, env = "HECTOR_WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Name of the endpoints ConfigMap written in each namespace.
    #[arg(long, default_value = hector_plugin_sdk::endpoints::DEFAULT_CONFIGMAP)]
    pub endpoints_configmap: String,

    /// Image holding the launcher that plugin Pods copy in (default: the image this operator
    /// runs from, read from its own Pod; outside a Pod, hector.dev/hector-operator:VERSION).
    #[arg(long, env = "HECTOR_LAUNCHER_IMAGE")]
    pub launcher_image: Option<String>,

    /// Pull policy of the launcher image.
    #[arg(long, value_parser = parse_pull_policy, default_value = "IfNotPresent")]
    pub launcher_pull_policy: ImagePullPolicy,

    /// Directory where agents lay out one copy of `hector-plugin-remote` per plugin, with its
    /// manifest (`hector-plugin-remote install --into DIR`); `plugins.yaml` names `DIR/NAME`.
    #[arg(long, default_value = crate::publish::DEFAULT_PLUGIN_DIR, value_parser = crate::publish::parse_plugin_dir)]
    pub plugin_dir: String,

    /// File holding the operator's ServiceAccount token for audience `hector.dev/plugins`,
    /// which the prober presents to plugins (default: `HECTOR_PLUGIN_TOKEN_FILE`, else
    /// `/var/run/secrets/hector.dev/token` when it exists).
    #[arg(long)]
    pub plugin_token_file: Option<std::path::PathBuf>,

    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Address of `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,

    /// Log format.
    #[arg(long, value_enum, env = "HECTOR_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `hector_operator=debug`).
    #[arg(long, env = "HECTOR_LOG", default_value = "info")]
    pub log_level: String,

    /// HectorPlugins reconciled at once. Each reconcile makes a few API requests, and each
    /// request in flight holds a connection to the API server.
    #[arg(long, env = "HECTOR_CONCURRENT_RECONCILES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrent_reconciles: u16,

    /// Elect a leader among replicas through a Lease (only the leader reconciles).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the Lease.
    #[arg(long, default_value = "hector-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (default: the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease holds without renewal; a dead leader is replaced within this time.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=600))]
    pub lease_duration: u64,

    /// The namespace this operator runs in: plugin NetworkPolicies let its Pods in from there
    /// (default: the namespace of the in-Pod ServiceAccount; outside a Pod, hector-system).
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// The ServiceAccount this operator runs as: every plugin admits it, so that the prober
    /// can call.
    #[arg(long, env = "OPERATOR_SERVICE_ACCOUNT", default_value = DEFAULT_SERVICE_ACCOUNT)]
    pub operator_service_account: String,

    /// Labels selecting this operator's Pods (its Deployment's selector), `key=value,...`:
    /// plugin NetworkPolicies let these Pods in.
    #[arg(
        long,
        env = "OPERATOR_POD_LABELS",
        default_value = DEFAULT_POD_LABELS,
        value_parser = parse_labels
    )]
    pub operator_pod_labels: BTreeMap<String, String>,
}

/// The operator's ServiceAccount in `deploy/` and the chart's default release.
const DEFAULT_SERVICE_ACCOUNT: &str = "hector-operator";
/// The operator's namespace when it runs outside a Pod (as `deploy/` installs it).
const DEFAULT_NAMESPACE: &str = "hector-system";
/// The selector labels of the operator's Pods in `deploy/` and the chart's default release.
pub const DEFAULT_POD_LABELS: &str =
    "app.kubernetes.io/name=hector-operator,app.kubernetes.io/instance=hector-operator";

/// `key=value,...` as labels: at least one, keys not empty or repeated. An empty set would
/// select every Pod of the operator's namespace, so it is refused.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("label {key:?} is given twice"));
        }
    }
    if labels.is_empty() {
        return Err("at least one label is needed to select the operator's Pods".into());
    }
    Ok(labels)
}

fn parse_pull_policy(s: &str) -> Result<ImagePullPolicy, String> {
    match s {
        "Always" => Ok(ImagePullPolicy::Always),
        "IfNotPresent" => Ok(ImagePullPolicy::IfNotPresent),
        "Never" => Ok(ImagePullPolicy::Never),
        _ => Err(format!("{s:?} is not one of Always, IfNotPresent, Never")),
    }
}

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable Kubernetes configuration.
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
    /// The plugin token file named cannot be read.
    #[error("plugin token: {0}")]
    Token(String),
    /// No Kubernetes configuration found.
    #[error("no Kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// A listen address was unusable.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The log filter does not parse.
    #[error("invalid --log-level: {0}")]
    LogFilter(String),
    /// Leadership lost.
    #[error(transparent)]
    Lease(#[from] crate::leader::LeaseError),
    /// The lease thread could not start.
    #[error("cannot start the lease thread: {0}")]
    LeaseThread(std::io::Error),
}

/// Sets up logging to stderr.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), RunError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| RunError::LogFilter(e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialization (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}

fn default_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "default".into())
}

/// Who this operator is, for plugin Pods to admit its prober.
fn operator_identity(args: &RunArgs) -> OperatorIdentity {
    let namespace = args
        .operator_namespace
        .clone()
        .filter(|n| !n.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    OperatorIdentity {
        namespace,
        service_account: args.operator_service_account.clone(),
        pod_labels: args.operator_pod_labels.clone(),
    }
}

fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("hector-operator-{}", std::process::id()))
}

async fn serve(addr: SocketAddr, router: Router) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen { addr, source })?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(%addr, error = %e, "HTTP server stopped");
        }
    }))
}

/// The image plugin Pods copy the launcher from: as given, else the image of the container
/// this operator runs in (its own Pod, by the downward API's POD_NAME and POD_NAMESPACE).
async fn launcher_image(client: &Client, args: &RunArgs) -> String {
    const FALLBACK: &str = concat!("hector.dev/hector-operator:", env!("CARGO_PKG_VERSION"));
    if let Some(image) = &args.launcher_image {
        return image.clone();
    }
    let (Ok(name), Some(namespace)) = (std::env::var("POD_NAME"), args.lease_namespace.as_ref())
    else {
        return FALLBACK.into();
    };
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), namespace);
    let own = pods.get(&name).await.ok().and_then(|pod| {
        let containers = pod.spec?.containers;
        let running = containers
            .iter()
            .find(|c| c.name == "operator")
            .or_else(|| containers.first())?;
        running.image.clone()
    });
    match own {
        Some(image) => {
            tracing::info!(%image, "plugin Pods copy the launcher from this operator's own image");
            image
        }
        None => {
            tracing::warn!(
                image = FALLBACK,
                "cannot read this operator's own Pod; using the default launcher image"
            );
            FALLBACK.into()
        }
    }
}

/// Why a leadership term ended.
enum TermEnd {
    /// SIGTERM/SIGINT.
    Signal,
    /// The lease was lost.
    Lost(LeaseError),
    /// The controllers stopped by themselves (a panic): hand over rather than lead blind.
    Ended,
}

/// Runs the operator until SIGTERM/SIGINT. A replica that loses the lease stops writing at
/// once (the fence), stops its controllers and stands by again; it does not exit, so an API
/// server outage costs no restart.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let token = hector_plugin_sdk::token::TokenSource::resolve(args.plugin_token_file.as_deref())
        .map_err(|e| RunError::Token(e.to_string()))?;
    if !token.is_some() {
        tracing::warn!(
            "no plugin token (see --plugin-token-file): launchers that check callers will refuse the prober"
        );
    }
    let config = kube::Config::infer().await?;
    let lease_config = config.clone();
    let metrics = Arc::new(Metrics::default());
    let fence = if args.leader_elect {
        Fence::closed()
    } else {
        Fence::always_open()
    };
    // Lease requests go out unfenced; everything else the operator writes passes the fence.
    let plain = Client::try_from(config.clone())?;
    let fenced = ClientBuilder::try_from(config)?
        .with_layer(&FenceLayer::new(fence.clone(), Arc::clone(&metrics)))
        .build();
    let readiness = Arc::new(Readiness::default());

    let m = Arc::clone(&metrics);
    let metrics_server = serve(
        args.metrics_addr,
        Router::new().route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&m);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            crate::metrics::CONTENT_TYPE,
                        )],
                        m.render(),
                    )
                }
            }),
        ),
    )
    .await?;
    let ready = Arc::clone(&readiness);
    let health_server = serve(
        args.health_addr,
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let (code, body) = ready.report();
                    async move {
                        (
                            StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                            body,
                        )
                    }
                }),
            ),
    )
    .await?;
    tracing::info!(metrics = %args.metrics_addr, health = %args.health_addr, "serving metrics and health");

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut elector = match args.leader_elect {
        true => Some(
            LeaseThread::start(
                lease_config,
                LeaseConfig {
                    name: args.lease_name.clone(),
                    namespace: args
                        .lease_namespace
                        .clone()
                        .unwrap_or_else(default_namespace),
                    identity: identity.clone(),
                    duration: Duration::from_secs(args.lease_duration),
                },
                fence.clone(),
            )
            .map_err(RunError::LeaseThread)?,
        ),
        false => None,
    };
    let operator = operator_identity(&args);
    tracing::info!(
        service_account = %operator.service_account_entry(),
        pods = ?operator.pod_labels,
        "plugin Pods admit calls from this operator's ServiceAccount and Pods"
    );
    let settings = Settings {
        launcher_image: launcher_image(&plain, &args).await,
        launcher_pull_policy: args.launcher_pull_policy,
        operator,
    };
    let recorder = Recorder::new(
        fenced.clone(),
        Reporter {
            controller: "hector-operator".into(),
            instance: Some(identity.clone()),
        },
    );

    let signal = hector_plugin_sdk::serve::termination_signal();
    tokio::pin!(signal);
    loop {
        if let Some(e) = elector.as_mut() {
            readiness.set_role(Role::Standby);
            tracing::info!(%identity, lease = %args.lease_name, "waiting for the leader lease");
            tokio::select! {
                acquired = e.acquired() => acquired?,
                _ = &mut signal => {
                    tracing::info!("termination signal while standing by; exiting");
                    break;
                }
            }
        }
        readiness.set_role(Role::Leading);
        metrics.set_leader(true);
        tracing::info!(%identity, "leading: starting controllers");

        let (changes, _) = broadcast::channel(4096);
        let prober = Prober::new(
            Arc::new(std::sync::Mutex::new(Index::default())),
            changes.clone(),
            Arc::clone(&metrics),
            token.clone(),
        );
        let shared = Arc::new(Shared {
            client: fenced.clone(),
            settings: settings.clone(),
            configmap: args.endpoints_configmap.clone(),
            plugin_dir: args.plugin_dir.clone(),
            prober: Arc::clone(&prober),
            metrics: Arc::clone(&metrics),
            recorder: recorder.clone(),
            changes,
            written: Default::default(),
            readiness: Arc::clone(&readiness),
            left_out: Default::default(),
            concurrency: args.concurrent_reconciles,
        });
        let namespaces: Vec<String> = args
            .namespaces
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        let scope = if namespaces.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(namespaces)
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        // One controller for the whole scope, on its own task; the lease is renewed on a
        // thread of its own (see LeaseThread), so no reconcile can delay a renewal.
        let mut controllers = tokio::spawn(run_scope(Arc::clone(&shared), scope, stop_rx));
        let end = {
            let keep = async {
                match elector.as_mut() {
                    Some(e) => e.lost().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut signal => TermEnd::Signal,
                lost = keep => TermEnd::Lost(lost),
                _ = &mut controllers => TermEnd::Ended,
            }
        };
        match &end {
            TermEnd::Signal => {
                tracing::info!("termination signal: stopping controllers");
                readiness.set_role(Role::Stopping);
            }
            TermEnd::Lost(lost) => {
                // The fence closed before any other replica could take the lease: nothing
                // from this term is written any more, in-flight work included.
                tracing::error!(error = %lost, "leadership lost: stopping controllers and standing by");
            }
            TermEnd::Ended => {
                tracing::error!("controllers stopped unexpectedly: handing the lease over");
            }
        }
        let _ = stop_tx.send(true);
        // In-flight reconciles finish; a stuck one does not hold the handover up.
        if tokio::time::timeout(Duration::from_secs(10), &mut controllers)
            .await
            .is_err()
        {
            controllers.abort();
        }
        prober.stop_all();
        metrics.set_leader(false);
        match end {
            TermEnd::Signal => {
                if let Some(e) = elector.as_ref() {
                    e.release(Release::AndStop).await;
                }
                break;
            }
            TermEnd::Ended => match elector.as_ref() {
                Some(e) => e.release(Release::AndStandBy).await,
                None => break,
            },
            TermEnd::Lost(_) if elector.is_none() => break,
            TermEnd::Lost(_) => {}
        }
    }
    readiness.set_role(Role::Stopping);
    metrics_server.abort();
    health_server.abort();
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn the_operator_identity_defaults_to_the_deploy_install() {
        let cli =
            Cli::try_parse_from(["hector-operator", "--operator-namespace=ops"]).expect("parses");
        let id = operator_identity(&cli.run);
        assert_eq!(id.service_account_entry(), "ops/hector-operator");
        assert_eq!(
            id.pod_labels,
            BTreeMap::from([
                (
                    "app.kubernetes.io/instance".to_string(),
                    "hector-operator".to_string()
                ),
                (
                    "app.kubernetes.io/name".to_string(),
                    "hector-operator".to_string()
                ),
            ])
        );
        let cli = Cli::try_parse_from([
            "hector-operator",
            "--operator-namespace=ops",
            "--operator-service-account=ops-sa",
            "--operator-pod-labels=app.kubernetes.io/name=x, app.kubernetes.io/instance=y",
        ])
        .expect("parses");
        let id = operator_identity(&cli.run);
        assert_eq!(id.service_account_entry(), "ops/ops-sa");
        assert_eq!(
            id.pod_labels
                .get("app.kubernetes.io/instance")
                .map(String::as_str),
            Some("y")
        );
    }

    #[test]
    fn the_plugin_dir_defaults_to_the_agent_recipes_and_refuses_relative_paths() {
        let cli = Cli::try_parse_from(["hector-operator"]).expect("parses");
        assert_eq!(cli.run.plugin_dir, "/opt/hector/plugins");
        let cli =
            Cli::try_parse_from(["hector-operator", "--plugin-dir=/srv/plugins/"]).expect("parses");
        assert_eq!(cli.run.plugin_dir, "/srv/plugins");
        let err = Cli::try_parse_from(["hector-operator", "--plugin-dir=plugins"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--plugin-dir") && err.contains("not an absolute path"),
            "{err}"
        );
        // The old flag named one shared executable, which Hector cannot load for several
        // plugin types; it is gone rather than silently reinterpreted.
        assert!(
            Cli::try_parse_from(["hector-operator", "--remote-path=/usr/local/bin/x"]).is_err()
        );
    }

    #[test]
    fn concurrent_reconciles_default_to_32_and_refuse_zero() {
        let cli = Cli::try_parse_from(["hector-operator"]).expect("parses");
        assert_eq!(cli.run.concurrent_reconciles, 32);
        let cli =
            Cli::try_parse_from(["hector-operator", "--concurrent-reconciles=32"]).expect("parses");
        assert_eq!(cli.run.concurrent_reconciles, 32);
        for bad in ["0", "257", "-1", "many"] {
            let err =
                Cli::try_parse_from(["hector-operator", &format!("--concurrent-reconciles={bad}")])
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
            assert!(err.contains("--concurrent-reconciles"), "{bad}: {err}");
        }
    }

    #[test]
    fn pod_labels_must_select_something() {
        for bad in ["", ",", "a", "=b", "a=1,a=2"] {
            assert!(parse_labels(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_labels("a=1,b=").expect("valid"),
            BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), String::new())
            ])
        );
    }
}
