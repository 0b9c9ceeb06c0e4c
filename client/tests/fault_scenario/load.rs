//! Callers: agents that call `Generate` in loops, each call with a deadline, and the log of
//! every call (when it started, how long it took, which replica answered or how it failed).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hector_plugin_client::PluginChannel;
use hector_plugin_sdk::proto::GenerateRequest;
use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
use tokio::sync::{Notify, watch};
use tokio::time::MissedTickBehavior;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::ask;
use super::procs::Replica;
use super::scenario::REPLICAS;

/// How long past its deadline a call may run before the harness gives up on it and logs it
/// as hung (so that a hanging call fails the test instead of hanging it).
pub const HUNG_AFTER: Duration = Duration::from_secs(3);

/// How an agent reaches the plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// The client library's balanced channel, in the agent's process.
    Library,
    /// A `hector-plugin-remote` child, over its Unix socket.
    Remote,
}

impl Path {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Path::Library => "library",
            Path::Remote => "remote",
        }
    }
}

/// An agent's client.
#[derive(Clone)]
pub enum Client {
    /// Through the library.
    Library(LlmProviderClient<PluginChannel>),
    /// Through a remote executable.
    Remote(LlmProviderClient<Channel>),
}

impl Client {
    /// Which path it takes.
    pub fn path(&self) -> Path {
        match self {
            Client::Library(_) => Path::Library,
            Client::Remote(_) => Path::Remote,
        }
    }

    /// One call of `kind`: the whole answer's text.
    async fn call(
        &mut self,
        kind: Kind,
        request: Request<GenerateRequest>,
    ) -> Result<String, Status> {
        match kind {
            Kind::Unary => {
                let response = match self {
                    Client::Library(c) => c.generate(request).await?,
                    Client::Remote(c) => c.generate(request).await?,
                };
                Ok(response.into_inner().text)
            }
            Kind::Streaming => {
                let mut stream = match self {
                    Client::Library(c) => c.generate_streaming(request).await?,
                    Client::Remote(c) => c.generate_streaming(request).await?,
                }
                .into_inner();
                let mut text = String::new();
                while let Some(chunk) = stream.message().await? {
                    text.push_str(&chunk.text);
                }
                Ok(text)
            }
        }
    }
}

/// Which RPC a loop calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Generate`.
    Unary,
    /// `GenerateStreaming`, read to its end (the deadline covers the whole stream).
    Streaming,
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Replica N answered.
    Served(usize),
    /// It failed with this status.
    Failed(Code, String),
    /// It was still running [`HUNG_AFTER`] past its deadline.
    Hung,
    /// An answer no replica gives.
    Garbled(String),
}

/// One call.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Which agent made it.
    pub agent: usize,
    /// Which RPC.
    pub kind: Kind,
    /// When it was sent.
    pub started: Instant,
    /// How long it took.
    pub elapsed: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// Every call of every agent, in the order they ended; waiters are woken at each one.
#[derive(Clone, Default)]
pub struct Log {
    samples: Arc<Mutex<Vec<Sample>>>,
    added: Arc<Notify>,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, Vec<Sample>> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, sample: Sample) {
        self.lock().push(sample);
        self.added.notify_waiters();
    }

    /// A copy of the samples so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.lock().clone()
    }

    /// Waits until `done` holds for the samples, at most `limit`; whether it does.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Sample]) -> bool) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check, so that no sample slips between the two.
            let added = self.added.notified();
            if done(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(until, added).await.is_err() {
                return done(&self.lock());
            }
        }
    }
}

/// Which replica an answer comes from (its text starts with the replica's prefix).
fn replica_of(text: &str) -> Option<usize> {
    (0..REPLICAS).find(|&i| text.starts_with(&Replica::prefix(i)))
}

/// One call loop of an agent.
pub struct Caller {
    /// The agent's client.
    pub client: Client,
    /// Which agent.
    pub agent: usize,
    /// Which RPC.
    pub kind: Kind,
    /// Every call's deadline.
    pub deadline: Duration,
    /// The pause between calls.
    pub pace: Duration,
}

/// Runs `caller`'s loop: a call every `pace` (or right after the last one when it took
/// longer), until `stop` turns true. Logs every call.
pub async fn drive(caller: Caller, mut stop: watch::Receiver<bool>, log: Log) {
    let Caller {
        mut client,
        agent,
        kind,
        deadline,
        pace,
    } = caller;
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut request = Request::new(ask(&format!("agent {agent} call {n}")));
        request.set_timeout(deadline);
        n += 1;
        let started = Instant::now();
        let result = tokio::time::timeout(deadline + HUNG_AFTER, client.call(kind, request)).await;
        let elapsed = started.elapsed();
        let outcome = match result {
            Err(_) => Outcome::Hung,
            Ok(Err(status)) => Outcome::Failed(status.code(), status.message().to_string()),
            Ok(Ok(text)) => match replica_of(&text) {
                Some(i) => Outcome::Served(i),
                None => Outcome::Garbled(text),
            },
        };
        log.push(Sample {
            agent,
            kind,
            started,
            elapsed,
            outcome,
        });
    }
}
