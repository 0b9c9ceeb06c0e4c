//! The scenario itself: its plan, its run, and what it measured.
//!
//! Replicas, all inside the scenario's network namespace (so that nothing outlives a killed
//! run): r0 is frozen (SIGSTOP of the `echo-llm` process that serves it), r1 stays healthy, r2
//! is black-holed (every packet to its port dropped). Phases: *before* the faults, *during*
//! them, *recovery* (from SIGCONT and the rule's removal until every agent has had calls served
//! by r0 and r2 again) and *after*. A call belongs to the phase in which it ended: one in flight
//! to r0 when it froze fails *during* the faults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hector_plugin_client::{ChannelOptions, Ejection, PluginChannel};
use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
use hector_plugin_sdk::token::TokenSource;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::Code;

use super::HarnessError;
use super::load::{Caller, Client, HUNG_AFTER, Kind, Log, Outcome, Path, Sample, drive};
use super::netns::Namespace;
use super::procs::{Remote, Replica};

/// The frozen replica.
pub const FROZEN: usize = 0;
/// The replica that stays healthy.
pub const HEALTHY: usize = 1;
/// The black-holed replica.
pub const BLACK_HOLED: usize = 2;
/// How many replicas serve the plugin.
pub const REPLICAS: usize = 3;
/// Replica N listens on this port plus N (the namespace is the scenario's own).
const FIRST_PORT: u16 = 50051;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Every call's deadline.
    pub deadline: Duration,
    /// How long the agents call before the faults.
    pub before: Duration,
    /// How long the faults last.
    pub during: Duration,
    /// How long recovery may take at most.
    pub recovery_limit: Duration,
    /// How long the agents call once recovered.
    pub after: Duration,
    /// Agents using the client library, each with its own channel ejecting endpoints by
    /// these rules.
    pub library: Vec<Ejection>,
    /// Agents using a `hector-plugin-remote` process each (which ejects by the defaults).
    pub remote_agents: usize,
    /// Concurrent call loops per agent; every second one calls `GenerateStreaming`, the
    /// others `Generate`.
    pub loops: usize,
    /// The pause between the calls of one loop.
    pub pace: Duration,
    /// Recovered means: every agent had this many calls served by each recovered replica.
    pub seen_again: usize,
}

/// The phases of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before the faults.
    Before,
    /// While r0 is frozen and r2 black-holed.
    During,
    /// From the end of the faults until every agent uses r0 and r2 again.
    Recovery,
    /// After that.
    After,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 4] = [Phase::Before, Phase::During, Phase::Recovery, Phase::After];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "during",
            Phase::Recovery => "recovery",
            Phase::After => "after",
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// What was run.
    pub plan: Plan,
    /// Every call.
    pub samples: Vec<Sample>,
    /// Each agent's path.
    pub agents: Vec<Path>,
    /// Each agent's ejection rules.
    pub ejections: Vec<Ejection>,
    /// Where the black-holed replica ran.
    pub netns: String,
    /// When the faults began.
    pub fault: Instant,
    /// When they ended.
    pub recover: Instant,
    /// When every agent used r0 and r2 again; `None` when that did not happen within the
    /// plan's limit.
    pub recovered: Option<Instant>,
}

/// Calls of one group (a phase and a path, or an agent), counted.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Calls made.
    pub calls: usize,
    /// Calls served, per replica.
    pub served: [usize; REPLICAS],
    /// Calls that failed because their deadline passed.
    pub timeouts: usize,
    /// Calls that failed otherwise, by code.
    pub failures: BTreeMap<String, usize>,
    /// Calls that hung or got an answer no replica gives.
    pub broken: usize,
    latencies: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, s: &Sample) {
        self.calls += 1;
        self.latencies.push(s.elapsed);
        match &s.outcome {
            Outcome::Served(i) => self.served[*i] += 1,
            Outcome::Failed(code, message) if is_timeout(*code, message) => self.timeouts += 1,
            Outcome::Failed(code, _) => *self.failures.entry(format!("{code:?}")).or_default() += 1,
            Outcome::Hung | Outcome::Garbled(_) => self.broken += 1,
        }
    }

    /// Calls that did not succeed.
    pub fn failed(&self) -> usize {
        self.timeouts + self.failures.values().sum::<usize>() + self.broken
    }

    /// The counts in one line (for messages).
    pub fn summary(&self) -> String {
        format!(
            "{} calls, served by r0/r1/r2 {:?}, {} timeouts, other failures {:?}, {} hung or garbled",
            self.calls, self.served, self.timeouts, self.failures, self.broken
        )
    }

    /// The `p`-quantile of the calls' latencies (`p` in 0..=1), failures included.
    pub fn quantile(&self, p: f64) -> Option<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        let rank = (p * n as f64).ceil() as usize;
        sorted.get(rank.clamp(1, n) - 1).copied()
    }
}

/// Ejection rules in a table: "5 x, 30s".
fn ejection_text(e: &Ejection) -> String {
    format!("{} x, {:?}", e.consecutive_failures, e.base)
}

