//! Tuned tonic channels and servers. HTTP/2 defaults (16 KiB frames, 64 KiB windows) cap
//! 1 MiB messages near 0.8 GB/s on loopback; 1 MiB frames and 16/64 MiB windows reach
//! ~2-3 GB/s (TOOLCHAIN-NOTES). Every caller gets the same settings from here, and every
//! server listener gets its connection ceiling from here ([`ConnLimit`], [`incoming`]).

use crate::metrics::{Counter, Registry};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};
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

/// Requests one gRPC connection has in flight at once, both as the HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS` the server advertises (a tonic client past it waits
/// for a stream to finish; a stream opened past it anyway is refused with
/// `REFUSED_STREAM`) and as tonic's per-connection concurrency limit (so no request waits
/// inside the server unbounded). Without it a client could open 2^31 streams on one
/// connection and the server would hold every one. 256 is above what one client process
/// asks of one server at once (the kernel gives a FUSE mount at most 64 background
/// requests; bulk reads and writes do not use gRPC) and, with every message at most
/// [`MAX_MESSAGE_BYTES`], bounds what one connection can make the server hold.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// A server builder with the same HTTP/2 settings and the per-connection stream ceiling.
pub fn server() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(FRAME)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
}

/// Connections one listener serves at once (meta's gRPC port, a data server's shared
/// bulk/gRPC port). Past it a new connection is accepted and closed at once, and the
/// connections already open keep working.
///
/// Why 4096: a server's legitimate connections are about two per client mount (one gRPC
/// channel, one bulk connection) plus a few per peer, so this admits some 2000 mounts
/// per server, more than a cluster of this design serves. What it bounds is what
/// connections cost by their number: a descriptor, kernel socket buffers and the
/// buffers of hyper or the bulk reader each, so a caller cannot exhaust a server's
/// descriptors (a data server raises its soft `RLIMIT_NOFILE` to the hard limit, 2^19 or
/// more on current distributions, and needs the rest for object files) or grow its
/// memory by opening connections. What a connection may have in flight is bounded
/// separately ([`MAX_STREAMS_PER_CONNECTION`], the bulk
/// protocol's per-connection budget).
pub const MAX_CONNECTIONS: usize = 4096;

/// How long an accept loop waits after `accept` fails (`EMFILE`, `ENFILE`, `ENOBUFS`)
/// instead of spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A ceiling on the connections of one listener: a semaphore of `max` permits, one held
/// by every open connection ([`Limited`]) for as long as it is open.
pub struct ConnLimit {
    what: &'static str,
    max: usize,
    permits: Arc<Semaphore>,
    refused: Option<Counter>,
    /// Refused connections not yet reported in a warning, and when the last was logged:
    /// a flood of connections past the ceiling gets one warning a second, not one each.
    unreported: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl ConnLimit {
    /// A ceiling of `max` connections for the listener named `what` (a log field and the
    /// `listener` label of the refusal counter). Servers pass [`MAX_CONNECTIONS`]; tests
    /// pass small numbers.
    pub fn new(what: &'static str, max: usize) -> ConnLimit {
        ConnLimit {
            what,
            max,
            permits: Arc::new(Semaphore::new(max)),
            refused: None,
            unreported: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        }
    }

    /// Counts refused connections in `registry` as
    /// `cirrus_connections_refused_total{listener}`.
    pub fn counted(mut self, registry: &Registry) -> ConnLimit {
        self.refused = Some(registry.counter(
            "cirrus_connections_refused_total",
            "connections closed at once because their listener was at its connection ceiling",
            &[("listener", self.what)],
        ));
        self
    }

    /// The ceiling.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a permit now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Takes a permit for a just-accepted connection (TCP_NODELAY set), or closes it at
    /// once if the listener is at its ceiling.
    pub fn admit(&self, stream: TcpStream, peer: SocketAddr) -> Option<Limited> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                Some(Limited { stream, permit })
            }
            Err(_) => {
                drop(stream);
                if let Some(c) = &self.refused {
                    c.inc();
                }
                self.warn_refused(peer);
                None
            }
        }
    }

    fn warn_refused(&self, peer: SocketAddr) {
        let n = self.unreported.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = cirrus_types::sync::lock(&self.last_warning);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        self.unreported.fetch_sub(n, Ordering::Relaxed);
        tracing::warn!(
            listener = self.what,
            %peer,
            limit = self.max,
            refused = n,
            "closing a new connection at once: the listener is at its connection ceiling \
             ({n} refused since the last such warning)"
        );
    }
}

