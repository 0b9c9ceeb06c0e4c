//! The kustomize base under `deploy/`: its CRD copy matches the Rust types, the Deployment and
//! RBAC follow the operator's contract, and kustomize renders what the files say (also with
//! another image). No cluster is needed; rendering uses a kubectl when one is found
//! (`KUBECTL`, the local cluster's, or `kubectl` on PATH). With the `e2e` feature the base also
//! passes the API server's own validation (`kubectl apply --dry-run=server`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const IMAGE: &str = "hector.dev/hector-operator:dev";
const NAMESPACE: &str = "hector-system";

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Every document of a multi-document YAML stream, as JSON values (empty documents dropped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Where `a` and `b` first differ (numbers compared by value: YAML tools print `1.0` as `1`),
/// or `None` when they are the same.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        // Each key once: visiting the shared keys from both sides doubles the work at every
        // level, which the CRD's deeply nested Pod types turn into minutes.
        (Value::Object(x), Value::Object(y)) => x
            .keys()
            .chain(y.keys().filter(|k| !x.contains_key(*k)))
            .find_map(|k| match (x.get(k), y.get(k)) {
                (Some(v), Some(w)) => first_difference(v, w, &format!("{path}.{k}")),
                (v, w) => Some(format!("{path}.{k}: {v:?} vs {w:?}")),
            }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} among the manifests"))
}

/// The objects of the base as written, in the order kustomization.yaml lists the files.
fn base_documents() -> Vec<Value> {
    let kustomization: Value = serde_norway::from_str(&read("deploy/kustomization.yaml")).unwrap();
    kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .flat_map(|f| documents(&read(&format!("deploy/{}", f.as_str().unwrap()))))
        .collect()
}

#[test]
fn deploy_crd_matches_the_types() {
    let generated = hector_operator::crd::crd_yaml().expect("render CRD");
    assert!(
        generated == read("deploy/crd/hectorplugin.yaml"),
        "deploy/crd/hectorplugin.yaml is out of date: run `make manifests`"
    );
}

#[test]
fn chart_crd_matches_the_types() {
    let generated = hector_operator::crd::crd_yaml().expect("render CRD");
    assert!(
        generated == read("charts/hector-operator/crds/hectorplugin.yaml"),
        "charts/hector-operator/crds/hectorplugin.yaml is out of date: run `make manifests`"
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization: Value = serde_norway::from_str(&read("deploy/kustomization.yaml")).unwrap();
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut on_disk = Vec::new();
    for prefix in ["", "crd/"] {
        for entry in std::fs::read_dir(Path::new(ROOT).join("deploy").join(prefix)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                on_disk.push(format!("{prefix}{name}"));
            }
        }
    }
    for file in &on_disk {
        assert!(
            listed.contains(&file.as_str()),
            "deploy/{file} is not in kustomization.yaml resources"
        );
    }
    // The image the files name is the one kustomize sets, so the files are what gets applied.
    let images = &kustomization["images"][0];
    assert_eq!(images["name"], "hector.dev/hector-operator");
    assert_eq!(images["newTag"], "dev");
}

#[test]
fn deployment_follows_the_operator_contract() {
    let docs = base_documents();
    let d = find(&docs, "Deployment", "hector-operator");
    assert_eq!(d["metadata"]["namespace"], NAMESPACE);
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "hector-operator");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], IMAGE);
    assert_eq!(
        c["args"],
        json!([
            "run",
            format!("--launcher-image={IMAGE}"),
            "--log-format=json"
        ])
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "OPERATOR_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        ])
    );
    // The token the prober presents to plugins, for their audience only.
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "plugin-token", "mountPath": "/var/run/secrets/hector.dev", "readOnly": true}])
    );
    assert_eq!(
        pod["volumes"],
        json!([{"name": "plugin-token", "projected": {"sources": [{"serviceAccountToken":
            {"audience": "hector.dev/plugins", "expirationSeconds": 3600, "path": "token"}}]}}])
    );
    // Plugin NetworkPolicies let in the Pods the operator's default labels select: these.
    let pod_labels = hector_operator::run::parse_labels(hector_operator::run::DEFAULT_POD_LABELS)
        .expect("the default parses");
    assert_eq!(
        serde_json::to_value(&pod_labels).unwrap(),
        d["spec"]["selector"]["matchLabels"],
        "the operator's default pod labels are this Deployment's selector"
    );
    assert_eq!(
        c["ports"],
        json!([
            {"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
            {"name": "health", "containerPort": 8081, "protocol": "TCP"},
        ])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "health"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "health"})
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}})
    );
    assert_eq!(
        c["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
               "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    // It parses as a real Deployment, too.
    let _: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(d.clone()).unwrap();

    let svc = find(&docs, "Service", "hector-operator-metrics");
    assert_eq!(svc["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    let labels = d["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for (k, v) in d["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "pod template carries selector label {k}"
        );
    }
    let ns = find(&docs, "Namespace", NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

/// The rules the operator needs, and nothing else.
fn expected_cluster_rules() -> Value {
    json!([
        {"apiGroups": ["hector.dev"], "resources": ["hectorplugins"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["hector.dev"], "resources": ["hectorplugins/status"], "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["services"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

#[test]
fn rbac_is_least_privilege() {
    let docs = base_documents();
    let role = find(&docs, "ClusterRole", "hector-operator");
    assert_eq!(role["rules"], expected_cluster_rules());
    for rule in role["rules"].as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().unwrap().contains(&json!("*")),
                "no wildcard {field} in {rule}"
            );
        }
        let resources = rule["resources"].as_array().unwrap();
        assert!(!resources.contains(&json!("endpointslices")));
        assert!(
            !resources.contains(&json!("secrets")),
            "no permission on Secrets at all: {rule}"
        );
    }
    let binding = find(&docs, "ClusterRoleBinding", "hector-operator");
    assert_eq!(binding["roleRef"]["name"], "hector-operator");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "hector-operator", "namespace": NAMESPACE}])
    );
    let lease = find(&docs, "Role", "hector-operator-leader-election");
    assert_eq!(lease["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        lease["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "verbs": ["get", "create", "update"]}])
    );
    let lease_binding = find(&docs, "RoleBinding", "hector-operator-leader-election");
    assert_eq!(lease_binding["roleRef"]["kind"], "Role");
    assert_eq!(lease_binding["subjects"], binding["subjects"]);
    find(&docs, "ServiceAccount", "hector-operator");
}

