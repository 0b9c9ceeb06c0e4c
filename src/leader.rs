//! Leader election on a `coordination.k8s.io` Lease, so that of several replicas exactly
//! one reconciles. Expiry is judged by the local clock from the moment this replica last saw
//! the lease change (as client-go does), so clock skew between nodes does not matter. Every
//! successful renewal opens the [`Fence`] that gates the operator's writes until the renew
//! deadline, counted from the moment the renewal started; every lease request has its own
//! deadline, so a hung request cannot keep the leader writing past it.

use std::time::Duration;

use tokio::time::Instant;

use crate::fence::Fence;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Where and how to hold the lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (its Pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often the leader renews.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How often a follower retries.
    pub fn retry_every(&self) -> Duration {
        (self.duration / 7).max(Duration::from_millis(500))
    }

    /// How long the leader keeps leading without a successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How long one lease request may take: short enough that a renewal attempt (a read and
    /// a write) ends well inside the renew deadline.
    pub fn request_timeout(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(500))
    }
}

/// Whether this replica may take the lease: it holds it already, nobody does, or the holder
/// has not renewed for a whole lease duration as observed here.
pub fn may_take(holder: &str, me: &str, unchanged_for: Duration, lease_duration: Duration) -> bool {
    holder.is_empty() || holder == me || unchanged_for > lease_duration
}

/// Why the lease could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server refused or failed.
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// Leadership was lost: renewals failed for longer than the renew deadline.
    #[error("lost the leader lease: not renewed for {0:?}")]
    Lost(Duration),
    /// Another replica holds the lease now.
    #[error("lost the leader lease: {0} holds it now")]
    Taken(String),
    /// The lease thread stopped (it could not build its API client).
    #[error("the lease thread stopped: {0}")]
    Stopped(String),
    /// A lease request did not answer within its deadline.
    #[error("lease {namespace}/{name}: no answer within {timeout:?}")]
    Timeout {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// Takes and keeps the lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    fence: Fence,
    holder: String,
}

impl Elector {
    /// An elector for `config`; `client` must not be fenced (the lease is how the fence opens).
    pub fn new(client: Client, config: LeaseConfig, fence: Fence) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            fence,
            holder: String::new(),
        }
    }

    /// The lease's configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Runs one lease request within the request deadline.
    async fn timed<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, LeaseError> {
        let timeout = self.config.request_timeout();
        tokio::time::timeout(timeout, request)
            .await
            .map_err(|_| LeaseError::Timeout {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                timeout,
            })
    }

    fn err(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: i32::try_from(self.config.duration.as_secs()).ok(),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the lease; `Ok(true)` while this replica holds it, and
    /// then the fence is open until the renew deadline counted from the attempt's start.
    pub async fn try_once(&mut self) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let held = self.attempt().await?;
        if held {
            self.fence
                .open_until(started + self.config.renew_deadline());
        }
        Ok(held)
    }

    async fn attempt(&mut self) -> Result<bool, LeaseError> {
        let Some(lease) = self
            .timed(self.api.get_opt(&self.config.name))
            .await?
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self
                .timed(self.api.create(&PostParams::default(), &lease))
                .await?
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let since = match &self.observed {
            Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
            _ => {
                let now = Instant::now();
                self.observed = Some((record.0.clone(), record.1.clone(), now));
                now
            }
        };
        let holder = spec.holder_identity.clone().unwrap_or_default();
        self.holder.clone_from(&holder);
        let their_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.config.duration);
        if !may_take(
            &holder,
            &self.config.identity,
            since.elapsed(),
            their_duration,
        ) {
            return Ok(false);
        }
        let mine = holder == self.config.identity;
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        let updated = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(self.spec(acquired, transitions)),
        };
        match self
            .timed(
                self.api
                    .replace(&self.config.name, &PostParams::default(), &updated),
            )
            .await?
        {
            Ok(_) => {
                if !mine {
                    tracing::info!(identity = %self.config.identity, previous = %holder, "acquired the leader lease");
                }
                Ok(true)
            }
            // Someone else wrote first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_once().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.config.retry_every()).await;
        }
    }

    /// Renews until a renewal fails for longer than the renew deadline, or another replica
    /// took the lease; closes the fence and returns why.
    pub async fn keep(&mut self) -> LeaseError {
        let lost = self.renew_while_held().await;
        self.fence.close();
        lost
    }

    async fn renew_while_held(&mut self) -> LeaseError {
        let mut renewed = Instant::now();
        loop {
            let wait = self.config.renew_every();
            tokio::time::sleep(wait).await;
            loop {
                let started = Instant::now();
                match self.try_once().await {
                    Ok(true) => {
                        renewed = started;
                        break;
                    }
                    Ok(false) => return LeaseError::Taken(self.holder.clone()),
                    Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                }
                // The fence is what stops writes; this only decides when to stand down.
                if !self.fence.is_open() {
                    return LeaseError::Lost(renewed.elapsed());
                }
                tokio::time::sleep(self.config.retry_every()).await;
            }
        }
    }

    /// Gives the lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&self) {
        self.fence.close();
        let Ok(Ok(Some(lease))) = self.timed(self.api.get_opt(&self.config.name)).await else {
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        let released = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..spec
            }),
        };
        match self
            .timed(
                self.api
                    .replace(&self.config.name, &PostParams::default(), &released),
            )
            .await
        {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the leader lease failed"),
            Err(e) => tracing::warn!(error = %e, "releasing the leader lease failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn a_free_or_own_lease_may_be_taken() {
        assert!(may_take("", "a", Duration::ZERO, D));
        assert!(may_take("a", "a", Duration::ZERO, D));
    }

    #[test]
    fn another_holders_lease_only_after_it_stops_renewing_for_a_duration() {
        assert!(!may_take("b", "a", Duration::from_secs(14), D));
        assert!(may_take("b", "a", Duration::from_secs(16), D));
    }

    #[test]
    fn timings_fit_inside_the_lease() {
        let c = LeaseConfig {
            name: "l".into(),
            namespace: "n".into(),
            identity: "a".into(),
            duration: D,
        };
        assert!(c.renew_every() < c.renew_deadline());
        assert!(c.renew_deadline() < c.duration);
        assert!(c.retry_every() < c.renew_every());
        // A renewal is a read and a write; both must end before the renew deadline.
        assert!(c.request_timeout() * 2 < c.renew_deadline());
    }
}

