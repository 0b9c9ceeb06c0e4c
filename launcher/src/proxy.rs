//! Transparent forwarding of every gRPC call the launcher does not answer itself.
//! Requests and responses pass through as HTTP/2 streams on one connection to the plugin:
//! bodies, metadata, trailers (and so status codes) and `grpc-timeout` deadlines are not
//! re-encoded. A bare hyper connection is used rather than a tonic channel: it has no
//! buffering task between the caller and the socket, which keeps the added latency low.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::{Frame, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::access::Authenticator;
use crate::backend::Backends;
use crate::drain::Tracked;
use crate::policy::{self, Peer, Plaintext, Refusal};

/// Why the plugin connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be opened.
    #[error("cannot connect to {address}: {source}")]
    Io {
        /// Where.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with {address} failed: {source}")]
    Handshake {
        /// Where.
        address: String,
        /// Why.
        source: hyper::Error,
    },
}

/// A tower service that forwards each request to the plugin.
#[derive(Clone, Debug)]
pub struct Forward {
    sender: SendRequest<axum::body::Body>,
}

impl Forward {
    /// Opens one HTTP/2 connection to `address` (`HOST:PORT` or `unix:/path`), with TCP
    /// keepalive where it is TCP and `keepalive` is on.
    pub async fn connect(
        address: &str,
        keepalive: Option<crate::keepalive::Keepalive>,
    ) -> Result<Self, ConnectError> {
        let io_err = |source| ConnectError::Io {
            address: address.to_string(),
            source,
        };
        let builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        let handshake_err = |source| ConnectError::Handshake {
            address: address.to_string(),
            source,
        };
        // One spawned task drives the connection; senders are cheap clones of its handle.
        async fn start<IO>(
            builder: &hyper::client::conn::http2::Builder<TokioExecutor>,
            io: IO,
        ) -> Result<SendRequest<axum::body::Body>, hyper::Error>
        where
            IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            let (sender, conn) = builder.handshake(TokioIo::new(io)).await?;
            tokio::spawn(conn);
            Ok(sender)
        }
        let sender = if let Some(path) = address.strip_prefix("unix:") {
            let stream = tokio::net::UnixStream::connect(path.trim_start_matches("//"))
                .await
                .map_err(io_err)?;
            start(&builder, stream).await.map_err(handshake_err)?
        } else {
            let stream = crate::keepalive::connect(address, keepalive)
                .await
                .map_err(io_err)?;
            start(&builder, stream).await.map_err(handshake_err)?
        };
        Ok(Self { sender })
    }
}

impl tower::Service<Request<axum::body::Body>> for Forward {
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<axum::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        Box::pin(async move {
            // The plugin is the authority now; keep only the path.
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            match Uri::builder()
                .scheme("http")
                .authority("plugin")
                .path_and_query(path)
                .build()
            {
                Ok(uri) => *request.uri_mut() = uri,
                Err(e) => return Ok(trailers_only(tonic::Status::internal(e.to_string()))),
            }
            if let Err(e) = sender.ready().await {
                return Ok(trailers_only(unreachable(&e)));
            }
            match sender.send_request(request).await {
                Ok(response) => Ok(response.map(axum::body::Body::new)),
                Err(e) => Ok(trailers_only(unreachable(&e))),
            }
        })
    }
}

/// Forwards each request to the plugin that is current when the request arrives, so that
/// after a configuration change the next request on any connection reaches the new plugin,
/// while requests already sent finish on the old one, which waits for them.
#[derive(Clone)]
pub struct Switch {
    backends: Backends,
    tls_required: bool,
    auth: Option<Arc<Authenticator>>,
}

impl Switch {
    /// Forwards to whichever of `backends` is current; with `tls_required`, not what came
    /// over plaintext; with `auth`, only calls of admitted callers, without their token.
    pub fn new(backends: Backends, tls_required: bool, auth: Option<Arc<Authenticator>>) -> Self {
        Self {
            backends,
            tls_required,
            auth,
        }
    }
}

impl tower::Service<Request<Body>> for Switch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // Every request is checked, whichever connection it came on: the plugin's lifecycle
        // is the launcher's (see `crate::policy`). The whole `:path`, query included: a
        // query is no part of a gRPC method, and a server may ignore it.
        let path = request.uri().path_and_query().map_or("", |p| p.as_str());
        let peer = request.extensions().get::<Peer>().map(|p| p.0);
        let mut checked = policy::check(path.as_bytes());
        if checked.is_ok() && self.tls_required && request.extensions().get::<Plaintext>().is_some()
        {
            checked = Err(Refusal::Plaintext(method_of(path)));
        }
        if let Err(refusal) = checked {
            policy::record(&refusal, peer);
            return Box::pin(async move { Ok(trailers_only(status_of(&refusal))) });
        }
        let method = method_of(path);
        let auth = self
            .auth
            .clone()
            .filter(|_| !crate::access::is_open_path(path.as_bytes()));
        let backends = self.backends.clone();
        Box::pin(async move {
            if let Some(auth) = auth {
                let header = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes().to_vec());
                let several = request
                    .headers()
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .count()
                    > 1;
                let header = header.filter(|_| !several);
                match auth.admit(header.as_deref()).await {
                    Ok(_) => policy::record_admitted(),
                    Err(denial) => {
                        let refusal = Refusal::Denied(method, denial);
                        policy::record(&refusal, peer);
                        return Ok(trailers_only(status_of(&refusal)));
                    }
                }
                // The plugin never sees the caller's token (it could replay it elsewhere).
                request.headers_mut().remove(http::header::AUTHORIZATION);
            }
            let (backend, tracked) = backends.pick();
            let mut forward = backend.forward.clone();
            let response = tower::Service::call(&mut forward, request).await?;
            // Counted until the last byte of the answer (a stream's trailers) has gone out.
            Ok(response.map(|body| {
                Body::new(Counted {
                    body,
                    _tracked: tracked,
                })
            }))
        })
    }
}

/// `service/method` of a path, bounded, for refusals.
fn method_of(path: &str) -> String {
    path.trim_start_matches('/').chars().take(200).collect()
}

/// The gRPC status a refused call is answered with.
fn status_of(refusal: &Refusal) -> tonic::Status {
    let code = tonic::Code::from_i32(i32::from(refusal.code()));
    tonic::Status::new(code, refusal.message())
}

/// A response body that keeps its call counted as in flight until it is dropped.
struct Counted {
    body: Body,
    _tracked: Tracked,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn unreachable(e: &hyper::Error) -> tonic::Status {
    tonic::Status::unavailable(format!(
        "plugin unreachable: {}",
        hector_plugin_sdk::client::error_chain(e)
    ))
}

/// A trailers-only gRPC answer carrying `status`.
fn trailers_only(status: tonic::Status) -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if status.add_header(headers).is_err() {
        headers.insert("grpc-status", HeaderValue::from_static("14"));
    }
    response
}
