//! `make bench-scale`: what the operator costs, and how fast it publishes, with many plugins.
//! Needs a cluster with the operator running (`make deploy`) and the example images loaded;
//! prints its figures and writes their table into `docs/benchmarks.md`; asserts nothing.
//!
//! For each N in `BENCH_SCALE_SIZES` (default `100 1000 10000`) it creates N HectorPlugins in
//! N/50 namespaces `bench-scale-K`: all but 50 name (`spec.endpoint`) one of a few echo-llm
//! servers it runs in `bench-scale-backends`, and 50 run their own Pods (created at 0
//! replicas). It then measures the time until every endpoint plugin is published, the
//! operator's memory, CPU, reconcile queue latency and probe connections once settled, the
//! publication latency of the 50 real plugins scaled 0 → 1 at once (several rounds) against
//! the EndpointSlice controller's, the API writes, CPU and probe RPCs while idle, and the
//! largest `hector-plugins` ConfigMap. Every wait has a timeout and reports what was missing.
//!
//! Environment: `BENCH_SCALE_SIZES`, `BENCH_SCALE_BACKENDS` (default 5),
//! `BENCH_SCALE_TIMEOUT_SECS` (each wait, default 600), `BENCH_SCALE_IDLE_SECS` (default 300),
//! `BENCH_SCALE_ROUNDS` (scale-ups of the real plugins, default 3).

mod backends;
mod config;
mod conns;
mod latency;
mod metrics;
mod namespaces;
mod plugins;
mod published;
mod report;
mod run;

use kube::Client;

use crate::config::Config;
use crate::report::Column;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::from_env()?;
    let client = Client::try_default().await?;
    eprintln!("[bench-scale] removing what an earlier run left behind");
    namespaces::delete_and_wait(&client, namespaces::Which::All, config.timeout).await?;

    let mut columns: Vec<Column> = Vec::new();
    let outcome = tokio::select! {
        r = run::all_sizes(&client, &config, &mut columns) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    if let Err(e) = &outcome {
        eprintln!("[bench-scale] stopped: {e}");
    }
    eprintln!("[bench-scale] removing the bench namespaces and backends");
    let cleaned =
        namespaces::delete_and_wait(&client, namespaces::Which::All, config.timeout).await;

    if !columns.is_empty() {
        let machine = report::machine(&client).await;
        let table = report::table(&columns);
        println!("\n{machine}\n\n{table}");
        match report::write_doc(&machine, &table) {
            Ok(path) => eprintln!("[bench-scale] table written to {path}"),
            Err(e) => eprintln!("[bench-scale] could not write the table: {e}"),
        }
    }
    outcome?;
    cleaned
}
