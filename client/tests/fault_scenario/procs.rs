//! The processes of a fault scenario: plugin replicas (the workspace's `echo-llm`, serving
//! network-native, each answering behind its own prefix `rN: ` so every answer names the
//! replica that served it) and `hector-plugin-remote` executables started as a go-plugin host
//! starts them. Every process is killed and reaped when its value is dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
use hector_plugin_sdk::{LifecycleClient, PluginType};
use tonic::transport::Channel;

use super::netns::Namespace;
use super::{HarnessError, ask};

/// Whether `FAULTS_VERBOSE` asks for the remote executables' log (what their pools decide:
/// endpoints ejected, out of the rotation, back) on stderr.
pub fn verbose() -> bool {
    std::env::var_os("FAULTS_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// How long a process gets to start serving.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A binary of another workspace package, built into the same target directory as the
/// running test or bench (`target/<profile>/deps/<this>` → `target/<profile>/<name>`).
pub fn sibling_bin(name: &str) -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::Spawn {
        what: "the path of this executable".into(),
        source,
    })?;
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .unwrap_or_else(|| PathBuf::from(name));
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::Missing(path))
    }
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) -> Result<(), HarnessError> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map_err(|source| HarnessError::Spawn {
            what: format!("kill -{signal} {pid}"),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            command: format!("kill -{signal} {pid}"),
            status: status.to_string(),
            stderr: String::new(),
        })
    }
}

/// Kills and reaps `child`, first letting a stopped one run so it dies at once.
fn end(child: &mut Child) {
    let _ = signal(child.id(), "CONT");
    let _ = child.kill();
    let _ = child.wait();
}

/// One replica of the plugin: an `echo-llm` process answering `rN: <text>`.
#[derive(Debug)]
pub struct Replica {
    /// N.
    pub index: usize,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl Replica {
    /// Starts replica `index` inside `netns`, listening on `addr`, and waits until it is
    /// initialized and answers.
    pub async fn start(
        index: usize,
        addr: SocketAddr,
        netns: &Namespace,
    ) -> Result<Self, HarnessError> {
        let bin = sibling_bin("echo-llm")?;
        let child = netns
            .command(&bin)
            .env(hector_plugin_sdk::PLUGIN_ADDR_ENV, addr.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                what: format!("{} on {addr}", bin.display()),
                source,
            })?;
        let mut replica = Self { index, addr, child };
        replica.initialize().await?;
        Ok(replica)
    }

    /// The prefix this replica answers behind.
    pub fn prefix(index: usize) -> String {
        format!("r{index}: ")
    }

    async fn initialize(&mut self) -> Result<(), HarnessError> {
        let what = format!("replica r{} at {}", self.index, self.addr);
        let started = tokio::time::Instant::now();
        let channel = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(HarnessError::Exited {
                    what,
                    status: status.to_string(),
                });
            }
            match hector_plugin_sdk::connect(&self.addr.to_string(), Duration::from_secs(1)).await {
                Ok(ch) => break ch,
                Err(e) if started.elapsed() > START_LIMIT => {
                    return Err(HarnessError::NotServing {
                        what,
                        reason: e.to_string(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let config = HashMap::from([("prefix".to_string(), Self::prefix(self.index))]);
        LifecycleClient::new(channel.clone(), PluginType::LlmProvider)
            .initialize(config)
            .await
            .map_err(|e| HarnessError::NotServing {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        let text = LlmProviderClient::new(channel)
            .generate(ask("ready"))
            .await
            .map_err(|e| HarnessError::NotServing {
                what: what.clone(),
                reason: e.to_string(),
            })?
            .into_inner()
            .text;
        if text == format!("{}ready", Self::prefix(self.index)) {
            Ok(())
        } else {
            Err(HarnessError::NotServing {
                what,
                reason: format!("answered {text:?}"),
            })
        }
    }

    /// Freezes the process that serves (SIGSTOP): its connections stay open and the kernel
    /// still accepts new ones, but nothing is answered.
    pub fn freeze(&self) -> Result<(), HarnessError> {
        signal(self.child.id(), "STOP")
    }

    /// Lets it run again (SIGCONT).
    pub fn thaw(&self) -> Result<(), HarnessError> {
        signal(self.child.id(), "CONT")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        end(&mut self.child);
    }
}

/// A `hector-plugin-remote` process started with go-plugin's handshake, as Hector starts it,
/// and initialized with a `remote_address` list: one agent's way to the plugin.
#[derive(Debug)]
pub struct Remote {
    child: Child,
    /// Kept open: the process's stdout is go-plugin's channel to its host.
    _stdout: BufReader<ChildStdout>,
    /// A channel to its Unix socket.
    pub channel: Channel,
}

impl Remote {
    /// Starts one and initializes it to forward to `addresses`.
    pub async fn start(addresses: &[SocketAddr]) -> Result<Self, HarnessError> {
        let bin = sibling_bin("hector-plugin-remote")?;
        let dir = std::env::temp_dir();
        let mut child = Command::new(&bin)
            .env("HECTOR_PLUGIN", "hector_plugin_v1")
            .env("PLUGIN_PROTOCOL_VERSIONS", "1")
            // No endpoints file and no token: the addresses are used as configured, plaintext.
            .env(
                hector_plugin_sdk::endpoints::ENDPOINTS_PATH_ENV,
                dir.join("hector-faults-no-endpoints.json"),
            )
            .env_remove(hector_plugin_sdk::token::TOKEN_FILE_ENV)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if verbose() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                what: bin.display().to_string(),
                source,
            })?;
        let Some(stdout) = child.stdout.take() else {
            end(&mut child);
            return Err(HarnessError::NotServing {
                what: "hector-plugin-remote".into(),
                reason: "no stdout".into(),
            });
        };
        // From here on, dropping the value ends the process.
        let (stdout, line) = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line).map(|_| line);
            (reader, read)
        })
        .await
        .map_err(|e| HarnessError::NotServing {
            what: "hector-plugin-remote".into(),
            reason: e.to_string(),
        })?;
        let mut remote = Remote {
            child,
            _stdout: stdout,
            channel: Channel::from_static("http://unused").connect_lazy(),
        };
        let line = line.map_err(|source| HarnessError::Spawn {
            what: "reading hector-plugin-remote's handshake".into(),
            source,
        })?;
        // CORE|APP|unix|PATH|grpc
        let fields: Vec<&str> = line.trim().split('|').collect();
        let socket = match fields.as_slice() {
            [_, _, "unix", path, "grpc", ..] => format!("unix:{path}"),
            _ => {
                return Err(HarnessError::NotServing {
                    what: "hector-plugin-remote".into(),
                    reason: format!("unexpected handshake line {line:?}"),
                });
            }
        };
        let what = format!("hector-plugin-remote at {socket}");
        remote.channel = hector_plugin_sdk::connect(&socket, Duration::from_secs(5))
            .await
            .map_err(|e| HarnessError::NotServing {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        let config = HashMap::from([("remote_address".to_string(), list.join(","))]);
        LifecycleClient::new(remote.channel.clone(), PluginType::LlmProvider)
            .initialize(config)
            .await
            .map_err(|e| HarnessError::NotServing {
                what,
                reason: e.to_string(),
            })?;
        Ok(remote)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        end(&mut self.child);
    }
}
