//! Routes each request from the host by its path: go-plugin's own services and health to
//! their local implementations, `Initialize`/`Health`/`Shutdown` of any `hector.plugin`
//! service to the session, and every other `hector.plugin` call to the remote plugin.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use tonic::Status;
use tonic::codegen::Service;
use tonic::server::{Grpc, UnaryService};
use tonic::service::Routes;

use hector_plugin_client::body::status_response;
use hector_plugin_client::pool::Call;

use crate::session::Session;

/// The package of every plugin service.
const PLUGIN_PACKAGE: &str = "hector.plugin.";

type Body = tonic::body::Body;

/// The host connection's request handler.
#[derive(Clone)]
pub struct Router {
    session: Arc<Session>,
    local: Routes,
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// A lifecycle RPC answered here, on plugin service `service`.
    Lifecycle { service: &'a str, method: &'a str },
    /// A plugin call for the remote plugin.
    Remote,
    /// go-plugin's services and `grpc.health.v1`.
    Local,
}

fn route(path: &str) -> Route<'_> {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Route::Local;
    };
    if !service.starts_with(PLUGIN_PACKAGE) {
        return Route::Local;
    }
    match method {
        "Initialize" | "Health" | "Shutdown" => Route::Lifecycle { service, method },
        _ => Route::Remote,
    }
}

/// A unary RPC answered by a closure.
struct Local<F>(F);

impl<Req, Resp, F, Fut> UnaryService<Req> for Local<F>
where
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    type Response = Resp;
    type Future = Fut;

    fn call(&mut self, request: tonic::Request<Req>) -> Fut {
        (self.0)(request)
    }
}

/// Answers one unary RPC with `handler`, decoding and encoding with prost.
async fn unary<Req, Resp, F, Fut>(request: Request<Incoming>, handler: F) -> Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let codec = tonic_prost::ProstCodec::<Resp, Req>::default();
    Grpc::new(codec).unary(Local(handler), request).await
}

impl Router {
    /// A router over `session`, with `local` serving go-plugin's services and health.
    pub fn new(session: Arc<Session>, local: Routes) -> Self {
        Self { session, local }
    }

    /// Handles one request.
    pub async fn handle(self, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let path = request.uri().path().to_string();
        Ok(match route(&path) {
            Route::Local => {
                let mut local = self.local.clone();
                // Routes are always ready; their error type is Infallible.
                std::future::poll_fn(|cx| {
                    <Routes as Service<Request<Incoming>>>::poll_ready(&mut local, cx)
                })
                .await?;
                local.call(request).await?
            }
            Route::Lifecycle { service, method } => self.lifecycle(service, method, request).await,
            Route::Remote => self.forward(request).await,
        })
    }

    async fn lifecycle(
        &self,
        service: &str,
        method: &str,
        request: Request<Incoming>,
    ) -> Response<Body> {
        use hector_plugin_sdk::proto::{HealthRequest, InitializeRequest, ShutdownRequest};
        let session = self.session.clone();
        let service = service.to_string();
        match method {
            "Initialize" => {
                unary(request, move |r: tonic::Request<InitializeRequest>| {
                    let session = session.clone();
                    let service = service.clone();
                    async move {
                        let config = r.into_inner().config;
                        tracing::info!(service, keys = config.len(), "Initialize");
                        Ok::<_, Status>(tonic::Response::new(
                            session.initialize(&service, config).await,
                        ))
                    }
                })
                .await
            }
            "Health" => unary(request, move |_: tonic::Request<HealthRequest>| {
                let session = session.clone();
                let service = service.clone();
                async move { Ok::<_, Status>(tonic::Response::new(session.health(&service).await)) }
            })
            .await,
            _ => {
                unary(request, move |_: tonic::Request<ShutdownRequest>| {
                    let session = session.clone();
                    async move { Ok::<_, Status>(tonic::Response::new(session.shutdown())) }
                })
                .await
            }
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        if !self.session.is_initialized() {
            return status_response(Status::failed_precondition(
                "not initialized: the host must call Initialize first",
            ));
        }
        match Call::read(request, Instant::now()).await {
            Ok(call) => self.session.pool().forward(call).await,
            Err(response) => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_local_lifecycle_remote_or_go_plugin() {
        assert_eq!(
            route("/hector.plugin.LLMProvider/Initialize"),
            Route::Lifecycle {
                service: "hector.plugin.LLMProvider",
                method: "Initialize"
            }
        );
        assert_eq!(
            route("/hector.plugin.EmbedderProvider/Health"),
            Route::Lifecycle {
                service: "hector.plugin.EmbedderProvider",
                method: "Health"
            }
        );
        assert!(matches!(
            route("/hector.plugin.ToolProvider/Shutdown"),
            Route::Lifecycle { .. }
        ));
        for remote in [
            "/hector.plugin.LLMProvider/Generate",
            "/hector.plugin.LLMProvider/GenerateStreaming",
            "/hector.plugin.DatabaseProvider/Search",
            "/hector.plugin.ReasoningStrategy/NextStep",
            "/hector.plugin.LLMProvider/GetManifest",
        ] {
            assert_eq!(route(remote), Route::Remote, "{remote}");
        }
        for local in [
            "/grpc.health.v1.Health/Check",
            "/plugin.GRPCController/Shutdown",
            "/plugin.GRPCStdio/StreamStdio",
            "/",
            "",
        ] {
            assert_eq!(route(local), Route::Local, "{local}");
        }
    }
}
