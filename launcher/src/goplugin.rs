//! go-plugin's own gRPC services, which the launcher uses like Hector's host did:
//! `plugin.GRPCStdio` streams the plugin's stdout/stderr (go-plugin captures them) and
//! `plugin.GRPCController/Shutdown` asks the plugin server to exit.

use hector_plugin_sdk::proto::goplugin::{
    Empty, grpc_controller_client::GrpcControllerClient, grpc_stdio_client::GrpcStdioClient,
    stdio_data::Channel as StdioChannel,
};
use tonic::transport::Channel;

/// Relays the plugin's captured stdout/stderr until the stream ends. A plugin that does
/// not offer the service (older go-plugin) is fine: its output is not captured then.
pub async fn relay_stdio(channel: Channel, prefix: String) {
    let mut stream = match GrpcStdioClient::new(channel).stream_stdio(()).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => {
            tracing::debug!(%status, "plugin offers no stdio stream");
            return;
        }
    };
    while let Ok(Some(chunk)) = stream.message().await {
        let text = String::from_utf8_lossy(&chunk.data);
        for line in text.lines() {
            if chunk.channel() == StdioChannel::Stderr {
                eprintln!("{prefix} {line}");
            } else {
                println!("{prefix} {line}");
            }
        }
    }
}

/// Asks the go-plugin server to stop serving and exit.
pub async fn controller_shutdown(channel: Channel) -> Result<(), tonic::Status> {
    GrpcControllerClient::new(channel)
        .shutdown(Empty {})
        .await
        .map(|_| ())
}
