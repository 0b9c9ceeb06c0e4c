//! Transparent forwarding of every gRPC call the launcher does not answer itself.
//! Requests and responses pass through as HTTP/2 streams: bodies, metadata, trailers
//! (and so status codes) and `grpc-timeout` deadlines are not re-encoded.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

/// A tower service that forwards each request to the plugin's channel.
#[derive(Clone, Debug)]
pub struct Forward {
    channel: Channel,
}

impl Forward {
    /// Forwards to `channel`.
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }
}

impl Service<Request<axum::body::Body>> for Forward {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<axum::body::Body>) -> Self::Future {
        let channel = self.channel.clone();
        Box::pin(async move {
            let request = request.map(tonic::body::Body::new);
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(e) if timed_out(&e) => Ok(trailers_only(tonic::Status::deadline_exceeded(
                    "deadline exceeded before the plugin answered",
                ))),
                Err(e) => Ok(trailers_only(tonic::Status::unavailable(format!(
                    "plugin unreachable: {}",
                    hector_plugin_sdk::client::error_chain(&e)
                )))),
            }
        })
    }
}

/// Whether the channel gave up because the request's `grpc-timeout` passed.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// A trailers-only gRPC answer carrying `status`.
fn trailers_only(status: tonic::Status) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::empty());
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
