//! The bulk protocol: object `Write` and `Read` as length-prefixed binary frames on the
//! data port, beside gRPC. A data server tells the two apart by the first bytes of a
//! connection: this protocol opens with [`PREFACE`], HTTP/2 with `PRI * HTTP/2.0`.
//!
//! Why: through tonic a 1 MiB write was copied three times in user space (prost encode
//! on the client; HTTP/2 frames into the message buffer and the message into the aligned
//! disk buffer on the server), and a read twice, on two shared cores where memory
//! bandwidth is the limit. Here the client writes the payload from its own buffer, the
//! server reads it from the socket straight into the memory the disk write uses
//! ([`BulkService::payload`]), and a read's aligned disk buffer is written to the socket
//! as it is. Small operations (sync, truncate, delete, listing, info) stay on gRPC.
//!
//! Every frame (both directions) is a 20-byte head, then `header_len` bytes of a prost
//! message (the request or reply with its bulk field empty, or a `WireError`), then
//! `payload_len` bytes (a write's data, a read's data):
//!
//! ```text
//! 0      1        4            8             12                     20
//! | kind | 0 0 0  | header_len | payload_len | call id              | header | payload |
//!   u8     zero      u32 le       u32 le        u64 le
//! ```
//!
//! Kinds: 1 write, 2 read (requests); 128 ok, 129 error (replies, with the call id of
//! their request). Many calls share one connection, answered in any order. A frame with
//! a bad head (unknown kind, reserved bytes set, lengths over [`MAX_HEADER`] or
//! [`MAX_PAYLOAD`]) gets an error reply and the connection is closed, since its framing
//! can no longer be trusted; a header that does not decode gets an error reply for that
//! call only. Every client call has a deadline; a server closes a connection that stalls
//! in the middle of a frame for [`FRAME_STALL`].

use crate::metrics::Registry;
use crate::net::{self, ConnLimit, Limited};
use crate::{pb, status};
use bytes::{BufMut, Bytes, BytesMut};
use cirrus_types::sync::lock;
use cirrus_types::{FsError, FsResult};
use prost::Message;
use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// The first bytes a bulk client sends on a new connection.
pub const PREFACE: [u8; 8] = *b"CIRRUSB1";
/// Bytes of a frame head.
pub const HEAD_LEN: usize = 20;
/// Largest header (a request's crcs for a 64 MiB payload are 64 KiB).
pub const MAX_HEADER: u32 = 96 << 10;
/// Largest payload, as for gRPC messages.
pub const MAX_PAYLOAD: u32 = crate::net::MAX_MESSAGE_BYTES as u32;
/// Bytes a server holds per connection for requests being handled and their replies
/// until sent: a write is charged its header and payload, a read its header and the
/// length it asks for (its reply), each at least [`MIN_CHARGE`]. A client that sends
/// faster waits (TCP backpressure: the server stops reading the connection) instead of
/// growing the server's memory.
const SERVER_BUDGET: u32 = 256 << 20;
/// The least a request is charged, which also bounds the requests in flight on one
/// connection: `SERVER_BUDGET / MIN_CHARGE` = 4096, each with its task and reply frame.
const MIN_CHARGE: u32 = 64 << 10;
/// Bytes all bulk connections of one server hold at once (requests being handled and
/// their replies until sent), charged as the connection budget is: the server's memory
/// for requests, however many connections are open.
pub const PROCESS_BUDGET: u32 = 2 << 30;
/// Longest a request waits for room in the process budget before it is refused with a
/// retryable `Unavailable` (the client backs off and retries). It does not wait for
/// good: a head holding its room while it forwards to a member that waits for room
/// held by forwards the other way would deadlock.
pub const PROCESS_WAIT: Duration = Duration::from_secs(1);

/// The server-wide byte budget of the bulk protocol ([`PROCESS_BUDGET`] by default),
/// shared by every connection of a [`split_port`].
#[derive(Clone)]
pub struct ProcessBudget {
    sem: Arc<Semaphore>,
    bytes: u32,
}

impl ProcessBudget {
    pub fn new(bytes: u32) -> ProcessBudget {
        ProcessBudget {
            sem: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
        }
    }

    /// Bytes charged now.
    pub fn in_use(&self) -> u64 {
        u64::from(self.bytes) - self.sem.available_permits() as u64
    }
}

impl Default for ProcessBudget {
    fn default() -> ProcessBudget {
        ProcessBudget::new(PROCESS_BUDGET)
    }
}

/// Longest a server waits for the rest of a frame it has started to receive, or for a
/// reply to drain into the socket.
pub const FRAME_STALL: Duration = Duration::from_secs(60);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Write,
    Read,
    Ok,
    Error,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Write => 1,
            Kind::Read => 2,
            Kind::Ok => 128,
            Kind::Error => 129,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Write,
            2 => Kind::Read,
            128 => Kind::Ok,
            129 => Kind::Error,
            _ => return None,
        })
    }
}

/// A frame head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub kind: Kind,
    pub call: u64,
    pub header_len: u32,
    pub payload_len: u32,
}

