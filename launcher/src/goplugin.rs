//! go-plugin's own gRPC services, which the launcher uses like Hector's host did:
//! `plugin.GRPCStdio` streams the plugin's stdout/stderr (go-plugin captures them) and
//! `plugin.GRPCController/Shutdown` asks the plugin server to exit.

use http::uri::PathAndQuery;
use tonic::transport::Channel;

/// go-plugin's `plugin.StdioData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StdioData {
    /// 1 = stdout, 2 = stderr.
    #[prost(int32, tag = "1")]
    pub channel: i32,
    /// Raw bytes written by the plugin.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// Relays the plugin's captured stdout/stderr until the stream ends. A plugin that does
/// not offer the service (older go-plugin) is fine: its output is not captured then.
pub async fn relay_stdio(channel: Channel, prefix: String) {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return;
    }
    let codec = tonic_prost::ProstCodec::<(), StdioData>::default();
    let path = PathAndQuery::from_static("/plugin.GRPCStdio/StreamStdio");
    let mut stream = match grpc
        .server_streaming(tonic::Request::new(()), path, codec)
        .await
    {
        Ok(resp) => resp.into_inner(),
        Err(status) => {
            tracing::debug!(%status, "plugin offers no stdio stream");
            return;
        }
    };
    while let Ok(Some(chunk)) = stream.message().await {
        let text = String::from_utf8_lossy(&chunk.data);
        for line in text.lines() {
            if chunk.channel == 2 {
                eprintln!("{prefix} {line}");
            } else {
                println!("{prefix} {line}");
            }
        }
    }
}

/// Asks the go-plugin server to stop serving and exit.
pub async fn controller_shutdown(channel: Channel) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = PathAndQuery::from_static("/plugin.GRPCController/Shutdown");
    grpc.unary(tonic::Request::new(()), path, codec)
        .await
        .map(|_| ())
}
