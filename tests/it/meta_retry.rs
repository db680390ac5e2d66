//! Exactly-once metadata mutations with real `cirrus meta` processes: a request id sent
//! twice through the real gRPC API answers the first result and changes the namespace
//! once, a malformed id is refused, and a mutation whose first attempt was applied but
//! whose answer was lost (a proxy in front of the leader drops it, with and without a
//! leader kill) is retried by `MetaConn` and answers success, not EEXIST or ENOENT.
//! Found by the chaos soak (seeds 1005, 1008, 1012, 1013).

use crate::meta_common;

use anyhow::{anyhow, bail, Context, Result};
use cirrus_proto::leader::{request_tag, stamp, DONE_BELOW_KEY, REQUEST_ID_KEY};
use cirrus_proto::{net, pb, to_status, CallPolicy, MetaConn};
use cirrus_raft_tests::cluster::{ClusterBuilder, TestCluster};
use cirrus_types::{FsError, RequestId};
use meta_common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

fn patient() -> CallPolicy {
    CallPolicy {
        per_try: Duration::from_secs(3),
        total: Duration::from_secs(60),
    }
}

async fn start() -> Result<(TestCluster, MetaConn)> {
    let c = ClusterBuilder::new()
        .server_timeout(Duration::from_secs(3600))
        .start()
        .await?;
    let conn = c.conn_with(patient()).await?;
    Ok((c, conn))
}

async fn mkdir_as(conn: &MetaConn, id: RequestId, name: &str) -> Result<pb::Attr, FsError> {
    let cid = conn.cluster_id();
    let name = name.as_bytes().to_vec();
    let r = conn
        .call_as(id, "mkdir", move |mut c| {
            let req = pb::MkdirRequest {
                cluster_id: cid.clone(),
                parent: ROOT,
                name: name.clone(),
                mode: 0o755,
                ..Default::default()
            };
            async move { c.mkdir(req).await }
        })
        .await?;
    r.attr
        .ok_or_else(|| FsError::Io("mkdir without attr".into()))
}

async fn rmdir_as(conn: &MetaConn, id: RequestId, name: &str) -> Result<(), FsError> {
    let cid = conn.cluster_id();
    let name = name.as_bytes().to_vec();
    conn.call_as(id, "rmdir", move |mut c| {
        let req = pb::RmdirRequest {
            cluster_id: cid.clone(),
            parent: ROOT,
            name: name.clone(),
        };
        async move { c.rmdir(req).await }
    })
    .await
    .map(|_| ())
}

async fn rename_as(conn: &MetaConn, id: RequestId, from: &str, to: &str) -> Result<(), FsError> {
    let cid = conn.cluster_id();
    let (from, to) = (from.as_bytes().to_vec(), to.as_bytes().to_vec());
    conn.call_as(id, "rename", move |mut c| {
        let req = pb::RenameRequest {
            cluster_id: cid.clone(),
            parent: ROOT,
            name: from.clone(),
            new_parent: ROOT,
            new_name: to.clone(),
            flags: 0,
        };
        async move { c.rename(req).await }
    })
    .await
    .map(|_| ())
}

