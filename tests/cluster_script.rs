//! `tests/cluster/cluster` tells its own processes from others: a PID file left by a cluster
//! that is gone (after a reboot, or a state directory copied to another machine) names a PID
//! that may now belong to an unrelated process, which must never count as a running component.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/cluster")
}

/// A process that is not a cluster component; killed when dropped.
struct Bystander(Child);

impl Bystander {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("300")
                .spawn()
                .expect("start sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid())).exists()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cluster status` against a state directory holding only `pids/kube-proxy.pid` = `recorded`;
/// returns kube-proxy's line.
fn kube_proxy_status(recorded: &str) -> String {
    let state = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(state.path().join("pids")).expect("pids dir");
    fs::write(state.path().join("pids/kube-proxy.pid"), recorded).expect("pid file");
    let out = Command::new(script())
        .arg("status")
        .env("HECTOR_CLUSTER_STATE", state.path())
        .output()
        .expect("run cluster status");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success(),
        "status must fail while components are stopped:\n{stdout}"
    );
    stdout
        .lines()
        .find(|l| l.starts_with("kube-proxy "))
        .unwrap_or_else(|| panic!("no kube-proxy line in:\n{stdout}"))
        .to_string()
}

/// The identity the script records: PID, start time (field 22 of /proc/PID/stat), boot ID.
fn identity(pid: u32) -> (String, String) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
    let start = after_name
        .split_whitespace()
        .nth(19)
        .expect("start time field")
        .to_string();
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_string();
    (start, boot)
}

#[test]
fn a_recorded_pid_now_held_by_another_process_is_not_a_running_component() {
    let other = Bystander::start();
    let pid = other.pid();
    let (start, boot) = identity(pid);

    // The format before identities were recorded: a bare PID.
    let bare = kube_proxy_status(&format!("{pid}\n"));
    assert!(
        bare.ends_with("stopped"),
        "bare PID {pid} taken for kube-proxy: {bare}"
    );

    // Same PID, another start time: the PID was reused.
    let reused = kube_proxy_status(&format!("{pid} {}1 {boot}\n", start));
    assert!(
        reused.ends_with("stopped"),
        "reused PID {pid} taken for kube-proxy: {reused}"
    );

    // Same PID and start time, recorded during another boot.
    let other_boot = kube_proxy_status(&format!(
        "{pid} {start} 00000000-0000-0000-0000-000000000000\n"
    ));
    assert!(
        other_boot.ends_with("stopped"),
        "PID {pid} of another boot taken for kube-proxy: {other_boot}"
    );

    // The identity the script itself records counts as running, so the checks above can fail.
    let same = kube_proxy_status(&format!("{pid} {start} {boot}\n"));
    assert_eq!(
        same,
        format!("kube-proxy               running (pid {pid})")
    );
    assert!(other.alive(), "status must never signal a process");
}

#[test]
fn an_empty_or_garbled_pid_file_is_a_stopped_component() {
    for recorded in ["", "\n", "not-a-pid", "0 0 x", "99999999 1 x"] {
        let line = kube_proxy_status(recorded);
        assert!(line.ends_with("stopped"), "{recorded:?} read as: {line}");
    }
}
