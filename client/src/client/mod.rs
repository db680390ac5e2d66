//! `Client`: the filesystem as a library. Namespace calls go to meta through `MetaApi`
//! (`MetaClient`); file data goes straight to the data servers through `DataApi`
//! (`DataPath`), striped by the file's layout. Owns the open-file table and, per open inode, the write-back buffer, the size
//! as this mount knows it, and which objects were written since the last sync.
//!
//! Consistency is close-to-open: `open` revalidates attributes at meta; `flush` (close)
//! writes the buffer to the chains and commits size and mtime to meta; `fsync` also makes
//! every touched object durable on every chain member first. Within one mount all handles
//! of an inode share one buffer, so a read through any handle sees every write.
//!
//! Streaming: once `flush_behind` dirty bytes wait, a task sends them behind the writer
//! while it goes on filling the buffer (a writer waits only when `max_dirty` bytes are
//! buffered or being sent); a sequential reader gets the next blocks fetched ahead of it
//! (`read_ahead`), so a single-threaded `cp` keeps several RPCs in flight on every chain.
//! Read-ahead blocks are dropped by any local write over them, by a truncate and at every
//! open, and are only fetched for ranges with no local dirty bytes, so they never hide a
//! write of this mount and never outlive close-to-open.
//!
//! Layout: this file holds `Client` itself, its config, `connect` and the small helpers
//! every part uses; each concern is one `impl Client` in its own module:
//! - `attrs`: the attribute cache of open inodes and the size stamp rule (`overlay_attr`,
//!   `changed`, `revalidate`);
//! - `namespace`: unlink, rename, link, readdir, xattrs and what they do to that cache;
//! - `open_files`: the open-file table (`InodeState`, `OpenInode`, handles), open, create;
//! - `write`: write-back, flush behind the writer, flush, commit, fsync;
//! - `read`: reads, read-ahead;
//! - `release`: close, the release queue, unmount's release of everything;
//! - `locks`: file locks at meta; `setattr`: setattr and truncate; `copy`:
//!   copy_file_range; `fallocate`: allocate, zero range, punch hole.

mod attrs;
mod copy;
mod fallocate;
mod locks;
mod namespace;
mod open_files;
mod read;
mod release;
mod setattr;
#[cfg(test)]
mod tests;
mod write;

pub use attrs::OPEN_ATTR_TTL;
pub use copy::COPY_PER_CALL;
pub use fallocate::Fallocate;
pub use write::Buffered;

use crate::api::{DataApi, MetaApi};
use crate::data::{DataPath, DataPolicy};
use crate::locks::HeldLocks;
use crate::meta::MetaClient;
use cirrus_proto::{CallPolicy, MetaConn};
use cirrus_types::sync::lock;
use cirrus_types::{ClientId, FsError, FsResult, HandleId, InodeId};
use open_files::{Dirty, Handle, OpenInode};
use release::ReleaseQueue;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Client tuning. Every field has a default that suits a VM with a few cores.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest any one filesystem call may take, retries through failover included.
    pub deadline: Duration,
    /// One meta attempt against one node.
    pub meta_per_try: Duration,
    /// One data attempt against one server.
    pub data_per_try: Duration,
    /// Dirty bytes per open inode (buffered plus being sent) before a write waits.
    pub max_dirty: usize,
    /// Dirty bytes across all of this client's inodes before a write waits: the
    /// client's write-back memory, however many files it writes at once.
    pub max_dirty_total: usize,
    /// Dirty bytes per open inode that start a flush behind the writer.
    pub flush_behind: usize,
    /// Bytes fetched ahead of a sequential reader, per open inode (0: no read-ahead).
    pub read_ahead: u64,
    /// Bytes fetched ahead across all of this client's inodes: past it, readers get no
    /// new blocks fetched ahead (their reads are served per request) until some are
    /// consumed or dropped.
    pub read_ahead_total: u64,
    /// Largest single data write RPC.
    pub max_chunk: usize,
    /// Data RPCs in flight per flush or read.
    pub max_inflight: usize,
    /// How often open handles' lease is renewed at meta.
    pub lease_interval: Duration,
    /// How long `close` lets meta releases gather before one call sends them all in one
    /// raft entry (a file is released at meta at most about this long after its close).
    pub release_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            deadline: Duration::from_secs(30),
            meta_per_try: Duration::from_secs(5),
            data_per_try: Duration::from_secs(10),
            max_dirty: 32 << 20,
            max_dirty_total: 256 << 20,
            flush_behind: 4 << 20,
            read_ahead: 8 << 20,
            read_ahead_total: 256 << 20,
            max_chunk: 4 << 20,
            max_inflight: 16,
            lease_interval: Duration::from_secs(5),
            release_delay: Duration::from_millis(20),
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub struct Client {
    /// Runs flushes behind writers and read-ahead fetches (also from FUSE threads).
    rt: tokio::runtime::Handle,
    meta: Arc<dyn MetaApi>,
    data: Arc<dyn DataApi>,
    /// The concrete clients behind `meta` and `data` (the same objects), for callers that
    /// need more than `Client` asks (the FUSE adapter's mkdir or statfs, tests reading
    /// the chain table); `None` for a client built by `with_apis`.
    servers: Option<(MetaClient, Arc<DataPath>)>,
    cfg: ClientConfig,
    client_id: ClientId,
    inodes: Mutex<HashMap<InodeId, Arc<OpenInode>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Dirty bytes across all inodes, against `max_dirty_total`.
    dirty: Arc<Dirty>,
    next_fh: AtomicU64,
    /// Advanced by every local change of an open inode's size (`changed`): a meta reply
    /// may replace an inode's local size only if that inode did not change while the
    /// call was in flight (its `size_at` is not past the `gen()` taken before the call):
    /// a getattr answered before a local write and commit would otherwise shrink the size
    /// this mount reads up to.
    local_gen: AtomicU64,
    /// Bumped after every namespace call of this mount that can change an inode's
    /// attributes without returning them (unlink, rename, rmdir, xattrs): cached
    /// attributes of open inodes fetched before it are not served any more.
    ns_gen: AtomicU64,
    /// Meta handles of closed files not yet released at meta (see `close`).
    releases: Mutex<ReleaseQueue>,
    /// Cuts the sender's `release_delay` short (unmount).
    release_now: tokio::sync::Notify,
    /// Signalled when the release sender stops with the queue empty.
    releases_idle: tokio::sync::Notify,
    /// Lock owners to unlock at close.
    locks: HeldLocks,
}

