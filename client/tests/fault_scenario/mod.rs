//! A fault scenario on this machine: a plugin served by three replicas, agents calling it in
//! loops through the client library and through `hector-plugin-remote`, then one replica
//! frozen and one black-holed, then both recovered. Shared by the `faults` test (which asserts
//! on counts and deadlines) and the `faults` bench (which prints the latencies). Calls go only
//! to a network namespace the scenario makes itself (and to the remote executables' sockets).
// The test and the bench each use part of it.
#![allow(dead_code)]

pub mod load;
pub mod netns;
pub mod procs;
pub mod scenario;

use std::path::PathBuf;

use hector_plugin_sdk::proto::{GenerateRequest, Message};

/// Why the scenario could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Network namespaces or the firewall cannot be used here.
    #[error(
        "the fault scenario needs root and iproute2's `ip netns` and `iptables` (it black-holes a replica inside a network namespace it makes): {0}"
    )]
    Unavailable(String),
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// A program could not be started.
    #[error("cannot run {what}: {source}")]
    Spawn {
        /// What was started.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A workspace binary is not built.
    #[error("{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`, with `--release` for benches)", .0.display())]
    Missing(PathBuf),
    /// A started process exited.
    #[error("{what} exited: {status}")]
    Exited {
        /// Which process.
        what: String,
        /// How it exited.
        status: String,
    },
    /// A started process does not serve as it should.
    #[error("{what} does not serve: {reason}")]
    NotServing {
        /// Which process.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The client library refused to open a channel.
    #[error("cannot open a channel: {0}")]
    Client(#[from] hector_plugin_client::ClientError),
}

/// A `Generate` request with one user message.
pub fn ask(text: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        tools: vec![],
    }
}