/// A kubectl to render with: `KUBECTL`, the local cluster's, or one on PATH.
fn kubectl() -> Option<PathBuf> {
    if let Ok(k) = std::env::var("KUBECTL") {
        return Some(k.into());
    }
    let local = Command::new(Path::new(ROOT).join("tests/cluster/cluster"))
        .arg("kubectl-path")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(path) = local.filter(|p| p.is_file()) {
        return Some(path);
    }
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "kubectl".into())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kustomize_renders_the_files_as_written() {
    let Some(kubectl) = kubectl() else {
        eprintln!("no kubectl (KUBECTL, local cluster, PATH): rendering not checked");
        return;
    };
    let rendered = documents(&run(Command::new(&kubectl)
        .arg("kustomize")
        .arg(Path::new(ROOT).join("deploy"))));
    let base = base_documents();
    assert_eq!(
        rendered.len(),
        base.len(),
        "one rendered object per object in the files"
    );
    for doc in &base {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let kind = doc["kind"].as_str().unwrap();
        if let Some(diff) = first_difference(doc, find(&rendered, kind, name), "") {
            panic!("{kind}/{name} renders differently from its file: {diff}");
        }
    }
}

#[test]
fn another_image_moves_the_launcher_image_with_it() {
    let Some(kubectl) = kubectl() else {
        eprintln!("no kubectl (KUBECTL, local cluster, PATH): rendering not checked");
        return;
    };
    for image in [
        "registry.example.org:5000/team/hector-operator:1.2.3",
        "registry.example.org/hector-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let rendered = documents(&run(Command::new(Path::new(ROOT).join("deploy/deploy"))
            .arg("render")
            .env("KUBECTL", &kubectl)
            .env("IMAGE", image)));
        let d = find(&rendered, "Deployment", "hector-operator");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], image);
        assert_eq!(
            c["args"],
            json!([
                "run",
                format!("--launcher-image={image}"),
                "--log-format=json"
            ])
        );
    }
}

/// The API server accepts every object of the base (server-side dry run, Kubernetes 1.34).
/// Namespaced objects need their namespace to exist even for a dry run, so the rendered base is
/// moved into a throw-away namespace rather than touching `hector-system`.
#[cfg(feature = "e2e")]
#[test]
fn deploy_base_passes_server_dry_run() {
    use std::io::Write;
    use std::process::Stdio;

    let kubectl = kubectl().expect("a kubectl for the e2e cluster");
    let ns = format!(
        "deploy-dry-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 1_000_000)
            .unwrap_or_default()
    );
    run(Command::new(&kubectl).args(["create", "namespace", &ns]));
    run(Command::new(&kubectl).args(["label", "namespace", &ns, "hector.dev/test-namespace=true"]));
    let mut items = documents(&run(Command::new(&kubectl)
        .arg("kustomize")
        .arg(Path::new(ROOT).join("deploy"))));
    for item in &mut items {
        if item["kind"] == "Namespace" {
            item["metadata"]["name"] = json!(ns);
        } else if item["metadata"]["namespace"] == NAMESPACE {
            item["metadata"]["namespace"] = json!(ns);
        }
        if let Some(subjects) = item["subjects"].as_array_mut() {
            for s in subjects {
                s["namespace"] = json!(ns);
            }
        }
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let mut child = Command::new(&kubectl)
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl apply --dry-run=server");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = Command::new(&kubectl)
        .args(["delete", "namespace", &ns, "--wait=false"])
        .output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "server dry run rejected the base:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in [
        "customresourcedefinition.apiextensions.k8s.io/hectorplugins.hector.dev",
        "serviceaccount/hector-operator",
        "clusterrole.rbac.authorization.k8s.io/hector-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/hector-operator",
        "role.rbac.authorization.k8s.io/hector-operator-leader-election",
        "rolebinding.rbac.authorization.k8s.io/hector-operator-leader-election",
        "deployment.apps/hector-operator",
        "service/hector-operator-metrics",
    ] {
        assert!(text.contains(kind), "dry run lacks {kind}:\n{text}");
    }
}