/// Whether a failure is the call's deadline passing: `DEADLINE_EXCEEDED`, or the `CANCELLED`
/// status tonic's own channel gives when it enforces the deadline itself (the remote path).
fn is_timeout(code: Code, message: &str) -> bool {
    code == Code::DeadlineExceeded || (code == Code::Cancelled && message == "Timeout expired")
}

/// Runs the scenario.
pub async fn run(plan: &Plan) -> Result<Report, HarnessError> {
    // Dropped last (declared first): the replicas inside go before the namespace.
    let ns = Namespace::create()?;
    let at = |i: u16| SocketAddr::from((ns.ip, FIRST_PORT + i));
    let frozen = Replica::start(FROZEN, at(0), &ns).await?;
    let healthy = Replica::start(HEALTHY, at(1), &ns).await?;
    let black_holed = Replica::start(BLACK_HOLED, at(2), &ns).await?;
    let addrs = [frozen.addr, healthy.addr, black_holed.addr];
    let hole = black_holed.addr.port();

    let mut clients = Vec::new();
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let mut ejections = Vec::new();
    for ejection in &plan.library {
        let options = ChannelOptions::new()
            .token(TokenSource::none())
            .ejection(*ejection);
        let channel =
            PluginChannel::connect_with(&list.join(","), PluginType::LlmProvider, &options).await?;
        clients.push(Client::Library(channel.llm()?));
        ejections.push(*ejection);
    }
    let mut remotes = Vec::new();
    for _ in 0..plan.remote_agents {
        let remote = Remote::start(&addrs).await?;
        clients.push(Client::Remote(LlmProviderClient::new(
            remote.channel.clone(),
        )));
        ejections.push(Ejection::default());
        remotes.push(remote);
    }
    let agents: Vec<Path> = clients.iter().map(Client::path).collect();
    let where_ns = format!("netns {}, {} via {}", ns.name(), ns.ip, ns.host_ip);

    let log = Log::default();
    let (stop, stopped) = watch::channel(false);
    let mut loops = JoinSet::new();
    for (agent, client) in clients.into_iter().enumerate() {
        for i in 0..plan.loops {
            let kind = if i % 2 == 1 {
                Kind::Streaming
            } else {
                Kind::Unary
            };
            let caller = Caller {
                client: client.clone(),
                agent,
                kind,
                deadline: plan.deadline,
                pace: plan.pace,
            };
            loops.spawn(drive(caller, stopped.clone(), log.clone()));
        }
    }

    tokio::time::sleep(plan.before).await;
    let fault = Instant::now();
    frozen.freeze()?;
    ns.black_hole(hole)?;
    tokio::time::sleep(plan.during).await;
    let recover = Instant::now();
    frozen.thaw()?;
    ns.restore(hole)?;
    let count = agents.len();
    let back = log
        .wait_for(plan.recovery_limit, |samples| {
            used_again(samples, recover, count) >= plan.seen_again
        })
        .await;
    let recovered = back.then(Instant::now);
    if back {
        tokio::time::sleep(plan.after).await;
    }
    let _ = stop.send(true);
    // Every loop ends after its current call, which the harness bounds.
    let drained =
        tokio::time::timeout(plan.deadline + HUNG_AFTER + Duration::from_secs(1), async {
            while loops.join_next().await.is_some() {}
        })
        .await;
    if drained.is_err() {
        loops.abort_all();
    }
    drop(remotes);
    Ok(Report {
        plan: plan.clone(),
        samples: log.snapshot(),
        agents,
        ejections,
        netns: where_ns,
        fault,
        recover,
        recovered,
    })
}

/// The fewest calls any agent had served by r0 or by r2 among those it sent after `since`.
fn used_again(samples: &[Sample], since: Instant, agents: usize) -> usize {
    let mut seen = vec![[0usize; REPLICAS]; agents];
    for s in samples.iter().filter(|s| s.started >= since) {
        if let Outcome::Served(i) = s.outcome {
            seen[s.agent][i] += 1;
        }
    }
    seen.iter()
        .map(|c| c[FROZEN].min(c[BLACK_HOLED]))
        .min()
        .unwrap_or(0)
}

impl Report {
    /// The phase a call belongs to, by when it ended.
    pub fn phase(&self, s: &Sample) -> Phase {
        let ended = s.started + s.elapsed;
        if ended < self.fault {
            Phase::Before
        } else if ended < self.recover {
            Phase::During
        } else if self.recovered.is_none_or(|r| ended < r) {
            Phase::Recovery
        } else {
            Phase::After
        }
    }

    /// The calls of `phase` made along `path`.
    pub fn by_phase(&self, phase: Phase, path: Path) -> Tally {
        let mut t = Tally::default();
        for s in &self.samples {
            if self.phase(s) == phase && self.agents[s.agent] == path {
                t.add(s);
            }
        }
        t
    }

