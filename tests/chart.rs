//! The Helm chart (`charts/hector-operator`), checked with a real Helm (built from its Go
//! module by `tests/setup/deps.d/40-helm`; `HELM` overrides): lint, the values schema, what the
//! templates render — the same Deployment and RBAC as `deploy/` by default —, the monitoring kit
//! (the PrometheusRule checked and unit-tested by promtool, built by
//! `tests/setup/deps.d/45-promtool`, `PROMTOOL` overrides; the Grafana dashboard's queries
//! against the metrics the operator exports) and, with the
//! `e2e` feature, on a live cluster: the API server's validation, a release's whole life
//! (install, `helm test`, a plugin published and called, an upgrade that rolls the operator
//! without unpublishing it, uninstall) and the RBAC of a namespaced install.
//!
//! Cluster tests install the chart namespaced to their own test namespace (`watchNamespaces`),
//! so their operator never reconciles what the operator from `deploy/` (in `hector-system`,
//! watching all namespaces) owns, and its Lease lives in the test namespace, apart from
//! `hector-system`'s.

#[cfg(feature = "e2e")]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn chart_dir() -> PathBuf {
    Path::new(ROOT).join("charts/hector-operator")
}

/// The Helm binary: `HELM`, else the one `tests/setup/deps.d/40-helm` builds and caches.
fn helm() -> PathBuf {
    if let Ok(h) = std::env::var("HELM") {
        return h.into();
    }
    let out = Command::new(Path::new(ROOT).join("tests/setup/deps.d/40-helm"))
        .arg("path")
        .output()
        .expect("run tests/setup/deps.d/40-helm path");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "helm is not built at {}: run tests/setup/deps (or make deps), or set HELM",
        path.display()
    );
    path
}