impl Head {
    pub fn encode(&self) -> [u8; HEAD_LEN] {
        let mut b = [0u8; HEAD_LEN];
        b[0] = self.kind.byte();
        b[4..8].copy_from_slice(&self.header_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        b[12..20].copy_from_slice(&self.call.to_le_bytes());
        b
    }

    /// Decodes and checks a head. The error carries the call id (readable whatever else
    /// is wrong) so the peer can be told which call was refused.
    pub fn decode(b: &[u8; HEAD_LEN]) -> Result<Head, (u64, FsError)> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut call = [0u8; 8];
        call.copy_from_slice(&b[12..20]);
        let call = u64::from_le_bytes(call);
        let bad = |m: String| (call, FsError::Invalid(format!("bulk frame: {m}")));
        let kind = Kind::from_byte(b[0]).ok_or_else(|| bad(format!("unknown kind {}", b[0])))?;
        if b[1..4] != [0, 0, 0] {
            return Err(bad(format!("reserved bytes {:?} are not zero", &b[1..4])));
        }
        let (header_len, payload_len) = (u32_at(4), u32_at(8));
        if header_len > MAX_HEADER {
            return Err(bad(format!(
                "header of {header_len} bytes is over the {MAX_HEADER}-byte limit"
            )));
        }
        if payload_len > MAX_PAYLOAD {
            return Err(bad(format!(
                "payload of {payload_len} bytes is over the {MAX_PAYLOAD}-byte limit"
            )));
        }
        Ok(Head {
            kind,
            call,
            header_len,
            payload_len,
        })
    }
}

/// One frame on its way out: head and header in one buffer, the payload apart (it is
/// written from where it lies, never copied into the frame).
struct Frame {
    head: Vec<u8>,
    payload: Bytes,
    /// A server's reply holds its request's share of the connection's budget and of
    /// the process budget until the frame is in the socket, so replies queued for a
    /// slow reader count too.
    budget: Option<tokio::sync::OwnedSemaphorePermit>,
    process: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Frame {
    fn new(kind: Kind, call: u64, header: &impl Message, payload: Bytes) -> Frame {
        let len = header.encoded_len();
        let mut head = Vec::with_capacity(HEAD_LEN + len);
        head.extend_from_slice(
            &Head {
                kind,
                call,
                header_len: len as u32,
                payload_len: payload.len() as u32,
            }
            .encode(),
        );
        // Encoding into a Vec with room for the whole message cannot fail.
        let _ = header.encode(&mut head);
        Frame {
            head,
            payload,
            budget: None,
            process: None,
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let (mut a, mut b) = (&f.head[..], &f.payload[..]);
    while !a.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    w.write_all(b).await
}

/// Reads exactly `len` bytes into `buf` (which may be uninitialised memory).
async fn read_into<R: AsyncRead + Unpin, B: BufMut>(
    r: &mut R,
    buf: &mut B,
    len: usize,
) -> std::io::Result<()> {
    let mut lim = r.take(len as u64);
    let mut got = 0usize;
    while got < len {
        let n = lim.read_buf(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(())
}

async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<[u8; HEAD_LEN]>> {
    let mut b = [0u8; HEAD_LEN];
    let mut got = 0;
    while got < HEAD_LEN {
        let n = r.read(&mut b[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    Ok(Some(b))
}

// ---------------------------------------------------------------------------------------
// Client

type Reply = FsResult<(Bytes, Bytes)>;

/// One open connection: a writer task drains `out`, a reader task answers `pending`.
struct Conn {
    out: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next: AtomicU64,
    closed: AtomicBool,
    opened: Instant,
    /// Milliseconds after `opened` of the last frame received.
    last_rx_ms: AtomicU64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Conn {
    /// Fails every pending call and stops both tasks; the next call reconnects.
    fn close(&self, why: &str) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(FsError::Unavailable(why.to_string())));
        }
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    fn ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }
}

/// Removes a call's pending entry when the call ends, however it ends.
struct PendingGuard<'a> {
    conn: &'a Conn,
    call: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.conn.pending).remove(&self.call);
    }
}

/// A bulk client of one data server: one multiplexed connection, opened on first use
/// and again after it breaks. Cheap to share.
pub struct BulkClient {
    addr: String,
    connect_timeout: Duration,
    conn: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl BulkClient {
    pub fn new(addr: &str) -> BulkClient {
        BulkClient {
            addr: addr.to_string(),
            connect_timeout: crate::net::CONNECT_TIMEOUT,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn live(&self) -> Option<Arc<Conn>> {
        lock(&self.conn)
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::SeqCst))
            .cloned()
    }

    async fn conn(&self) -> FsResult<Arc<Conn>> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _g = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let addr = &self.addr;
        let mut s = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(FsError::Unavailable(format!(
                    "connect to data server {addr}: {e}"
                )))
            }
            Err(_) => {
                return Err(FsError::Unavailable(format!(
                    "connect to data server {addr}: no answer within {:?}",
                    self.connect_timeout
                )))
            }
        };
        let _ = s.set_nodelay(true);
        s.write_all(&PREFACE)
            .await
            .map_err(|e| FsError::Unavailable(format!("open bulk stream to {addr}: {e}")))?;
        let (mut rd, mut wr) = s.into_split();
        let (tx, mut rx) = mpsc::channel::<Frame>(256);
        let conn = Arc::new(Conn {
            out: tx,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            opened: Instant::now(),
            last_rx_ms: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&conn);
        let who = addr.clone();
        let writer = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if let Err(e) = write_frame(&mut wr, &f).await {
                    if let Some(c) = weak.upgrade() {
                        c.close(&format!("send to data server {who}: {e}"));
                    }
                    return;
                }
            }
        });
        let weak = Arc::downgrade(&conn);
        let who = addr.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match client_read_one(&mut rd).await {
                    Ok((head, header, payload)) => {
                        let Some(c) = weak.upgrade() else { return };
                        c.last_rx_ms.store(c.ms(), Ordering::SeqCst);
                        let reply = match head.kind {
                            Kind::Ok => Ok((header, payload)),
                            Kind::Error => Err(match pb::WireError::decode(header) {
                                Ok(w) => status::from_wire(&w),
                                Err(e) => FsError::Io(format!(
                                    "undecodable error from data server {who}: {e}"
                                )),
                            }),
                            k => {
                                break format!("data server {who} sent a {k:?} frame");
                            }
                        };
                        let waiter = lock(&c.pending).remove(&head.call);
                        if let Some(tx) = waiter {
                            let _ = tx.send(reply);
                        }
                    }
                    Err(e) => break format!("connection to data server {who}: {e}"),
                }
            };
            if let Some(c) = weak.upgrade() {
                c.close(&why);
            }
        });
        lock(&conn.tasks).extend([writer, reader]);
        *lock(&self.conn) = Some(conn.clone());
        Ok(conn)
    }

    /// One call: the request header and payload out, the reply header and payload back,
    /// within `timeout` (connecting included).
    async fn call(
        &self,
        what: &str,
        kind: Kind,
        header: &impl Message,
        payload: Bytes,
        timeout: Duration,
    ) -> Reply {
        let start = Instant::now();
        let timed_out = || {
            FsError::Timeout(format!(
                "{what} to data server {} after {timeout:?}",
                self.addr
            ))
        };
        let conn = match tokio::time::timeout(timeout, self.conn()).await {
            Ok(c) => c?,
            Err(_) => return Err(timed_out()),
        };
        let call = conn.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(call, tx);
        let _guard = PendingGuard { conn: &conn, call };
        let sent_ms = conn.ms();
        let closed =
            || FsError::Unavailable(format!("connection to data server {} closed", self.addr));
        let frame = Frame::new(kind, call, header, payload);
        let wait = async {
            conn.out.send(frame).await.map_err(|_| closed())?;
            rx.await.unwrap_or_else(|_| Err(closed()))
        };
        match tokio::time::timeout(timeout.saturating_sub(start.elapsed()), wait).await {
            Ok(r) => r,
            Err(_) => {
                // Nothing came back on this connection since the call went out: it may be
                // dead without a reset (a partition); the next call connects afresh.
                if conn.last_rx_ms.load(Ordering::SeqCst) < sent_ms {
                    conn.close(&format!(
                        "no answer from data server {} for {timeout:?}",
                        self.addr
                    ));
                }
                Err(timed_out())
            }
        }
    }

    /// `Write`: `req.data` travels as the payload (the header carries everything else).
    pub async fn write(
        &self,
        mut req: pb::WriteRequest,
        timeout: Duration,
    ) -> FsResult<pb::WriteReply> {
        let data = std::mem::take(&mut req.data);
        let (h, _) = self.call("write", Kind::Write, &req, data, timeout).await?;
        pb::WriteReply::decode(h)
            .map_err(|e| FsError::Io(format!("undecodable write reply from {}: {e}", self.addr)))
    }

    /// `Read`: the reply's `data` is the payload.
    pub async fn read(&self, req: pb::ReadRequest, timeout: Duration) -> FsResult<pb::ReadReply> {
        let (h, payload) = self
            .call("read", Kind::Read, &req, Bytes::new(), timeout)
            .await?;
        let mut r = pb::ReadReply::decode(h)
            .map_err(|e| FsError::Io(format!("undecodable read reply from {}: {e}", self.addr)))?;
        r.data = payload;
        Ok(r)
    }
}

