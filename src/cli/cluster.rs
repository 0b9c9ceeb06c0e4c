//! The cluster `hectorctl` talks to and where it finds published plugins: the global
//! `--kubeconfig`, `--context`, `--namespace`, `--configmap` and `--endpoints-file` flags, and
//! the Kubernetes client they make.

use std::path::PathBuf;

use hector_plugin_sdk::endpoints::DEFAULT_CONFIGMAP;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::error::CliError;

/// Global flags naming the cluster, the namespace and the published plugins.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Kubeconfig file to use (default: $KUBECONFIG, ~/.kube/config, or the Pod's service
    /// account inside a cluster).
    #[arg(long, global = true, value_name = "FILE", help_heading = "Cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME", help_heading = "Cluster")]
    pub context: Option<String>,
    /// Namespace: where published plugins are read, or the namespace of the resources
    /// `manifest convert` and `discover --emit` print (default: the context's, or the Pod's).
    #[arg(
        long,
        short = 'n',
        global = true,
        value_name = "NAME",
        help_heading = "Cluster"
    )]
    pub namespace: Option<String>,
    /// Name of the operator's endpoints ConfigMap [default: hector-plugins].
    #[arg(long, global = true, value_name = "NAME", help_heading = "Cluster")]
    pub configmap: Option<String>,
    /// Read a mounted endpoints.json instead of the ConfigMap (no Kubernetes API needed).
    #[arg(long, global = true, value_name = "FILE", help_heading = "Cluster")]
    pub endpoints_file: Option<PathBuf>,
}

impl ClusterArgs {
    /// The ConfigMap to read.
    pub fn configmap(&self) -> &str {
        self.configmap.as_deref().unwrap_or(DEFAULT_CONFIGMAP)
    }

    /// The flags given that make the Kubernetes API be used.
    fn api_flags(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        if self.kubeconfig.is_some() {
            given.push("--kubeconfig");
        }
        if self.context.is_some() {
            given.push("--context");
        }
        if self.configmap.is_some() {
            given.push("--configmap");
        }
        given
    }

    /// Refuses every cluster flag but `--namespace`, for `what`, which reads no published
    /// plugins.
    pub fn refuse_all_but_namespace(&self, what: &str) -> Result<(), CliError> {
        let mut given = self.api_flags();
        if self.endpoints_file.is_some() {
            given.push("--endpoints-file");
        }
        refuse(
            &given,
            what,
            "commands that read published plugins (endpoints, call --plugin)",
        )
    }

    /// Refuses every cluster flag, namespace included, for `what`.
    pub fn refuse_all(&self, what: &str) -> Result<(), CliError> {
        if self.namespace.is_some() {
            return refuse(&["--namespace"], what, "the commands that use a namespace");
        }
        self.refuse_all_but_namespace(what)
    }

    /// With `--endpoints-file` the API is not used: flags that choose it are refused.
    pub fn refuse_api_flags_with_file(&self) -> Result<(), CliError> {
        if self.endpoints_file.is_none() {
            return Ok(());
        }
        let mut given = self.api_flags();
        if self.namespace.is_some() {
            given.push("--namespace");
        }
        match given.first() {
            Some(flag) => Err(CliError::usage(format!(
                "{flag} cannot be used with --endpoints-file: the file is read instead of the \
                 Kubernetes API"
            ))),
            None => Ok(()),
        }
    }