/// What the lease thread reports.
#[derive(Debug)]
pub enum LeaseEvent {
    /// This replica holds the lease now (the fence is open).
    Acquired,
    /// It lost it (the fence closed first); the thread stands by for the lease again.
    Lost(LeaseError),
}

/// What the lease thread is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Give the lease up and stand by for it again.
    AndStandBy,
    /// Give the lease up and stop.
    AndStop,
}

/// The lease, taken and renewed on a thread of its own with its own runtime and API client:
/// however busy the operator's runtime is (a burst of reconciles, a slow watch), renewals run
/// on time, so a busy leader is never taken for a dead one.
pub struct LeaseThread {
    events: tokio::sync::mpsc::UnboundedReceiver<LeaseEvent>,
    commands: tokio::sync::mpsc::UnboundedSender<(Release, tokio::sync::oneshot::Sender<()>)>,
}

impl LeaseThread {
    /// Starts the thread for `lease`, with a client made from `config` there (unfenced: the
    /// lease is how the fence opens).
    pub fn start(
        config: kube::Config,
        lease: LeaseConfig,
        fence: Fence,
    ) -> Result<Self, std::io::Error> {
        let (event_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (commands, command_rx) = tokio::sync::mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("leader-lease".into())
            .spawn(move || {
                runtime.block_on(lease_loop(config, lease, fence, event_tx, command_rx))
            })?;
        Ok(Self { events, commands })
    }

    /// Waits until this replica holds the lease; an error when the thread stopped.
    pub async fn acquired(&mut self) -> Result<(), LeaseError> {
        loop {
            match self.events.recv().await {
                Some(LeaseEvent::Acquired) => return Ok(()),
                Some(LeaseEvent::Lost(_)) => {}
                None => return Err(LeaseError::Stopped("no lease events".into())),
            }
        }
    }

    /// Waits until the lease held is lost, and says why.
    pub async fn lost(&mut self) -> LeaseError {
        loop {
            match self.events.recv().await {
                Some(LeaseEvent::Lost(e)) => return e,
                Some(LeaseEvent::Acquired) => {}
                None => return LeaseError::Stopped("no lease events".into()),
            }
        }
    }

    /// Gives the lease up (if held) and then stands by or stops, as `then` says; returns once
    /// it is done.
    pub async fn release(&self, then: Release) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.commands.send((then, done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn lease_loop(
    config: kube::Config,
    lease: LeaseConfig,
    fence: Fence,
    events: tokio::sync::mpsc::UnboundedSender<LeaseEvent>,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<(Release, tokio::sync::oneshot::Sender<()>)>,
) {
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the lease thread's API client");
            return;
        }
    };
    let mut elector = Elector::new(client, lease, fence);
    loop {
        // Standing by: nothing to give up; only a stop ends the wait.
        let stop = loop {
            tokio::select! {
                _ = elector.acquire() => break false,
                command = commands.recv() => match command {
                    Some((then, done)) => {
                        let _ = done.send(());
                        if then == Release::AndStop {
                            break true;
                        }
                    }
                    None => break true,
                },
            }
        };
        if stop {
            return;
        }
        if events.send(LeaseEvent::Acquired).is_err() {
            return;
        }
        tokio::select! {
            lost = elector.keep() => {
                if events.send(LeaseEvent::Lost(lost)).is_err() {
                    return;
                }
            }
            command = commands.recv() => {
                elector.release().await;
                match command {
                    Some((then, done)) => {
                        let _ = done.send(());
                        if then == Release::AndStop {
                            return;
                        }
                    }
                    None => return,
                }
            }
        }
    }
}