async fn root_names(conn: &MetaConn) -> Result<Vec<String>> {
    let mut names: Vec<String> = readdir_all(conn, ROOT)
        .await?
        .into_iter()
        .map(|(n, _)| String::from_utf8_lossy(&n).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn id(client: u128, seq: u64) -> RequestId {
    RequestId { client, seq }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_id_sent_twice_answers_the_first_result_and_changes_the_namespace_once(
) -> Result<()> {
    let (_c, conn) = start().await?;
    let client = 0x5eed_0000_0000_0000_0000_0000_0000_0001;

    let first = mkdir_as(&conn, id(client, 1), "d").await?;
    let second = mkdir_as(&conn, id(client, 1), "d")
        .await
        .context("the same mkdir request again")?;
    assert_eq!(second, first, "the repeat answers the first attributes");
    // The same mkdir as a new call is refused as POSIX says: the id made the difference.
    assert_eq!(
        mkdir_as(&conn, id(client, 2), "d").await,
        Err(FsError::Exists)
    );
    mkdir_as(&conn, id(client, 3), "gone").await?;
    assert_eq!(root_names(&conn).await?, vec!["d", "gone"]);

    rmdir_as(&conn, id(client, 4), "gone").await?;
    rmdir_as(&conn, id(client, 4), "gone")
        .await
        .context("the same rmdir request again")?;
    assert_eq!(
        rmdir_as(&conn, id(client, 5), "gone").await,
        Err(FsError::NotFound)
    );

    rename_as(&conn, id(client, 6), "d", "e").await?;
    rename_as(&conn, id(client, 6), "d", "e")
        .await
        .context("the same rename request again")?;
    assert_eq!(
        rename_as(&conn, id(client, 7), "d", "e").await,
        Err(FsError::NotFound)
    );
    assert_eq!(root_names(&conn).await?, vec!["e"]);
    let e = lookup(&conn, ROOT, b"e").await?;
    assert_eq!(e.ino, first.ino, "renamed once, the directory made once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_ids_are_refused_as_invalid_and_change_nothing() -> Result<()> {
    let (c, conn) = start().await?;
    let leader = c.meta_addr(c.leader_index().await?);
    let mut raw = net::meta_client(net::channel(&leader)?);
    let bad: [(&str, &str); 5] = [
        (REQUEST_ID_KEY, "not-an-id"),
        (REQUEST_ID_KEY, "00000000000000000000000000000000/1"),
        (REQUEST_ID_KEY, "00000000000000000000000000000001/0"),
        (
            REQUEST_ID_KEY,
            "00000000000000000000000000000001/99999999999999999999",
        ),
        (DONE_BELOW_KEY, "3"),
    ];
    for (key, value) in bad {
        let mut req = Request::new(pb::MkdirRequest {
            cluster_id: conn.cluster_id(),
            parent: ROOT,
            name: b"x".to_vec(),
            mode: 0o755,
            ..Default::default()
        });
        req.metadata_mut().insert(key, value.parse()?);
        let err = raw
            .mkdir(req)
            .await
            .err()
            .ok_or_else(|| anyhow!("mkdir with {key}: {value} was accepted"))?;
        let e = cirrus_proto::from_status(&err);
        assert!(matches!(e, FsError::Invalid(_)), "{key}: {value}: {e}");
    }
    // A done-below mark above the id's own seq is refused too.
    let mut req = Request::new(pb::MkdirRequest {
        cluster_id: conn.cluster_id(),
        parent: ROOT,
        name: b"x".to_vec(),
        mode: 0o755,
        ..Default::default()
    });
    req.metadata_mut().insert(
        REQUEST_ID_KEY,
        "00000000000000000000000000000001/2".parse()?,
    );
    req.metadata_mut().insert(DONE_BELOW_KEY, "3".parse()?);
    let e = cirrus_proto::from_status(&raw.mkdir(req).await.err().context("accepted")?);
    assert!(matches!(e, FsError::Invalid(_)), "{e}");
    assert_eq!(lookup(&conn, ROOT, b"x").await, Err(FsError::NotFound));
    assert!(root_names(&conn).await?.is_empty());
    Ok(())
}

/// A Meta service in front of one meta node that forwards every call (with its request
/// id) and, once armed, drops the first successful answer: it tells the test, waits for
/// the test's go-ahead (e.g. after killing the leader), then answers Unavailable, as a
/// connection cut after the apply would.
struct LossyProxy {
    upstream: String,
    armed: Mutex<Option<mpsc::Sender<oneshot::Sender<()>>>>,
}

impl LossyProxy {
    fn request<T>(req: Request<T>) -> Result<Request<T>, Status> {
        let tag = request_tag(req.metadata()).map_err(|e| to_status(&e))?;
        let mut out = Request::new(req.into_inner());
        if let Some(t) = tag {
            stamp(out.metadata_mut(), t);
        }
        Ok(out)
    }

    fn client(&self) -> Result<pb::meta_client::MetaClient<tonic::transport::Channel>, Status> {
        let ch = net::channel(&self.upstream).map_err(|e| to_status(&e))?;
        Ok(net::meta_client(ch))
    }

    async fn answer<T>(&self, r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        let resp = r?;
        let armed = self.armed.lock().ok().and_then(|mut g| g.take());
        let Some(tx) = armed else { return Ok(resp) };
        let (go_tx, go_rx) = oneshot::channel();
        if tx.send(go_tx).await.is_ok() {
            let _ = go_rx.await;
        }
        Err(Status::unavailable("answer lost by the test proxy"))
    }
}

macro_rules! forward_all {
    ($($m:ident($req:ident) -> $resp:ident;)*) => {
        #[tonic::async_trait]
        impl pb::meta_server::Meta for LossyProxy {
            $(
                async fn $m(&self, req: Request<pb::$req>) -> Result<Response<pb::$resp>, Status> {
                    let req = LossyProxy::request(req)?;
                    let r = self.client()?.$m(req).await;
                    self.answer(r).await
                }
            )*
        }
    };
}

forward_all! {
    lookup(LookupRequest) -> AttrReply;
    getattr(GetattrRequest) -> AttrReply;
    setattr(SetattrRequest) -> AttrReply;
    create(CreateRequest) -> CreateReply;
    mkdir(MkdirRequest) -> AttrReply;
    mknod(MknodRequest) -> AttrReply;
    symlink(SymlinkRequest) -> AttrReply;
    readlink(ReadlinkRequest) -> ReadlinkReply;
    link(LinkRequest) -> AttrReply;
    unlink(UnlinkRequest) -> DirsReply;
    rmdir(RmdirRequest) -> DirsReply;
    rename(RenameRequest) -> DirsReply;
    readdir(ReaddirRequest) -> ReaddirReply;
    get_xattr(GetXattrRequest) -> GetXattrReply;
    set_xattr(SetXattrRequest) -> Empty;
    list_xattr(ListXattrRequest) -> ListXattrReply;
    remove_xattr(RemoveXattrRequest) -> Empty;
    statfs(StatfsRequest) -> StatfsReply;
    open(OpenRequest) -> OpenReply;
    release(ReleaseRequest) -> Empty;
    commit_write(CommitWriteRequest) -> AttrReply;
    get_layout(GetLayoutRequest) -> LayoutReply;
    get_chains(GetChainsRequest) -> ChainTable;
    renew_lease(RenewLeaseRequest) -> Empty;
    set_lock(LockRequest) -> Empty;
    get_lock(LockRequest) -> GetLockReply;
    cancel_lock_wait(CancelLockWaitRequest) -> Empty;
    register_server(RegisterServerRequest) -> RegisterServerReply;
    heartbeat(HeartbeatRequest) -> HeartbeatReply;
    cluster_info(ClusterInfoRequest) -> ClusterInfoReply;
    status(ClusterInfoRequest) -> StatusReply;
}

/// A proxy in front of `upstream`; `conn()` makes `MetaConn`s whose first try goes to the
/// proxy (then, after the loss, to the real nodes, following hints as usual).
struct Lossy {
    proxy: Arc<LossyProxy>,
    server: tokio::task::JoinHandle<()>,
    addrs: Vec<String>,
    cluster_id: String,
}

impl Drop for Lossy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Lossy {
    async fn start(c: &TestCluster, upstream: String, cluster_id: &str) -> Result<Lossy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let proxy = Arc::new(LossyProxy {
            upstream,
            armed: Mutex::new(None),
        });
        let svc = pb::meta_server::MetaServer::from_arc(proxy.clone());
        let server = tokio::spawn(async move {
            let _ = net::server()
                .add_service(svc)
                .serve_with_incoming(net::incoming(
                    listener,
                    net::ConnLimit::new("lossy proxy", net::MAX_CONNECTIONS),
                ))
                .await;
        });
        let mut addrs = vec![addr];
        addrs.extend((0..c.meta_count()).map(|i| c.meta_addr(i)));
        Ok(Lossy {
            proxy,
            server,
            addrs,
            cluster_id: cluster_id.to_string(),
        })
    }

    /// A new connection (no leader known yet, so its first try goes to the proxy).
    fn conn(&self) -> Result<Arc<MetaConn>> {
        let conn = MetaConn::new(self.addrs.clone(), patient())?;
        conn.set_cluster_id(self.cluster_id.parse()?);
        Ok(Arc::new(conn))
    }

    /// Drops the next successful answer; the receiver gets a go-ahead sender when it does.
    fn arm(&self) -> mpsc::Receiver<oneshot::Sender<()>> {
        let (tx, rx) = mpsc::channel(1);
        if let Ok(mut g) = self.proxy.armed.lock() {
            *g = Some(tx);
        }
        rx
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_retried_after_leader_change_answers_ok_not_eexist() -> Result<()> {
    let (mut c, conn) = start().await?;
    let li = c.leader_index().await?;
    let lossy = Lossy::start(&c, c.meta_addr(li), &conn.cluster_id()).await?;
    let mut lost = lossy.arm();
    let call = {
        let conn = lossy.conn()?;
        tokio::spawn(async move { mkdir(&conn, ROOT, b"d").await })
    };
    // The leader applied the mkdir and answered; the answer is held at the proxy.
    let go = tokio::time::timeout(HANG, lost.recv())
        .await
        .context("the mkdir never reached the leader")?
        .ok_or_else(|| anyhow!("proxy gone"))?;
    c.kill_meta(li);
    let _ = go.send(());
    let attr = tokio::time::timeout(HANG, call)
        .await
        .context("the retried mkdir hung")??
        .context("the retried mkdir after the leader change")?;
    let new_leader = c.leader_index().await?;
    if new_leader == li {
        bail!("meta-{} is still leader after its kill", li + 1);
    }
    assert_eq!(lookup(&conn, ROOT, b"d").await?.ino, attr.ino);
    assert_eq!(root_names(&conn).await?, vec!["d"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmdir_and_rename_retried_after_a_lost_answer_answer_ok_not_enoent() -> Result<()> {
    let (c, conn) = start().await?;
    mkdir(&conn, ROOT, b"gone").await?;
    let kept = mkdir(&conn, ROOT, b"a").await?;
    let li = c.leader_index().await?;
    let lossy = Lossy::start(&c, c.meta_addr(li), &conn.cluster_id()).await?;

    let mut lost = lossy.arm();
    let call = {
        let conn = lossy.conn()?;
        tokio::spawn(async move {
            let cid = conn.cluster_id();
            conn.call("rmdir", move |mut m| {
                let req = pb::RmdirRequest {
                    cluster_id: cid.clone(),
                    parent: ROOT,
                    name: b"gone".to_vec(),
                };
                async move { m.rmdir(req).await }
            })
            .await
        })
    };
    let go = tokio::time::timeout(HANG, lost.recv())
        .await
        .context("the rmdir never reached the leader")?
        .ok_or_else(|| anyhow!("proxy gone"))?;
    let _ = go.send(());
    tokio::time::timeout(HANG, call)
        .await
        .context("the retried rmdir hung")??
        .context("the retried rmdir after a lost answer")?;

    let mut lost = lossy.arm();
    let call = {
        let conn = lossy.conn()?;
        tokio::spawn(async move { rename(&conn, ROOT, b"a", ROOT, b"b", 0).await })
    };
    let go = tokio::time::timeout(HANG, lost.recv())
        .await
        .context("the rename never reached the leader")?
        .ok_or_else(|| anyhow!("proxy gone"))?;
    let _ = go.send(());
    tokio::time::timeout(HANG, call)
        .await
        .context("the retried rename hung")??
        .context("the retried rename after a lost answer")?;

    assert_eq!(root_names(&conn).await?, vec!["b"]);
    assert_eq!(lookup(&conn, ROOT, b"b").await?.ino, kept.ino);
    Ok(())
}
