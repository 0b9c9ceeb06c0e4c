//! Serving as a HashiCorp go-plugin child, the way Hector starts plugins locally and
//! hector-plugin-launcher does by default: check the host's magic cookie, listen on a fresh
//! Unix socket, announce it on stdout, and answer go-plugin's controller and stdio services.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{Notify, watch};
use tonic::{Request, Response, Status};

use crate::error::SdkError;
use crate::proto::goplugin::{
    Empty, StdioData,
    grpc_controller_server::{GrpcController, GrpcControllerServer},
    grpc_stdio_server::{GrpcStdio, GrpcStdioServer},
};

/// The magic cookie's variable: Hector's go-plugin handshake sets it.
pub const MAGIC_COOKIE_KEY: &str = "HECTOR_PLUGIN";
/// The magic cookie's value for Hector plugins.
pub const MAGIC_COOKIE_VALUE: &str = "hector_plugin_v1";
/// The variable listing the application protocol versions the host speaks.
pub const PROTOCOL_VERSIONS_ENV: &str = "PLUGIN_PROTOCOL_VERSIONS";
/// The directory go-plugin hosts may ask sockets to be created in.
pub const SOCKET_DIR_ENV: &str = "PLUGIN_UNIX_SOCKET_DIR";
/// go-plugin's core protocol version.
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// Hector's application protocol version.
pub const APP_PROTOCOL_VERSION: u32 = 1;
/// The `grpc.health.v1` service name go-plugin hosts check.
pub const HEALTH_SERVICE: &str = "plugin";

/// What a go-plugin host told its child through the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEnv {
    /// Application protocol versions the host offered (empty: it did not say).
    pub versions: Vec<String>,
}

impl HostEnv {
    /// `Some` when a go-plugin host started this process, `None` when nothing says so, and an
    /// error when the host's cookie or versions do not fit this plugin.
    pub fn from_env() -> Result<Option<Self>, SdkError> {
        Self::from_vars(
            std::env::var(MAGIC_COOKIE_KEY).ok().as_deref(),
            std::env::var(PROTOCOL_VERSIONS_ENV).ok().as_deref(),
        )
    }

    /// [`HostEnv::from_env`] on given values, for tests.
    pub fn from_vars(
        cookie: Option<&str>,
        versions: Option<&str>,
    ) -> Result<Option<Self>, SdkError> {
        let Some(cookie) = cookie else {
            return Ok(None);
        };
        if cookie != MAGIC_COOKIE_VALUE {
            return Err(SdkError::Env {
                var: MAGIC_COOKIE_KEY,
                reason: format!(
                    "is {cookie:?}, expected {MAGIC_COOKIE_VALUE:?}: this binary is a Hector plugin \
                     and must be started by Hector or hector-plugin-launcher"
                ),
            });
        }
        let versions: Vec<String> = versions
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect();
        let ours = APP_PROTOCOL_VERSION.to_string();
        if !versions.is_empty() && !versions.contains(&ours) {
            return Err(SdkError::Env {
                var: PROTOCOL_VERSIONS_ENV,
                reason: format!(
                    "the host speaks protocol versions {versions:?}; this plugin speaks {ours}"
                ),
            });
        }
        Ok(Some(Self { versions }))
    }
}

/// The handshake line go-plugin hosts read from the plugin's stdout.
pub fn handshake_line(socket: &Path) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc|",
        socket.display()
    )
}

/// Prints the handshake line: from here on the host connects.
pub fn announce(socket: &Path) -> Result<(), SdkError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", handshake_line(socket))
        .and_then(|()| out.flush())
        .map_err(|e| SdkError::Handshake(format!("cannot write to stdout: {e}")))
}

/// A private directory holding the plugin's socket, removed when dropped.
pub struct SocketDir {
    dir: PathBuf,
    socket: PathBuf,
}

impl SocketDir {
    /// Creates a fresh directory under `PLUGIN_UNIX_SOCKET_DIR` or the temporary directory.
    pub fn create() -> Result<Self, SdkError> {
        let base = std::env::var_os(SOCKET_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("hector-plugin-{}-{stamp:x}", std::process::id()));
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).map_err(|e| {
            SdkError::Handshake(format!(
                "cannot create socket directory {}: {e}",
                dir.display()
            ))
        })?;
        let socket = dir.join("plugin.sock");
        Ok(Self { dir, socket })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `plugin.GRPCController`: the host's request to exit.
struct Controller {
    stop: Arc<Notify>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::info!("go-plugin host asked the plugin to exit");
        self.stop.notify_one();
        Ok(Response::new(Empty {}))
    }
}

/// `plugin.GRPCStdio`: this SDK leaves stdout and stderr on the process's own pipes (the host
/// relays them), so the stream carries nothing and ends when the plugin stops.
struct Stdio {
    stopped: watch::Receiver<bool>,
}

type StdioStream = Pin<Box<dyn Stream<Item = Result<StdioData, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = StdioStream;

    async fn stream_stdio(&self, _request: Request<()>) -> Result<Response<StdioStream>, Status> {
        let mut stopped = self.stopped.clone();
        let end = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let stream = futures::StreamExt::filter_map(futures::stream::once(end), |()| async {
            None::<Result<StdioData, Status>>
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The go-plugin services: the controller notifies `stop`; the stdio stream ends on `stopped`.
pub fn services(
    stop: Arc<Notify>,
    stopped: watch::Receiver<bool>,
) -> (
    GrpcControllerServer<impl GrpcController>,
    GrpcStdioServer<impl GrpcStdio>,
) {
    (
        GrpcControllerServer::new(Controller { stop }),
        GrpcStdioServer::new(Stdio { stopped }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cookie_means_no_host() {
        assert_eq!(HostEnv::from_vars(None, Some("1")).ok(), Some(None));
    }

    #[test]
    fn wrong_cookie_is_refused_with_the_reason() {
        let err = HostEnv::from_vars(Some("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HECTOR_PLUGIN") && err.contains("hector_plugin_v1"),
            "{err}"
        );
    }

    #[test]
    fn versions_must_include_ours() {
        assert!(HostEnv::from_vars(Some(MAGIC_COOKIE_VALUE), Some("2,3")).is_err());
        let env = HostEnv::from_vars(Some(MAGIC_COOKIE_VALUE), Some("2, 1"))
            .ok()
            .flatten();
        assert_eq!(env.map(|e| e.versions), Some(vec!["2".into(), "1".into()]));
        assert!(HostEnv::from_vars(Some(MAGIC_COOKIE_VALUE), None).is_ok());
    }

    #[test]
    fn handshake_line_matches_go_plugin() {
        assert_eq!(
            handshake_line(Path::new("/tmp/x/plugin.sock")),
            "1|1|unix|/tmp/x/plugin.sock|grpc|"
        );
    }

    #[test]
    fn socket_dir_is_private_and_removed() {
        let dir = SocketDir::create().expect("create");
        let parent = dir.path().parent().expect("parent").to_path_buf();
        let mode = std::fs::metadata(&parent).expect("meta");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        drop(dir);
        assert!(!parent.exists());
    }
}