    /// A Kubernetes client and the namespace to use: the one asked for, else the default of
    /// the kubeconfig context (or, inside a Pod, of its service account).
    pub async fn client(&self) -> Result<(kube::Client, String), CliError> {
        let config = self.config().await?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)
            .map_err(|e| CliError::Config(format!("cannot make a Kubernetes client: {e}")))?;
        Ok((client, namespace))
    }

    async fn config(&self) -> Result<kube::Config, CliError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let (kubeconfig, place) = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => (
                Kubeconfig::read_from(path).map_err(|e| {
                    CliError::Config(format!(
                        "cannot use kubeconfig {}: {}",
                        path.display(),
                        super::error::reason_text(&e)
                    ))
                })?,
                path.display().to_string(),
            ),
            (None, Some(_)) => (
                Kubeconfig::read().map_err(|e| {
                    CliError::Config(format!(
                        "cannot read the kubeconfig ($KUBECONFIG or ~/.kube/config): {}",
                        super::error::reason_text(&e)
                    ))
                })?,
                "the kubeconfig".to_string(),
            ),
            (None, None) => {
                return kube::Config::infer().await.map_err(|e| {
                    CliError::Config(format!(
                        "no Kubernetes configuration ($KUBECONFIG, ~/.kube/config or \
                         in-cluster; or give --kubeconfig): {}",
                        super::error::reason_text(&e)
                    ))
                });
            }
        };
        check_context(&kubeconfig, self.context.as_deref(), &place)?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| {
                CliError::Config(format!(
                    "cannot use {place}: {}",
                    super::error::reason_text(&e)
                ))
            })
    }
}

fn refuse(given: &[&str], what: &str, for_whom: &str) -> Result<(), CliError> {
    match given {
        [] => Ok(()),
        [flag] => Err(CliError::usage(format!(
            "{flag} is for {for_whom}, not `{what}`"
        ))),
        flags => Err(CliError::usage(format!(
            "{} are for {for_whom}, not `{what}`",
            flags.join(", ")
        ))),
    }
}

/// Checks that the context asked for (or a current one) is in the kubeconfig, naming the
/// contexts there when it is not.
pub fn check_context(
    kubeconfig: &Kubeconfig,
    context: Option<&str>,
    place: &str,
) -> Result<(), CliError> {
    let names: Vec<&str> = kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let known = || {
        if names.is_empty() {
            "it has none".to_string()
        } else {
            format!("it has {}", names.join(", "))
        }
    };
    match context.or(kubeconfig.current_context.as_deref()) {
        Some(name) if names.contains(&name) => Ok(()),
        Some(name) => Err(CliError::Config(format!(
            "context {name:?} is not in {place} ({})",
            known()
        ))),
        None => Err(CliError::Config(format!(
            "{place} names no current context: give --context ({})",
            known()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(current: Option<&str>, contexts: &[&str]) -> Kubeconfig {
        Kubeconfig {
            current_context: current.map(str::to_string),
            contexts: contexts
                .iter()
                .map(|name| kube::config::NamedContext {
                    name: name.to_string(),
                    context: Some(Default::default()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_context_that_is_not_there_is_named_with_those_that_are() {
        let k = kubeconfig(Some("kind"), &["kind", "prod"]);
        assert!(check_context(&k, None, "k.yaml").is_ok());
        assert!(check_context(&k, Some("prod"), "k.yaml").is_ok());
        let e = check_context(&k, Some("staging"), "k.yaml").map(|()| "accepted");
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("context \"staging\" is not in k.yaml (it has kind, prod)".to_string())
        );
        let none = kubeconfig(None, &[]);
        let e = check_context(&none, None, "k.yaml").map(|()| "accepted");
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("k.yaml names no current context: give --context (it has none)".to_string())
        );
    }

    #[test]
    fn flags_a_command_does_not_use_are_refused_by_name() {
        let args = ClusterArgs {
            kubeconfig: Some("k.yaml".into()),
            ..Default::default()
        };
        let e = args.refuse_all_but_namespace("manifest validate");
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err(
                "--kubeconfig is for commands that read published plugins (endpoints, call \
                 --plugin), not `manifest validate`"
                    .to_string()
            )
        );
        let args = ClusterArgs {
            namespace: Some("agents".into()),
            ..Default::default()
        };
        assert!(args.refuse_all_but_namespace("manifest convert").is_ok());
        assert!(args.refuse_all("completion").is_err());
        let args = ClusterArgs {
            endpoints_file: Some("e.json".into()),
            context: Some("kind".into()),
            ..Default::default()
        };
        let e = args.refuse_api_flags_with_file().map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.starts_with("--context cannot be used with --endpoints-file")),
            "{e:?}"
        );
    }
}
