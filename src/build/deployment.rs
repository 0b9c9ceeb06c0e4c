//! The plugin's Deployment: an init container copies the launcher from the operator image
//! into a shared volume, and the plugin container runs the launcher in front of the plugin
//! executable, with configuration mounted as files (plain values from the config ConfigMap,
//! secret values straight from their Secrets). The launcher serves TLS and checks callers'
//! ServiceAccount tokens against `spec.access`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, GRPCAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretProjection, SecurityContext, ServiceAccountTokenProjection, TCPSocketAction, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::config_map::{CONFIG_HASH_ANNOTATION, config_hash};
use super::pod_template;
use super::{
    BuildError, CONFIG_DIR, LAUNCHER_DIR, LAUNCHER_IN_IMAGE, Settings, callers, config_map_name,
    labels, owned_meta, selector,
};
use crate::config::ResolvedConfig;
use crate::crd::HectorPlugin;

/// The non-root user plugin containers run as unless the image says otherwise.
const RUN_AS_USER: i64 = 65532;
/// Time for the launcher's drain: its delay and timeout plus the plugin's own shutdown.
const TERMINATION_GRACE_SECONDS: i64 = 45;
/// Where the launcher reads a token and CA for the API server, to fetch the keys that verify
/// callers' ServiceAccount tokens (OIDC discovery and JWKS).
pub const API_SERVER_CREDENTIALS_DIR: &str = "/var/run/secrets/hector.dev/apiserver";
/// The environment variable carrying the Pod's uid, which the launcher puts into its
/// certificate.
const POD_UID_ENV: &str = "HECTOR_POD_UID";
/// Lifetime of the projected API server token; the kubelet renews it well before.
const TOKEN_SECONDS: i64 = 3600;
/// Seconds between the kubelet's startup probes; `spec.health.startupTimeoutSeconds` is
/// turned into a number of them.
const STARTUP_PERIOD_SECONDS: i32 = 2;

/// The Deployment for `plugin`, or `None` for a plugin given by `spec.endpoint`.
pub fn deployment(
    plugin: &HectorPlugin,
    config: &ResolvedConfig,
    settings: &Settings,
) -> Result<Option<Deployment>, BuildError> {
    let Some(image) = plugin.spec.image.clone() else {
        return Ok(None);
    };
    let spec = &plugin.spec;
    pod_template::check(&spec.pod_template).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        BuildError::InvalidPodTemplate(text.join("; "))
    })?;
    let launcher = format!("{LAUNCHER_DIR}/hector-plugin-launcher");
    let mut command = vec![
        launcher,
        format!(
            "--type={}",
            hector_plugin_sdk::PluginType::from(spec.manifest.plugin_type).as_str()
        ),
        format!("--launch={}", spec.launch.launcher_flag()),
        format!("--listen=0.0.0.0:{}", spec.port),
        format!("--config-dir={CONFIG_DIR}"),
    ];
    // A raised startup window also lets the launcher wait that long for the plugin to serve
    // (its own default is 60 s); unset, the command stays as it was, so nothing rolls.
    if let Some(seconds) = spec.health.startup_timeout_seconds {
        command.push(format!("--start-timeout={seconds}"));
    }
    // In the command, not the args: `spec.access` changes the Pod template, so it rolls the
    // Pods like any other change of the command line.
    command.extend(callers(plugin)?.launcher_args(&settings.operator));
    command.push("--".into());
    command.extend(spec.command.iter().cloned());

    let grpc_probe = |period: i32, failures: i32| Probe {
        grpc: Some(GRPCAction {
            port: spec.port,
            service: None,
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(spec.health.timeout_seconds),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let plugin_container = Container {
        name: "plugin".into(),
        image: Some(image),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(command),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(env(&spec.env)),
        ports: Some(vec![ContainerPort {
            name: Some("grpc".into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // The launcher serves once the plugin has started and accepted Initialize (a model
        // may load there): the window is the plugin's to set.
        startup_probe: Some(grpc_probe(
            STARTUP_PERIOD_SECONDS,
            startup_failure_threshold(spec.health.startup_timeout()),
        )),
        // Health as the plugin reports it takes the Pod out of the Service while unhealthy...
        readiness_probe: Some(grpc_probe(
            spec.health.period_seconds,
            spec.health.failure_threshold,
        )),
        // ...but only a dead launcher restarts it: an upstream outage is not cured by restarts.
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(spec.port),
                host: None,
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: spec.resources.clone(),
        volume_mounts: Some(vec![
            mount("launcher", LAUNCHER_DIR),
            mount("config", CONFIG_DIR),
            mount("apiserver", API_SERVER_CREDENTIALS_DIR),
            // go-plugin children create their Unix socket under the temporary directory,
            // and the root filesystem is read-only.
            VolumeMount {
                read_only: Some(false),
                ..mount("tmp", "/tmp")
            },
        ]),
        security_context: Some(restricted()),
        ..Default::default()
    };
    let install = Container {
        name: "install-launcher".into(),
        image: Some(settings.launcher_image.clone()),
        image_pull_policy: Some(settings.launcher_pull_policy.as_str().into()),
        command: Some(vec![
            LAUNCHER_IN_IMAGE.into(),
            "install".into(),
            LAUNCHER_DIR.into(),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            read_only: Some(false),
            ..mount("launcher", LAUNCHER_DIR)
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
            ..Default::default()
        }),
        security_context: Some(restricted()),
        ..Default::default()
    };

    let pod = PodSpec {
        init_containers: Some(vec![install]),
        containers: vec![plugin_container],
        volumes: Some(vec![
            Volume {
                name: "launcher".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            Volume {
                name: "config".into(),
                projected: Some(config_projection(plugin, config)),
                ..Default::default()
            },
            Volume {
                name: "apiserver".into(),
                projected: Some(api_server_projection()),
                ..Default::default()
            },
        ]),
        // Plugins do not talk to the Kubernetes API; the launcher reads only the discovery
        // documents, with the token of the `apiserver` volume, not the default mount.
        automount_service_account_token: Some(false),
        // The launcher drains on SIGTERM (fails readiness, keeps serving for a few seconds,
        // finishes in-flight calls, then shuts the plugin down); this covers all of it.
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        service_account_name: spec.service_account_name.clone(),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            // Mounted configuration files belong to this group, so secret files can be
            // group-readable only.
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(plugin)),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_string(),
                config_hash(config),
            )])),
            ..Default::default()
        }),
        spec: Some(pod),
    };
    pod_template::merge(&spec.pod_template, &selector(plugin), &mut template);

    Ok(Some(Deployment {
        metadata: owned_meta(plugin, plugin.name_any())?,
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(plugin)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // A new Pod is Ready before an old one goes: agents never lose the plugin.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template,
            ..Default::default()
        }),
        status: None,
    }))
}

