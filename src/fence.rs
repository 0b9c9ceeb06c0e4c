//! Fencing of API writes by the leader lease. A leader that cannot renew its lease must stop
//! writing before any other replica can take the lease over; checking "am I leading?" in the
//! reconciler is not enough, because a reconcile (or a frozen process) can be half-way through
//! its writes when the lease runs out. So every mutating request of the operator's client
//! passes through [`FenceLayer`], which refuses it unless the lease is known to be valid, and
//! cancels it when the lease runs out while it waits.
//!
//! The deadline is taken from the moment the renewal *started* (before its GET), plus the
//! renew deadline; a follower takes over only after it has seen the lease unchanged for a whole
//! lease duration, which begins no earlier than the server's write of that renewal. So the
//! fence always closes first, by at least `duration - renew_deadline`. Monotonic clocks keep
//! running while a process is stopped (SIGSTOP, cgroup freezer), so a thawed leader finds its
//! fence closed before it polls any write again.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use crate::metrics::Metrics;

/// Whether this replica may write, and until when. Cheap to clone; clones share the state.
#[derive(Clone, Debug)]
pub struct Fence {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: Instant,
    /// Nanoseconds after `base` until which writes are allowed; 0 = closed, MAX = always open.
    until: AtomicU64,
}

const CLOSED: u64 = 0;
const ALWAYS: u64 = u64::MAX;

impl Fence {
    /// A fence that allows nothing until it is opened.
    pub fn closed() -> Self {
        Self {
            inner: Arc::new(Inner {
                base: Instant::now(),
                until: AtomicU64::new(CLOSED),
            }),
        }
    }

    /// A fence that always allows writes (no leader election).
    pub fn always_open() -> Self {
        let fence = Self::closed();
        fence.inner.until.store(ALWAYS, Ordering::SeqCst);
        fence
    }

    /// Allows writes until `deadline` (never shortens an open-ended fence).
    pub fn open_until(&self, deadline: Instant) {
        let nanos = deadline
            .saturating_duration_since(self.inner.base)
            .as_nanos()
            .clamp(1, u128::from(ALWAYS - 1));
        let nanos = u64::try_from(nanos).unwrap_or(ALWAYS - 1);
        let _ = self
            .inner
            .until
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                (old != ALWAYS).then_some(nanos)
            });
    }

    /// Refuses every write from now on.
    pub fn close(&self) {
        self.inner.until.store(CLOSED, Ordering::SeqCst);
    }

    /// How long writes are still allowed; `None` when they are not.
    pub fn remaining(&self) -> Option<Duration> {
        match self.inner.until.load(Ordering::SeqCst) {
            CLOSED => None,
            ALWAYS => Some(Duration::MAX),
            until => {
                let deadline = self.inner.base + Duration::from_nanos(until);
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero()).then_some(left)
            }
        }
    }

    /// Whether writes are allowed now.
    pub fn is_open(&self) -> bool {
        self.remaining().is_some()
    }
}

/// The error of a write the fence refused or cut short.
#[derive(Debug, thiserror::Error)]
#[error("not written: this replica does not hold the leader lease ({method} {path})")]
pub struct Fenced {
    /// The request's method.
    pub method: Method,
    /// The request's path.
    pub path: String,
}

/// A tower layer that fences every mutating request and counts API writes per resource.
#[derive(Clone)]
pub struct FenceLayer {
    fence: Fence,
    metrics: Arc<Metrics>,
}

impl FenceLayer {
    /// A layer enforcing `fence`, counting in `metrics`.
    pub fn new(fence: Fence, metrics: Arc<Metrics>) -> Self {
        Self { fence, metrics }
    }
}

