//! The plugin's NetworkPolicy: only the callers `spec.access` allows may connect to the
//! plugin's port, plus the operator's own Pods (its prober). The launcher checks each call's
//! ServiceAccount token as well; this keeps everyone else from even connecting. Egress is not
//! restricted. Kubelet probes come from the node, which NetworkPolicy implementations let in.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{BuildError, Settings, callers, owned_meta, selector};
use crate::crd::HectorPlugin;

/// The label every namespace carries with its own name (set by the API server, immutable).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The NetworkPolicy for `plugin`, or `None` for a plugin given by `spec.endpoint`.
pub fn network_policy(
    plugin: &HectorPlugin,
    settings: &Settings,
) -> Result<Option<NetworkPolicy>, BuildError> {
    if plugin.spec.image.is_none() {
        return Ok(None);
    }
    let from = callers(plugin)?.network_namespaces().map(|namespaces| {
        let mut peers: Vec<NetworkPolicyPeer> = namespaces
            .iter()
            .map(|ns| NetworkPolicyPeer {
                namespace_selector: Some(namespace_selector(ns)),
                ..Default::default()
            })
            .collect();
        // Both selectors in one peer: the operator's Pods in the operator's namespace, not
        // every Pod there, nor Pods with those labels elsewhere.
        let operator = &settings.operator;
        peers.push(NetworkPolicyPeer {
            namespace_selector: Some(namespace_selector(&operator.namespace)),
            pod_selector: Some(LabelSelector {
                match_labels: Some(operator.pod_labels.clone()),
                match_expressions: None,
            }),
            ip_block: None,
        });
        peers
    });
    Ok(Some(NetworkPolicy {
        metadata: owned_meta(plugin, plugin.name_any())?,
        spec: Some(NetworkPolicySpec {
            // The Service's selector: exactly the plugin's Pods.
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(plugin)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                // No `from` (open access): every source may connect to the port.
                from,
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(plugin.spec.port)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }))
}

fn namespace_selector(namespace: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_string(),
            namespace.to_string(),
        )])),
        match_expressions: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use serde_json::{Value, json};

    fn build(yaml: &str) -> Option<NetworkPolicy> {
        let p = fixtures::plugin(yaml);
        network_policy(&p, &fixtures::settings()).expect("builds")
    }

    fn with_access(access: &str) -> String {
        fixtures::LLM.replace("  image:", &format!("  access: {access}\n  image:"))
    }

    /// The namespaces the policy lets connect, by their name label, in order.
    fn namespaces(np: &NetworkPolicy) -> Vec<String> {
        let v = serde_json::to_value(np).expect("serializes");
        v["spec"]["ingress"][0]["from"]
            .as_array()
            .expect("from")
            .iter()
            .filter(|peer| peer.get("podSelector").is_none())
            .map(|peer| {
                peer["namespaceSelector"]["matchLabels"][NAMESPACE_NAME_LABEL]
                    .as_str()
                    .expect("by name")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_default_plugin_admits_its_namespace_and_the_operator_on_its_port_only() {
        let np = build(fixtures::LLM).expect("image given");
        assert_eq!(np.metadata.name.as_deref(), Some("my-llm"));
        assert_eq!(np.metadata.namespace.as_deref(), Some("agents"));
        let owner = &np.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("HectorPlugin", Some(true))
        );
        let spec = serde_json::to_value(np.spec.as_ref().expect("spec")).expect("json");
        assert_eq!(
            spec,
            json!({
                "podSelector": {"matchLabels": {"hector.dev/plugin": "my-llm"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}}},
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hector-system"}},
                            "podSelector": {"matchLabels": {
                                "app.kubernetes.io/instance": "hector-operator",
                                "app.kubernetes.io/name": "hector-operator"
                            }}
                        }
                    ],
                    "ports": [{"port": 50051, "protocol": "TCP"}]
                }]
            })
        );
    }

    #[test]
    fn it_selects_what_the_service_selects() {
        let p = fixtures::plugin(fixtures::LLM);
        let np = network_policy(&p, &fixtures::settings())
            .expect("builds")
            .expect("image given");
        let svc = crate::build::service(&p)
            .expect("builds")
            .expect("image given");
        assert_eq!(
            np.spec
                .and_then(|s| s.pod_selector)
                .and_then(|s| s.match_labels),
            svc.spec.and_then(|s| s.selector)
        );
    }

    #[test]
    fn listed_namespaces_and_service_account_namespaces_are_let_in_and_no_other() {
        let np = build(&with_access(
            "{namespaces: [zeta, alpha, zeta], serviceAccounts: [team-a/bot, team-b/*, alpha/x]}",
        ))
        .expect("image given");
        assert_eq!(
            namespaces(&np),
            ["agents", "alpha", "team-a", "team-b", "zeta"]
        );
        let text = serde_json::to_string(&np).expect("serializes");
        for unlisted in ["beta", "default", "kube-system", "team-c"] {
            assert!(
                !text.contains(&format!("\"{unlisted}\"")),
                "{unlisted}: {text}"
            );
        }
    }

    #[test]
    fn the_operator_peer_is_its_pods_in_its_namespace_not_the_whole_namespace() {
        let np = build(fixtures::LLM).expect("image given");
        let v: Value = serde_json::to_value(&np).expect("json");
        let peers = v["spec"]["ingress"][0]["from"].as_array().expect("from");
        let operator: Vec<&Value> = peers
            .iter()
            .filter(|p| {
                p["namespaceSelector"]["matchLabels"][NAMESPACE_NAME_LABEL] == "hector-system"
            })
            .collect();
        assert_eq!(operator.len(), 1, "{peers:?}");
        assert_eq!(
            operator[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
            "hector-operator"
        );
    }

    #[test]
    fn open_access_admits_every_source_on_the_port() {
        let np = build(&with_access("{open: true}")).expect("image given");
        let rule = &np
            .spec
            .as_ref()
            .and_then(|s| s.ingress.clone())
            .expect("ingress")[0];
        assert!(rule.from.is_none(), "no `from`: everyone");
        assert_eq!(
            rule.ports.as_ref().map(|p| p[0].port.clone()),
            Some(Some(IntOrString::Int(50051)))
        );
        assert_eq!(
            np.spec.and_then(|s| s.policy_types),
            Some(vec!["Ingress".to_string()])
        );
    }

    #[test]
    fn the_port_follows_the_plugin() {
        let np = build(&fixtures::LLM.replace("  image:", "  port: 7000\n  image:"))
            .expect("image given");
        let rule = &np.spec.and_then(|s| s.ingress).expect("ingress")[0];
        assert_eq!(
            rule.ports.as_ref().and_then(|p| p[0].port.clone()),
            Some(IntOrString::Int(7000))
        );
    }

    #[test]
    fn invalid_access_builds_nothing() {
        let p = fixtures::plugin(&with_access("{namespaces: [Not_A_Namespace]}"));
        let err = network_policy(&p, &fixtures::settings()).expect_err("invalid");
        assert!(
            err.to_string().starts_with("spec.access.namespaces[0]: "),
            "{err}"
        );
    }

    #[test]
    fn endpoint_plugins_get_no_network_policy() {
        let yaml = r#"
apiVersion: hector.dev/v1alpha1
kind: HectorPlugin
metadata: {name: far-away}
spec:
  manifest: {name: far-away, version: 1.0.0, type: embedder_provider}
  endpoint: embedder.example.org:50051
"#;
        assert!(build(yaml).is_none());
    }
}
