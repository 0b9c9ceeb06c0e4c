//! Faults reproduced on this machine: a plugin served by three real `echo-llm` processes,
//! agents calling it in loops through the client library and through `hector-plugin-remote`,
//! then one replica frozen (SIGSTOP: its connections stay open, nothing answers) and one
//! black-holed (its packets dropped inside a network namespace the test makes), then both
//! recovered. No call may outlive its deadline, each agent may pay only a handful of failed
//! calls before it avoids the broken replicas, and the recovered replicas are used again.
//!
//! Needs root (`ip netns`, `iptables`) and the workspace's binaries
//! (`cargo build --workspace --bins`). Latencies are printed, not asserted (the `faults`
//! bench prints them over longer phases); run with `--nocapture` to see them, and with
//! `FAULTS_VERBOSE=1` for every failed call and the remote executables' log.

mod fault_scenario;

use std::time::Duration;

use hector_plugin_client::Ejection;

use fault_scenario::load::Path;
use fault_scenario::scenario::{self, BLACK_HOLED, FROZEN, Phase, Plan};

/// How late past its deadline a call may end (timers and a busy machine).
const MARGIN: Duration = Duration::from_millis(300);
/// The failed calls an agent may pay for both broken replicas together: per replica, the
/// failures in a row that eject it, plus the calls of the agent's other loops that were
/// already on their way to it then. Nothing more: an ejected replica that still fails its
/// probe stays out without costing calls.
fn handful(ejection: &Ejection, loops: usize) -> usize {
    let per_replica = ejection.consecutive_failures as usize + loops - 1;
    2 * per_replica
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_and_a_black_holed_replica_cost_each_agent_a_handful_of_calls() {
    let plan = Plan {
        deadline: Duration::from_millis(600),
        before: Duration::from_secs(2),
        during: Duration::from_secs(8),
        // The default ejection (30 s) outlasts the faults: the replicas come back when it
        // runs out and their probe succeeds.
        recovery_limit: Duration::from_secs(40),
        after: Duration::from_secs(2),
        // Two agents with the defaults (5 failures in a row, 30 s) and one that ejects sooner
        // and for less long.
        library: vec![
            Ejection::default(),
            Ejection::default(),
            Ejection {
                consecutive_failures: 2,
                base: Duration::from_secs(1),
                max: Duration::from_secs(10),
            },
        ],
        remote_agents: 2,
        loops: 2,
        pace: Duration::from_millis(20),
        seen_again: 3,
    };
    let report = match scenario::run(&plan).await {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    println!("{}", report.render());
    if fault_scenario::procs::verbose() {
        println!("{}", report.render_failures());
    }

    let late = report.late(MARGIN);
    assert!(
        late.is_empty(),
        "{} calls ended more than {MARGIN:?} past their {:?} deadline, e.g. {:?}",
        late.len(),
        plan.deadline,
        &late[..late.len().min(5)]
    );
    for path in [Path::Library, Path::Remote] {
        let before = report.by_phase(Phase::Before, path);
        assert_eq!(
            before.failed(),
            0,
            "{} calls before the faults: {}",
            path.name(),
            before.summary()
        );
        assert!(
            before.served.iter().all(|n| *n > 0),
            "{} calls before the faults: every replica serves: {}",
            path.name(),
            before.summary()
        );
    }
    assert!(
        report.recovered.is_some(),
        "r{FROZEN} and r{BLACK_HOLED} were not used again by every agent within {:?} of their recovery",
        plan.recovery_limit
    );
    // Every agent is checked before anything fails, so that a failure names them all.
    let mut wrong = Vec::new();
    for agent in 0..report.agents.len() {
        let name = report.agent_name(agent);
        let ejection = &report.ejections[agent];
        let paid = report.by_agent(agent, &[Phase::During, Phase::Recovery]);
        let bound = handful(ejection, plan.loops);
        if paid.failed() > bound {
            wrong.push(format!(
                "{name} paid {} failed calls, more than {bound} (2 broken replicas x ({} failures in a row + {} calls of its other loops)): {}",
                paid.failed(),
                ejection.consecutive_failures,
                plan.loops - 1,
                paid.summary()
            ));
        }
        let after = report.by_agent(agent, &[Phase::After]);
        if after.failed() > 0 {
            wrong.push(format!("{name} after recovery: {}", after.summary()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