/// Startup probes (one every [`STARTUP_PERIOD_SECONDS`]) that fit in a window of `seconds`.
fn startup_failure_threshold(seconds: i32) -> i32 {
    (seconds.max(1) + STARTUP_PERIOD_SECONDS - 1) / STARTUP_PERIOD_SECONDS
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The restricted Pod Security Standard for a container.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..Default::default()
    }
}

/// The plugin's environment, then the Pod's uid for the launcher's certificate. A variable of
/// that name in `spec.env` is dropped: the launcher must get the true uid, and a repeated name
/// would make the server-side apply of the Deployment fail.
fn env(spec_env: &[EnvVar]) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = spec_env
        .iter()
        .filter(|e| e.name != POD_UID_ENV)
        .cloned()
        .collect();
    env.push(EnvVar {
        name: POD_UID_ENV.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: "metadata.uid".into(),
            }),
            ..Default::default()
        }),
    });
    env
}

/// What the launcher needs to fetch the API server's token-signing keys: a token for the API
/// server itself (no audience) and the cluster's CA. Every ServiceAccount may read those
/// documents (Kubernetes' `system:service-account-issuer-discovery` binding).
fn api_server_projection() -> ProjectedVolumeSource {
    ProjectedVolumeSource {
        sources: Some(vec![
            VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: None,
                    expiration_seconds: Some(TOKEN_SECONDS),
                    path: "token".into(),
                }),
                ..Default::default()
            },
            VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: "kube-root-ca.crt".into(),
                    optional: None,
                    items: Some(vec![KeyToPath {
                        key: "ca.crt".into(),
                        path: "ca.crt".into(),
                        mode: None,
                    }]),
                }),
                ..Default::default()
            },
        ]),
        default_mode: None,
    }
}