    /// Agent `agent`'s calls in `phases`.
    pub fn by_agent(&self, agent: usize, phases: &[Phase]) -> Tally {
        let mut t = Tally::default();
        for s in &self.samples {
            if s.agent == agent && phases.contains(&self.phase(s)) {
                t.add(s);
            }
        }
        t
    }

    /// Calls that ended later than their deadline plus `margin`, or hung.
    pub fn late(&self, margin: Duration) -> Vec<&Sample> {
        let limit = self.plan.deadline + margin;
        self.samples
            .iter()
            .filter(|s| s.elapsed > limit || s.outcome == Outcome::Hung)
            .collect()
    }

    /// The agent's name in tables.
    pub fn agent_name(&self, agent: usize) -> String {
        let path = self.agents[agent];
        let nth = self.agents[..agent].iter().filter(|p| **p == path).count();
        format!("{}-{nth}", path.name())
    }

    /// Every call that did not succeed, one a line: when it was sent (from the faults'
    /// start), by whom, how long it took and how it ended.
    pub fn render_failures(&self) -> String {
        let mut lines = Vec::new();
        for s in &self.samples {
            if matches!(s.outcome, Outcome::Served(_)) {
                continue;
            }
            let at = if s.started >= self.fault {
                format!("+{:.3}s", (s.started - self.fault).as_secs_f64())
            } else {
                format!("-{:.3}s", (self.fault - s.started).as_secs_f64())
            };
            lines.push(format!(
                "{at:>9} {:<10} {:<9} {:>8.1?} {:?}",
                self.agent_name(s.agent),
                format!("{:?}", s.kind),
                s.elapsed,
                s.outcome
            ));
        }
        lines.join("\n")
    }

    /// The report as tables.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        let fmt_failures = |t: &Tally| {
            let mut parts: Vec<String> =
                t.failures.iter().map(|(c, n)| format!("{c} {n}")).collect();
            if t.broken > 0 {
                parts.push(format!("broken {}", t.broken));
            }
            if parts.is_empty() {
                "-".to_string()
            } else {
                parts.join(", ")
            }
        };
        let p = &self.plan;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fault scenario in {}: r{FROZEN} frozen (SIGSTOP), r{BLACK_HOLED} black-holed (DROP), r{HEALTHY} healthy; \
             {} library + {} remote agents x {} loops (unary, streaming, ...), a call every {:?} per loop, deadline {:?}",
            self.netns,
            p.library.len(),
            p.remote_agents,
            p.loops,
            p.pace,
            p.deadline
        );
        let phase_len = |phase: Phase| -> String {
            let (from, to) = match phase {
                Phase::Before => return format!("{:?}", p.before),
                Phase::During => (self.fault, Some(self.recover)),
                Phase::Recovery => (self.recover, self.recovered),
                Phase::After => return format!("{:?}", p.after),
            };
            to.map_or("(not recovered)".to_string(), |to| {
                format!("{:.1?}", to - from)
            })
        };
        let _ = writeln!(
            out,
            "{:<9} {:>9} {:<8} {:>6} {:>6} {:>6} {:>6} {:>8} {:>9} {:>9}  other failures",
            "phase", "length", "path", "calls", "r0", "r1", "r2", "timeouts", "p50 ms", "p99 ms"
        );
        for phase in Phase::ALL {
            for path in [Path::Library, Path::Remote] {
                let t = self.by_phase(phase, path);
                if t.calls == 0 && !self.agents.contains(&path) {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{:<9} {:>9} {:<8} {:>6} {:>6} {:>6} {:>6} {:>8} {:>9} {:>9}  {}",
                    phase.name(),
                    phase_len(phase),
                    path.name(),
                    t.calls,
                    t.served[0],
                    t.served[1],
                    t.served[2],
                    t.timeouts,
                    ms(t.quantile(0.50)),
                    ms(t.quantile(0.99)),
                    fmt_failures(&t)
                );
            }
        }
        let _ = writeln!(
            out,
            "{:<10} {:>13} {:>6} {:>15} {:>15} {:>13} {:>13}  other failures (during+recovery)",
            "agent",
            "ejects after",
            "paid",
            "timeouts during",
            "timeouts recov",
            "r0 after rec",
            "r2 after rec"
        );
        for agent in 0..self.agents.len() {
            let during = self.by_agent(agent, &[Phase::During]);
            let recovery = self.by_agent(agent, &[Phase::Recovery]);
            let later = self.by_agent(agent, &[Phase::Recovery, Phase::After]);
            let both = self.by_agent(agent, &[Phase::During, Phase::Recovery]);
            let _ = writeln!(
                out,
                "{:<10} {:>13} {:>6} {:>15} {:>15} {:>13} {:>13}  {}",
                self.agent_name(agent),
                ejection_text(&self.ejections[agent]),
                both.failed(),
                during.timeouts,
                recovery.timeouts,
                later.served[FROZEN],
                later.served[BLACK_HOLED],
                fmt_failures(&both)
            );
        }
        out
    }
}
