//! `memory-db`: a vector database provider that keeps its collections in memory, searched by
//! cosine similarity. It needs no database server, so tests and demos can exercise the
//! `database_provider` path end to end. Data lives as long as the process (each replica has
//! its own), so it is for testing, not for keeping anything.
//!
//! Listens on `HECTOR_PLUGIN_ADDR` (default `0.0.0.0:50051`). Config key: `max_vectors` (over
//! all collections, default 100000).

mod store;

use std::sync::Mutex;

use hector_plugin_sdk::proto::{
    CreateCollectionRequest, CreateCollectionResponse, DeleteCollectionRequest,
    DeleteCollectionResponse, DeleteRequest, DeleteResponse, ManifestResponse, SearchRequest,
    SearchResponse, SearchResult, UpsertRequest, UpsertResponse,
};
use hector_plugin_sdk::{Config, DatabasePlugin, Plugin, ServeOptions, serve_database};
use tonic::Status;

use store::{Refused, Store};

/// `max_vectors` unless configured.
const DEFAULT_MAX_VECTORS: usize = 100_000;
/// The largest `max_vectors` accepted (about 4 GB of 10-dimensional vectors is far beyond a
/// test plugin's purpose).
const LIMIT_MAX_VECTORS: usize = 10_000_000;

struct MemoryDb {
    store: Mutex<Store>,
}

impl MemoryDb {
    fn with<T>(&self, f: impl FnOnce(&mut Store) -> T) -> Result<T, Status> {
        let mut store = self
            .store
            .lock()
            .map_err(|_| Status::internal("store lock poisoned"))?;
        Ok(f(&mut store))
    }
}

/// A response's `(success, error)` for an outcome.
fn outcome(result: Result<(), Refused>) -> (bool, String) {
    match result {
        Ok(()) => (true, String::new()),
        Err(e) => (false, e.0),
    }
}

/// Parses `max_vectors`.
fn max_vectors(config: &Config) -> Result<usize, String> {
    match config.get("max_vectors") {
        None => Ok(DEFAULT_MAX_VECTORS),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=LIMIT_MAX_VECTORS).contains(n))
            .ok_or_else(|| {
                format!(
                    "config key max_vectors: {raw:?} is not an integer in 1..={LIMIT_MAX_VECTORS}"
                )
            }),
    }
}

impl Plugin for MemoryDb {
    fn manifest(&self) -> ManifestResponse {
        ManifestResponse {
            name: "memory-db".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            author: "hector-operator".into(),
            description: "In-memory vector store (cosine similarity); for testing".into(),
            r#type: "database_provider".into(),
            protocol: "grpc".into(),
            hector_version: ">=0.1.0".into(),
            capabilities: Default::default(),
        }
    }

    async fn initialize(&self, config: Config) -> Result<(), String> {
        let max = max_vectors(&config)?;
        self.with(|s| s.set_max_vectors(max))
            .map_err(|e| e.message().to_string())
    }
}

impl DatabasePlugin for MemoryDb {
    async fn upsert(&self, r: UpsertRequest) -> Result<UpsertResponse, Status> {
        let metadata = r.metadata.into_iter().collect();
        let (success, error) =
            outcome(self.with(|s| s.upsert(&r.collection, &r.id, r.vector, metadata))?);
        Ok(UpsertResponse { success, error })
    }

    async fn search(&self, r: SearchRequest) -> Result<SearchResponse, Status> {
        Ok(
            match self.with(|s| s.search(&r.collection, &r.vector, r.top_k))? {
                Ok(hits) => SearchResponse {
                    results: hits
                        .into_iter()
                        .map(|h| SearchResult {
                            content: h.point.metadata.get("content").cloned().unwrap_or_default(),
                            id: h.id,
                            score: h.score,
                            vector: h.point.vector,
                            metadata: h.point.metadata.into_iter().collect(),
                            model_name: String::new(),
                        })
                        .collect(),
                    error: String::new(),
                },
                Err(e) => SearchResponse {
                    results: vec![],
                    error: e.0,
                },
            },
        )
    }

    async fn delete(&self, r: DeleteRequest) -> Result<DeleteResponse, Status> {
        let (success, error) = outcome(self.with(|s| s.delete(&r.collection, &r.id))?);
        Ok(DeleteResponse { success, error })
    }

    async fn create_collection(
        &self,
        r: CreateCollectionRequest,
    ) -> Result<CreateCollectionResponse, Status> {
        let (success, error) =
            outcome(self.with(|s| s.create_collection(&r.collection, r.vector_size))?);
        Ok(CreateCollectionResponse { success, error })
    }

    async fn delete_collection(
        &self,
        r: DeleteCollectionRequest,
    ) -> Result<DeleteCollectionResponse, Status> {
        self.with(|s| s.delete_collection(&r.collection))?;
        Ok(DeleteCollectionResponse {
            success: true,
            error: String::new(),
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
    let plugin = MemoryDb {
        store: Mutex::new(Store::new(DEFAULT_MAX_VECTORS)),
    };
    let result = match options {
        Ok(options) => serve_database(plugin, options).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("memory-db: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_vectors_is_checked() {
        assert_eq!(max_vectors(&Config::new()), Ok(DEFAULT_MAX_VECTORS));
        let config = |v: &str| Config::from([("max_vectors".to_string(), v.to_string())]);
        assert_eq!(max_vectors(&config("5")), Ok(5));
        for bad in ["0", "-1", "many", "10000001"] {
            let err = max_vectors(&config(bad)).expect_err(bad);
            assert!(err.contains("max_vectors") && err.contains(bad), "{err}");
        }
    }

    #[tokio::test]
    async fn responses_carry_refusals_in_their_error_field() -> Result<(), Status> {
        let db = MemoryDb {
            store: Mutex::new(Store::new(10)),
        };
        let created = db
            .create_collection(CreateCollectionRequest {
                collection: "c".into(),
                vector_size: 2,
            })
            .await?;
        assert!(created.success && created.error.is_empty());
        let bad = db
            .upsert(UpsertRequest {
                collection: "c".into(),
                id: "x".into(),
                vector: vec![1.0],
                metadata: Default::default(),
            })
            .await?;
        assert!(!bad.success);
        assert!(
            bad.error.contains("vector has 1 dimensions"),
            "{}",
            bad.error
        );
        db.upsert(UpsertRequest {
            collection: "c".into(),
            id: "x".into(),
            vector: vec![1.0, 0.0],
            metadata: [("content".to_string(), "hello".to_string())].into(),
        })
        .await?;
        let found = db
            .search(SearchRequest {
                collection: "c".into(),
                vector: vec![1.0, 0.0],
                top_k: 1,
            })
            .await?;
        assert_eq!(found.results.len(), 1);
        assert_eq!(found.results[0].content, "hello");
        assert_eq!(found.results[0].vector, [1.0, 0.0]);
        let missing = db
            .search(SearchRequest {
                collection: "nope".into(),
                vector: vec![1.0],
                top_k: 1,
            })
            .await?;
        assert_eq!(missing.error, "collection \"nope\" does not exist");
        Ok(())
    }
}
