//! An in-process network of data nodes, for unit tests of chain replication without
//! sockets: `Net` is a `ChainTransport` that hands a call for address A to the `Node`
//! registered under A, so a few nodes over `MemStore`s form a chain in one process and a
//! write runs head to tail in microseconds. To stage the races chaos runs found, an
//! address can be made unreachable (the call never arrives), lose its replies (the call
//! runs to completion, the caller sees a timeout) or be paused (calls wait before they
//! arrive until the test resumes them, and the test can wait until they have); the
//! replies of one kind of call to an address can be held the same way, after the call
//! ran (a read that returns bytes older than a write that lands meanwhile).
//!
//! Mutations are spawned and run to completion like `service::to_completion` does, so a
//! caller that gives up does not cancel the receiver half way. Reads are checked against
//! their crcs as `Peers::read` checks them.

use crate::node::{Listed, Node, NodeConfig, WriteArgs};
use crate::store::mem::MemStore;
use crate::store::ChunkStore;
use crate::transport::ChainTransport;
use bytes::Bytes;
use cirrus_proto::metrics::Registry;
use cirrus_types::checksum::verify_pieces;
use cirrus_types::sync::lock;
use cirrus_types::{
    Chain, ChainId, ChainTable, ChainVersion, ClusterId, FsError, FsResult, ObjectKey, ServerEntry,
    ServerId,
};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;

/// What goes wrong with calls to one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call never arrives; the caller sees `Unavailable` naming the address.
    Unreachable,
    /// The call arrives and runs to completion, but its reply is lost: the caller sees
    /// `Timeout`, as when a forward's deadline passes.
    ReplyLost,
}

/// A gate where calls to a paused address (or the replies `Net::hold_replies` holds)
/// wait until the test resumes it.
pub struct Pause {
    open: watch::Sender<bool>,
    arrived: watch::Sender<usize>,
}

impl Pause {
    fn new() -> Arc<Pause> {
        Arc::new(Pause {
            open: watch::Sender::new(false),
            arrived: watch::Sender::new(0),
        })
    }

    /// Waits until `n` calls in all have come to this pause.
    pub async fn arrived(&self, n: usize) {
        let mut rx = self.arrived.subscribe();
        // The sender lives in self, so the channel cannot close while we wait.
        let _ = rx.wait_for(|got| *got >= n).await;
    }

    /// Lets every held call (and every later one) through.
    pub fn resume(&self) {
        self.open.send_replace(true);
    }

