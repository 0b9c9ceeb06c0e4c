//! A network namespace of the test's own, joined to this one by a veth pair with a private
//! /30: the replicas run inside it, so that one of them can be black-holed by a firewall rule
//! there while the machine's own firewall and addresses are never touched. The namespace, the
//! veth pair, the rule and any process left inside are removed when the value is dropped, also
//! while a failing test unwinds; what a killed test run left is removed by the next run.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::HarnessError;

/// Names of the namespaces these tests make: the prefix and the pid of the test process.
const PREFIX: &str = "hector-faults-";

/// The private range the /30s are taken from (unused by the machine; checked each time).
const RANGE: [u8; 2] = [10, 251];

/// A network namespace with one veth pair to this one.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    /// The veth end inside the namespace (the firewall rule matches it).
    inner_if: String,
    /// This side's veth end.
    host_if: String,
    /// This side's address on the pair.
    pub host_ip: Ipv4Addr,
    /// The namespace's address on the pair: what a replica inside listens on.
    pub ip: Ipv4Addr,
}

/// Runs `program args`, returning its stdout, or the command and its stderr as the error.
fn run(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| HarnessError::Spawn {
            what: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Namespace {
    /// Makes the namespace and its veth pair on a /30 of 10.251.0.0/16 that nothing on this
    /// machine uses. Fails with what is missing when `ip netns` or `iptables` cannot be used
    /// (they need root).
    pub fn create() -> Result<Self, HarnessError> {
        let unavailable = |e: HarnessError| HarnessError::Unavailable(e.to_string());
        run("ip", &["netns", "list"]).map_err(unavailable)?;
        remove_stale();
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}");
        let (host_ip, ip) = free_subnet()?;
        run("ip", &["netns", "add", &name]).map_err(unavailable)?;
        // From here on, dropping the value removes what was made.
        let ns = Self {
            name,
            // Interface names have at most 15 bytes; a pid has at most 7 digits.
            inner_if: format!("hfn{pid}"),
            host_if: format!("hfh{pid}"),
            host_ip,
            ip,
        };
        let host_if = ns.host_if.clone();
        let host_cidr = format!("{host_ip}/30");
        let inner_cidr = format!("{ip}/30");
        run(
            "ip",
            &[
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns.inner_if,
                "netns",
                &ns.name,
            ],
        )?;
        run("ip", &["addr", "add", &host_cidr, "dev", &host_if])?;
        run("ip", &["link", "set", &host_if, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns.name,
                "addr",
                "add",
                &inner_cidr,
                "dev",
                &ns.inner_if,
            ],
        )?;
        run("ip", &["-n", &ns.name, "link", "set", &ns.inner_if, "up"])?;
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        // The firewall must be usable before the test depends on it.
        ns.iptables(&["-S", "INPUT"]).map_err(unavailable)?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it: the
    /// child's pid is the program's).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn iptables(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut all = vec!["netns", "exec", &self.name, "iptables"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn rule<'a>(&'a self, port: &'a str) -> [&'a str; 8] {
        [
            "-i",
            &self.inner_if,
            "-p",
            "tcp",
            "--dport",
            port,
            "-j",
            "DROP",
        ]
    }

    /// Drops every packet that arrives in the namespace for TCP `port`: connections to it stay
    /// open on this side, nothing is answered, new connections are never accepted.
    pub fn black_hole(&self, port: u16) -> Result<(), HarnessError> {
        let port = port.to_string();
        let mut args = vec!["-A", "INPUT"];
        args.extend_from_slice(&self.rule(&port));
        self.iptables(&args).map(drop)
    }

    /// Removes the rule [`Self::black_hole`] added for `port`.
    pub fn restore(&self, port: u16) -> Result<(), HarnessError> {
        let port = port.to_string();
        let mut args = vec!["-D", "INPUT"];
        args.extend_from_slice(&self.rule(&port));
        self.iptables(&args).map(drop)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        remove(&self.name, &self.host_if);
    }
}

/// Removes namespace `name`: kills what still runs in it, deletes the veth pair (at once:
/// sockets closed while a port was black-holed keep the namespace itself alive for minutes,
/// retransmitting their FINs) and the namespace.
fn remove(name: &str, host_if: &str) {
    let inside = run("ip", &["netns", "pids", name]).unwrap_or_default();
    for process in inside.split_whitespace() {
        let _ = run("kill", &["-KILL", process]);
    }
    // Absent when the namespace went first; then the pair went with it.
    let _ = run("ip", &["link", "del", host_if]);
    if let Err(e) = run("ip", &["netns", "del", name]) {
        eprintln!("cannot remove network namespace {name}: {e}");
    }
}

/// Removes namespaces of earlier test runs whose process is gone (killed before it could
/// clean up).
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            // Its replicas outlived the killed test run.
            remove(name, &format!("hfh{pid}"));
        }
    }
}

/// A /30 of 10.251.0.0/16 that no address or route of this machine touches: this side's
/// address and the namespace's. The search starts at an offset taken from the pid, so that
/// concurrent test runs do not pick the same one.
fn free_subnet() -> Result<(Ipv4Addr, Ipv4Addr), HarnessError> {
    let seen = run("ip", &["-o", "-4", "addr", "show"])?
        + &run("ip", &["-4", "route", "show", "table", "all"])?;
    let prefix = format!("{}.{}.", RANGE[0], RANGE[1]);
    // Every address of the range mentioned, networks included (`10.251.3.0/30` → 10.251.3.0).
    let used: BTreeSet<Ipv4Addr> = seen
        .split(|c: char| c.is_whitespace() || c == '/')
        .filter(|w| w.starts_with(&prefix))
        .filter_map(|w| w.parse().ok())
        .collect();
    let blocks = 1u32 << 14;
    let start = std::process::id() % blocks;
    for k in 0..blocks {
        let base = ((start + k) % blocks) * 4;
        let [c, d] = [(base >> 8) as u8, (base & 0xff) as u8];
        let addr = |i: u8| Ipv4Addr::new(RANGE[0], RANGE[1], c, d + i);
        if (0..4).all(|i| !used.contains(&addr(i))) {
            return Ok((addr(1), addr(2)));
        }
    }
    Err(HarnessError::Unavailable(format!(
        "no free /30 left in {}.{}.0.0/16",
        RANGE[0], RANGE[1]
    )))
}
