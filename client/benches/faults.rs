//! Call latency (p50/p99) before, during and after two replica faults — one replica frozen
//! (SIGSTOP), one black-holed inside a network namespace — for agents calling through the
//! client library and through `hector-plugin-remote`; the same scenario as the `faults`
//! test, with longer phases, printed as a table.
//!
//! Needs root (`ip netns`, `iptables`). Build the release binaries first
//! (`cargo build --release --workspace --bins`), then
//! `cargo bench -p hector-plugin-client --bench faults`. Environment knobs (seconds unless
//! said): `FAULTS_BEFORE` (default 10), `FAULTS_DURING` (20), `FAULTS_AFTER` (10),
//! `FAULTS_RECOVERY_LIMIT` (60), `FAULTS_DEADLINE_MS` (600), `FAULTS_PACE_MS` (20),
//! `FAULTS_LIBRARY_AGENTS` (3), `FAULTS_REMOTE_AGENTS` (2), `FAULTS_LOOPS` (2), and the library
//! agents' outlier ejection: `FAULTS_EJECT_AFTER` (failures in a row, default 5),
//! `FAULTS_EJECT_BASE` (30), `FAULTS_EJECT_MAX` (300). The remote agents eject by the defaults.
//! `FAULTS_VERBOSE=1` also prints every failed call and the remote executables' log.

#[path = "../tests/fault_scenario/mod.rs"]
mod fault_scenario;

use std::time::Duration;

use hector_plugin_client::Ejection;

use fault_scenario::scenario::{self, Plan};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let count = |name, default| usize::try_from(env_u64(name, default)).unwrap_or(usize::MAX);
    let ejection = Ejection {
        consecutive_failures: u32::try_from(env_u64("FAULTS_EJECT_AFTER", 5)).unwrap_or(u32::MAX),
        base: Duration::from_secs(env_u64("FAULTS_EJECT_BASE", 30)),
        max: Duration::from_secs(env_u64("FAULTS_EJECT_MAX", 300)),
    };
    let plan = Plan {
        deadline: Duration::from_millis(env_u64("FAULTS_DEADLINE_MS", 600)),
        before: Duration::from_secs(env_u64("FAULTS_BEFORE", 10)),
        during: Duration::from_secs(env_u64("FAULTS_DURING", 20)),
        recovery_limit: Duration::from_secs(env_u64("FAULTS_RECOVERY_LIMIT", 60)),
        after: Duration::from_secs(env_u64("FAULTS_AFTER", 10)),
        library: vec![ejection; count("FAULTS_LIBRARY_AGENTS", 3)],
        remote_agents: count("FAULTS_REMOTE_AGENTS", 2),
        loops: count("FAULTS_LOOPS", 2),
        pace: Duration::from_millis(env_u64("FAULTS_PACE_MS", 20)),
        seen_again: 3,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a runtime: {e}"),
    };
    let report = match runtime.block_on(scenario::run(&plan)) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    print!("{}", report.render());
    if fault_scenario::procs::verbose() {
        println!("{}", report.render_failures());
    }
    let late = report.late(Duration::ZERO);
    println!(
        "calls that ended past their deadline: {} of {} (the latest {:.1?} after sending)",
        late.len(),
        report.samples.len(),
        report
            .samples
            .iter()
            .map(|s| s.elapsed)
            .max()
            .unwrap_or_default()
    );
}