impl Drop for BulkClient {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.conn).take() {
            c.close("client dropped");
        }
    }
}

async fn client_read_one<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(Head, Bytes, Bytes)> {
    let Some(raw) = read_head(r).await? else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed by the server",
        ));
    };
    let head = Head::decode(&raw)
        .map_err(|(_, e)| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let mut header = BytesMut::with_capacity(head.header_len as usize);
    read_into(r, &mut header, head.header_len as usize).await?;
    let mut payload = BytesMut::with_capacity(head.payload_len as usize);
    read_into(r, &mut payload, head.payload_len as usize).await?;
    Ok((head, header.freeze(), payload.freeze()))
}

// ---------------------------------------------------------------------------------------
// Server

/// A boxed handler future.
pub type Handled<T> = Pin<Box<dyn Future<Output = FsResult<T>> + Send>>;

/// What a data server does with bulk calls (the `pb::` types stop in its implementation).
pub trait BulkService: Send + Sync + 'static {
    /// Memory for a write payload of `len` bytes, filled straight from the socket (a data
    /// server hands out 4 KiB-aligned buffers, so the disk write needs no copy).
    type Payload: BufMut + Send + 'static;

    fn payload(&self, len: usize) -> Self::Payload;

    /// A write whose `data` is empty: the bytes are `payload`, exactly as received.
    fn write(
        self: Arc<Self>,
        req: pb::WriteRequest,
        payload: Self::Payload,
    ) -> Handled<pb::WriteReply>;

    /// A read; the reply's `data` is sent as the payload.
    fn read(self: Arc<Self>, req: pb::ReadRequest) -> Handled<pb::ReadReply>;
}