    async fn hold(&self) {
        self.arrived.send_modify(|n| *n += 1);
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// One call delivered to a node: (address, operation).
pub type Delivery = (String, &'static str);

#[derive(Default)]
pub struct Net {
    /// Weak: each node holds the net as its transport, so strong handles here would be a
    /// cycle; the test owns the nodes.
    nodes: Mutex<HashMap<String, Weak<Node>>>,
    faults: Mutex<HashMap<String, Fault>>,
    pauses: Mutex<HashMap<String, Arc<Pause>>>,
    held_replies: Mutex<HashMap<(String, &'static str), Arc<Pause>>>,
    delivered: Mutex<Vec<Delivery>>,
}

impl Net {
    pub fn new() -> Arc<Net> {
        Arc::new(Net::default())
    }

    /// Routes calls for `node.address` to `node`.
    pub fn register(&self, node: &Arc<Node>) {
        lock(&self.nodes).insert(node.address.clone(), Arc::downgrade(node));
    }

    /// Calls to `addr` fail as `f` says, until `heal`.
    pub fn fault(&self, addr: &str, f: Fault) {
        lock(&self.faults).insert(addr.to_string(), f);
    }

    pub fn heal(&self, addr: &str) {
        lock(&self.faults).remove(addr);
    }

    /// Holds calls to `addr` before they arrive, until the returned pause is resumed
    /// (after which it lets every call through).
    pub fn pause(&self, addr: &str) -> Arc<Pause> {
        let p = Pause::new();
        lock(&self.pauses).insert(addr.to_string(), p.clone());
        p
    }

    /// Lets `op` calls to `addr` run, then holds their replies until the returned pause
    /// is resumed.
    pub fn hold_replies(&self, addr: &str, op: &'static str) -> Arc<Pause> {
        let p = Pause::new();
        lock(&self.held_replies).insert((addr.to_string(), op), p.clone());
        p
    }

    /// Every call delivered so far, in the order they arrived.
    pub fn delivered(&self) -> Vec<Delivery> {
        lock(&self.delivered).clone()
    }

    /// The node at `addr` once a call to it gets through, and what happens to its reply.
    async fn arrive(&self, addr: &str, op: &'static str) -> FsResult<(Arc<Node>, Reply)> {
        let pause = lock(&self.pauses).get(addr).cloned();
        if let Some(p) = pause {
            p.hold().await;
        }
        let fault = lock(&self.faults).get(addr).copied();
        if fault == Some(Fault::Unreachable) {
            return Err(FsError::Unavailable(format!(
                "{op} to data server {addr}: unreachable (test network)"
            )));
        }
        let node = lock(&self.nodes)
            .get(addr)
            .and_then(Weak::upgrade)
            .ok_or_else(|| {
                FsError::Unavailable(format!("{op} to data server {addr}: no node there"))
            })?;
        lock(&self.delivered).push((addr.to_string(), op));
        let held = lock(&self.held_replies)
            .get(&(addr.to_string(), op))
            .cloned();
        Ok((
            node,
            Reply {
                addr: addr.to_string(),
                op,
                fault,
                held,
            },
        ))
    }

    /// Delivers a mutation and runs it to completion whatever the caller does.
    async fn mutate<T, Fut>(
        &self,
        addr: &str,
        op: &'static str,
        f: impl FnOnce(Arc<Node>) -> Fut,
    ) -> FsResult<T>
    where
        T: Send + 'static,
        Fut: Future<Output = FsResult<T>> + Send + 'static,
    {
        let (node, reply) = self.arrive(addr, op).await?;
        let r = tokio::spawn(f(node))
            .await
            .map_err(|e| FsError::Io(format!("{op} task at {addr} failed: {e}")));
        reply.send(r.and_then(|r| r)).await
    }
}

/// The way back of one delivered call.
struct Reply {
    addr: String,
    op: &'static str,
    fault: Option<Fault>,
    held: Option<Arc<Pause>>,
}

impl Reply {
    async fn send<T>(self, r: FsResult<T>) -> FsResult<T> {
        if let Some(p) = self.held {
            p.hold().await;
        }
        match self.fault {
            Some(Fault::ReplyLost) => Err(FsError::Timeout(format!(
                "{} to data server {}: reply lost (test network)",
                self.op, self.addr
            ))),
            _ => r,
        }
    }
}

impl ChainTransport for Net {
    fn write<'a>(&'a self, addr: &'a str, w: &'a WriteArgs) -> BoxFuture<'a, FsResult<u64>> {
        let w = w.clone();
        Box::pin(self.mutate(addr, "write", |n| async move { n.write(w).await }))
    }

    fn read<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        off: u64,
        len: u32,
        local_only: bool,
    ) -> BoxFuture<'a, FsResult<(Bytes, u64)>> {
        Box::pin(async move {
            let (n, reply) = self.arrive(addr, "read").await?;
            let r = n.read(c.id, c.version, key, off, len, local_only).await;
            let out = reply.send(r).await?;
            if out.data.len() > len as usize {
                return Err(FsError::Io(format!(
                    "{addr} returned {} bytes for a {len}-byte read",
                    out.data.len()
                )));
            }
            verify_pieces(off, &out.data, &out.crcs)?;
            Ok((out.data, out.size))
        })
    }

    fn sync<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        keys: &'a [ObjectKey],
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        let (id, v, keys) = (c.id, c.version, keys.to_vec());
        Box::pin(self.mutate(addr, "sync", move |n| async move {
            n.sync(id, v, &keys, hop).await
        }))
    }

    fn truncate<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        size: u64,
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        let (id, v) = (c.id, c.version);
        Box::pin(self.mutate(addr, "truncate", move |n| async move {
            n.truncate(id, v, key, size, hop).await
        }))
    }

    fn punch<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        off: u64,
        len: u64,
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        let (id, v) = (c.id, c.version);
        Box::pin(self.mutate(addr, "punch", move |n| async move {
            n.punch(id, v, key, off, len, hop).await
        }))
    }

    fn list<'a>(
        &'a self,
        addr: &'a str,
        chain: ChainId,
        version: ChainVersion,
    ) -> BoxFuture<'a, FsResult<Vec<Listed>>> {
        Box::pin(async move {
            let (n, reply) = self.arrive(addr, "list").await?;
            let r = n.list_objects(chain, version).await;
            reply.send(r).await
        })
    }
}