/// One directory, one file per configuration key: plain values from the config ConfigMap,
/// each secret value from its own Secret key.
fn config_projection(plugin: &HectorPlugin, config: &ResolvedConfig) -> ProjectedVolumeSource {
    let mut sources = vec![VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: config_map_name(plugin),
            optional: Some(false),
            items: None,
        }),
        ..Default::default()
    }];
    for (config_key, secret) in &config.secrets {
        sources.push(VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.name.clone(),
                optional: Some(false),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: config_key.clone(),
                    // Readable by the Pod's group (fsGroup) only, not by other users.
                    mode: Some(0o440),
                }]),
            }),
            ..Default::default()
        });
    }
    ProjectedVolumeSource {
        sources: Some(sources),
        default_mode: Some(0o444),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::config::resolve;

    fn build(yaml: &str) -> Option<Deployment> {
        let p = fixtures::plugin(yaml);
        let config = resolve(
            &p.spec.manifest.config_schema,
            &p.spec.config,
            &p.spec.secret_config,
        )
        .expect("valid");
        deployment(&p, &config, &fixtures::settings()).expect("builds")
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    #[test]
    fn plugin_runs_behind_the_launcher() {
        let d = build(fixtures::LLM).expect("image given");
        let c = &pod(&d).containers[0];
        assert_eq!(
            c.command.as_deref().expect("command"),
            [
                "/hector/bin/hector-plugin-launcher",
                "--type=llm_provider",
                "--launch=go-plugin",
                "--listen=0.0.0.0:50051",
                "--config-dir=/etc/hector/config",
                "--tls",
                "--auth",
                "--allow-namespace=agents",
                "--allow-service-account=hector-system/hector-operator",
                "--",
                "/plugin/my-llm",
            ]
        );
        assert_eq!(c.args.as_deref(), Some(&["--verbose".to_string()][..]));
        assert_eq!(c.image.as_deref(), Some("example.org/my-llm:1.2.0"));
        let init = &pod(&d).init_containers.as_ref().expect("init")[0];
        assert_eq!(
            init.image.as_deref(),
            Some("hector.dev/hector-operator:dev")
        );
        assert_eq!(
            init.command.as_deref().expect("command")[1..],
            ["install".to_string(), "/hector/bin".to_string()]
        );
    }

    #[test]
    fn secrets_are_mounted_from_their_secret_never_copied() {
        let d = build(fixtures::LLM).expect("image given");
        let text = serde_json::to_string(&d).expect("serializes");
        let volume = pod(&d)
            .volumes
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.name == "config"))
            .and_then(|v| v.projected.as_ref())
            .expect("projected config volume");
        let sources = volume.sources.as_ref().expect("sources");
        assert_eq!(
            sources[0].config_map.as_ref().map(|c| c.name.as_str()),
            Some("my-llm-config")
        );
        let secret = sources[1].secret.as_ref().expect("secret source");
        assert_eq!(secret.name, "llm-secrets");
        let item = &secret.items.as_ref().expect("items")[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("api-key", "api_key")
        );
        // No environment variable carries configuration.
        assert!(!text.contains("secretKeyRef"), "{text}");
    }

    #[test]
    fn probes_follow_health_settings() {
        let yaml = fixtures::LLM.replace(
            "  image:",
            "  health: {periodSeconds: 7, timeoutSeconds: 3, failureThreshold: 4}\n  port: 6000\n  image:",
        );
        let d = build(&yaml).expect("image given");
        let c = &pod(&d).containers[0];
        let ready = c.readiness_probe.as_ref().expect("readiness");
        assert_eq!(ready.grpc.as_ref().map(|g| g.port), Some(6000));
        assert_eq!(
            (
                ready.period_seconds,
                ready.timeout_seconds,
                ready.failure_threshold
            ),
            (Some(7), Some(3), Some(4))
        );
        let live = c.liveness_probe.as_ref().expect("liveness");
        assert!(live.grpc.is_none(), "an unhealthy plugin is not restarted");
        assert_eq!(
            live.tcp_socket.as_ref().map(|t| t.port.clone()),
            Some(IntOrString::Int(6000))
        );
        assert_eq!(c.ports.as_ref().map(|p| p[0].container_port), Some(6000));
    }

    #[test]
    fn pods_meet_the_restricted_security_standard() {
        let d = build(fixtures::LLM).expect("image given");
        let p = pod(&d);
        let sc = p.security_context.as_ref().expect("pod security");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        for c in p
            .containers
            .iter()
            .chain(p.init_containers.iter().flatten())
        {
            let s = c.security_context.as_ref().expect("container security");
            assert_eq!(s.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                s.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()])
            );
        }
        assert_eq!(p.automount_service_account_token, Some(false));
    }

    #[test]
    fn selector_is_stable_and_matches_the_template() {
        let d = build(fixtures::LLM).expect("image given");
        let spec = d.spec.as_ref().expect("spec");
        let sel = spec.selector.match_labels.as_ref().expect("selector");
        assert_eq!(sel.len(), 1, "only the owner's name: {sel:?}");
        let tpl = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert!(sel.iter().all(|(k, v)| tpl.get(k) == Some(v)));
        let bumped =
            build(&fixtures::LLM.replace("version: 1.2.0", "version: 1.3.0")).expect("image given");
        assert_eq!(
            bumped.spec.as_ref().map(|s| &s.selector),
            Some(&spec.selector),
            "a new version must not change the immutable selector"
        );
    }

    #[test]
    fn config_change_changes_the_template() {
        let hash = |d: &Deployment| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
                .expect("hash")
        };
        let a = build(fixtures::LLM).expect("image given");
        let b = build(&fixtures::LLM.replace("big-1", "big-2")).expect("image given");
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&build(fixtures::LLM).expect("image given")));
    }

    #[test]
    fn the_plugin_gets_a_writable_tmp_on_a_read_only_root() {
        let d = build(fixtures::LLM).expect("image given");
        let c = &pod(&d).containers[0];
        let tmp = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/tmp")
            .expect("/tmp mounted");
        assert_eq!(tmp.read_only, Some(false));
        let vol = pod(&d)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == tmp.name)
            .expect("volume");
        assert!(vol.empty_dir.is_some());
        assert_eq!(
            c.security_context
                .as_ref()
                .and_then(|s| s.read_only_root_filesystem),
            Some(true)
        );
    }

    fn launcher_flags(d: &Deployment) -> Vec<String> {
        let command = pod(d).containers[0].command.clone().expect("command");
        let end = command.iter().position(|a| a == "--").expect("--");
        command[1..end].to_vec()
    }

    fn with_access(access: &str) -> String {
        fixtures::LLM.replace("  image:", &format!("  access: {access}\n  image:"))
    }

    #[test]
    fn the_allowlist_is_passed_to_the_launcher_and_nothing_unlisted() {
        let d = build(&with_access(
            "{namespaces: [zeta, alpha, agents], serviceAccounts: [team-b/*, team-a/bot]}",
        ))
        .expect("image given");
        let flags = launcher_flags(&d);
        assert_eq!(
            flags[4..],
            [
                "--tls",
                "--auth",
                "--allow-namespace=agents",
                "--allow-namespace=alpha",
                "--allow-namespace=zeta",
                "--allow-service-account=team-a/bot",
                "--allow-service-account=team-b/*",
                "--allow-service-account=hector-system/hector-operator",
            ]
        );
        let allowed: Vec<&str> = flags
            .iter()
            .filter_map(|f| f.strip_prefix("--allow-namespace="))
            .collect();
        assert_eq!(allowed, ["agents", "alpha", "zeta"], "no other namespace");
        assert!(!flags.iter().any(|f| f == "--open"));
    }

    #[test]
    fn open_access_is_tls_without_an_allowlist() {
        let d = build(&with_access("{open: true}")).expect("image given");
        let flags = launcher_flags(&d);
        assert_eq!(flags[4..], ["--tls", "--open"]);
        assert!(
            !flags
                .iter()
                .any(|f| f.starts_with("--allow") || f == "--auth")
        );
    }

    #[test]
    fn changing_access_rolls_the_pods() {
        let template = |d: &Deployment| d.spec.as_ref().map(|s| s.template.clone());
        let before = build(fixtures::LLM).expect("image given");
        let after = build(&with_access("{namespaces: [alpha]}")).expect("image given");
        assert_ne!(template(&before), template(&after));
        assert_eq!(
            template(&before),
            template(&build(fixtures::LLM).expect("image given")),
            "the same access builds the same template"
        );
    }

    #[test]
    fn invalid_access_builds_no_deployment() {
        let p = fixtures::plugin(&with_access("{serviceAccounts: [no-slash]}"));
        let config = resolve(
            &p.spec.manifest.config_schema,
            &p.spec.config,
            &p.spec.secret_config,
        )
        .expect("valid");
        let err = deployment(&p, &config, &fixtures::settings()).expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("spec.access.serviceAccounts[0]: "),
            "{err}"
        );
    }

    #[test]
    fn the_launcher_learns_the_pod_uid_which_spec_env_cannot_override() {
        let yaml = fixtures::LLM.replace(
            "  image:",
            "  env: [{name: A, value: a}, {name: HECTOR_POD_UID, value: forged}]\n  image:",
        );
        let d = build(&yaml).expect("image given");
        let env = pod(&d).containers[0].env.clone().expect("env");
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["A", "HECTOR_POD_UID"], "one of each name");
        let uid = &env[1];
        assert_eq!(uid.value, None);
        assert_eq!(
            uid.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("metadata.uid")
        );
    }

    #[test]
    fn the_launcher_gets_api_server_credentials_but_no_default_token() {
        let d = build(fixtures::LLM).expect("image given");
        let p = pod(&d);
        assert_eq!(p.automount_service_account_token, Some(false));
        let m = p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/var/run/secrets/hector.dev/apiserver")
            .expect("mounted");
        assert_eq!(m.read_only, Some(true));
        let init = &p.init_containers.as_ref().expect("init")[0];
        assert!(
            !init
                .volume_mounts
                .iter()
                .flatten()
                .any(|x| x.name == m.name),
            "the init container needs no token"
        );
        let volume = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .and_then(|v| v.projected.as_ref())
            .expect("projected volume");
        assert_eq!(
            serde_json::to_value(volume).expect("json"),
            serde_json::json!({"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3600, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
            ]})
        );
    }

    fn with_overlay(overlay: &str) -> String {
        fixtures::LLM.replace("  image:", &format!("  podTemplate: {overlay}\n  image:"))
    }

    fn template_meta(d: &Deployment) -> &ObjectMeta {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .expect("template metadata")
    }

    #[test]
    fn the_startup_window_sets_the_startup_probe_and_the_launchers_wait() {
        let d = build(fixtures::LLM).expect("image given");
        let startup = pod(&d).containers[0]
            .startup_probe
            .clone()
            .expect("startup probe");
        assert_eq!(
            (startup.period_seconds, startup.failure_threshold),
            (Some(2), Some(60)),
            "120 s by default, as before"
        );
        assert!(
            !launcher_flags(&d)
                .iter()
                .any(|f| f.starts_with("--start-timeout")),
            "unset, the command is unchanged"
        );
        let yaml = fixtures::LLM.replace(
            "  image:",
            "  health: {startupTimeoutSeconds: 301}\n  image:",
        );
        let d = build(&yaml).expect("image given");
        let startup = pod(&d).containers[0]
            .startup_probe
            .clone()
            .expect("startup probe");
        assert_eq!(
            (startup.period_seconds, startup.failure_threshold),
            (Some(2), Some(151)),
            "rounded up: never shorter than asked"
        );
        assert!(launcher_flags(&d).contains(&"--start-timeout=301".to_string()));
        assert_eq!(startup_failure_threshold(2), 1);
    }

    #[test]
    fn an_empty_overlay_changes_nothing() {
        let plain = build(fixtures::LLM).expect("image given");
        let empty = build(&with_overlay("{}")).expect("image given");
        assert_eq!(plain, empty);
        let p = pod(&plain);
        assert!(p.affinity.is_none() && p.topology_spread_constraints.is_none());
        assert!(p.priority_class_name.is_none() && p.containers[0].env_from.is_none());
    }

    #[test]
    fn annotations_and_labels_land_on_the_pod_template_beside_the_operators() {
        let d = build(&with_overlay(
            "{metadata: {labels: {team: search}, annotations: {sidecar.example.org/inject: \"true\"}}}",
        ))
        .expect("image given");
        let meta = template_meta(&d);
        let annotations = meta.annotations.as_ref().expect("annotations");
        assert_eq!(
            annotations
                .get("sidecar.example.org/inject")
                .map(String::as_str),
            Some("true")
        );
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("search"));
        assert_eq!(
            labels.get("hector.dev/plugin").map(String::as_str),
            Some("my-llm")
        );
        // Not on the Deployment itself, and the selector is untouched.
        assert!(
            !d.metadata
                .labels
                .as_ref()
                .expect("labels")
                .contains_key("team")
        );
        let spec = d.spec.as_ref().expect("spec");
        assert_eq!(
            spec.selector.match_labels.as_ref().map(|l| l.len()),
            Some(1)
        );
    }

    #[test]
    fn topology_spread_gets_the_plugins_selector_unless_it_has_one() {
        let d = build(&with_overlay(
            "{topologySpreadConstraints: [\
             {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule},\
             {maxSkew: 2, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {team: search}}}],\
             affinity: {podAntiAffinity: {}}, priorityClassName: plugins}",
        ))
        .expect("image given");
        let p = pod(&d);
        let spread = p
            .topology_spread_constraints
            .as_ref()
            .expect("topology spread applied");
        assert_eq!(spread.len(), 2);
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(
            spread[0]
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(BTreeMap::from([(
                "hector.dev/plugin".to_string(),
                "my-llm".to_string()
            )]))
        );
        assert_eq!(
            spread[1]
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("search"),
            "a given selector is kept"
        );
        assert!(
            p.affinity
                .as_ref()
                .is_some_and(|a| a.pod_anti_affinity.is_some())
        );
        assert_eq!(p.priority_class_name.as_deref(), Some("plugins"));
    }

    #[test]
    fn volumes_mounts_env_from_and_security_contexts_merge_with_the_operators_winning() {
        let d = build(&with_overlay(
            "{volumes: [{name: models, emptyDir: {}}],\
             securityContext: {runAsUser: 1000, supplementalGroups: [5]},\
             container: {volumeMounts: [{name: models, mountPath: /models}],\
                         envFrom: [{secretRef: {name: extra}, prefix: X_}, {configMapRef: {name: more}}],\
                         securityContext: {readOnlyRootFilesystem: false}}}",
        ))
        .expect("image given");
        let p = pod(&d);
        let volumes: Vec<&str> = p
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            volumes,
            ["launcher", "tmp", "config", "apiserver", "models"]
        );
        let c = &p.containers[0];
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts.last(), Some(&"/models"));
        assert_eq!(mounts.len(), 5, "the operator's four, then the overlay's");
        assert!(
            p.init_containers.iter().flatten().all(|i| i
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "models")),
            "mounted into the plugin container only"
        );
        let env_from = c.env_from.as_ref().expect("envFrom");
        assert_eq!(env_from.len(), 2);
        assert_eq!(
            env_from[0].secret_ref.as_ref().map(|r| r.name.as_str()),
            Some("extra")
        );
        // The operator's variable is in env, which wins over envFrom in Kubernetes.
        assert!(c.env.iter().flatten().any(|e| e.name == "HECTOR_POD_UID"));
        let psc = p.security_context.as_ref().expect("pod security");
        assert_eq!(
            psc.run_as_user,
            Some(1000),
            "the overlay's field replaces the default"
        );
        assert_eq!(
            psc.run_as_non_root,
            Some(true),
            "defaults it does not set stay"
        );
        assert_eq!(psc.fs_group, Some(RUN_AS_USER));
        assert_eq!(psc.supplemental_groups.as_deref(), Some(&[5][..]));
        let csc = c.security_context.as_ref().expect("container security");
        assert_eq!(csc.read_only_root_filesystem, Some(false));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(
            csc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        // The init container keeps the restricted context.
        let init = &p.init_containers.as_ref().expect("init")[0];
        assert_eq!(
            init.security_context
                .as_ref()
                .and_then(|s| s.read_only_root_filesystem),
            Some(true)
        );
    }

    #[test]
    fn every_operator_volume_is_reserved() {
        let d = build(fixtures::LLM).expect("image given");
        let c = &pod(&d).containers[0];
        let mut built: Vec<(String, String)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect();
        built.sort();
        let mut reserved: Vec<(String, String)> = pod_template::OPERATOR_VOLUMES
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect();
        reserved.sort();
        assert_eq!(built, reserved);
    }

    #[test]
    fn an_invalid_overlay_builds_nothing_and_names_the_field() {
        let p = fixtures::plugin(&with_overlay(
            "{metadata: {labels: {hector.dev/plugin: other}}, volumes: [{name: tmp, emptyDir: {}}]}",
        ));
        let config = resolve(
            &p.spec.manifest.config_schema,
            &p.spec.config,
            &p.spec.secret_config,
        )
        .expect("valid");
        let err = deployment(&p, &config, &fixtures::settings()).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.starts_with("spec.podTemplate.metadata.labels[\"hector.dev/plugin\"]: reserved"),
            "{text}"
        );
        assert!(
            text.contains(
                "spec.podTemplate.volumes[0].name: \"tmp\" is one of the operator's own volumes"
            ),
            "{text}"
        );
    }

    #[test]
    fn endpoint_plugins_get_no_deployment() {
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