/// Whether the bytes a connection opened with (at least one) are this protocol's.
/// `None`: too few bytes yet to tell.
pub fn is_bulk_preface(first: &[u8]) -> Option<bool> {
    let n = first.len().min(PREFACE.len());
    if first[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// Accepted connections that are not bulk, for tonic's `serve_with_incoming`. Each holds
/// its permit of the port's connection ceiling.
pub type GrpcIncoming = tokio_stream::wrappers::ReceiverStream<std::io::Result<Limited>>;

/// Shares one listening port between the bulk protocol and gRPC: every accepted
/// connection (TCP_NODELAY set) is told apart by its first bytes; bulk ones are served
/// here with `svc`, the others come out of the returned stream. Connections of both
/// kinds, and those not yet told apart, count against one ceiling, `limit`
/// ([`net::MAX_CONNECTIONS`] for a data server); past it a new connection is closed at
/// once. The task ends when the stream is dropped.
pub fn split_port<S: BulkService>(
    listener: tokio::net::TcpListener,
    limit: ConnLimit,
    svc: Arc<S>,
    registry: Option<Arc<Registry>>,
    process: ProcessBudget,
) -> (GrpcIncoming, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let mut incoming = net::incoming(listener, limit);
    let task = tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                c = incoming.accept() => c,
                _ = tx.closed() => return,
            };
            let (tx, svc, reg, process) =
                (tx.clone(), svc.clone(), registry.clone(), process.clone());
            tokio::spawn(async move {
                // Either protocol's whole opening within one deadline: a silent or
                // stalled peer cannot hold a permit of the ceiling.
                let until = Instant::now() + net::OPENING_DEADLINE;
                match net::opening(c.stream(), &PREFACE, until).await {
                    Some(true) => {
                        // The permit is held until the connection is served to its end.
                        let (mut s, permit) = c.into_parts();
                        let mut preface = [0u8; PREFACE.len()];
                        if s.read_exact(&mut preface).await.is_ok() {
                            serve(s, svc, reg, process).await;
                        }
                        drop(permit);
                    }
                    Some(false)
                        if net::opening(c.stream(), net::H2_PREFACE, until).await == Some(true) =>
                    {
                        let _ = tx.send(Ok(c)).await;
                    }
                    // Silent, stalled, or neither protocol: closed, the permit returned.
                    Some(false) | None => {}
                }
            });
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

/// A request as its task gets it: a write's header (decoded by the task) and payload; a
/// read's request, decoded at once because its length is what it is charged.
enum Req<P> {
    Write(Bytes, P),
    Read(Result<pb::ReadRequest, prost::DecodeError>),
}

fn observe(reg: &Option<Arc<Registry>>, op: &str, start: Instant, r: &FsResult<()>) {
    let Some(reg) = reg else { return };
    let code = match r {
        Ok(()) => "Ok".to_string(),
        Err(e) => status::code_name(e),
    };
    reg.histogram(
        "cirrus_latency_seconds",
        "gRPC call latency by method, seconds",
        &[("op", op)],
    )
    .observe(start.elapsed());
    reg.counter(
        "cirrus_requests_total",
        "gRPC calls served, by method and status",
        &[("op", op), ("code", &code)],
    )
    .inc();
}

/// Reads `n` bytes off `rd` and drops them, 64 KiB at a time.
async fn discard<R: AsyncRead + Unpin>(rd: &mut R, mut n: usize) -> std::io::Result<()> {
    let mut scratch = vec![0u8; n.min(64 << 10)];
    while n > 0 {
        let want = n.min(scratch.len());
        rd.read_exact(&mut scratch[..want]).await?;
        n -= want;
    }
    Ok(())
}

/// Serves one connection whose [`PREFACE`] was already read, until the peer closes it
/// or breaks the framing. Calls run concurrently; replies go out as they finish. Counts
/// calls in `cirrus_requests_total{op="Write"|"Read"}` like the gRPC ones.
pub async fn serve<S: BulkService>(
    stream: TcpStream,
    svc: Arc<S>,
    registry: Option<Arc<Registry>>,
    process: ProcessBudget,
) {
    let peer: Arc<str> = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
        .into();
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            match tokio::time::timeout(FRAME_STALL, write_frame(&mut wr, &f)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        let _ = wr.shutdown().await;
    });
    let budget = Arc::new(Semaphore::new(SERVER_BUDGET as usize));
    loop {
        let raw = match read_head(&mut rd).await {
            Ok(Some(raw)) => raw,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%peer, err = %e, "bulk connection");
                break;
            }
        };
        let head = match Head::decode(&raw) {
            Ok(h) if matches!(h.kind, Kind::Write | Kind::Read) => h,
            Ok(h) => {
                let e =
                    FsError::Invalid(format!("bulk frame: a {:?} frame is not a request", h.kind));
                let _ = tx
                    .send(Frame::new(
                        Kind::Error,
                        h.call,
                        &status::to_wire(&e),
                        Bytes::new(),
                    ))
                    .await;
                break;
            }
            Err((call, e)) => {
                tracing::warn!(%peer, err = %e, "closing bulk connection");
                let _ = tx
                    .send(Frame::new(
                        Kind::Error,
                        call,
                        &status::to_wire(&e),
                        Bytes::new(),
                    ))
                    .await;
                break;
            }
        };
        if head.kind == Kind::Read && head.payload_len != 0 {
            let e = FsError::Invalid("bulk frame: a read carries no payload".into());
            let _ = tx
                .send(Frame::new(
                    Kind::Error,
                    head.call,
                    &status::to_wire(&e),
                    Bytes::new(),
                ))
                .await;
            break;
        }
        // The header follows the head promptly; it is at most MAX_HEADER bytes, one at a
        // time per connection, so it is read before the request is charged.
        let header = async {
            let mut header = BytesMut::with_capacity(head.header_len as usize);
            read_into(&mut rd, &mut header, head.header_len as usize).await?;
            Ok::<_, std::io::Error>(header.freeze())
        };
        let header = match tokio::time::timeout(FRAME_STALL, header).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::debug!(%peer, err = %e, "bulk connection");
                break;
            }
            Err(_) => {
                tracing::warn!(%peer, stalled = ?FRAME_STALL, "closing bulk connection: a frame stalled");
                break;
            }
        };
        // A read is charged for the reply it asks for (the data server refuses one over
        // its MAX_READ, which is at most MAX_PAYLOAD); one that does not decode is
        // answered with an error, charged the minimum.
        let read = (head.kind == Kind::Read).then(|| pb::ReadRequest::decode(header.clone()));
        let body_len = match &read {
            None => head.payload_len,
            Some(Ok(r)) => r.len.min(MAX_PAYLOAD),
            Some(Err(_)) => 0,
        };
        let permits = head
            .header_len
            .saturating_add(body_len)
            .clamp(MIN_CHARGE, SERVER_BUDGET);
        let Ok(permit) = budget.clone().acquire_many_owned(permits).await else {
            break;
        };
        let room = tokio::time::timeout(
            PROCESS_WAIT,
            process.sem.clone().acquire_many_owned(permits),
        )
        .await;
        let Ok(Ok(process_permit)) = room else {
            // Refused whole: a write's payload is read past (not kept) so the
            // connection's framing holds, and the caller retries after a pause.
            if read.is_none() {
                let skip =
                    tokio::time::timeout(FRAME_STALL, discard(&mut rd, head.payload_len as usize))
                        .await;
                if !matches!(skip, Ok(Ok(()))) {
                    break;
                }
            }
            if let Some(reg) = &registry {
                reg.counter(
                    "cirrus_bulk_refused_total",
                    "bulk requests refused because the server's request memory was in use",
                    &[],
                )
                .inc();
            }
            tracing::debug!(%peer, bytes = permits, "bulk request refused: the process budget is in use");
            let e = FsError::Unavailable(format!(
                "data server busy: requests in flight hold all {} MiB it admits at once",
                process.bytes >> 20
            ));
            let mut f = Frame::new(Kind::Error, head.call, &status::to_wire(&e), Bytes::new());
            f.budget = Some(permit);
            let _ = tx.send(f).await;
            continue;
        };
        let req = match read {
            Some(r) => Req::Read(r),
            None => {
                // The payload must follow promptly too.
                let body = async {
                    let mut p = svc.payload(head.payload_len as usize);
                    read_into(&mut rd, &mut p, head.payload_len as usize).await?;
                    Ok::<_, std::io::Error>(p)
                };
                match tokio::time::timeout(FRAME_STALL, body).await {
                    Ok(Ok(p)) => Req::Write(header, p),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, err = %e, "bulk connection");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, stalled = ?FRAME_STALL, "closing bulk connection: a frame stalled");
                        break;
                    }
                }
            }
        };
        let (svc, tx, reg, peer) = (svc.clone(), tx.clone(), registry.clone(), peer.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let op = match req {
                Req::Write(..) => "Write",
                Req::Read(_) => "Read",
            };
            let call = head.call;
            let handled = tokio::spawn(async move {
                match req {
                    Req::Write(header, p) => match pb::WriteRequest::decode(header) {
                        Ok(req) => svc
                            .write(req, p)
                            .await
                            .map(|r| Frame::new(Kind::Ok, call, &r, Bytes::new())),
                        Err(e) => Err(FsError::Invalid(format!("undecodable write request: {e}"))),
                    },
                    Req::Read(req) => match req {
                        Ok(req) => svc.read(req).await.map(|mut r| {
                            let data = std::mem::take(&mut r.data);
                            Frame::new(Kind::Ok, call, &r, data)
                        }),
                        Err(e) => Err(FsError::Invalid(format!("undecodable read request: {e}"))),
                    },
                }
            });
            // A handler that panics ends its own task only, never the server. Its caller
            // is answered at once with an error that is not retryable: a silent drop
            // would be retried against this or the next member of the chain until the
            // caller's deadline, the same request failing each in turn.
            let reply = match handled.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%peer, op, call, err = %e, "a bulk request's handler failed; answered EIO, not retried");
                    Err(FsError::Io(format!(
                        "the data server failed handling this {op} request (a bug, in its log); not retried"
                    )))
                }
            };
            observe(
                &reg,
                op,
                start,
                &reply.as_ref().map(|_| ()).map_err(Clone::clone),
            );
            let mut frame = reply.unwrap_or_else(|e| {
                Frame::new(Kind::Error, head.call, &status::to_wire(&e), Bytes::new())
            });
            frame.budget = Some(permit);
            frame.process = Some(process_permit);
            let _ = tx.send(frame).await;
        });
    }
    drop(tx);
    // Replies still being computed hold senders; the writer ends when the last is sent.
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tests::HANG;

    #[test]
    fn heads_round_trip_and_bad_ones_are_refused_with_their_call_id() {
        for kind in [Kind::Write, Kind::Read, Kind::Ok, Kind::Error] {
            let h = Head {
                kind,
                call: 0x0102_0304_0506_0708,
                header_len: MAX_HEADER,
                payload_len: MAX_PAYLOAD,
            };
            assert_eq!(Head::decode(&h.encode()), Ok(h));
        }
        let good = Head {
            kind: Kind::Write,
            call: 42,
            header_len: 10,
            payload_len: 10,
        }
        .encode();
        let mut unknown = good;
        unknown[0] = 7;
        let mut reserved = good;
        reserved[2] = 1;
        let mut big_header = good;
        big_header[4..8].copy_from_slice(&(MAX_HEADER + 1).to_le_bytes());
        let mut big_payload = good;
        big_payload[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        for (what, raw) in [
            ("unknown kind", unknown),
            ("reserved", reserved),
            ("header", big_header),
            ("payload", big_payload),
        ] {
            match Head::decode(&raw) {
                Err((42, FsError::Invalid(m))) => assert!(m.contains(what), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    /// Echo service: a write answers the payload length as `object_size` (and fails with
    /// `StaleChain` for offset 7, sleeps for offset 9); a read answers `len` bytes of
    /// `offset as u8`.
    struct Echo;

    impl BulkService for Echo {
        type Payload = BytesMut;

        fn payload(&self, len: usize) -> BytesMut {
            BytesMut::with_capacity(len)
        }

        fn write(
            self: Arc<Self>,
            req: pb::WriteRequest,
            payload: BytesMut,
        ) -> Handled<pb::WriteReply> {
            Box::pin(async move {
                match req.offset {
                    13 => panic!("test: a handler that panics (expected)"),
                    7 => Err(FsError::StaleChain {
                        current: cirrus_types::ChainVersion(12),
                    }),
                    9 => {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        Ok(pb::WriteReply { object_size: 9 })
                    }
                    _ => {
                        let sum: u64 = payload.iter().map(|b| *b as u64).sum();
                        Ok(pb::WriteReply {
                            object_size: payload.len() as u64 * 1000 + sum % 1000,
                        })
                    }
                }
            })
        }

        fn read(self: Arc<Self>, req: pb::ReadRequest) -> Handled<pb::ReadReply> {
            Box::pin(async move {
                // Later calls answer first: replies are matched by call id.
                tokio::time::sleep(Duration::from_millis(50 * (10 - req.offset.min(10)))).await;
                Ok(pb::ReadReply {
                    data: Bytes::from(vec![req.offset as u8; req.len as usize]),
                    crcs: vec![],
                    object_size: req.len as u64,
                })
            })
        }
    }

    async fn echo_server() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (mut grpc, _task) = split_port(
            l,
            ConnLimit::new("test", 64),
            Arc::new(Echo),
            None,
            ProcessBudget::default(),
        );
        // Non-bulk connections come out here; answer them with a marker and close.
        tokio::spawn(async move {
            use tokio_stream::StreamExt;
            while let Some(Ok(mut s)) = grpc.next().await {
                let mut first = [0u8; 24]; // the HTTP/2 preface
                let _ = s.read_exact(&mut first).await;
                let _ = s.write_all(b"not bulk").await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn calls_round_trip_concurrently_and_errors_keep_their_retry_fields() {
        let addr = echo_server().await;
        let c = Arc::new(BulkClient::new(&addr));
        let t = Duration::from_secs(5);
        let data = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let sum: u64 = data.iter().map(|b| *b as u64).sum();
        let w = c
            .write(
                pb::WriteRequest {
                    offset: 1,
                    data: data.clone(),
                    ..Default::default()
                },
                t,
            )
            .await
            .unwrap();
        assert_eq!(w.object_size, 100_000 * 1000 + sum % 1000);
        let started = Instant::now();
        let reads: Vec<_> = (0..10u64)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.read(
                        pb::ReadRequest {
                            offset: i,
                            len: 1000 + i as u32,
                            ..Default::default()
                        },
                        t,
                    )
                    .await
                })
            })
            .collect();
        for (i, r) in reads.into_iter().enumerate() {
            let r = r.await.unwrap().unwrap();
            assert_eq!(r.data.len(), 1000 + i, "read {i}");
            assert!(
                r.data.iter().all(|b| *b == i as u8),
                "read {i} got another call's bytes"
            );
        }
        // Ten calls of up to 500 ms each, answered in reverse order, on one connection.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "calls did not overlap"
        );
        let e = c
            .write(
                pb::WriteRequest {
                    offset: 7,
                    ..Default::default()
                },
                t,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e,
            FsError::StaleChain {
                current: cirrus_types::ChainVersion(12)
            }
        );
    }

    #[tokio::test]
    async fn a_slow_call_times_out_and_the_connection_keeps_serving() {
        let addr = echo_server().await;
        let c = BulkClient::new(&addr);
        let e = c
            .write(
                pb::WriteRequest {
                    offset: 9,
                    ..Default::default()
                },
                Duration::from_millis(100),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, FsError::Timeout(_)), "{e:?}");
        let r = c
            .read(
                pb::ReadRequest {
                    offset: 10,
                    len: 3,
                    ..Default::default()
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(&r.data[..], &[10, 10, 10]);
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_eio_at_once_and_the_connection_keeps_serving() {
        let addr = echo_server().await;
        let c = BulkClient::new(&addr);
        // Answered, not timed out: the deadline is only a guard against a hang.
        let e = c
            .write(
                pb::WriteRequest {
                    offset: 13,
                    ..Default::default()
                },
                HANG,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, FsError::Io(m) if m.contains("not retried")),
            "{e:?}"
        );
        assert!(!e.is_retryable(), "{e:?}");
        let r = c
            .read(
                pb::ReadRequest {
                    offset: 10,
                    len: 3,
                    ..Default::default()
                },
                HANG,
            )
            .await
            .unwrap();
        assert_eq!(&r.data[..], &[10, 10, 10]);
    }

    #[tokio::test]
    async fn a_bad_frame_is_answered_with_an_error_and_the_connection_closed() {
        let addr = echo_server().await;
        for (what, head) in [
            (
                "payload",
                Head {
                    kind: Kind::Write,
                    call: 5,
                    header_len: 0,
                    payload_len: MAX_PAYLOAD + 1,
                },
            ),
            (
                "not a request",
                Head {
                    kind: Kind::Ok,
                    call: 5,
                    header_len: 0,
                    payload_len: 0,
                },
            ),
            (
                "no payload",
                Head {
                    kind: Kind::Read,
                    call: 5,
                    header_len: 0,
                    payload_len: 3,
                },
            ),
        ] {
            let mut raw = head.encode();
            if what == "payload" {
                // Head::encode does not check; the server must.
                raw[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
            }
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(&PREFACE).await.unwrap();
            s.write_all(&raw).await.unwrap();
            let (got, header, _) =
                tokio::time::timeout(Duration::from_secs(5), client_read_one(&mut s))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!((got.kind, got.call), (Kind::Error, 5), "{what}");
            let err = status::from_wire(&pb::WireError::decode(header).unwrap());
            assert!(
                matches!(err, FsError::Invalid(ref m) if m.contains(what)),
                "{what}: {err:?}"
            );
            let mut rest = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 0, "{what}: the connection must close after a bad frame");
        }
        // An undecodable header fails that call only.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&PREFACE).await.unwrap();
        let head = Head {
            kind: Kind::Read,
            call: 8,
            header_len: 3,
            payload_len: 0,
        };
        s.write_all(&head.encode()).await.unwrap();
        s.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
        let (got, _, _) = client_read_one(&mut s).await.unwrap();
        assert_eq!((got.kind, got.call), (Kind::Error, 8));
        let ok = pb::ReadRequest {
            offset: 10,
            len: 2,
            ..Default::default()
        };
        let f = Frame::new(Kind::Read, 9, &ok, Bytes::new());
        write_frame(&mut s, &f).await.unwrap();
        let (got, _, payload) = client_read_one(&mut s).await.unwrap();
        assert_eq!(
            (got.kind, got.call, &payload[..]),
            (Kind::Ok, 9, &[10u8, 10][..])
        );
    }

    #[tokio::test]
    async fn other_protocols_on_the_port_are_handed_on() {
        let addr = echo_server().await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(net::H2_PREFACE).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"not bulk");
    }

    /// A peer that connects and says nothing, or stops inside either protocol's opening,
    /// or opens with neither, is closed within the opening deadline, never handed on: it
    /// cannot hold a permit of the port's ceiling (issue 22).
    #[tokio::test]
    async fn silent_stalled_and_unknown_openings_are_closed_not_handed_on() {
        let addr = echo_server().await;
        let mut conns = Vec::new();
        for opening in [
            &b""[..],
            b"PRI * HTTP/2.0\r\n",
            b"CIRR",
            b"GET / HTTP/1.1\r\n\r\n\r\n\r\n\r\n\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(opening).await.unwrap();
            conns.push((opening, s));
        }
        for (opening, mut s) in conns {
            let mut got = Vec::new();
            let r = tokio::time::timeout(net::OPENING_DEADLINE + HANG, s.read_to_end(&mut got))
                .await
                .unwrap_or_else(|_| panic!("{opening:?}: still open past the opening deadline"));
            // Closed (EOF or reset), and never answered as a gRPC connection would be.
            assert!(r.is_err() || got.is_empty(), "{opening:?}: got {got:?}");
        }
    }

    /// The connection ceiling of a shared port, with a [`BulkClient`] per connection.
    async fn read_on(c: &BulkClient, offset: u64) -> FsResult<Bytes> {
        let req = pb::ReadRequest {
            offset,
            len: 2,
            ..Default::default()
        };
        let r = tokio::time::timeout(HANG, c.read(req, HANG))
            .await
            .expect("a bulk call neither answered nor failed in time")?;
        Ok(r.data)
    }

    #[tokio::test]
    async fn connections_past_the_port_ceiling_are_closed_while_open_ones_keep_serving() {
        let reg = Registry::new();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (mut grpc, _task) = split_port(
            l,
            ConnLimit::new("test", 4).counted(&reg),
            Arc::new(Echo),
            None,
            ProcessBudget::default(),
        );
        let refused = || {
            reg.counter(
                "cirrus_connections_refused_total",
                "",
                &[("listener", "test")],
            )
            .get()
        };
        // Three bulk connections (each answered, so admitted) and one that is not bulk,
        // handed on to the gRPC side: both kinds count against the one ceiling.
        let mut open: Vec<BulkClient> = Vec::new();
        for i in 0..3u64 {
            let c = BulkClient::new(&addr);
            assert_eq!(
                read_on(&c, i).await.unwrap(),
                vec![i as u8; 2],
                "client {i}"
            );
            open.push(c);
        }
        let mut h2 = TcpStream::connect(&addr).await.unwrap();
        h2.write_all(net::H2_PREFACE).await.unwrap();
        use tokio_stream::StreamExt;
        let handed_on = tokio::time::timeout(HANG, grpc.next())
            .await
            .expect("the non-bulk connection was not handed on")
            .expect("the gRPC stream ended")
            .unwrap();
        assert_eq!(refused(), 0);

        let mut hello = PREFACE.to_vec();
        let probe = pb::ReadRequest {
            len: 2,
            ..Default::default()
        };
        hello.extend_from_slice(&Frame::new(Kind::Read, 1, &probe, Bytes::new()).head);
        crate::net::tests::assert_closed_at_once(&addr, &hello).await;
        let past = BulkClient::new(&addr);
        let e = read_on(&past, 5)
            .await
            .expect_err("a fifth connection was served");
        assert!(matches!(e, FsError::Unavailable(_)), "{e:?}");
        assert_eq!(refused(), 2);

        for (i, c) in open.iter().enumerate() {
            let n = 6 + i as u64;
            assert_eq!(read_on(c, n).await.unwrap(), vec![n as u8; 2], "client {i}");
        }

        // Closing one (here the gRPC one) gives its slot back once the server sees it.
        drop(handed_on);
        drop(h2);
        let deadline = Instant::now() + HANG;
        while let Err(e) = read_on(&past, 9).await {
            assert!(
                Instant::now() < deadline,
                "no connection admitted after one closed: {e:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads that hold until the test lets them go, and how many ran at once.
    struct Gated {
        gate: Semaphore,
        started: AtomicU64,
        running: AtomicU64,
        most: AtomicU64,
    }

    impl BulkService for Gated {
        type Payload = BytesMut;

        fn payload(&self, len: usize) -> BytesMut {
            BytesMut::with_capacity(len)
        }

        fn write(self: Arc<Self>, _: pb::WriteRequest, _: BytesMut) -> Handled<pb::WriteReply> {
            Box::pin(async { Err(FsError::Invalid("reads only".into())) })
        }

        fn read(self: Arc<Self>, _: pb::ReadRequest) -> Handled<pb::ReadReply> {
            Box::pin(async move {
                self.started.fetch_add(1, Ordering::SeqCst);
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                if let Ok(p) = self.gate.acquire().await {
                    p.forget();
                }
                self.running.fetch_sub(1, Ordering::SeqCst);
                // Less than asked for: the charge is for what a read may answer.
                Ok(pb::ReadReply {
                    data: Bytes::from_static(b"x"),
                    crcs: vec![],
                    object_size: 1,
                })
            })
        }
    }

    #[tokio::test]
    async fn reads_are_charged_the_reply_they_ask_for_against_the_connection_budget() {
        let svc = Arc::new(Gated {
            gate: Semaphore::new(0),
            started: AtomicU64::new(0),
            running: AtomicU64::new(0),
            most: AtomicU64::new(0),
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (_grpc, _task) = split_port(
            l,
            ConnLimit::new("test", 4),
            svc.clone(),
            None,
            ProcessBudget::default(),
        );
        let c = Arc::new(BulkClient::new(&addr));
        // Six reads of the largest reply on one connection: the budget holds three.
        let fit = (SERVER_BUDGET / MAX_PAYLOAD) as u64;
        assert_eq!(fit, 3);
        let reads: Vec<_> = (0..6)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let req = pb::ReadRequest {
                        offset: i,
                        len: MAX_PAYLOAD,
                        ..Default::default()
                    };
                    c.read(req, HANG).await
                })
            })
            .collect();
        let deadline = Instant::now() + HANG;
        while svc.started.load(Ordering::SeqCst) < fit {
            assert!(Instant::now() < deadline, "the first reads never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        svc.gate.add_permits(6);
        for r in reads {
            assert_eq!(&r.await.unwrap().unwrap().data[..], b"x");
        }
        assert_eq!(svc.started.load(Ordering::SeqCst), 6);
        let most = svc.most.load(Ordering::SeqCst);
        assert!(
            most <= fit,
            "{most} reads of {MAX_PAYLOAD} bytes ran at once on one connection"
        );
    }

    #[tokio::test]
    async fn past_the_process_budget_a_request_is_refused_unavailable_and_later_ones_are_served() {
        let svc = Arc::new(Gated {
            gate: Semaphore::new(0),
            started: AtomicU64::new(0),
            running: AtomicU64::new(0),
            most: AtomicU64::new(0),
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let reg = Registry::new();
        // Room for two of the largest reads (each charged its header too) across all
        // connections.
        let budget = ProcessBudget::new(2 * (MAX_PAYLOAD + MIN_CHARGE));
        let (_grpc, _task) = split_port(
            l,
            ConnLimit::new("test", 8),
            svc.clone(),
            Some(reg.clone()),
            budget.clone(),
        );
        let big = |i| pb::ReadRequest {
            offset: i,
            len: MAX_PAYLOAD,
            ..Default::default()
        };
        // Two connections each hold one largest read (each fits its own connection's
        // budget); they fill the process budget.
        let held: Vec<_> = (0..2)
            .map(|i| {
                let c = BulkClient::new(&addr);
                tokio::spawn(async move { c.read(big(i), HANG).await })
            })
            .collect();
        let deadline = Instant::now() + HANG;
        while svc.started.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "the first reads never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(budget.in_use() > 2 * u64::from(MAX_PAYLOAD));
        // A third connection's request finds no room: refused, and its handler never ran.
        let third = BulkClient::new(&addr);
        let e = third.read(big(3), HANG).await.unwrap_err();
        assert!(
            matches!(&e, FsError::Unavailable(m) if m.contains("busy")),
            "{e:?}"
        );
        assert!(e.is_retryable(), "{e:?}");
        assert_eq!(svc.started.load(Ordering::SeqCst), 2);
        let refused = reg.counter("cirrus_bulk_refused_total", "", &[]).get();
        assert_eq!(refused, 1);
        // A write refused the same way has its payload read past: the connection still
        // serves the next frame.
        let w = third
            .write(
                pb::WriteRequest {
                    offset: 1,
                    data: Bytes::from(vec![7u8; MAX_PAYLOAD as usize]),
                    ..Default::default()
                },
                HANG,
            )
            .await
            .unwrap_err();
        assert!(matches!(w, FsError::Unavailable(_)), "{w:?}");
        // Once the held reads end, the budget is free again and the same connection is
        // served.
        svc.gate.add_permits(3);
        for r in held {
            assert_eq!(&r.await.unwrap().unwrap().data[..], b"x");
        }
        assert_eq!(&third.read(big(4), HANG).await.unwrap().data[..], b"x");
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn the_preface_is_told_from_http2() {
        assert_eq!(is_bulk_preface(b"PRI * HTTP/2.0"), Some(false));
        assert_eq!(is_bulk_preface(b"CIR"), None);
        assert_eq!(is_bulk_preface(b"CIRX"), Some(false));
        assert_eq!(is_bulk_preface(b"CIRRUSB1"), Some(true));
        assert_eq!(is_bulk_preface(b"CIRRUSB1xyz"), Some(true));
    }
}