/// Nodes `s1..=sN` (server ids 1..=N, addresses "s1".. "sN") over memory stores, joined
/// by one `Net`, all holding the same table. No meta: a node asked for a version newer
/// than its own answers `Unavailable`, as a server whose refresh found nothing newer.
pub struct Cluster {
    pub net: Arc<Net>,
    pub nodes: Vec<Arc<Node>>,
    /// `stores[i]` is `nodes[i].store`, kept concrete for `corrupt`.
    pub stores: Vec<Arc<MemStore>>,
}

impl Cluster {
    /// `n` nodes, every one holding `chains`.
    pub fn new(n: u32, chains: &[Chain]) -> Cluster {
        let net = Net::new();
        let mut table = ChainTable {
            replicas: 3,
            ..ChainTable::default()
        };
        for i in 1..=n {
            table.servers.insert(
                ServerId(i.into()),
                ServerEntry {
                    address: addr(i),
                    alive: true,
                    capacity_bytes: 1 << 30,
                    free_bytes: 1 << 30,
                    last_heartbeat_ms: 0,
                },
            );
        }
        for c in chains {
            table.chains.insert(c.id, c.clone());
        }
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        for i in 1..=n {
            let store = Arc::new(MemStore::new());
            let node = Arc::new(
                Node::new(
                    store.clone(),
                    ClusterId(1),
                    ServerId(i.into()),
                    addr(i),
                    table.clone(),
                    None,
                    Registry::new(),
                    NodeConfig::default(),
                )
                .with_transport(net.clone()),
            );
            net.register(&node);
            nodes.push(node);
            stores.push(store);
        }
        Cluster { net, nodes, stores }
    }

    /// Node with server id `id`.
    pub fn node(&self, id: u32) -> &Arc<Node> {
        &self.nodes[id as usize - 1]
    }

    pub fn store(&self, id: u32) -> &Arc<MemStore> {
        &self.stores[id as usize - 1]
    }

    /// Installs `c` on the nodes `on` only (a table change reaches servers one by one).
    pub fn set_chain(&self, c: &Chain, on: &[u32]) {
        for id in on {
            let n = self.node(*id);
            let mut t = n.table();
            t.chains.insert(c.id, c.clone());
            n.set_table(t);
        }
    }

    /// Installs `c` on every node.
    pub fn set_chain_everywhere(&self, c: &Chain) {
        let all: Vec<u32> = (1..=self.nodes.len() as u32).collect();
        self.set_chain(c, &all);
    }
}

/// Address of server `i` on the test network.
pub fn addr(i: u32) -> String {
    format!("s{i}")
}

/// Chain `id` at `version` with serving members `members` and syncing ones `syncing`.
pub fn chain(id: u32, version: u64, members: &[u32], syncing: &[u32]) -> Chain {
    let ids = |v: &[u32]| v.iter().map(|s| ServerId((*s).into())).collect();
    Chain {
        id: ChainId(id),
        version: ChainVersion(version),
        members: ids(members),
        syncing: ids(syncing),
    }
}

/// A client's write of `data` at `off` through the head of `c`.
pub fn write_args(c: &Chain, key: ObjectKey, off: u64, data: &[u8]) -> WriteArgs {
    WriteArgs {
        chain: c.id,
        version: c.version,
        key,
        off,
        crcs: cirrus_types::checksum::piece_crcs(off, data),
        data: Bytes::copy_from_slice(data),
        sync: false,
        hop: 0,
    }
}

/// The whole of object `key` as `store` holds it (read under its crcs), and its size;
/// empty and 0 when the store has no such object.
pub async fn contents(store: &MemStore, key: ObjectKey) -> (Vec<u8>, u64) {
    let info = store.list().into_iter().find(|o| o.key == key);
    let Some(info) = info else {
        return (Vec::new(), 0);
    };
    let r = store
        .read(key, 0, info.size as usize)
        .await
        .expect("a member's copy reads back under its crcs");
    (r.data.to_vec(), r.size)
}