/// What a command printed and how it ended.
struct Output {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm template RELEASE chart -n NAMESPACE ARGS...`
fn template(release: &str, namespace: &str, args: &[&str]) -> Output {
    run(Command::new(helm())
        .args(["template", release])
        .arg(chart_dir())
        .args(["--namespace", namespace, "--kube-version", "v1.34.4"])
        .args(args))
}

/// The rendered objects, failing the test with Helm's message when rendering fails.
fn render(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    let out = template(release, namespace, args);
    assert!(
        out.ok,
        "helm template {args:?} failed ({:?}):\n{}",
        out.code, out.stderr
    );
    documents(&out.stdout)
}

/// Every document of a multi-document YAML stream, as JSON values (empty documents dropped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} among the manifests"))
}

fn kinds(docs: &[Value], kind: &str) -> Vec<Value> {
    docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
}

fn is_hook(doc: &Value) -> bool {
    doc["metadata"]["annotations"]["helm.sh/hook"].is_string()
}

/// Where `a` and `b` first differ (numbers compared by value), or `None` when they are the same.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => first_difference(v, w, &format!("{path}.{k}")),
                    (v, w) => Some(format!("{path}.{k}: {v:?} vs {w:?}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

fn assert_same(what: &str, chart: &Value, deploy: &Value) {
    if let Some(diff) = first_difference(chart, deploy, "") {
        panic!("{what}: the chart and deploy/ differ at {diff}");
    }
}

/// The objects `deploy/` applies, as its files say (tests/deploy_manifests.rs holds the
/// rendered base equal to the files).
fn deploy_documents() -> Vec<Value> {
    let read = |rel: &str| {
        std::fs::read_to_string(Path::new(ROOT).join("deploy").join(rel))
            .unwrap_or_else(|e| panic!("read deploy/{rel}: {e}"))
    };
    let kustomization: Value = serde_norway::from_str(&read("kustomization.yaml")).unwrap();
    kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| documents(&read(f.as_str().unwrap())))
        .collect()
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args(deployment: &Value) -> Vec<String> {
    container(deployment)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lint_is_strict_clean() {
    for extra in [
        &[][..],
        &["--set", "watchNamespaces={team-a,team-b}"],
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "podDisruptionBudget.enabled=true",
        ],
        &[
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicas=1",
        ],
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
        ],
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.namespace=monitoring",
            "--set",
            "prometheusRule.additionalLabels.release=prometheus",
            "--set",
            "prometheusRule.alerts.HectorOperatorNoLeader.enabled=false",
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "grafanaDashboard.namespace=monitoring",
        ],
    ] {
        let out = run(Command::new(helm())
            .args(["lint", "--strict"])
            .arg(chart_dir())
            .args(extra));
        assert!(
            out.ok,
            "helm lint --strict {extra:?}:\n{}{}",
            out.stdout, out.stderr
        );
        assert!(
            !out.stdout.contains("[WARNING]") && !out.stdout.contains("[ERROR]"),
            "helm lint --strict {extra:?} has findings:\n{}",
            out.stdout
        );
    }
}

#[test]
fn chart_version_follows_the_crate() {
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        chart["appVersion"], version,
        "Chart.yaml appVersion follows Cargo.toml"
    );
    assert_eq!(
        chart["version"], version,
        "Chart.yaml version follows Cargo.toml"
    );
    // The default image tag is the appVersion.
    let docs = render("hector-operator", "hector-system", &[]);
    let d = find(&docs, "Deployment", "hector-operator");
    assert_eq!(
        container(d)["image"],
        format!("hector.dev/hector-operator:{version}")
    );
}

/// A typo or a wrong type fails `helm template` (and install/upgrade) with a message that says
/// which value is wrong.
#[test]
fn values_schema_rejects_typos_and_wrong_types() {
    for (args, expected) in [
        (
            &["--set", "replicaCount=3"][..],
            "additional properties 'replicaCount' not allowed",
        ),
        (
            &["--set", "replicas=two"],
            "at '/replicas': got string, want integer",
        ),
        (
            &["--set", "image.repo=example.org/hector-operator"],
            "at '/image': additional properties 'repo' not allowed",
        ),
        (&["--set", "logging.format=xml"], "at '/logging/format'"),
        (
            &["--set", "leaderElection.enabled=yes"],
            "at '/leaderElection/enabled': got string, want boolean",
        ),
        (
            &["--set", "watchNamespaces=team-a"],
            "at '/watchNamespaces': got string, want array",
        ),
        (
            &["--set", "watchNamespaces={Team_A}"],
            "at '/watchNamespaces/0'",
        ),
        (
            &["--set", "resources.limit.memory=1Gi"],
            "at '/resources': additional properties 'limit' not allowed",
        ),
        (
            &["--set", "securityContext.runAsRoot=true"],
            "at '/securityContext': additional properties 'runAsRoot' not allowed",
        ),
        (&["--set", "metrics.port=0"], "at '/metrics/port'"),
        (
            &["--set", "prometheusRule.enabled=on"],
            "at '/prometheusRule/enabled': got string, want boolean",
        ),
        (
            &[
                "--set",
                "prometheusRule.alerts.HectorPluginNotReady.for=ten",
            ],
            "at '/prometheusRule/alerts/HectorPluginNotReady/for'",
        ),
        (
            &[
                "--set",
                "prometheusRule.alerts.HectorPluginNotReady.severity=",
            ],
            "at '/prometheusRule/alerts/HectorPluginNotReady/severity'",
        ),
        (
            &[
                "--set",
                "prometheusRule.alerts.HectorPluginProbeFailures.threshold=20",
            ],
            "at '/prometheusRule/alerts/HectorPluginProbeFailures/threshold'",
        ),
        (
            &[
                "--set",
                "prometheusRule.alerts.HectorPluginDown.enabled=true",
            ],
            "at '/prometheusRule/alerts': additional properties 'HectorPluginDown' not allowed",
        ),
        (
            &["--set-json", r#"prometheusRule.selector="{job=\"x\"}""#],
            "at '/prometheusRule/selector'",
        ),
        (
            &["--set", "grafanaDashboard.label.grafana_dashboard=1"],
            "at '/grafanaDashboard': additional properties 'label' not allowed",
        ),
        (
            &["--set", "grafanaDashboard.labels.grafana_dashboard=1"],
            "at '/grafanaDashboard/labels/grafana_dashboard': got number, want string",
        ),
    ] {
        let out = template("hector-operator", "hector-system", args);
        assert!(
            !out.ok,
            "helm template {args:?} succeeded, expected a schema error"
        );
        assert_eq!(out.code, Some(1), "helm template {args:?}: exit code");
        assert!(
            out.stderr
                .contains("values don't meet the specifications of the schema"),
            "helm template {args:?}: not a schema error:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(expected),
            "helm template {args:?}: message lacks {expected:?}:\n{}",
            out.stderr
        );
    }
}

/// By default the chart installs what `deploy/` does: the same Deployment (containers, args,
/// probes, security context, resources), RBAC rules and bindings, ServiceAccount and metrics
/// Service. Labels differ on purpose (Helm's managed-by, chart and version labels).
#[test]
fn default_render_matches_deploy() {
    let chart = render(
        "hector-operator",
        "hector-system",
        &["--set", "image.tag=dev"],
    );
    let deploy = deploy_documents();

    let objects = |docs: &[Value]| {
        let mut v: Vec<String> = docs
            .iter()
            .filter(|d| {
                !is_hook(d) && d["kind"] != "Namespace" && d["kind"] != "CustomResourceDefinition"
            })
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(objects(&chart), objects(&deploy), "the same objects");

    let strip = |doc: &Value| {
        let mut doc = doc.clone();
        doc["metadata"].as_object_mut().unwrap().remove("labels");
        doc
    };
    for doc in deploy
        .iter()
        .filter(|d| d["kind"] != "Namespace" && d["kind"] != "CustomResourceDefinition")
    {
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        let ours = find(&chart, kind, name);
        // Both carry the selector labels on every object.
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/part-of",
        ] {
            assert_eq!(
                ours["metadata"]["labels"][key], doc["metadata"]["labels"][key],
                "{kind}/{name}: label {key}"
            );
        }
        assert_same(&format!("{kind}/{name}"), &strip(ours), &strip(doc));
    }
    // Spelled out, for the reader: the parts that matter most.
    let ours = find(&chart, "Deployment", "hector-operator");
    let theirs = find(&deploy, "Deployment", "hector-operator");
    assert_eq!(args(ours), args(theirs));
    assert_same("container", container(ours), container(theirs));
    assert_same(
        "ClusterRole rules",
        &find(&chart, "ClusterRole", "hector-operator")["rules"],
        &find(&deploy, "ClusterRole", "hector-operator")["rules"],
    );
}

#[test]
fn namespaced_install_gets_roles_per_namespace_only() {
    let docs = render(
        "hector",
        "hector-system",
        &["--set", "watchNamespaces={team-a,team-b}"],
    );
    assert!(kinds(&docs, "ClusterRole").is_empty(), "no ClusterRole");
    assert!(
        kinds(&docs, "ClusterRoleBinding").is_empty(),
        "no ClusterRoleBinding"
    );
    let cluster_rules = render("hector", "hector-system", &[])
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("ClusterRole by default")["rules"]
        .clone();
    let roles = kinds(&docs, "Role");
    for ns in ["team-a", "team-b"] {
        let role = roles
            .iter()
            .find(|r| {
                r["metadata"]["namespace"] == ns
                    && r["metadata"]["name"] == "hector-hector-operator"
            })
            .unwrap_or_else(|| panic!("a Role in {ns}"));
        assert_eq!(role["rules"], cluster_rules, "the same rules in {ns}");
        let binding = kinds(&docs, "RoleBinding")
            .into_iter()
            .find(|b| b["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("a RoleBinding in {ns}"));
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "hector-hector-operator", "namespace": "hector-system"}])
        );
        assert_eq!(binding["roleRef"]["kind"], "Role");
    }
    let lease = find(&docs, "Role", "hector-hector-operator-leader-election");
    assert_eq!(lease["metadata"]["namespace"], "hector-system");
    assert_eq!(roles.len(), 3, "two watched namespaces plus the lease Role");
    let d = find(&docs, "Deployment", "hector-hector-operator");
    assert!(args(d).contains(&"--namespaces=team-a,team-b".to_string()));
}

#[test]
fn values_reach_the_pod() {
    let values = [
        "replicas=3",
        "image.repository=registry.example.org/hector-operator",
        "image.tag=1.2.3",
        "image.pullPolicy=Always",
        "imagePullSecrets[0].name=pull",
        "logging.format=text",
        "logging.level=info\\,hector_operator=debug",
        "endpointsConfigMap=agents-plugins",
        "leaderElection.leaseName=ops-lease",
        "leaderElection.leaseDurationSeconds=30",
        "metrics.port=9090",
        "health.port=9091",
        "extraArgs={--plugin-dir=/opt/remote}",
        "extraEnv[0].name=RUST_BACKTRACE",
        "nodeSelector.pool=system",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "tolerations[0].effect=NoSchedule",
        "priorityClassName=system-cluster-critical",
        "podAnnotations.team=platform",
        "podLabels.tier=control",
        "resources.limits.memory=512Mi",
    ];
    let mut flags: Vec<&str> = values.iter().flat_map(|v| ["--set", *v]).collect();
    flags.extend([
        "--set-string",
        "extraEnv[0].value=1",
        "--set-json",
        r#"affinity={"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":100,"podAffinityTerm":{"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"app.kubernetes.io/name":"hector-operator"}}}}]}}"#,
    ]);
    let docs = render("ops", "platform", &flags);
    let d = find(&docs, "Deployment", "ops-hector-operator");
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"];
    let c = container(d);
    let image = "registry.example.org/hector-operator:1.2.3";
    assert_eq!(c["image"], image);
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        args(d),
        [
            "run",
            &format!("--launcher-image={image}"),
            "--log-format=text",
            "--log-level=info,hector_operator=debug",
            "--endpoints-configmap=agents-plugins",
            "--metrics-addr=0.0.0.0:9090",
            "--health-addr=0.0.0.0:9091",
            "--lease-name=ops-lease",
            "--lease-duration=30",
            // Another release name, other selector labels: plugin NetworkPolicies follow.
            "--operator-pod-labels=app.kubernetes.io/name=hector-operator,app.kubernetes.io/instance=ops",
            "--plugin-dir=/opt/remote",
        ]
    );
    assert_eq!(c["env"][3], json!({"name": "RUST_BACKTRACE", "value": "1"}));
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(c["ports"][1]["containerPort"], 9091);
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(
        c["resources"]["requests"]["cpu"], "50m",
        "defaults merge with overrides"
    );
    assert_eq!(pod["spec"]["imagePullSecrets"], json!([{"name": "pull"}]));
    assert_eq!(pod["spec"]["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert!(pod["spec"]["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(pod["metadata"]["annotations"]["team"], "platform");
    assert_eq!(pod["metadata"]["labels"]["tier"], "control");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/instance"],
        "ops"
    );
    let svc = find(&docs, "Service", "ops-hector-operator-metrics");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9090);

    // A digest pins the image, and the launcher image follows it; or the launcher comes
    // from an image of its own.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = render(
        "ops",
        "platform",
        &["--set", &format!("image.digest={digest}")],
    );
    let d = find(&docs, "Deployment", "ops-hector-operator");
    let pinned = format!("hector.dev/hector-operator@{digest}");
    assert_eq!(container(d)["image"], pinned);
    assert_eq!(args(d)[1], format!("--launcher-image={pinned}"));
    let docs = render(
        "ops",
        "platform",
        &[
            "--set",
            "launcher.image=example.org/launcher:1",
            "--set",
            "launcher.pullPolicy=Always",
        ],
    );
    let a = args(find(&docs, "Deployment", "ops-hector-operator"));
    assert_eq!(a[1], "--launcher-image=example.org/launcher:1");
    assert!(a.contains(&"--launcher-pull-policy=Always".to_string()));
}

/// The labels the operator tells plugin NetworkPolicies to let in, parsed from its flags (or
/// the operator's default when the chart passes none).
fn operator_pod_labels(deployment: &Value) -> serde_json::Map<String, Value> {
    let flag = args(deployment)
        .iter()
        .find_map(|a| a.strip_prefix("--operator-pod-labels=").map(str::to_string))
        .unwrap_or_else(|| hector_operator::run::DEFAULT_POD_LABELS.to_string());
    hector_operator::run::parse_labels(&flag)
        .expect("the chart passes valid labels")
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// Plugin NetworkPolicies let in the operator's Pods by its selector labels, and plugins admit
/// its ServiceAccount: whatever the release is called, the operator is told the labels its own
/// Pods carry and learns its ServiceAccount from its Pod. Its prober's token has the plugins'
/// audience.
#[test]
fn plugins_let_in_the_operator_whatever_the_release_is_called() {
    for (release, extra) in [
        ("hector-operator", &[][..]),
        ("ops", &[][..]),
        ("ops", &["--set", "nameOverride=hector"][..]),
        (
            "ops",
            &[
                "--set",
                "podLabels.tier=control",
                "--set",
                "serviceAccount.name=robot",
            ][..],
        ),
    ] {
        let docs = render(release, "platform", extra);
        let d = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
        let labels = operator_pod_labels(d);
        assert_eq!(
            Value::Object(labels.clone()),
            d["spec"]["selector"]["matchLabels"],
            "{release} {extra:?}: the policy selects the operator's Pods by its selector"
        );
        for (k, v) in &labels {
            assert_eq!(
                &d["spec"]["template"]["metadata"]["labels"][k], v,
                "{release} {extra:?}: the operator's Pods carry {k}"
            );
        }
        let c = container(d);
        let env = c["env"].as_array().expect("env");
        assert!(
            env.contains(&json!({"name": "OPERATOR_SERVICE_ACCOUNT",
                "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}})),
            "{env:?}"
        );
        assert!(
            env.contains(&json!({"name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})),
            "{env:?}"
        );
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "plugin-token", "mountPath": "/var/run/secrets/hector.dev", "readOnly": true}])
        );
        assert_eq!(
            pod["volumes"],
            json!([{"name": "plugin-token", "projected": {"sources": [{"serviceAccountToken":
                {"audience": "hector.dev/plugins", "expirationSeconds": 3600, "path": "token"}}]}}])
        );
    }
}

/// The chart's rules, cluster-wide or per namespace: plugin NetworkPolicies can be managed,
/// and still nothing on Secrets.
#[test]
fn rules_cover_network_policies_and_never_secrets() {
    for extra in [&[][..], &["--set", "watchNamespaces={team-a}"][..]] {
        let docs = render("hector", "hector-system", extra);
        let roles: Vec<Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .cloned()
            .collect();
        let rules: Vec<&Value> = roles
            .iter()
            .flat_map(|r| r["rules"].as_array().expect("rules").iter())
            .collect();
        assert!(
            rules.contains(
                &&json!({"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                "verbs": ["get", "list", "watch", "create", "patch", "delete"]})
            ),
            "{extra:?}: {rules:?}"
        );
        for rule in rules {
            let resources = rule["resources"].as_array().expect("resources");
            assert!(!resources.contains(&json!("secrets")), "{extra:?}: {rule}");
            assert!(!resources.contains(&json!("*")), "{extra:?}: {rule}");
        }
    }
}

#[test]
fn leader_election_can_be_turned_off_for_one_replica_only() {
    let docs = render(
        "hector-operator",
        "hector-system",
        &[
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicas=1",
        ],
    );
    let d = find(&docs, "Deployment", "hector-operator");
    assert_eq!(args(d).last().unwrap(), "--leader-elect=false");
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "hector-operator-leader-election"),
        "no lease Role without leader election"
    );
    let out = template(
        "hector-operator",
        "hector-system",
        &["--set", "leaderElection.enabled=false"],
    );
    assert!(
        !out.ok,
        "two replicas without leader election must not render"
    );
    assert!(
        out.stderr
            .contains("replicas > 1 needs leaderElection.enabled"),
        "{}",
        out.stderr
    );
}

#[test]
fn optional_objects_render_when_enabled() {
    let docs = render("hector-operator", "hector-system", &[]);
    assert!(kinds(&docs, "ServiceMonitor").is_empty());
    assert!(kinds(&docs, "PodDisruptionBudget").is_empty());
    assert!(kinds(&docs, "PrometheusRule").is_empty());
    assert!(
        kinds(&docs, "ConfigMap").is_empty(),
        "no dashboard ConfigMap by default"
    );

    let docs = render(
        "hector-operator",
        "hector-system",
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.labels.release=prometheus",
            "--set",
            "podDisruptionBudget.enabled=true",
        ],
    );
    let sm = find(&docs, "ServiceMonitor", "hector-operator");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        sm["spec"]["endpoints"][0]["honorLabels"], true,
        "per-plugin series keep their namespace label"
    );
    let svc = find(&docs, "Service", "hector-operator-metrics");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the metrics Service"
        );
    }
    let pdb = find(&docs, "PodDisruptionBudget", "hector-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let docs = render(
        "hector-operator",
        "hector-system",
        &[
            "--set",
            "podDisruptionBudget.enabled=true",
            "--set",
            "podDisruptionBudget.maxUnavailable=1",
        ],
    );
    let pdb = find(&docs, "PodDisruptionBudget", "hector-operator");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"].get("minAvailable").is_none());
}

/// `helm test` runs a Pod that reaches /metrics through the metrics Service, under the
/// restricted security standard, and that the Service cannot select.
#[test]
fn test_hook_checks_the_metrics_service() {
    let docs = render("hector-operator", "hector-system", &[]);
    let pod = find(&docs, "Pod", "hector-operator-test-metrics");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let script = pod["spec"]["containers"][0]["command"][2].as_str().unwrap();
    assert!(
        script.contains("${HECTOR_OPERATOR_METRICS_SERVICE_HOST:-hector-operator-metrics}")
            && script.contains("port=8080")
            && script.contains("GET /metrics"),
        "{script}"
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let svc = find(&docs, "Service", "hector-operator-metrics");
    let selected = svc["spec"]["selector"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| &pod["metadata"]["labels"][k] == v);
    assert!(
        !selected,
        "the metrics Service must not select the test Pod"
    );
}

// The monitoring kit: the PrometheusRule and the Grafana dashboard, checked against what
// the operator really exports and, for the rules, by Prometheus's own promtool.

/// promtool: `PROMTOOL`, else the one `tests/setup/deps.d/45-promtool` builds and caches.
fn promtool() -> PathBuf {
    if let Ok(p) = std::env::var("PROMTOOL") {
        return p.into();
    }
    let out = Command::new(Path::new(ROOT).join("tests/setup/deps.d/45-promtool"))
        .arg("path")
        .output()
        .expect("run tests/setup/deps.d/45-promtool path");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "promtool is not built at {}: run tests/setup/deps (or make deps), or set PROMTOOL",
        path.display()
    );
    path
}

/// The operator's exposition with every metric touched once.
fn exposition() -> String {
    use hector_operator::crd::Phase;
    use hector_operator::index::PluginKey;
    use hector_operator::metrics::{Metrics, PluginState};
    use std::time::Duration;

    let m = Metrics::default();
    let key = PluginKey {
        namespace: "agents".into(),
        name: "echo-llm".into(),
    };
    let took = Duration::from_millis(2);
    m.set_leader(true);
    m.reconciled("ok", took);
    m.observe_probe(&key, Some("Unreachable"));
    m.observe_probe_round(took, 3);
    m.set_plugin(
        &key,
        PluginState {
            phase: Some(Phase::Ready),
            desired_endpoints: 1,
            ready_endpoints: 1,
        },
    );
    m.set_published("agents", [("echo-llm".to_string(), 1)]);
    m.published_after(took);
    m.configmap_written("agents");
    m.api_write("deployments");
    m.fenced_write();
    m.watch_error("pods");
    m.render()
}

/// Every series name the operator exports (histograms with `_bucket`, `_sum`, `_count`).
fn exported_names() -> BTreeSet<String> {
    exposition()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The metric names a PromQL expression selects: every identifier that is not inside a
/// string, a label matcher, a range, a grouping clause, nor a function or keyword.
fn selected_metrics(expr: &str) -> Vec<String> {
    let strings = regex::Regex::new(r#""(\\.|[^"\\])*""#).unwrap();
    let blocks = regex::Regex::new(r"\{[^}]*\}|\[[^\]]*\]").unwrap();
    let groupings =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
            .unwrap();
    let identifiers = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?").unwrap();
    let keywords = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "Inf",
        "NaN",
        "inf",
        "nan",
    ];
    let expr = strings.replace_all(expr, "\"\"");
    let expr = blocks.replace_all(&expr, "");
    let expr = groupings.replace_all(&expr, "");
    identifiers
        .find_iter(&expr)
        .map(|m| m.as_str())
        .filter(|t| !t.ends_with('(') && !keywords.contains(t))
        .filter(|t| {
            // Not the exponent of a number such as 1e9.
            !t.starts_with('e') || !t[1..].chars().all(|c| c.is_ascii_digit())
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn selected_metrics_finds_the_names_and_only_them() {
    assert_eq!(
        selected_metrics(
            r#"sum by (namespace, plugin) (rate(a_total{job="x", state=~"b|c"}[5m])) / on (plugin) group_left max(b_count) > 0.5 and vector(0) or absent(c{d="e"})"#
        ),
        ["a_total", "b_count", "c"]
    );
    assert_eq!(
        selected_metrics(
            r#"histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))"#
        ),
        ["h_bucket"]
    );
}

/// Renders the chart with the rules on and returns the PrometheusRule.
fn prometheus_rule(extra: &[&str]) -> Value {
    let mut args = vec!["--set", "prometheusRule.enabled=true"];
    args.extend(extra);
    let docs = render("hector-operator", "hector-system", &args);
    let rules = kinds(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    rules[0].clone()
}

fn alerts(rule: &Value) -> Vec<&Value> {
    rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

/// Writes the rule group as a Prometheus rule file, `rules.yaml`, into `dir`.
fn write_rule_file(rule: &Value, dir: &Path) -> PathBuf {
    let path = dir.join("rules.yaml");
    let file = json!({"groups": rule["spec"]["groups"]});
    std::fs::write(&path, serde_norway::to_string(&file).expect("YAML")).expect("write rules");
    path
}

const ALERTS: [&str; 5] = [
    "HectorPluginNotReady",
    "HectorPluginEndpointsBelowDesired",
    "HectorPluginProbeFailures",
    "HectorOperatorNoLeader",
    "HectorOperatorReconcileErrors",
];

/// The rendered rules load in promtool (a broken PromQL expression fails here), every alert
/// has its annotations and a runbook section, selects only metrics the operator exports, and
/// fires — or stays quiet — as tests/prometheus/alerts_test.yaml says (`promtool test rules`).
#[test]
fn prometheus_rules_load_in_promtool_and_fire_as_tested() {
    let rule = prometheus_rule(&[]);
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "hector-system");
    let exported = exported_names();
    let runbooks =
        std::fs::read_to_string(Path::new(ROOT).join("docs/alerts.md")).expect("docs/alerts.md");
    let names: Vec<&str> = alerts(&rule)
        .iter()
        .map(|a| a["alert"].as_str().expect("an alert name"))
        .collect();
    assert_eq!(names, ALERTS);
    for a in alerts(&rule) {
        let name = a["alert"].as_str().unwrap();
        let expr = a["expr"].as_str().expect("expr");
        assert!(
            expr.contains(r#"job="hector-operator-metrics""#),
            "{name} selects this release's series: {expr}"
        );
        let selected = selected_metrics(expr);
        assert!(!selected.is_empty(), "{name}: {expr}");
        for metric in selected {
            assert!(
                exported.contains(&metric),
                "{name} uses {metric}, which the operator does not export ({exported:?})"
            );
        }
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                a["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} lacks annotation {key}"
            );
        }
        assert!(a["labels"]["severity"].is_string(), "{name}: severity");
        let anchor = a["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .rsplit_once('#')
            .expect("an anchor")
            .1;
        assert_eq!(anchor, name.to_lowercase());
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "docs/alerts.md has no section for {name}"
        );
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let rules = write_rule_file(&rule, dir.path());
    let out = run(Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules));
    assert!(
        out.ok,
        "promtool check rules:\n{}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("SUCCESS: 5 rules found"),
        "{}",
        out.stdout
    );

    // Every alert has a promtool test case, and every case passes.
    let cases = Path::new(ROOT).join("tests/prometheus/alerts_test.yaml");
    let text = std::fs::read_to_string(&cases).expect("read alerts_test.yaml");
    let tested: Value = serde_norway::from_str(&text).expect("alerts_test.yaml is YAML");
    let tested: BTreeSet<&str> = tested["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().expect("alert_rule_test"))
        .filter(|c| !c["exp_alerts"].as_array().expect("exp_alerts").is_empty())
        .map(|c| c["alertname"].as_str().expect("alertname"))
        .collect();
    assert_eq!(
        tested,
        ALERTS.into_iter().collect(),
        "every alert is shown firing in alerts_test.yaml"
    );
    std::fs::write(dir.path().join("alerts_test.yaml"), text).expect("copy the cases");
    let out = run(Command::new(promtool())
        .args(["test", "rules", "alerts_test.yaml"])
        .current_dir(dir.path()));
    assert!(out.ok, "promtool test rules:\n{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("SUCCESS"), "{}", out.stdout);
}

/// The check bites: an expression Prometheus cannot parse (here from a selector with a broken
/// regular expression) fails `promtool check rules`, naming the alert's rule.
#[test]
fn a_broken_expression_fails_promtool() {
    let rule = prometheus_rule(&["--set-json", r#"prometheusRule.selector="job=~\"(\"""#]);
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = write_rule_file(&rule, dir.path());
    let out = run(Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules));
    assert!(
        !out.ok,
        "promtool accepted a broken expression:\n{}",
        out.stdout
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("FAILED"), "{said}");
    assert!(said.contains("error parsing regexp"), "{said}");
}

/// Per alert: off, another `for`, another severity, another threshold; labels on the object
/// and on every alert; another namespace and selector.
#[test]
fn prometheus_rule_values_reach_each_alert() {
    let rule = prometheus_rule(&[
        "--set",
        "prometheusRule.namespace=monitoring",
        "--set",
        "prometheusRule.additionalLabels.release=prometheus",
        "--set",
        "prometheusRule.alertLabels.team=platform",
        "--set-json",
        r#"prometheusRule.selector="job=\"ops\", cluster=\"eu-1\"""#,
        "--set",
        "prometheusRule.runbookUrl=https://runbooks.example.org/hector",
        "--set",
        "prometheusRule.alerts.HectorPluginNotReady.enabled=false",
        "--set",
        "prometheusRule.alerts.HectorOperatorNoLeader.for=2m",
        "--set",
        "prometheusRule.alerts.HectorOperatorNoLeader.severity=page",
        // `--set` passes 0.05 as a string; the schema takes it.
        "--set",
        "prometheusRule.alerts.HectorPluginProbeFailures.threshold=0.05",
    ]);
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        rule["metadata"]["labels"]["app.kubernetes.io/instance"],
        "hector-operator"
    );
    let all = alerts(&rule);
    let by_name = |n: &str| {
        *all.iter()
            .find(|a| a["alert"] == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    assert!(
        all.iter().all(|a| a["alert"] != "HectorPluginNotReady"),
        "a disabled alert is left out"
    );
    assert_eq!(all.len(), 4);
    let no_leader = by_name("HectorOperatorNoLeader");
    assert_eq!(no_leader["for"], "2m");
    assert_eq!(no_leader["labels"]["severity"], "page");
    assert!(
        no_leader["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("for 2m"),
        "the description follows `for`"
    );
    assert_eq!(
        no_leader["annotations"]["runbook_url"],
        "https://runbooks.example.org/hector#hectoroperatornoleader"
    );
    let probes = by_name("HectorPluginProbeFailures");
    let expr = probes["expr"].as_str().unwrap();
    assert!(expr.trim_end().ends_with("> 0.05"), "{expr}");
    assert!(
        probes["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("more than 5% for 10m"),
        "{}",
        probes["annotations"]["description"]
    );
    for a in &all {
        assert_eq!(a["labels"]["team"], "platform", "{}", a["alert"]);
        let expr = a["expr"].as_str().unwrap();
        assert!(
            expr.contains(r#"job="ops", cluster="eu-1""#)
                && !expr.contains("hector-operator-metrics"),
            "{}: {expr}",
            a["alert"]
        );
    }
    // The defaults elsewhere.
    assert_eq!(by_name("HectorPluginEndpointsBelowDesired")["for"], "15m");
    assert_eq!(
        by_name("HectorOperatorReconcileErrors")["labels"]["severity"],
        "warning"
    );
    // Still valid PromQL with another selector.
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = write_rule_file(&rule, dir.path());
    let out = run(Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules));
    assert!(
        out.ok,
        "promtool check rules:\n{}{}",
        out.stdout, out.stderr
    );
}

fn dashboard_file() -> Value {
    let path = chart_dir().join("dashboards/hector-operator.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
        .expect("the dashboard is JSON")
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// The ConfigMap the Grafana sidecar loads: its label (configurable), the dashboard JSON as
/// the chart ships it.
#[test]
fn dashboard_configmap_is_for_the_grafana_sidecar() {
    let docs = render(
        "hector-operator",
        "hector-system",
        &["--set", "grafanaDashboard.enabled=true"],
    );
    let cm = find(&docs, "ConfigMap", "hector-operator-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "hector-system");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "hector"
    );
    let data = cm["data"].as_object().expect("data");
    assert_eq!(data.len(), 1);
    let shipped: Value = serde_json::from_str(
        data["hector-operator.json"]
            .as_str()
            .expect("the dashboard as a string"),
    )
    .expect("the ConfigMap holds valid JSON");
    assert_eq!(shipped, dashboard_file());

    let docs = render(
        "ops",
        "platform",
        &[
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "grafanaDashboard.namespace=monitoring",
            "--set",
            "grafanaDashboard.labels.grafana_dashboard=null",
            "--set-string",
            "grafanaDashboard.labels.dashboards=hector",
            "--set",
            "grafanaDashboard.annotations.grafana_folder=Hector",
        ],
    );
    let cm = find(&docs, "ConfigMap", "ops-hector-operator-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["dashboards"], "hector");
    assert!(
        cm["metadata"]["labels"].get("grafana_dashboard").is_none(),
        "the default label can be dropped"
    );
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Hector");
}

/// Every panel queries metrics the operator exports, through the dashboard's data source
/// variable; the panels the dashboard promises are there.
#[test]
fn dashboard_queries_only_exported_metrics() {
    let dashboard = dashboard_file();
    let exported = exported_names();
    assert_eq!(dashboard["uid"], "hector-operator");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .map(|v| v["name"].as_str().expect("a variable name"))
        .collect();
    assert_eq!(variables, ["datasource", "job", "namespace", "plugin"]);
    let mut used = BTreeSet::new();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            let metric = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split(['{', ',']).next())
                .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
            assert!(
                exported.contains(metric),
                "variable {}: {metric}",
                v["name"]
            );
        }
    }
    let mut ids = BTreeSet::new();
    for p in panels(&dashboard) {
        let title = p["title"].as_str().expect("a title");
        assert!(
            ids.insert(p["id"].as_i64().expect("an id")),
            "{title}: id taken"
        );
        let grid = &p["gridPos"];
        assert!(
            grid["x"].as_i64().unwrap() + grid["w"].as_i64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(expr.contains(r#"job="$job""#), "{title}: {expr}");
            let selected = selected_metrics(expr);
            assert!(!selected.is_empty(), "{title}: {expr}");
            for metric in selected {
                assert!(
                    exported.contains(&metric),
                    "panel {title:?} queries {metric}, which the operator does not export"
                );
                used.insert(metric);
            }
        }
    }
    for wanted in [
        "hector_operator_plugins",
        "hector_operator_plugin_endpoints",
        "hector_operator_plugin_ready",
        "hector_operator_probe_duration_seconds_bucket",
        "hector_operator_probe_failures_total",
        "hector_operator_reconciles_total",
        "hector_operator_reconcile_duration_seconds_bucket",
        "hector_operator_publication_duration_seconds_bucket",
        "hector_operator_leader",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}

/// Prometheus's own OpenMetrics parser reads the exposition (what a scrape of `/metrics`,
/// served as OpenMetrics, goes through): promtool imports it, stamped with a time, into a TSDB
/// block. A malformed line, a histogram out of order or a family typed twice fails here.
#[test]
fn exposition_parses_as_openmetrics_in_promtool() {
    let stamped: String = exposition()
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{l}\n")
            } else {
                format!("{l} 1700000000\n")
            }
        })
        .collect();
    assert!(stamped.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("metrics.om");
    std::fs::write(&input, &stamped).expect("write the exposition");
    let out = run(Command::new(promtool())
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(dir.path().join("blocks")));
    assert!(
        out.ok,
        "promtool could not read the exposition:\n{}{}\n{stamped}",
        out.stdout, out.stderr
    );
    let samples = stamped.lines().filter(|l| !l.starts_with('#')).count();
    assert!(samples > 40, "{samples} samples");
}

#[cfg(feature = "e2e")]
mod cluster {
    //! Against the live cluster (`KUBECONFIG`), with the project's images loaded.

    use std::collections::BTreeSet;
    use std::time::Duration;

    use hector_operator::crd::{HectorPlugin, Phase};
    use hector_plugin_sdk::endpoints::EndpointsFile;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Client;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

    use super::*;
    use crate::common::{TestNamespace, client, eventually, generate_text_as, mint_token};

    /// The endpoints ConfigMap (the chart's default `endpointsConfigMap`).
    const ENDPOINTS_CM: &str = "hector-plugins";
    /// The operator's Lease (the chart's default `leaderElection.leaseName`), in the release
    /// namespace.
    const LEASE: &str = "hector-operator";
    /// The HectorPlugin the lifecycle test runs.
    const PLUGIN: &str = "echo-llm";

    /// Runs a command without blocking the runtime.
    async fn exec(mut cmd: Command) -> Output {
        tokio::task::spawn_blocking(move || run(&mut cmd))
            .await
            .expect("command thread")
    }

    fn kubectl() -> PathBuf {
        if let Ok(k) = std::env::var("KUBECTL") {
            return k.into();
        }
        let out = Command::new(Path::new(ROOT).join("tests/cluster/cluster"))
            .arg("kubectl-path")
            .output()
            .expect("tests/cluster/cluster kubectl-path");
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if path.is_file() {
            path
        } else {
            "kubectl".into()
        }
    }

    /// Values that make the chart use the locally built images and keep to one namespace.
    fn local_values(ns: &str) -> Vec<String> {
        [
            "image.tag=dev".to_string(),
            format!("watchNamespaces={{{ns}}}"),
            "tests.image.repository=hector.dev/busybox".to_string(),
            "tests.image.tag=dev".to_string(),
        ]
        .into_iter()
        .flat_map(|v| ["--set".to_string(), v])
        .collect()
    }

    /// The API server accepts every object the chart renders (server-side dry run): the
    /// cluster-wide default, and a namespaced install with the optional objects turned on.
    #[tokio::test]
    async fn rendered_chart_passes_server_dry_run() {
        let client = client().await;
        let ns = TestNamespace::new(&client, "chart-dry").await;
        for extra in [
            &[][..],
            &[
                "--set",
                "podDisruptionBudget.enabled=true",
                "--set",
                "extraEnv[0].name=A",
                "--set",
                "extraEnv[0].value=b",
            ][..],
        ] {
            let mut template_args = vec!["--include-crds".to_string()];
            template_args.extend(extra.iter().map(|s| s.to_string()));
            let docs: Vec<Value> = render(
                &format!("dry-{}", ns.name),
                &ns.name,
                &template_args.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            let namespaced = render(
                &format!("dry-ns-{}", ns.name),
                &ns.name,
                &local_values(&ns.name)
                    .iter()
                    .map(String::as_str)
                    .chain(extra.iter().copied())
                    .collect::<Vec<_>>(),
            );
            for (what, docs) in [("cluster-wide", docs), ("namespaced", namespaced)] {
                let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
                let path = std::env::temp_dir().join(format!("{}-{what}.json", ns.name));
                std::fs::write(&path, list.to_string()).unwrap();
                let mut cmd = Command::new(kubectl());
                cmd.args(["apply", "--dry-run=server", "-f"]).arg(&path);
                let out = exec(cmd).await;
                let _ = std::fs::remove_file(&path);
                assert!(
                    out.ok,
                    "{what} {extra:?}: the API server rejects the chart:\n{}{}",
                    out.stdout, out.stderr
                );
                for kind in [
                    "deployment.apps/",
                    "service/",
                    "serviceaccount/",
                    "rolebinding",
                ] {
                    assert!(
                        out.stdout.contains(kind),
                        "{what}: dry run lacks {kind}:\n{}",
                        out.stdout
                    );
                }
            }
        }
    }

    /// Everything the release created, by its instance label: namespaced kinds in `ns` and
    /// cluster-scoped RBAC.
    async fn release_objects(release: &str, ns: &str) -> Vec<String> {
        let mut cmd = Command::new(kubectl());
        cmd.args([
            "get",
            "deployments,replicasets,pods,services,serviceaccounts,configmaps,secrets,roles,rolebindings,poddisruptionbudgets",
            "-n",
            ns,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ]);
        let mut found: Vec<String> = exec(cmd).await.stdout.lines().map(str::to_string).collect();
        let mut cmd = Command::new(kubectl());
        cmd.args([
            "get",
            "clusterroles,clusterrolebindings",
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ]);
        found.extend(exec(cmd).await.stdout.lines().map(str::to_string));
        // Helm's own record of the release.
        let mut cmd = Command::new(kubectl());
        cmd.args([
            "get",
            "secrets",
            "-n",
            ns,
            "-l",
            &format!("owner=helm,name={release}"),
            "-o",
            "name",
        ]);
        found.extend(exec(cmd).await.stdout.lines().map(str::to_string));
        found
    }

    /// The Pods of `release` in `ns`, terminating ones included.
    async fn operator_pods(client: &Client, ns: &str, release: &str) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Who holds the operator's Lease in `ns`.
    async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
        leases
            .get_opt(LEASE)
            .await
            .ok()??
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    }

    /// What the release's Pods, the namespace's events and the plugin look like, for a failure.
    async fn diagnostics(ns: &str, release: &str) -> String {
        let mut out = String::new();
        for args in [
            vec![
                "get",
                "pods,hp,deployments,services,configmaps,leases",
                "-o",
                "wide",
            ],
            vec!["describe", "hp"],
            vec![
                "logs",
                "-l",
                &format!("app.kubernetes.io/instance={release}"),
                "--tail=30",
                "--prefix",
            ],
        ] {
            let mut cmd = Command::new(kubectl());
            cmd.args(["-n", ns]).args(&args);
            let o = exec(cmd).await;
            out.push_str(&format!(
                "--- kubectl {}\n{}{}\n",
                args.join(" "),
                o.stdout,
                o.stderr
            ));
        }
        out
    }

    /// `helm ARGS...` with the release's values, failing the test with Helm's words and what
    /// the namespace looks like.
    async fn helm_ok(ns: &str, release: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(helm());
        cmd.args(args);
        let out = exec(cmd).await;
        if !out.ok {
            panic!(
                "helm {args:?} failed:\n{}{}\n{}",
                out.stdout,
                out.stderr,
                diagnostics(ns, release).await
            );
        }
        out
    }

    /// The echo-llm example plugin, from the image `make images` loads.
    fn echo_plugin() -> Value {
        json!({
            "apiVersion": "hector.dev/v1alpha1",
            "kind": "HectorPlugin",
            "metadata": {"name": PLUGIN},
            "spec": {
                "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider",
                             "capabilities": {"streaming": true}},
                "image": "hector.dev/echo-llm:dev",
                "imagePullPolicy": "Never",
                "command": ["/plugin/echo-llm"],
                "config": {"prefix": "chart: "},
                "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
            },
        })
    }

    fn phase(p: &HectorPlugin) -> Option<Phase> {
        p.status.as_ref()?.phase
    }

    /// The endpoints `cm` publishes for `plugin`, or what is wrong with it.
    fn published_endpoints(cm: Option<&ConfigMap>, plugin: &str) -> Result<Vec<String>, String> {
        let cm = cm.ok_or("the ConfigMap is not there")?;
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get("endpoints.json"))
            .ok_or("it has no endpoints.json")?;
        let file = EndpointsFile::parse(text).map_err(|e| e.to_string())?;
        let entry = file
            .plugins
            .get(plugin)
            .ok_or_else(|| format!("{plugin} is not in it: {text}"))?;
        if entry.endpoints.is_empty() {
            return Err(format!("{plugin} is in it without endpoints: {text}"));
        }
        Ok(entry.endpoints.clone())
    }

    /// What [`watch_publication`] saw.
    #[derive(Debug, Default)]
    struct Seen {
        /// Polls of the ConfigMap and the plugin (every 200 ms).
        polls: usize,
        /// Versions of the ConfigMap and the plugin the watches delivered.
        versions: usize,
        /// Failed API requests (not counted as observations).
        errors: usize,
        /// Every observation of the plugin unpublished, without endpoints or not Ready.
        problems: Vec<String>,
    }

    /// Until `stop`, polls the endpoints ConfigMap and the plugin every 200 ms and also
    /// watches both, so that every version written in between is seen too, recording each
    /// observation of the plugin's entry missing, without endpoints, or of its phase other
    /// than Ready.
    async fn watch_publication(
        client: Client,
        ns: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Seen {
        use futures::StreamExt;
        use kube::runtime::watcher;

        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let plugins: Api<HectorPlugin> = Api::namespaced(client, &ns);
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut cm_events = watcher(cms.clone(), by_name(ENDPOINTS_CM)).boxed();
        let mut plugin_events = watcher(plugins.clone(), by_name(PLUGIN)).boxed();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        let mut seen = Seen::default();
        let check_plugin = |p: Option<&HectorPlugin>| match p.map(phase) {
            None => Err("the HectorPlugin is not there".to_string()),
            Some(Some(Phase::Ready)) => Ok(()),
            Some(other) => Err(format!("phase {other:?}")),
        };
        loop {
            let at = started.elapsed();
            let (what, outcome) = tokio::select! {
                _ = stop.changed() => return seen,
                _ = tick.tick() => {
                    seen.polls += 1;
                    let cm = match cms.get_opt(ENDPOINTS_CM).await {
                        Ok(cm) => published_endpoints(cm.as_ref(), PLUGIN).map(drop),
                        Err(_) => { seen.errors += 1; Ok(()) }
                    };
                    let plugin = match plugins.get_opt(PLUGIN).await {
                        Ok(p) => check_plugin(p.as_ref()),
                        Err(_) => { seen.errors += 1; Ok(()) }
                    };
                    ("poll", cm.and(plugin))
                }
                Some(event) = cm_events.next() => match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                        seen.versions += 1;
                        ("ConfigMap watch", published_endpoints(Some(&cm), PLUGIN).map(drop))
                    }
                    Ok(watcher::Event::Delete(_)) => ("ConfigMap watch", Err("deleted".to_string())),
                    Ok(_) => continue,
                    Err(_) => { seen.errors += 1; continue }
                },
                Some(event) = plugin_events.next() => match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        seen.versions += 1;
                        ("HectorPlugin watch", check_plugin(Some(&p)))
                    }
                    Ok(watcher::Event::Delete(_)) => ("HectorPlugin watch", Err("deleted".to_string())),
                    Ok(_) => continue,
                    Err(_) => { seen.errors += 1; continue }
                },
            };
            if let Err(problem) = outcome {
                seen.problems.push(format!("{at:?} ({what}): {problem}"));
            }
        }
    }

    /// A metric of the operator Pod `pod` (its `/metrics`, through the API server's proxy).
    async fn pod_metric(client: &Client, ns: &str, pod: &str, metric: &str) -> Option<f64> {
        let uri = format!("/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/metrics");
        let request = http::Request::get(uri).body(Vec::new()).ok()?;
        let text = client.request_text(request).await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok())
    }

    /// Scales the operator in `hector-system` (if any) to zero, and back when dropped.
    struct MainOperatorAside(Option<String>);

    impl MainOperatorAside {
        fn new() -> Self {
            let replicas = Command::new(kubectl())
                .args([
                    "-n",
                    "hector-system",
                    "get",
                    "deployment",
                    "hector-operator",
                ])
                .args(["-o", "jsonpath={.spec.replicas}"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|r| !r.is_empty());
            if replicas.is_some() {
                let _ = Command::new(kubectl())
                    .args([
                        "-n",
                        "hector-system",
                        "scale",
                        "deployment",
                        "hector-operator",
                    ])
                    .args(["--replicas=0"])
                    .output();
            }
            Self(replicas)
        }
    }

    impl Drop for MainOperatorAside {
        fn drop(&mut self) {
            if let Some(replicas) = &self.0 {
                let _ = Command::new(kubectl())
                    .args([
                        "-n",
                        "hector-system",
                        "scale",
                        "deployment",
                        "hector-operator",
                    ])
                    .arg(format!("--replicas={replicas}"))
                    .output();
            }
        }
    }

    /// The whole life of a release, as a platform team runs it: `helm install` into a fresh
    /// namespace brings the operator up (`--wait`), `helm test` reaches its metrics through the
    /// Service; a HectorPlugin applied there becomes Ready, is published in the namespace's
    /// ConfigMap and answers a remote Generate at the published endpoint. `helm upgrade` with
    /// changed values rolls the operator Pods (new template, new leader) while the plugin stays
    /// published with its endpoints and Ready throughout — polled every 200 ms and watched, so
    /// no version written in between is missed — and keeps serving from the same Pods. Once the
    /// plugin (user data) is deleted, `helm uninstall` leaves nothing of the release behind;
    /// the CRD stays.
    ///
    /// The release watches only its own namespace and holds its own Lease there. An operator
    /// installed cluster-wide (from `deploy/`, as `make test` runs it) is scaled to zero
    /// meanwhile: two operators watching one namespace would each start the plugin's launcher
    /// admitting its own ServiceAccount, and roll its Pods back and forth.
    #[tokio::test]
    async fn install_publish_upgrade_uninstall() {
        let client = client().await;
        let ns = TestNamespace::new(&client, "chart-life").await;
        let release = "hector-life";
        let chart = chart_dir();
        let chart = chart.to_str().unwrap();
        let values = local_values(&ns.name);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();

        // Two operators must not watch one namespace: each starts plugins' launchers admitting
        // its own ServiceAccount, so they would roll the plugin's Pods back and forth. The
        // operator `make test` deploys watches every namespace: it stands aside meanwhile.
        let _aside = MainOperatorAside::new();
        // The release's cluster-scoped objects outlive its namespace when an earlier run of
        // this test failed before uninstalling; Helm would refuse to adopt them.
        for kind in [
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            let _ = Command::new(kubectl())
                .args(["delete", kind, "hector-life-hector-operator-config-keys"])
                .args(["--ignore-not-found"])
                .output();
        }
        let mut install = vec!["install", release, chart, "--namespace", &ns.name];
        install.extend(["--wait", "--timeout", "4m"]);
        install.extend(&values);
        helm_ok(&ns.name, release, &install).await;
        let before = operator_pods(&client, &ns.name, release).await;
        assert_eq!(before.len(), 2, "two operator replicas");

        let out = helm_ok(
            &ns.name,
            release,
            &["test", release, "--namespace", &ns.name, "--timeout", "3m"],
        )
        .await;
        assert!(
            out.stdout.contains("Phase:          Succeeded"),
            "{}",
            out.stdout
        );
        assert!(
            !release_objects(release, &ns.name).await.is_empty(),
            "the release's objects are found by label"
        );

        // A plugin: Ready, published, and answering at the published endpoint.
        let plugins: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
        plugins
            .patch(
                PLUGIN,
                &PatchParams::apply("chart-test").force(),
                &Patch::Apply(&echo_plugin()),
            )
            .await
            .expect("apply the HectorPlugin");
        let published = tokio::time::timeout(
            Duration::from_secs(180),
            eventually(
                "echo-llm Ready and published",
                Duration::from_secs(180),
                || async {
                    let p = plugins.get_opt(PLUGIN).await.ok()??;
                    (phase(&p) == Some(Phase::Ready)).then_some(())?;
                    published_endpoints(cms.get_opt(ENDPOINTS_CM).await.ok()?.as_ref(), PLUGIN).ok()
                },
            ),
        )
        .await;
        // A caller the plugin admits: a ServiceAccount of its own namespace.
        let caller = mint_token(&ns.name, "default", "hector.dev/plugins");
        let endpoints = match published {
            Ok(endpoints) => endpoints,
            Err(_) => panic!(
                "echo-llm not published:\n{}",
                diagnostics(&ns.name, release).await
            ),
        };
        assert_eq!(
            generate_text_as(&endpoints[0], "hello chart", &caller)
                .await
                .as_deref(),
            Ok("chart: hello chart"),
            "a remote Generate at the published endpoint {}",
            endpoints[0]
        );
        let plugin_pods = |client: Client, ns: String| async move {
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            let mut names: Vec<String> = pods
                .list(&ListParams::default().labels(&format!("hector.dev/plugin={PLUGIN}")))
                .await
                .expect("list plugin pods")
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            names.sort();
            names
        };
        let serving = plugin_pods(client.clone(), ns.name.clone()).await;
        assert!(!serving.is_empty(), "plugin Pods");

        // helm upgrade with changed values: a new Pod template, so the operator Pods roll.
        let old_leader = eventually("a leader", Duration::from_secs(60), || {
            lease_holder(&client, &ns.name)
        })
        .await;
        let old: BTreeSet<String> = before
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert!(
            old.contains(&old_leader),
            "{old_leader} leads, one of {old:?}"
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let watching = tokio::spawn(watch_publication(client.clone(), ns.name.clone(), stopped));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut upgrade = vec!["upgrade", release, chart, "--namespace", &ns.name];
        upgrade.extend(["--wait", "--timeout", "4m"]);
        upgrade.extend(&values);
        upgrade.extend([
            "--set",
            "podAnnotations.upgraded-by=chart-test",
            "--set",
            "logging.level=debug",
        ]);
        let out = helm_ok(&ns.name, release, &upgrade).await;
        assert!(out.stdout.contains("REVISION: 2"), "{}", out.stdout);
        let new_leader = tokio::time::timeout(
            Duration::from_secs(150),
            eventually(
                "only Pods of the new template, one of them leading",
                Duration::from_secs(150),
                || async {
                    let pods = operator_pods(&client, &ns.name, release).await;
                    let fresh = pods.iter().all(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && p.metadata.name.as_ref().is_some_and(|n| !old.contains(n))
                            && p.metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get("upgraded-by"))
                                == Some(&"chart-test".to_string())
                    });
                    let holder = lease_holder(&client, &ns.name).await?;
                    (fresh
                        && pods.len() == 2
                        && pods
                            .iter()
                            .any(|p| p.metadata.name.as_ref() == Some(&holder)))
                    .then_some(holder)
                },
            ),
        )
        .await;
        let new_leader = match new_leader {
            Ok(leader) => leader,
            Err(_) => panic!(
                "the operator did not roll:\n{}",
                diagnostics(&ns.name, release).await
            ),
        };
        assert_ne!(new_leader, old_leader, "the leader changed");
        // The new leader publishes the plugin itself.
        eventually(
            "the new leader to lead and count echo-llm's endpoint as published",
            Duration::from_secs(60),
            || async {
                let leading =
                    pod_metric(&client, &ns.name, &new_leader, "hector_operator_leader").await?;
                let published = pod_metric(
                    &client,
                    &ns.name,
                    &new_leader,
                    &format!(
                        "hector_operator_endpoints_published{{namespace=\"{}\"}}",
                        ns.name
                    ),
                )
                .await?;
                (leading == 1.0 && published >= 1.0).then_some(())
            },
        )
        .await;
        // A few more seconds of the new leader reconciling, probing and publishing.
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.send(true).expect("the watcher runs");
        let seen = watching.await.expect("the watcher task");
        assert!(
            seen.problems.is_empty(),
            "during the upgrade the plugin was not published or not Ready ({seen:?})"
        );
        assert!(
            seen.polls >= 25 && seen.versions >= 2,
            "too few observations to tell: {seen:?}"
        );
        eprintln!("during the upgrade: {seen:?}");
        assert_eq!(
            plugin_pods(client.clone(), ns.name.clone()).await,
            serving,
            "the plugin Pods were left alone"
        );
        let endpoints =
            published_endpoints(cms.get_opt(ENDPOINTS_CM).await.unwrap().as_ref(), PLUGIN)
                .expect("still published");
        assert_eq!(
            generate_text_as(&endpoints[0], "after the upgrade", &caller)
                .await
                .as_deref(),
            Ok("chart: after the upgrade")
        );

        // The leader exports the plugin's own series.
        let ready_series = format!(
            "hector_operator_plugin_ready{{namespace=\"{}\",plugin=\"{PLUGIN}\"}}",
            ns.name
        );
        eventually(
            "the leader to report echo-llm Ready with its endpoint ready",
            Duration::from_secs(30),
            || async {
                let ready = pod_metric(&client, &ns.name, &new_leader, &ready_series).await?;
                let endpoints = pod_metric(
                    &client,
                    &ns.name,
                    &new_leader,
                    &format!(
                        "hector_operator_plugin_endpoints{{namespace=\"{}\",plugin=\"{PLUGIN}\",state=\"ready\"}}",
                        ns.name
                    ),
                )
                .await?;
                (ready == 1.0 && endpoints >= 1.0).then_some(())
            },
        )
        .await;

        // The plugin is the user's: delete it (its Pods, Service and config go with it), then
        // uninstall the release.
        plugins
            .delete(PLUGIN, &DeleteParams::default())
            .await
            .expect("delete the HectorPlugin");
        eventually(
            "the plugin and what ran it to be gone",
            Duration::from_secs(120),
            || async {
                let left = plugin_pods(client.clone(), ns.name.clone()).await;
                let hp = plugins.get_opt(PLUGIN).await.ok()?;
                (hp.is_none() && left.is_empty()).then_some(())
            },
        )
        .await;
        // With it, every series that named it.
        let named = format!("namespace=\"{}\",plugin=\"{PLUGIN}\"", ns.name);
        eventually(
            "no series of the deleted plugin on the leader",
            Duration::from_secs(30),
            || async {
                let uri = format!(
                    "/api/v1/namespaces/{}/pods/{new_leader}:8080/proxy/metrics",
                    ns.name
                );
                let request = http::Request::get(uri).body(Vec::new()).ok()?;
                let text = client.request_text(request).await.ok()?;
                (text.contains("hector_operator_leader 1") && !text.contains(&named)).then_some(())
            },
        )
        .await;
        helm_ok(
            &ns.name,
            release,
            &[
                "uninstall",
                release,
                "--namespace",
                &ns.name,
                "--wait",
                "--timeout",
                "2m",
            ],
        )
        .await;
        eventually(
            "the release's objects to be gone",
            Duration::from_secs(90),
            || {
                let ns = ns.name.clone();
                async move {
                    let left = release_objects(release, &ns).await;
                    left.is_empty().then_some(()).or_else(|| {
                        eprintln!("still there: {left:?}");
                        None
                    })
                }
            },
        )
        .await;
        // Whatever else is in the namespace: only what every namespace has, the Lease the
        // operator took at run time (not part of the release; see docs/install.md), and the
        // endpoints ConfigMap it published, now without plugins.
        let mut cmd = Command::new(kubectl());
        cmd.args([
            "api-resources",
            "--verbs=list",
            "--namespaced",
            "-o",
            "name",
        ]);
        let kinds: Vec<String> = exec(cmd)
            .await
            .stdout
            .lines()
            .filter(|k| !k.starts_with("events"))
            .map(str::to_string)
            .collect();
        eventually(
            "nothing but the namespace's own objects",
            Duration::from_secs(60),
            || async {
                let mut cmd = Command::new(kubectl());
                cmd.args(["get", &kinds.join(","), "-n", &ns.name, "-o", "name"]);
                let mut left: Vec<String> =
                    exec(cmd).await.stdout.lines().map(str::to_string).collect();
                left.retain(|o| {
                    o != "lease.coordination.k8s.io/hector-operator"
                        && o != &format!("configmap/{ENDPOINTS_CM}")
                });
                left.sort();
                (left == ["configmap/kube-root-ca.crt", "serviceaccount/default"])
                    .then_some(())
                    .or_else(|| {
                        eprintln!("left in the namespace after helm uninstall: {left:?}");
                        None
                    })
            },
        )
        .await;
        if let Some(cm) = cms.get_opt(ENDPOINTS_CM).await.unwrap() {
            let text = cm
                .data
                .unwrap_or_default()
                .remove("endpoints.json")
                .unwrap_or_default();
            let file = EndpointsFile::parse(&text).expect("a readable endpoints.json");
            assert!(
                file.plugins.is_empty(),
                "nothing published any more: {text}"
            );
        }
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        assert!(
            crds.get_opt("hectorplugins.hector.dev")
                .await
                .unwrap()
                .is_some(),
            "helm uninstall keeps the CRD"
        );
    }

    /// `kubectl auth can-i VERB RESOURCE -n NS --as SA`: true for yes.
    async fn can_i(sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
        let mut cmd = Command::new(kubectl());
        cmd.args(["auth", "can-i", verb, "--as", sa]);
        match resource.split_once('/') {
            Some((resource, sub)) => cmd.args([resource, "--subresource", sub]),
            None => cmd.arg(resource),
        };
        match ns {
            Some(ns) => cmd.args(["-n", ns]),
            None => cmd.arg("--all-namespaces"),
        };
        let out = exec(cmd).await;
        match out.stdout.trim() {
            "yes" => true,
            "no" => false,
            other => panic!(
                "kubectl auth can-i {verb} {resource}: {other:?} {}",
                out.stderr
            ),
        }
    }

    /// A namespaced install (`watchNamespaces: [x]`) may work with HectorPlugins and what runs
    /// them in x, and nowhere else; no Secret at all, anywhere; its Lease only at home.
    #[tokio::test]
    async fn namespaced_install_is_confined_to_its_namespace() {
        let client = client().await;
        let ns = TestNamespace::new(&client, "chart-rbac").await;
        let other = TestNamespace::new(&client, "chart-other").await;
        let release = "hector-rbac";
        // RBAC only: no operator Pods needed.
        let mut install = Command::new(helm());
        install
            .args(["install", release])
            .arg(chart_dir())
            .args(["--namespace", &ns.name, "--set", "replicas=0"])
            .args(local_values(&ns.name));
        let out = exec(install).await;
        assert!(out.ok, "helm install:\n{}{}", out.stdout, out.stderr);

        let sa = format!(
            "system:serviceaccount:{}:{release}-hector-operator",
            ns.name
        );
        let home = Some(ns.name.as_str());
        let away = Some(other.name.as_str());
        for (verb, resource, ns, allowed) in [
            ("get", "hectorplugins.hector.dev", home, true),
            ("watch", "hectorplugins.hector.dev", home, true),
            ("patch", "hectorplugins.hector.dev/status", home, true),
            ("update", "hectorplugins.hector.dev", home, false),
            ("create", "deployments.apps", home, true),
            ("delete", "configmaps", home, true),
            ("update", "configmaps", home, true),
            ("update", "services", home, false),
            ("list", "secrets", home, false),
            ("watch", "secrets", home, false),
            ("get", "secrets", home, false),
            ("list", "events", home, true),
            ("create", "events", home, false),
            ("get", "endpointslices.discovery.k8s.io", home, false),
            ("create", "events.events.k8s.io", home, true),
            ("update", "leases.coordination.k8s.io", home, true),
            ("update", "deployments.apps", home, false),
            ("list", "replicasets.apps", home, true),
            ("get", "hectorplugins.hector.dev", away, false),
            ("list", "hectorplugins.hector.dev", away, false),
            ("patch", "hectorplugins.hector.dev/status", away, false),
            ("create", "deployments.apps", away, false),
            ("list", "secrets", away, false),
            ("create", "configmaps", away, false),
            ("update", "configmaps", away, false),
            ("update", "leases.coordination.k8s.io", away, false),
            ("list", "hectorplugins.hector.dev", None, false),
            ("list", "secrets", None, false),
            ("get", "secrets", None, false),
        ] {
            assert_eq!(
                can_i(&sa, verb, resource, ns).await,
                allowed,
                "can {sa} {verb} {resource} in {}?",
                ns.unwrap_or("all namespaces")
            );
        }
        let mut uninstall = Command::new(helm());
        uninstall.args(["uninstall", release, "--namespace", &ns.name, "--wait"]);
        let out = exec(uninstall).await;
        assert!(out.ok, "helm uninstall:\n{}{}", out.stdout, out.stderr);
    }

    /// NOTES.txt (Helm renders it only with a reachable cluster, even for a client dry run).
    #[tokio::test]
    async fn notes_print_the_next_commands() {
        // A dry run still looks for existing objects of the same names: use names nobody has.
        let mut install = Command::new(helm());
        install
            .args(["install", "notes-check"])
            .arg(chart_dir())
            .args(["--namespace", "notes-check-ns", "--dry-run=client"])
            .args(["--set", "watchNamespaces={agents}"]);
        let out = exec(install).await;
        assert!(out.ok, "helm install --dry-run=client:\n{}", out.stderr);
        let notes = out.stdout.split("NOTES:").nth(1).expect("NOTES section");
        for expected in [
            "kubectl -n notes-check-ns rollout status deployment/notes-check-hector-operator",
            "| kubectl apply -n agents -f -",
            "examples/manifests/echo-llm.plugin.yaml",
            "kubectl get hp -A",
            "kubectl -n agents get configmap hector-plugins -o yaml",
            "helm test notes-check -n notes-check-ns",
            "reconciling HectorPlugins in agents only",
        ] {
            assert!(
                notes.contains(expected),
                "NOTES lack {expected:?}:\n{notes}"
            );
        }
    }
}
