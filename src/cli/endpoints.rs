//! `hectorctl endpoints`: the plugins the operator published in a namespace, read from its
//! `hector-plugins` ConfigMap through the Kubernetes API (or from a mounted file).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hector_plugin_sdk::endpoints::{
    DEFAULT_CONFIGMAP, ENDPOINTS_KEY, EndpointsFile, PublishedPlugin, SCHEMA_VERSION,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::output;

/// Output formats of `hectorctl endpoints`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// One line per plugin.
    #[default]
    Table,
    /// The published `endpoints.json` document.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// Where published plugins are read from, shared by `endpoints` and `call --plugin`.
#[derive(clap::Args, Clone, Debug)]
pub struct SourceArgs {
    /// Namespace whose plugins to use (default: the kubeconfig context's, or the Pod's own
    /// namespace inside a cluster).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Name of the operator's endpoints ConfigMap.
    #[arg(long, default_value = DEFAULT_CONFIGMAP)]
    pub configmap: String,
    /// Read a mounted endpoints.json instead of the ConfigMap (no Kubernetes API needed).
    #[arg(long, value_name = "FILE", conflicts_with = "namespace")]
    pub endpoints_file: Option<PathBuf>,
}

/// Arguments of `hectorctl endpoints`.
#[derive(clap::Args)]
pub struct EndpointsArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// A Kubernetes client and the namespace to use: the one asked for, else the default of the
/// kubeconfig context (or, inside a Pod, of its service account).
pub async fn kube_client(namespace: Option<&str>) -> anyhow::Result<(kube::Client, String)> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let namespace = namespace
        .map(str::to_string)
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).context("cannot build a Kubernetes client")?;
    Ok((client, namespace))
}

/// Reads the published document once.
pub async fn read(source: &SourceArgs) -> anyhow::Result<(EndpointsFile, String)> {
    if let Some(file) = &source.endpoints_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let doc = EndpointsFile::parse(&text).with_context(|| file.display().to_string())?;
        return Ok((doc, file.display().to_string()));
    }
    let (client, namespace) = kube_client(source.namespace.as_deref()).await?;
    let place = format!("configmap {namespace}/{}", source.configmap);
    let cm = Api::<ConfigMap>::namespaced(client, &namespace)
        .get_opt(&source.configmap)
        .await
        .with_context(|| format!("cannot read {place}"))?;
    let doc = match cm
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(ENDPOINTS_KEY))
    {
        Some(text) => EndpointsFile::parse(text).with_context(|| place.clone())?,
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
    let rows: Vec<[String; 6]> = doc.plugins.values().map(row).collect();
    let header = ["NAME", "TYPE", "VERSION", "ENDPOINTS", "ADDRESS", "CHANGED"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn row(p: &PublishedPlugin) -> [String; 6] {
    [
        p.name.clone(),
        p.plugin_type.clone(),
        p.version.clone(),
        p.endpoints.join(","),
        p.address.clone(),
        p.last_changed.clone(),
    ]
}

/// Runs `hectorctl endpoints`.
pub async fn run(args: EndpointsArgs) -> anyhow::Result<ExitCode> {
    let (doc, place) = read(&args.source).await?;
    let mut out = output::stdout();
    match args.output {
        Output::Json => out.write_str(&doc.render())?,
        Output::Yaml => out.write_str(&serde_norway::to_string(&doc)?)?,
        Output::Table if doc.plugins.is_empty() => {
            output::note(format_args!("no plugins published in {place}"));
        }
        Output::Table => out.write_str(&table(&doc))?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

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
