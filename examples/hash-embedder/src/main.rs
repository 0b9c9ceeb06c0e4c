//! `hash-embedder`: an embedder provider that turns text into a deterministic unit vector
//! derived from a hash of its words. Similar texts share words and so share dimensions,
//! which is enough to exercise search without a model.
//!
//! Listens on `HECTOR_PLUGIN_ADDR` (default `0.0.0.0:50051`). Config keys: `dimension`
//! (default 64), `model` (default `hash-64`).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use hector_plugin_sdk::proto::{EmbedRequest, EmbedResponse, EmbedderInfo, ManifestResponse};
use hector_plugin_sdk::{Config, EmbedderPlugin, Plugin, ServeOptions, serve_embedder};
use tonic::Status;

struct HashEmbedder {
    dimension: AtomicUsize,
    model: RwLock<String>,
}

/// Embeds `text` into `dimension` floats: each word adds ±1 to one bucket, then the vector
/// is scaled to unit length.
fn embed(text: &str, dimension: usize) -> Vec<f32> {
    let mut v = vec![0f32; dimension];
    for word in text.split_whitespace() {
        let mut h = DefaultHasher::new();
        word.to_lowercase().hash(&mut h);
        let bits = h.finish();
        let index = (bits % dimension as u64) as usize;
        v[index] += if bits >> 63 == 0 { 1.0 } else { -1.0 };
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

impl Plugin for HashEmbedder {
    fn manifest(&self) -> ManifestResponse {
        ManifestResponse {
            name: "hash-embedder".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            author: "hector-operator".into(),
            description: "Deterministic bag-of-words hash embeddings; for testing".into(),
            r#type: "embedder_provider".into(),
            protocol: "grpc".into(),
            hector_version: ">=0.1.0".into(),
            capabilities: Default::default(),
        }
    }

    async fn initialize(&self, config: Config) -> Result<(), String> {
        if let Some(d) = config.get("dimension") {
            let d: usize = d
                .parse()
                .ok()
                .filter(|d| (1..=65536).contains(d))
                .ok_or_else(|| {
                    format!("config key dimension: {d:?} is not an integer in 1..=65536")
                })?;
            self.dimension.store(d, Ordering::Relaxed);
        }
        let model = config
            .get("model")
            .cloned()
            .unwrap_or_else(|| format!("hash-{}", self.dimension.load(Ordering::Relaxed)));
        *self
            .model
            .write()
            .map_err(|_| "lock poisoned".to_string())? = model;
        Ok(())
    }
}

impl EmbedderPlugin for HashEmbedder {
    async fn embed(&self, request: EmbedRequest) -> Result<EmbedResponse, Status> {
        if request.text.trim().is_empty() {
            return Ok(EmbedResponse {
                vector: vec![],
                error: "text is empty".into(),
            });
        }
        Ok(EmbedResponse {
            vector: embed(&request.text, self.dimension.load(Ordering::Relaxed)),
            error: String::new(),
        })
    }

    async fn embedder_info(&self) -> Result<EmbedderInfo, Status> {
        Ok(EmbedderInfo {
            model_name: self.model.read().map(|m| m.clone()).unwrap_or_default(),
            dimension: i32::try_from(self.dimension.load(Ordering::Relaxed)).unwrap_or(i32::MAX),
        })
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: under a launcher or in a Pod they would be noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // HECTOR_PLUGIN_ADDR, a go-plugin host (Hector, the launcher), or the container port.
    let options = ServeOptions::from_env_or(([0, 0, 0, 0], 50051).into());
    let plugin = HashEmbedder {
        dimension: AtomicUsize::new(64),
        model: RwLock::new("hash-64".into()),
    };
    let result = match options {
        Ok(options) => serve_embedder(plugin, options).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("hash-embedder: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::embed;

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        let a = embed("the quick brown fox", 16);
        assert_eq!(a.len(), 16);
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert_eq!(a, embed("the quick brown fox", 16));
        assert_ne!(a, embed("a lazy dog", 16));
    }
}
