//! An agent's side of remote plugins: the published plugins of the Pod's namespace, followed
//! through the Kubernetes API, called with per-call balancing (see examples/agent/README.md).
//!
//! `cargo run -p hector-plugin-client --example agent` (with a kubeconfig whose namespace has
//! an `echo-llm` and a `hash-embedder` published).

use std::time::Duration;

use hector_plugin_client::{Directory, served};
use hector_plugin_sdk::proto::{EmbedRequest, GenerateRequest, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a Pod: the service account's token and namespace.
    let config = kube::Config::infer().await?;
    let namespace = config.default_namespace.clone();
    let plugins = Directory::watch_namespace(kube::Client::try_from(config)?, &namespace).await?;
    // Without API access: Directory::follow_file("/etc/hector/plugins/endpoints.json").await?

    plugins
        .wait_for("echo-llm", Duration::from_secs(60))
        .await?;
    let mut llm = plugins.plugin("echo-llm").await?.llm()?;
    let mut request = tonic::Request::new(GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: "hello".into(),
            ..Default::default()
        }],
        tools: vec![],
    });
    request.set_timeout(Duration::from_secs(30));
    let answer = llm.generate(request).await?;
    let endpoint = served(&answer).map(|s| s.endpoint);
    println!("{} (served by {endpoint:?})", answer.get_ref().text);

    let mut embedder = plugins.plugin("hash-embedder").await?.embedder()?;
    let vector = embedder
        .embed(EmbedRequest {
            text: "hello".into(),
        })
        .await?
        .into_inner()
        .vector;
    println!("{} dimensions", vector.len());
    Ok(())
}
