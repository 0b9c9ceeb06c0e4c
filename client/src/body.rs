//! HTTP bodies for forwarding: the caller's request read into memory (so an attempt that
//! never reached an endpoint can be sent to another), and the remote's response passed
//! through with a lost connection turned into a gRPC `UNAVAILABLE` status and a deadline
//! that passes mid-way into `DEADLINE_EXCEEDED`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use hyper::body::{Body, Bytes, Frame};
use tonic::{Code, Status};

use crate::pool::Report;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Larger than the limit.
    #[error("request larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The caller's stream failed.
    #[error("reading the request failed: {0}")]
    Stream(Box<dyn std::error::Error + Send + Sync>),
}

/// Reads a whole request body (plugin RPCs send one message, never a client stream, so
/// nothing waits for a body that is still being written).
pub async fn read_all<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| ReadError::Stream(e.into()))?;
        let Ok(data) = frame.into_data() else {
            // Request trailers carry nothing gRPC uses.
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(ReadError::TooLarge { limit });
        }
        match &first {
            None => first = Some(data),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    // One frame (the usual case) is passed on without a copy.
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(rest)
    })
}

/// Where a [`Remote`] body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Done,
}

/// The remote's response body, read straight from its HTTP/2 stream (flow-control credit is
/// returned as data is passed on). If the connection fails mid-way, the caller gets trailers
/// with a gRPC status instead of a reset stream, so it sees `UNAVAILABLE` like any outage; if
/// the caller's deadline passes first, `DEADLINE_EXCEEDED`, and the stream is cancelled.
pub struct Remote {
    /// Dropped when the body ends early (a deadline), which cancels the stream.
    stream: Option<h2::RecvStream>,
    endpoint: String,
    phase: Phase,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    report: Option<Report>,
}

impl Remote {
    /// Wraps the response stream coming from `endpoint`.
    pub fn new(stream: h2::RecvStream, endpoint: String) -> Self {
        let phase = if stream.is_end_stream() {
            Phase::Done
        } else {
            Phase::Data
        };
        Self {
            stream: Some(stream),
            endpoint,
            phase,
            deadline: None,
            report: None,
        }
    }

    /// Ends the body with `DEADLINE_EXCEEDED` when `deadline` passes before its end.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        if self.phase != Phase::Done {
            self.deadline = deadline.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
        }
        self
    }

    /// Reports how the call ended.
    pub(crate) fn with_report(mut self, report: Report) -> Self {
        self.report = Some(report);
        self
    }

    fn broken(&mut self, e: &h2::Error) -> Frame<Bytes> {
        self.end();
        let status = status_of_broken_stream(e, &self.endpoint);
        tracing::warn!(endpoint = %self.endpoint, %status, "remote response broke off");
        if let Some(report) = self.report.take() {
            if e.reason() == Some(h2::Reason::CANCEL) {
                drop(report);
            } else {
                report.lost(&hector_plugin_sdk::client::error_chain(e));
            }
        }
        Frame::trailers(status_trailers(&status))
    }

    fn expired(&mut self) -> Frame<Bytes> {
        self.end();
        let status = Status::deadline_exceeded(format!(
            "deadline exceeded while remote plugin at {} was still answering",
            self.endpoint
        ));
        tracing::debug!(endpoint = %self.endpoint, "remote response stalled past the deadline");
        if let Some(report) = self.report.take() {
            report.stalled();
        }
        Frame::trailers(status_trailers(&status))
    }

    /// The caller dropped the body: an answer still coming when its deadline (about) passed
    /// counts against the endpoint, as if this side's deadline had fired first.
    fn abandoned(&mut self) {
        let Some(report) = self.report.take() else {
            return;
        };
        let deadline = self.deadline.as_ref().map(|d| d.deadline().into_std());
        if crate::pool::near_deadline(deadline) {
            report.stalled();
        }
    }

    fn end(&mut self) {
        self.phase = Phase::Done;
        self.stream = None;
        self.deadline = None;
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.abandoned();
    }
}

impl Body for Remote {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.phase == Phase::Done {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Ok(this.expired())));
        }
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        if this.phase == Phase::Data {
            match stream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // The caller has it now; let the remote send more.
                    let _ = stream.flow_control().release_capacity(data.len());
                    if let Some(report) = &this.report {
                        report.answered();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Ok(this.broken(&e)))),
                Poll::Ready(None) => this.phase = Phase::Trailers,
            }
        }
        match stream.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(trailers)) => {
                let code = trailers.as_ref().and_then(|t| {
                    t.get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map(Code::from_i32)
                });
                this.end();
                if let Some(report) = this.report.take() {
                    report.finished(code);
                }
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Ok(this.broken(&e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }
}

/// The status for a response stream that failed: the peer's cancel stays a cancel, anything
/// else is the plugin becoming unreachable.
fn status_of_broken_stream(e: &h2::Error, endpoint: &str) -> Status {
    if e.reason() == Some(h2::Reason::CANCEL) {
        return Status::cancelled(format!("remote plugin at {endpoint} cancelled the call"));
    }
    Status::new(
        Code::Unavailable,
        format!(
            "connection to remote plugin at {endpoint} lost: {}",
            hector_plugin_sdk::client::error_chain(e)
        ),
    )
}

/// `grpc-status` and `grpc-message` trailers for `status`.
pub fn status_trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", HeaderValue::from(Code::Unavailable as i32));
    }
    map
}

/// A trailers-only gRPC response carrying `status`.
pub fn status_response(status: Status) -> http::Response<tonic::body::Body> {
    status.into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_trailers_carry_code_and_message() {
        let t = status_trailers(&Status::unavailable("gone away"));
        assert_eq!(
            t.get("grpc-status").and_then(|v| v.to_str().ok()),
            Some("14")
        );
        assert!(
            t.get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|m| m.contains("gone")),
            "{t:?}"
        );
        let r = status_response(Status::unavailable("x"));
        assert_eq!(
            r.headers().get("grpc-status").and_then(|v| v.to_str().ok()),
            Some("14")
        );
    }

    #[tokio::test]
    async fn whole_bodies_are_read_up_to_the_limit() {
        let body = tonic::body::Body::new(http_body_full("hello"));
        assert_eq!(read_all(body, 10).await.expect("read").as_ref(), b"hello");
        let body = tonic::body::Body::new(http_body_full("too long for it"));
        assert!(matches!(
            read_all(body, 4).await,
            Err(ReadError::TooLarge { limit: 4 })
        ));
    }

    /// A body of one frame.
    fn http_body_full(text: &'static str) -> impl Body<Data = Bytes, Error = Infallible> {
        struct Once(Option<Bytes>);
        impl Body for Once {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
            }
        }
        Once(Some(Bytes::from_static(text.as_bytes())))
    }
}
