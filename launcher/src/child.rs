//! Starting the plugin process and relaying its output.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use hector_plugin_sdk::goplugin;

use crate::handshake::{self, PluginAddress};

/// The environment that makes a go-plugin binary built with Hector's SDK serve.
pub const GO_PLUGIN_ENV: [(&str, &str); 2] = [
    (goplugin::MAGIC_COOKIE_KEY, goplugin::MAGIC_COOKIE_VALUE),
    (goplugin::PROTOCOL_VERSIONS_ENV, "1"),
];

/// A started plugin process.
pub struct Plugin {
    /// The process.
    pub child: Child,
    /// Resolves with the handshake of a go-plugin child (never, for network mode).
    pub handshake: oneshot::Receiver<Result<PluginAddress, handshake::HandshakeError>>,
}

/// Spawns `command` with `env`, relaying stdout/stderr line by line behind `prefix`.
/// With `expect_handshake`, the first handshake-shaped stdout line is captured instead.
pub fn spawn(
    command: &[String],
    env: &[(String, String)],
    prefix: &str,
    expect_handshake: bool,
) -> std::io::Result<Plugin> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| std::io::Error::other("no plugin command given"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // If the launcher itself is killed (OOM, SIGKILL), take the plugin down with it instead of
    // leaving an orphan holding its socket. The launcher runs a single-threaded runtime, so
    // the thread that spawns the child lives as long as the launcher.
    // The plugin also gets the open-files limit the launcher was given, not the one it
    // raised for its own connections.
    // SAFETY: only async-signal-safe prctl(2), getrlimit(2) and setrlimit(2) run between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::limit::restore_open_files_limit()
        });
    }
    let mut child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    if let Some(stdout) = child.stdout.take() {
        let tx = expect_handshake.then_some(tx);
        tokio::spawn(relay(stdout, format!("{prefix} "), tx, false));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(relay(stderr, format!("{prefix} "), None, true));
    }
    Ok(Plugin {
        child,
        handshake: rx,
    })
}

type HandshakeSender = oneshot::Sender<Result<PluginAddress, handshake::HandshakeError>>;

/// Copies lines to our own stdout/stderr with a prefix, so logs in the Pod say who spoke.
async fn relay(
    stream: impl AsyncRead + Unpin,
    prefix: String,
    mut handshake: Option<HandshakeSender>,
    to_stderr: bool,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if handshake.is_some() && handshake::looks_like_handshake(&line) {
            if let Some(tx) = handshake.take() {
                let _ = tx.send(handshake::parse(&line));
            }
            continue;
        }
        if to_stderr {
            eprintln!("{prefix}{line}");
        } else {
            println!("{prefix}{line}");
        }
    }
}

/// Asks the child to stop with SIGTERM, then kills it after `grace`.
pub async fn stop(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    if let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
        // SAFETY: kill(2) on our own child's pid touches no memory of this process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "plugin ignored SIGTERM; killing it"
            );
            child.kill().await?;
            child.wait().await
        }
    }
}