/// An accepted connection holding one permit of its listener's [`ConnLimit`]; the permit
/// goes back when the connection is dropped.
pub struct Limited {
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
}

impl Limited {
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The stream and its permit apart, for a caller that holds the permit itself for as
    /// long as it serves the stream.
    pub fn into_parts(self) -> (TcpStream, OwnedSemaphorePermit) {
        (self.stream, self.permit)
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Limited {
    // The same info as a bare TcpStream, so `Request::remote_addr` keeps working.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// The accepted-connection stream of one listener, for `serve_with_incoming*` and the
/// bulk port's accept loop: only connections within `limit` come out (TCP_NODELAY set:
/// `Server::tcp_nodelay` only applies when tonic binds the socket itself, and without it
/// small HTTP/2 responses sit behind Nagle and delayed ACKs). Accept errors are logged and
/// waited out here, never passed on (tonic would retry them at once, in a spin). Dropping
/// the stream closes the listening socket.
pub struct Incoming {
    listener: TcpListener,
    limit: ConnLimit,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// [`Incoming`] for `listener` with the ceiling `limit`.
pub fn incoming(listener: TcpListener, limit: ConnLimit) -> Incoming {
    Incoming {
        listener,
        limit,
        backoff: None,
    }
}

impl Incoming {
    pub fn limit(&self) -> &ConnLimit {
        &self.limit
    }

    /// The next connection within the ceiling.
    pub async fn accept(&mut self) -> Limited {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Limited> {
        loop {
            if let Some(b) = self.backoff.as_mut() {
                ready!(b.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((s, peer)) => {
                    if let Some(c) = self.limit.admit(s, peer) {
                        return Poll::Ready(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(listener = self.limit.what, err = %e, "accept");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<Limited>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_accept(cx).map(|c| Some(Ok(c)))
    }
}

/// Longest an accepted connection may take to send its opening bytes (the HTTP/2 client
/// preface, or the bulk protocol's). A peer that connects and stays silent, or sends a
/// few bytes and stops, is closed then: without it, 4096 silent sockets from one host
/// would hold a listener's whole [`MAX_CONNECTIONS`] and lock every client out (issue 22).
pub const OPENING_DEADLINE: Duration = Duration::from_secs(10);

/// The HTTP/2 client connection preface (RFC 9113, 3.4): what every gRPC client sends
/// first.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How `s` opens, peeked (nothing consumed): `Some(true)` once its first `want.len()`
/// bytes are `want`, `Some(false)` as soon as they differ, `None` if the peer closes or
/// has not sent enough by `until`. The one sniffer of both ports (the bulk preface, the
/// HTTP/2 preface).
pub async fn opening(s: &TcpStream, want: &[u8], until: Instant) -> Option<bool> {
    let look = async {
        let mut buf = vec![0u8; want.len()];
        loop {
            let n = s.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != want[..n] {
                return Some(false);
            }
            if n == want.len() {
                return Some(true);
            }
            // A prefix: wait for the rest (peek returns at once while bytes are queued).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let left = until.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, look).await.ok().flatten()
}

/// Accepted connections that opened as HTTP/2 within the deadline, for tonic's
/// `serve_with_incoming`. Each holds its permit of the listener's ceiling.
pub type H2Incoming = tokio_stream::wrappers::ReceiverStream<std::io::Result<Limited>>;

/// The connections of `incoming` that send the HTTP/2 preface within `within` of being
/// accepted; the others are closed (their permit returned) when they fail to. The
/// accept loop ends when the returned stream is dropped.
pub fn h2_only(mut incoming: Incoming, within: Duration) -> H2Incoming {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                c = incoming.accept() => c,
                _ = tx.closed() => return,
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if opening(c.stream(), H2_PREFACE, Instant::now() + within).await == Some(true) {
                    let _ = tx.send(Ok(c)).await;
                } else {
                    tracing::debug!(
                        peer = ?c.stream().peer_addr().ok(),
                        ?within,
                        "closing a connection that did not open with the HTTP/2 preface in time"
                    );
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pb;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `h2_only` hands on a connection once its whole HTTP/2 preface is in, and closes
    /// (returning the permit) a silent one, one stalled inside the preface and one that
    /// opens with other bytes, once the deadline passes.
    #[tokio::test]
    async fn only_connections_that_open_with_the_h2_preface_in_time_come_out() {
        use tokio_stream::StreamExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limit = ConnLimit::new("test", 16);
        let permits = limit.permits.clone();
        let mut out = h2_only(incoming(l, limit), Duration::from_millis(300));
        let mut bad = Vec::new();
        for opening in [
            &b""[..],
            b"PRI * HTTP/2",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(opening).await.unwrap();
            bad.push(s);
        }
        let mut good = TcpStream::connect(addr).await.unwrap();
        good.write_all(H2_PREFACE).await.unwrap();
        let c = tokio::time::timeout(HANG, out.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(c.stream().peer_addr().unwrap(), good.local_addr().unwrap());
        for mut s in bad {
            let mut buf = Vec::new();
            let r = tokio::time::timeout(HANG, s.read_to_end(&mut buf))
                .await
                .expect("closed");
            assert!(r.is_err() || buf.is_empty());
        }
        // Only the good connection still holds a permit.
        let until = Instant::now() + HANG;
        while 16 - permits.available_permits() != 1 {
            assert!(
                Instant::now() < until,
                "permits held: {}",
                16 - permits.available_permits()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(c);
    }

    /// Generous: only there to turn a hang into a failure, never to measure anything.
    pub(crate) const HANG: Duration = Duration::from_secs(20);

    /// What an HTTP/2 client sends first: the preface and an empty SETTINGS frame. A
    /// server that took the connection answers with its own SETTINGS.
    const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

    /// Opens a connection to `addr`, sends `hello` and expects the server to close it
    /// without a byte of answer (EOF or a reset) within [`HANG`].
    pub(crate) async fn assert_closed_at_once(addr: &str, hello: &[u8]) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may already have closed it: a failed write is a refusal too.
        let _ = s.write_all(hello).await;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(HANG, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("a connection past the ceiling was served: {:?}", &buf[..n]),
            Err(_) => {
                panic!("a connection past the ceiling was neither served nor closed in {HANG:?}")
            }
        }
    }

    struct Echo;

    #[tonic::async_trait]
    impl pb::raft_server::Raft for Echo {
        async fn append_entries(
            &self,
            r: tonic::Request<pb::RaftBytes>,
        ) -> Result<tonic::Response<pb::RaftBytes>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }

        async fn vote(
            &self,
            r: tonic::Request<pb::RaftBytes>,
        ) -> Result<tonic::Response<pb::RaftBytes>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }

        async fn install_snapshot(
            &self,
            r: tonic::Request<pb::RaftBytes>,
        ) -> Result<tonic::Response<pb::RaftBytes>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }
    }

    /// One echo call on `ch` (its own connection), answered with `n` or an error.
    async fn call(ch: &Channel, n: u64) -> Result<u64, tonic::Status> {
        let mut c = pb::raft_client::RaftClient::new(ch.clone());
        let req = pb::RaftBytes {
            from: n,
            ..Default::default()
        };
        let r = tokio::time::timeout(HANG, c.vote(req))
            .await
            .expect("a call neither answered nor failed in time")?;
        Ok(r.into_inner().from)
    }

    #[tokio::test]
    async fn grpc_connections_past_the_ceiling_are_closed_while_open_ones_keep_serving() {
        let reg = Registry::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let serving = tokio::spawn(
            server()
                .add_service(pb::raft_server::RaftServer::new(Echo))
                .serve_with_incoming(incoming(l, ConnLimit::new("test", 4).counted(&reg))),
        );
        let refused = || {
            reg.counter(
                "cirrus_connections_refused_total",
                "",
                &[("listener", "test")],
            )
            .get()
        };
        // Four channels, each its own connection; an answer proves it was admitted.
        let mut open = Vec::new();
        for i in 0..4 {
            let ch = channel(&addr).unwrap();
            assert_eq!(call(&ch, i).await.unwrap(), i, "connection {i}");
            open.push(ch);
        }
        assert_eq!(refused(), 0);

        assert_closed_at_once(&addr, H2_HELLO).await;
        let past = channel(&addr).unwrap();
        let e = call(&past, 99)
            .await
            .expect_err("a fifth connection was served");
        // Whatever code hyper gives a closed connection, callers see it as retryable.
        let fs = crate::from_status(&e);
        assert!(
            matches!(fs, cirrus_types::FsError::Unavailable(_)),
            "{e}: {fs:?}"
        );
        assert_eq!(refused(), 2);

        for (i, ch) in open.iter().enumerate() {
            let n = 10 + i as u64;
            assert_eq!(
                call(ch, n).await.unwrap(),
                n,
                "connection {i} after refusals"
            );
        }

        // Closing one gives its slot back (once the server has seen it close).
        drop(open.pop());
        let deadline = Instant::now() + HANG;
        loop {
            let ch = channel(&addr).unwrap();
            match call(&ch, 7).await {
                Ok(7) => break,
                r => assert!(
                    Instant::now() < deadline,
                    "no connection admitted after one closed: {r:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        serving.abort();
    }

    #[tokio::test]
    async fn grpc_servers_advertise_the_stream_ceiling_per_connection() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let serving = tokio::spawn(
            server()
                .add_service(pb::raft_server::RaftServer::new(Echo))
                .serve_with_incoming(incoming(l, ConnLimit::new("test", 4))),
        );
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(H2_HELLO).await.unwrap();
        // The server's first frame is its SETTINGS: 6-byte entries of id and value.
        let mut head = [0u8; 9];
        tokio::time::timeout(HANG, s.read_exact(&mut head))
            .await
            .expect("no SETTINGS from the server")
            .unwrap();
        assert_eq!(head[3], 4, "first frame is not SETTINGS: {head:?}");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        let max_streams = body.chunks_exact(6).find_map(|e| {
            (u16::from_be_bytes([e[0], e[1]]) == 3)
                .then(|| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
        });
        assert_eq!(max_streams, Some(MAX_STREAMS_PER_CONNECTION));
        serving.abort();
    }

    /// Votes that hold until the test lets them go, and how many ran at once.
    struct Gated {
        gate: tokio::sync::Semaphore,
        running: AtomicU64,
        most: AtomicU64,
    }

    #[tonic::async_trait]
    impl pb::raft_server::Raft for Arc<Gated> {
        async fn append_entries(
            &self,
            r: tonic::Request<pb::RaftBytes>,
        ) -> Result<tonic::Response<pb::RaftBytes>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }

        async fn vote(
            &self,
            r: tonic::Request<pb::RaftBytes>,
        ) -> Result<tonic::Response<pb::RaftBytes>, tonic::Status> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            if let Ok(p) = self.gate.acquire().await {
                p.forget();
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(tonic::Response::new(r.into_inner()))
        }

        async fn install_snapshot(
            &self,
            r: tonic::Request<pb::RaftBytes>,
        ) -> Result<tonic::Response<pb::RaftBytes>, tonic::Status> {
            Ok(tonic::Response::new(r.into_inner()))
        }
    }

    #[tokio::test]
    async fn calls_past_the_stream_ceiling_wait_for_a_stream_and_all_succeed() {
        let svc = Arc::new(Gated {
            gate: tokio::sync::Semaphore::new(0),
            running: AtomicU64::new(0),
            most: AtomicU64::new(0),
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let serving = tokio::spawn(
            server()
                .add_service(pb::raft_server::RaftServer::new(svc.clone()))
                .serve_with_incoming(incoming(l, ConnLimit::new("test", 4))),
        );
        let ceiling = MAX_STREAMS_PER_CONNECTION as u64;
        let ch = channel(&addr).unwrap();
        let calls: Vec<_> = (0..ceiling + 44)
            .map(|n| {
                let ch = ch.clone();
                tokio::spawn(async move { call(&ch, n).await })
            })
            .collect();
        let deadline = Instant::now() + HANG;
        while svc.running.load(Ordering::SeqCst) < ceiling {
            assert!(
                Instant::now() < deadline,
                "only {} calls reached the service",
                svc.running.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        svc.gate.add_permits(calls.len());
        for (n, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap(), n as u64);
        }
        let most = svc.most.load(Ordering::SeqCst);
        assert!(
            most <= ceiling,
            "{most} calls ran at once on one connection"
        );
        serving.abort();
    }
}
