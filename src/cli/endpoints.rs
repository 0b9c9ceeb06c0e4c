//! `hectorctl endpoints`: the plugins the operator published in a namespace, read from its
//! `hector-plugins` ConfigMap through the Kubernetes API (or from a mounted file).

use anyhow::Context;
use hector_plugin_sdk::endpoints::{ENDPOINTS_KEY, EndpointsFile, SCHEMA_VERSION};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::cluster::ClusterArgs;
use super::error::{CliError, Exit};
use super::output::{self, Format};

/// Arguments of `hectorctl endpoints`: none of its own; the cluster flags and `-o` are global.
#[derive(clap::Args)]
pub struct EndpointsArgs {}

/// Reads the published document once.
pub async fn read(cluster: &ClusterArgs) -> anyhow::Result<(EndpointsFile, String)> {
    cluster.refuse_api_flags_with_file()?;
    if let Some(file) = &cluster.endpoints_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            CliError::Config(format!(
                "cannot read the endpoints file {}: {}",
                file.display(),
                super::error::reason_text(&e)
            ))
        })?;
        let doc = EndpointsFile::parse(&text).map_err(|e| {
            CliError::Config(format!(
                "{}: {}",
                file.display(),
                super::error::reason_text(&e)
            ))
        })?;
        return Ok((doc, file.display().to_string()));
    }
    let (client, namespace) = cluster.client().await?;
    let place = format!("configmap {namespace}/{}", cluster.configmap());
    let cm = Api::<ConfigMap>::namespaced(client, &namespace)
        .get_opt(cluster.configmap())
        .await
        .with_context(|| format!("cannot read {place}"))?;
    let doc = match cm
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(ENDPOINTS_KEY))
    {
        Some(text) => EndpointsFile::parse(text)
            .map_err(|e| anyhow::anyhow!("{place}: {}", super::error::reason_text(&e)))?,
        // The operator creates the ConfigMap with the namespace's first HectorPlugin.
        None => EndpointsFile {
            schema_version: SCHEMA_VERSION,
            namespace: namespace.clone(),
            plugins: Default::default(),
        },
    };
    Ok((doc, place))
}

/// The table: one line per plugin.
pub fn table(doc: &EndpointsFile) -> String {
    let rows = doc
        .plugins
        .values()
        .map(|p| {
            vec![
                p.name.clone(),
                p.plugin_type.clone(),
                p.version.clone(),
                p.endpoints.join(","),
                p.address.clone(),
                p.last_changed.clone(),
            ]
        })
        .collect();
    super::answer::table(
        &["NAME", "TYPE", "VERSION", "ENDPOINTS", "ADDRESS", "CHANGED"],
        rows,
    )
}

/// Runs `hectorctl endpoints`.
pub async fn run(_: EndpointsArgs, cluster: &ClusterArgs, format: Format) -> anyhow::Result<Exit> {
    let (doc, place) = read(cluster).await?;
    let mut out = output::stdout();
    match format {
        // The document exactly as the operator publishes it.
        Format::Json => out.write_str(&doc.render())?,
        Format::Yaml => out.write_str(&output::document(format, &doc, false)?)?,
        Format::Text if doc.plugins.is_empty() => {
            output::note(format_args!("no plugins published in {place}"));
        }
        Format::Text => out.write_str(&table(&doc))?,
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hector_plugin_sdk::endpoints::PublishedPlugin;

    #[test]
    fn the_table_lines_up_every_plugin() {
        let mut doc = EndpointsFile {
            schema_version: SCHEMA_VERSION,
            namespace: "agents".into(),
            plugins: Default::default(),
        };
        doc.plugins.insert(
            "echo".into(),
            PublishedPlugin {
                name: "echo".into(),
                plugin_type: "llm_provider".into(),
                version: "0.1.0".into(),
                address: "echo.agents.svc:50051".into(),
                endpoints: vec!["10.0.0.1:50051".into(), "10.0.0.2:50051".into()],
                last_changed: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            },
        );
        doc.plugins.insert(
            "vectors".into(),
            PublishedPlugin {
                name: "vectors".into(),
                plugin_type: "embedder_provider".into(),
                version: "1.0.0".into(),
                address: "vectors.agents.svc:50051".into(),
                endpoints: vec!["10.0.0.3:50051".into()],
                last_changed: "2026-01-02T00:00:00Z".into(),
                ..Default::default()
            },
        );
        let text = table(&doc);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("NAME     TYPE               VERSION"),
            "{text}"
        );
        assert!(
            lines[1].contains("10.0.0.1:50051,10.0.0.2:50051  echo.agents.svc:50051"),
            "{text}"
        );
        let col = lines[0].find("ADDRESS").expect("column");
        assert_eq!(lines[2].find("vectors.agents.svc"), Some(col), "{text}");
    }
}