impl<S> Layer<S> for FenceLayer {
    type Service = FencedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FencedService {
            inner,
            fence: self.fence.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`FenceLayer`] makes.
#[derive(Clone)]
pub struct FencedService<S> {
    inner: S,
    fence: Fence,
    metrics: Arc<Metrics>,
}

/// Whether a request changes anything on the server.
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The resource a request path names, e.g. `configmaps`, `hectorplugins/status`.
pub fn resource_of(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('?')
        .next()
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // /api/v1/... or /apis/GROUP/VERSION/...
    let rest = match parts.first() {
        Some(&"api") => parts.get(2..),
        Some(&"apis") => parts.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    match rest {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => (*resource).to_string(),
        [] => "unknown".into(),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for FencedService<S>
where
    RB: Send + 'static,
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<RB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !is_write(req.method()) {
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        let refused = || Fenced {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
        };
        if !self.fence.is_open() {
            self.metrics.fenced_write();
            let e: BoxError = refused().into();
            return Box::pin(async move { Err(e) });
        }
        let resource = resource_of(req.uri().path());
        let cut = refused();
        self.metrics.api_write(&resource);
        let fut = self.inner.call(req);
        let fence = self.fence.clone();
        let metrics = Arc::clone(&self.metrics);
        Box::pin(FenceGuarded {
            inner: Box::pin(async move { fut.await.map_err(Into::into) }),
            fence,
            metrics,
            cut: Some(cut),
            alarm: None,
        })
    }
}

/// A write in flight: before every poll the fence is checked again, so a write that has not
/// gone out when the lease runs out (or when a frozen process thaws) is dropped unsent.
struct FenceGuarded<T> {
    inner: BoxFuture<Result<T, BoxError>>,
    fence: Fence,
    metrics: Arc<Metrics>,
    cut: Option<Fenced>,
    /// Wakes the write when the fence closes, to drop it then.
    alarm: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Future for FenceGuarded<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let Some(left) = self.fence.remaining() else {
                self.metrics.fenced_write();
                let e = self
                    .cut
                    .take()
                    .map_or_else(|| BoxError::from("fenced"), BoxError::from);
                return Poll::Ready(Err(e));
            };
            if let Poll::Ready(out) = self.inner.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if left == Duration::MAX {
                return Poll::Pending;
            }
            let at = Instant::now() + left;
            match self.alarm.as_mut() {
                Some(alarm) if alarm.deadline() == at => {}
                Some(alarm) => alarm.as_mut().reset(at),
                None => self.alarm = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            let fired = self
                .alarm
                .as_mut()
                .is_some_and(|a| a.as_mut().poll(cx).is_ready());
            if !fired {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[test]
    fn resources_are_named_from_paths() {
        assert_eq!(
            resource_of("/api/v1/namespaces/a/configmaps/hector-plugins"),
            "configmaps"
        );
        assert_eq!(
            resource_of("/apis/hector.dev/v1alpha1/namespaces/a/hectorplugins/x/status"),
            "hectorplugins/status"
        );
        assert_eq!(
            resource_of("/apis/apps/v1/namespaces/a/deployments/x?fieldManager=f"),
            "deployments"
        );
        assert_eq!(
            resource_of("/apis/events.k8s.io/v1/namespaces/a/events"),
            "events"
        );
        assert_eq!(
            resource_of("/apis/coordination.k8s.io/v1/namespaces/s/leases/l"),
            "leases"
        );
        assert_eq!(resource_of("/api/v1/namespaces/a"), "namespaces");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fence_closes_at_its_deadline() {
        let fence = Fence::closed();
        assert!(!fence.is_open());
        fence.open_until(Instant::now() + Duration::from_secs(10));
        assert!(fence.is_open());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(fence.is_open());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!fence.is_open());
        fence.open_until(Instant::now() + Duration::from_secs(1));
        assert!(fence.is_open());
        fence.close();
        assert!(!fence.is_open());
        let open = Fence::always_open();
        open.open_until(Instant::now());
        assert!(open.is_open(), "an unfenced operator stays unfenced");
    }

    /// A service that answers after `delay`, counting the calls it really received.
    #[derive(Clone)]
    struct Slow {
        delay: Duration,
        received: Arc<AtomicU64>,
    }

    impl Service<Request<()>> for Slow {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Response<()>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            let delay = self.delay;
            let received = Arc::clone(&self.received);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                received.fetch_add(1, Ordering::SeqCst);
                Ok(Response::new(()))
            })
        }
    }

    fn req(method: Method) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/api/v1/namespaces/a/configmaps/x")
            .body(())
            .expect("request")
    }

    #[tokio::test(start_paused = true)]
    async fn writes_pass_only_while_the_fence_is_open_and_reads_always() {
        let received = Arc::new(AtomicU64::new(0));
        let fence = Fence::closed();
        let metrics = Arc::new(Metrics::default());
        let mut svc = FenceLayer::new(fence.clone(), Arc::clone(&metrics)).layer(Slow {
            delay: Duration::from_millis(10),
            received: Arc::clone(&received),
        });
        let refused = svc.call(req(Method::PATCH)).await;
        let e = refused.expect_err("closed fence refuses");
        assert!(
            e.to_string().contains("does not hold the leader lease"),
            "{e}"
        );
        assert!(svc.call(req(Method::GET)).await.is_ok(), "reads pass");
        assert_eq!(received.load(Ordering::SeqCst), 1);

        fence.open_until(Instant::now() + Duration::from_secs(5));
        assert!(svc.call(req(Method::PATCH)).await.is_ok());
        assert_eq!(received.load(Ordering::SeqCst), 2);
        let text = metrics.render();
        assert!(
            text.contains("hector_operator_api_writes_total{resource=\"configmaps\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hector_operator_fenced_writes_total 1"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_still_waiting_when_the_lease_runs_out_is_dropped() {
        let received = Arc::new(AtomicU64::new(0));
        let fence = Fence::closed();
        fence.open_until(Instant::now() + Duration::from_secs(1));
        let mut svc = FenceLayer::new(fence.clone(), Arc::new(Metrics::default())).layer(Slow {
            delay: Duration::from_secs(5),
            received: Arc::clone(&received),
        });
        let e = svc
            .call(req(Method::PUT))
            .await
            .expect_err("cut at the deadline");
        assert!(e.to_string().contains("leader lease"), "{e}");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            received.load(Ordering::SeqCst),
            0,
            "the slow write never completed"
        );
    }
}