impl Client {
    /// Connects to the meta group at `addrs` (`H1:7001,H2:7001,...`): learns the cluster
    /// id and the chain table. Fails within `cfg.deadline` if the group does not answer.
    pub async fn connect(addrs: &str, cfg: ClientConfig) -> FsResult<Arc<Client>> {
        let list = cirrus_proto::leader::parse_addrs(addrs)?;
        let conn = Arc::new(MetaConn::new(
            list,
            CallPolicy {
                per_try: cfg.meta_per_try,
                total: cfg.deadline,
            },
        )?);
        conn.connect().await?;
        let meta = MetaClient::new(conn);
        let data = DataPath::new(
            meta.clone(),
            DataPolicy {
                per_try: cfg.data_per_try,
                ..DataPolicy::default()
            },
        );
        data.refresh(0).await?;
        let data = Arc::new(data);
        Ok(Client::build(
            Arc::new(meta.clone()),
            data.clone(),
            Some((meta, data)),
            cfg,
        ))
    }

    /// A client over other implementations of meta and the data servers (the in-memory
    /// ones of the unit tests). `meta()` and `data()` panic on it. Call within a tokio
    /// runtime, which runs its flushes behind writers and read-ahead fetches.
    pub fn with_apis(
        meta: Arc<dyn MetaApi>,
        data: Arc<dyn DataApi>,
        cfg: ClientConfig,
    ) -> Arc<Client> {
        Client::build(meta, data, None, cfg)
    }

    fn build(
        meta: Arc<dyn MetaApi>,
        data: Arc<dyn DataApi>,
        servers: Option<(MetaClient, Arc<DataPath>)>,
        cfg: ClientConfig,
    ) -> Arc<Client> {
        let client_id = ClientId(rand::random::<u64>() | 1);
        Arc::new(Client {
            rt: tokio::runtime::Handle::current(),
            meta,
            data,
            servers,
            cfg,
            client_id,
            inodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirty: Arc::new(Dirty::default()),
            next_fh: AtomicU64::new(1),
            local_gen: AtomicU64::new(0),
            ns_gen: AtomicU64::new(0),
            releases: Mutex::new(ReleaseQueue::default()),
            release_now: tokio::sync::Notify::new(),
            releases_idle: tokio::sync::Notify::new(),
            locks: HeldLocks::default(),
        })
    }

    /// The meta client of a connected client. Panics on one built by `with_apis`.
    pub fn meta(&self) -> &MetaClient {
        &self.servers().0
    }

    /// The data path of a connected client. Panics on one built by `with_apis`.
    pub fn data(&self) -> &DataPath {
        &self.servers().1
    }

    fn servers(&self) -> &(MetaClient, Arc<DataPath>) {
        self.servers
            .as_ref()
            .expect("meta() and data() of a client built by Client::with_apis")
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Keeps this client's handles alive at meta until the returned task is aborted.
    pub fn spawn_lease_renewal(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = self.cfg.lease_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(c) = weak.upgrade() else { return };
                if lock(&c.handles).is_empty() {
                    continue;
                }
                if let Err(e) = c.meta.renew_lease(c.client_id).await {
                    tracing::warn!(err = %e, "renew lease of open handles");
                }
            }
        })
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.deadline
    }

    fn handle(&self, fh: u64) -> FsResult<(Arc<OpenInode>, HandleId)> {
        lock(&self.handles)
            .get(&fh)
            .map(|h| (h.inode.clone(), h.meta))
            .ok_or(FsError::StaleHandle)
    }
}
