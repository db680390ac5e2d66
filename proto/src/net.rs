//! Tuned tonic channels and servers. HTTP/2 defaults (16 KiB frames, 64 KiB windows) cap
//! 1 MiB messages near 0.8 GB/s on loopback; 1 MiB frames and 16/64 MiB windows reach
//! ~2-3 GB/s (TOOLCHAIN-NOTES). Every caller gets the same settings from here.

use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Server};

/// Largest encoded message accepted or sent: a 64 MiB stripe unit plus framing.
pub const MAX_MESSAGE_BYTES: usize = 80 << 20;
const FRAME: u32 = 1 << 20;
const STREAM_WINDOW: u32 = 16 << 20;
const CONN_WINDOW: u32 = 64 << 20;

/// Default TCP connect deadline for every channel.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A lazily connecting channel to `addr` (`host:port`), with the tuned HTTP/2 settings.
/// Per-call deadlines are the caller's job (`tokio::time::timeout` or `CallPolicy`).
pub fn channel(addr: &str) -> Result<Channel, cirrus_types::FsError> {
    let uri = if addr.starts_with("http://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let ep = Endpoint::from_shared(uri)
        .map_err(|e| cirrus_types::FsError::Invalid(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(FRAME);
    Ok(ep.connect_lazy())
}

/// A server builder with the same HTTP/2 settings.
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(FRAME)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
}

/// The accepted-connection stream for `serve_with_incoming*`, with TCP_NODELAY set on
/// every accepted socket. `Server::tcp_nodelay` only applies when tonic binds the socket
/// itself; without this, small HTTP/2 responses sit behind Nagle and delayed ACKs.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Meta client with the message limits set.
pub fn meta_client(ch: Channel) -> crate::pb::meta_client::MetaClient<Channel> {
    crate::pb::meta_client::MetaClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Meta client with the message limits set that stamps every request with `stamp`'s
/// request id (see `leader`).
pub fn meta_client_stamped(ch: Channel, stamp: crate::leader::Stamp) -> crate::leader::MetaRpc {
    crate::pb::meta_client::MetaClient::with_interceptor(ch, stamp)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A Data service client over a tuned channel.
pub type DataClient = crate::pb::data_client::DataClient<Channel>;

/// Data client with the message limits set.
pub fn data_client(ch: Channel) -> DataClient {
    crate::pb::data_client::DataClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
