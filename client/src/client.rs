//! `Client`: the filesystem as a library. Namespace calls go to meta through `MetaClient`;
//! file data goes straight to the data servers through `DataPath`, striped by the file's
//! layout. Owns the open-file table and, per open inode, the write-back buffer, the size
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

use crate::buffer::{clamp_read, place, plan_flush, WriteBuffer, SEG_BLOCK};
use crate::data::{DataPath, DataPolicy};
use crate::locks::HeldLocks;
use crate::meta::{Attr, MetaClient, NewMode, Opened, SetAttr};
use bytes::Bytes;
use cirrus_proto::{CallPolicy, MetaConn};
use cirrus_types::{
    ClientId, FileKind, FsError, FsResult, HandleId, HeldLock, InodeId, Layout, LockCall, LockKind,
    LockOwner, ObjectKey,
};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

#[derive(Default)]
struct InodeState {
    /// Writes not yet sent to the data servers.
    buf: WriteBuffer,
    /// Writes being sent by the flush in progress; reads lay them under `buf`.
    inflight: WriteBuffer,
    /// File size as this mount knows it (meta's size plus local writes and truncates).
    size: u64,
    /// mtime of the last local write, ns.
    mtime_ns: i64,
    /// Objects written since the last sync.
    touched: BTreeSet<u32>,
    /// Bumped per write; a commit clears `uncommitted` only if no write came in meanwhile.
    write_gen: u64,
    /// `Client::local_gen` when `size` or `uncommitted` of this inode last changed here (a
    /// write, a commit, a truncate, a copy, an open, an attribute reply taken as the
    /// size): meta's attributes from a call that started at an older generation may
    /// predate the change. Per inode, so the other files of a busy mount do not make
    /// every reply about this one look stale.
    size_at: u64,
    uncommitted: bool,
    opens: usize,
    /// Meta's attributes of the inode from the last reply that carried them (open,
    /// create, setattr, link, commit), when, and `ns_gen` at the time the call started.
    /// While the inode is open here, a getattr is answered from them (size and mtime
    /// laid over): this mount is the writer, and close-to-open only promises another
    /// mount's changes at the next open.
    attr: Option<CachedAttr>,
    /// A flush behind the writer is running (at most one per inode).
    behind: bool,
    /// The last flush behind failed: none starts again until a foreground flush (a
    /// writer short of room, close, fsync) has succeeded, so a dead chain costs one
    /// deadline per foreground call instead of one per write.
    behind_failed: bool,
    /// Blocks fetched ahead of a sequential reader (under the same lock as `buf`, so a
    /// write and the decision to fetch a block are ordered).
    ra: ReadAhead,
    /// This inode's share of the client-wide dirty count (`buf` plus `inflight` when
    /// last counted; see `OpenInode::recount`).
    counted: usize,
    /// This inode's share of the client-wide count of read-ahead blocks held.
    ra_counted: usize,
}

/// One read-ahead block's fetch, shared by every read that needs it.
type Fetch = Shared<BoxFuture<'static, FsResult<Bytes>>>;

#[derive(Default)]
struct ReadAhead {
    /// End of the last read; a read starting within a block of it continues the run.
    next: u64,
    /// Bytes to keep fetched ahead of the reader: doubles per sequential read up to
    /// `read_ahead`, back to 0 on a jump.
    window: u64,
    /// Block start (a multiple of `SEG_BLOCK`) -> its fetch of the whole block (or up to
    /// the size known when it started).
    blocks: BTreeMap<u64, Fetch>,
}

impl ReadAhead {
    /// Forgets blocks overlapping `[off, end)` (a local write there).
    fn drop_range(&mut self, off: u64, end: u64) {
        let first = off / SEG_BLOCK * SEG_BLOCK;
        let keys: Vec<u64> = self.blocks.range(first..end).map(|(&b, _)| b).collect();
        for b in keys {
            self.blocks.remove(&b);
        }
    }

    fn clear(&mut self) {
        self.blocks.clear();
        self.window = 0;
    }
}

#[derive(Clone, Debug)]
struct CachedAttr {
    attr: Attr,
    at: Instant,
    ns_gen: u64,
}

/// The most bytes one copy_file_range call moves (a short count; callers loop), so one
/// call stays well inside the mount's deadline.
pub const COPY_PER_CALL: u64 = 64 << 20;

/// Bytes one copy_file_range call moves: at most `COPY_PER_CALL`, and none past the
/// source's size as this mount knows it.
fn copy_len(src: &OpenInode, off_in: u64, len: u64) -> u64 {
    len.min(COPY_PER_CALL)
        .min(lock(&src.state).size.saturating_sub(off_in))
}

/// How long attributes of an open inode are served from this mount before meta is asked
/// again (bounds how late a chmod or chown from another mount is seen by a stat here).
pub const OPEN_ATTR_TTL: Duration = Duration::from_secs(1);

/// An inode with at least one open handle in this mount.
/// What a fallocate call asks (the FUSE door maps the mode bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallocate {
    /// Mode 0, or `FALLOC_FL_KEEP_SIZE`.
    Allocate { keep_size: bool },
    /// `FALLOC_FL_ZERO_RANGE`, with or without `KEEP_SIZE`.
    Zero { keep_size: bool },
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`.
    PunchHole,
}

struct OpenInode {
    ino: InodeId,
    layout: Layout,
    state: Mutex<InodeState>,
    /// Serialises flushes, commits, truncates and syncs of this inode.
    io_lock: tokio::sync::Mutex<()>,
    /// Signalled after every flush behind the writer (room may have been freed).
    flushed: tokio::sync::Notify,
    /// The client's dirty bytes across all inodes (`Client::dirty`).
    dirty: Arc<Dirty>,
}

/// The client-wide write-back count (every open inode's `buf` plus `inflight`) and
/// read-ahead count (blocks held in every open inode's `ra`).
#[derive(Default)]
struct Dirty {
    bytes: AtomicUsize,
    ra_blocks: AtomicUsize,
    /// Signalled after every flush of any inode (room may have been freed).
    drained: tokio::sync::Notify,
}

impl OpenInode {
    /// Brings this inode's shares of the client-wide counts up to date. Called with the
    /// state lock held after every change of `buf`, `inflight` or `ra.blocks`.
    fn recount(&self, st: &mut InodeState) {
        fn adjust(total: &AtomicUsize, was: &mut usize, now: usize) {
            if now >= *was {
                total.fetch_add(now - *was, Ordering::Relaxed);
            } else {
                total.fetch_sub(*was - now, Ordering::Relaxed);
            }
            *was = now;
        }
        adjust(
            &self.dirty.bytes,
            &mut st.counted,
            st.buf.len() + st.inflight.len(),
        );
        adjust(
            &self.dirty.ra_blocks,
            &mut st.ra_counted,
            st.ra.blocks.len(),
        );
    }
}

impl Drop for OpenInode {
    /// An inode forgotten by the client takes its share of the dirty count with it.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.dirty.bytes.fetch_sub(st.counted, Ordering::Relaxed);
        self.dirty
            .ra_blocks
            .fetch_sub(st.ra_counted, Ordering::Relaxed);
    }
}

/// One piece of a read, inside one block.
struct ReadPiece {
    off: u64,
    len: u64,
    block_start: u64,
    /// The read-ahead fetch of its block, when one is held.
    block: Option<Fetch>,
}

/// What `try_write` did with a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Buffered {
    /// Buffered: the write is done (this many bytes).
    Done(usize),
    /// No room: nothing was buffered; `write` waits for room.
    Full,
}

struct Handle {
    inode: Arc<OpenInode>,
    meta: HandleId,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    meta: MetaClient,
    data: DataPath,
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

/// Handles waiting to be released at meta in one batch.
#[derive(Default)]
struct ReleaseQueue {
    handles: Vec<HandleId>,
    /// A task owns sending: it sends batches until the queue is empty, then clears this.
    sender: bool,
}

/// Pause before a failed release batch is sent again.
const RELEASE_RETRY: Duration = Duration::from_secs(1);

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
        let client_id = ClientId(rand::random::<u64>() | 1);
        Ok(Arc::new(Client {
            rt: tokio::runtime::Handle::current(),
            meta,
            data,
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
        }))
    }

    pub fn meta(&self) -> &MetaClient {
        &self.meta
    }

    pub fn data(&self) -> &DataPath {
        &self.data
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

    /// A snapshot of `local_gen`, taken before a meta call whose attributes
    /// `overlay_attr` will see.
    fn gen(&self) -> u64 {
        self.local_gen.load(Ordering::SeqCst)
    }

    /// Records a local change of `st`'s size or commit state (see `InodeState::size_at`).
    fn changed(&self, st: &mut InodeState) {
        st.size_at = self.local_gen.fetch_add(1, Ordering::SeqCst) + 1;
    }

    /// Attributes with this mount's unflushed size and mtime laid over. Every attribute
    /// that reaches the kernel goes through here: the kernel takes the size of any reply
    /// (lookup, link, readdirplus, getattr) as the file's size, and a read past it
    /// returns 0 bytes without asking this process. `seen` is `gen()` from before the
    /// meta call that produced `attr`.
    fn overlay_attr(&self, mut attr: Attr, seen: u64) -> Attr {
        if let Some(inode) = lock(&self.inodes).get(&attr.ino) {
            let mut st = lock(&inode.state);
            if st.uncommitted || !st.buf.is_empty() || !st.inflight.is_empty() {
                attr.size = st.size;
                attr.mtime_ns = st.mtime_ns.max(attr.mtime_ns);
            } else if st.size_at <= seen {
                // Meta is authoritative when nothing local is pending and this inode did
                // not change here while the call was in flight.
                if st.size != attr.size {
                    st.size = attr.size;
                    self.changed(&mut st);
                }
            } else {
                attr.size = st.size;
                attr.mtime_ns = st.mtime_ns.max(attr.mtime_ns);
            }
        }
        attr
    }

    pub async fn lookup(&self, parent: InodeId, name: &[u8]) -> FsResult<Attr> {
        let seen = self.gen();
        let a = self.meta.lookup(parent, name).await?;
        Ok(self.overlay_attr(a, seen))
    }

    pub async fn getattr(&self, ino: InodeId) -> FsResult<Attr> {
        if let Some(a) = self.open_attr(ino) {
            return Ok(a);
        }
        // A directory this mount changed within the last second: the attributes meta
        // returned with that change (see `meta::DIR_ATTR_TTL`).
        if let Some(a) = self.meta.cached_dir(ino) {
            return Ok(a);
        }
        let (seen, ns) = (self.gen(), self.ns());
        let a = self.meta.getattr(ino).await?;
        self.remember_attr(&a, ns);
        Ok(self.overlay_attr(a, seen))
    }

    fn ns(&self) -> u64 {
        self.ns_gen.load(Ordering::SeqCst)
    }

    /// Marks every cached attribute of an open inode as possibly stale (after a namespace
    /// call that changed some inode's link count or ctime without telling which).
    fn ns_changed(&self) {
        self.ns_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// Attributes of an inode open in this mount, from its cached meta attributes with
    /// the local size and mtime laid over; `None` when not open here or not fresh.
    fn open_attr(&self, ino: InodeId) -> Option<Attr> {
        let inode = lock(&self.inodes).get(&ino).cloned()?;
        let st = lock(&inode.state);
        let c = st.attr.as_ref()?;
        if c.ns_gen != self.ns() || c.at.elapsed() >= OPEN_ATTR_TTL {
            return None;
        }
        let mut a = c.attr.clone();
        a.size = st.size;
        if st.uncommitted || !st.buf.is_empty() || !st.inflight.is_empty() {
            a.mtime_ns = st.mtime_ns.max(a.mtime_ns);
        }
        Some(a)
    }

    /// Keeps `a` as the cached attributes of its inode if the inode is open here. `ns` is
    /// `ns()` from before the call that returned `a`.
    fn remember_attr(&self, a: &Attr, ns: u64) {
        if let Some(inode) = lock(&self.inodes).get(&a.ino) {
            lock(&inode.state).attr = Some(CachedAttr {
                attr: a.clone(),
                at: Instant::now(),
                ns_gen: ns,
            });
        }
    }

    pub async fn unlink(&self, parent: InodeId, name: &[u8]) -> FsResult<()> {
        let r = self.meta.unlink(parent, name).await;
        self.ns_changed();
        r
    }

    pub async fn rmdir(&self, parent: InodeId, name: &[u8]) -> FsResult<()> {
        let r = self.meta.rmdir(parent, name).await;
        self.ns_changed();
        r
    }

    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let r = self
            .meta
            .rename(parent, name, new_parent, new_name, flags)
            .await;
        self.ns_changed();
        r
    }

    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let r = self.meta.setxattr(ino, name, value, flags).await;
        self.ns_changed();
        r
    }

    pub async fn removexattr(&self, ino: InodeId, name: &[u8]) -> FsResult<()> {
        let r = self.meta.removexattr(ino, name).await;
        self.ns_changed();
        r
    }

    /// A hard link; the reply carries the inode's attributes, so an open file's local
    /// size is laid over them (the kernel would take meta's older size).
    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> FsResult<Attr> {
        let seen = self.gen();
        let r = self.meta.link(ino, new_parent, new_name).await;
        self.ns_changed();
        let a = r?;
        self.remember_attr(&a, self.ns());
        Ok(self.overlay_attr(a, seen))
    }

    /// Directory entries after `cookie`; with `plus`, each entry's attributes have this
    /// mount's local size laid over (readdirplus updates the kernel's inodes).
    pub async fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> FsResult<(Vec<crate::meta::DirEntry>, bool)> {
        let seen = self.gen();
        let (mut entries, eof) = self.meta.readdir(ino, cookie, limit, plus).await?;
        for e in &mut entries {
            if let Some(a) = e.attr.take() {
                e.attr = Some(self.overlay_attr(a, seen));
            }
        }
        Ok((entries, eof))
    }

    fn register(&self, opened: Opened, ns: u64) -> (u64, Attr) {
        let ino = opened.attr.ino;
        let inode = {
            let mut inodes = lock(&self.inodes);
            let inode = inodes
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenInode {
                        ino,
                        layout: opened.layout.clone(),
                        state: Mutex::new(InodeState::default()),
                        io_lock: tokio::sync::Mutex::new(()),
                        flushed: tokio::sync::Notify::new(),
                        dirty: self.dirty.clone(),
                    })
                })
                .clone();
            let mut st = lock(&inode.state);
            if !(st.uncommitted || !st.buf.is_empty() || !st.inflight.is_empty()) {
                // Close-to-open: a fresh open takes meta's size. Bytes this mount still
                // holds (a close whose flush failed keeps them for a retry) stay visible,
                // as a local page cache keeps them: taking meta's older size here made
                // them unreadable and the next close committed the short size.
                st.size = opened.attr.size;
                st.mtime_ns = opened.attr.mtime_ns;
            }
            st.opens += 1;
            // Close-to-open: bytes fetched ahead before this open may predate another
            // mount's close.
            st.ra.clear();
            inode.recount(&mut st);
            st.attr = Some(CachedAttr {
                attr: opened.attr.clone(),
                at: Instant::now(),
                ns_gen: ns,
            });
            self.changed(&mut st);
            drop(st);
            inode
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Handle {
                inode,
                meta: opened.handle,
            },
        );
        let attr = self.overlay_attr(opened.attr, self.gen());
        (fh, attr)
    }

    /// Opens a regular file; returns the local handle and fresh attributes.
    pub async fn open(&self, ino: InodeId) -> FsResult<(u64, Attr)> {
        let ns = self.ns();
        // An inode gone at meta is a stale entry of the kernel's (another mount removed
        // the name): ESTALE, on which the kernel walks the path again with a fresh
        // lookup, so an open (O_CREAT included) acts on what the name is now.
        let opened = match self.meta.open(ino, self.client_id, false).await {
            Err(FsError::NotFound) => return Err(FsError::StaleHandle),
            r => r?,
        };
        if opened.attr.kind != FileKind::File {
            let _ = self.meta.release(opened.handle).await;
            return Err(FsError::IsDir);
        }
        // No name reaches the inode any more: another mount unlinked it, and meta keeps it
        // only for a handle not yet released (the kernel sends RELEASE after close(2)
        // returns, so it can trail that mount's unlink). An open through a stale entry
        // here is ESTALE, as if the inode were gone (the kernel looks the name up again);
        // one on an inode this mount still holds open (a reopen through /proc/self/fd)
        // goes on, as on a local disk.
        if opened.attr.nlink == 0 && !lock(&self.inodes).contains_key(&ino) {
            let _ = self.meta.release(opened.handle).await;
            return Err(FsError::StaleHandle);
        }
        Ok(self.register(opened, ns))
    }

    /// Creates (or with `exclusive == false` opens an existing) regular file and opens it.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: impl Into<NewMode>,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> FsResult<(u64, Attr)> {
        let ns = self.ns();
        let opened = self
            .meta
            .create(
                parent,
                name,
                mode.into().perms(),
                uid,
                gid,
                exclusive,
                Some(self.client_id),
            )
            .await?;
        Ok(self.register(opened, ns))
    }

    /// Creates a regular file without opening it (mknod).
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: impl Into<NewMode>,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let o = self
            .meta
            .create(parent, name, mode.into().perms(), uid, gid, true, None)
            .await?;
        Ok(o.attr)
    }

    /// Buffers a write without waiting when there is room (buffered plus being sent
    /// below `max_dirty`, or nothing held at all), and starts a flush behind the writer
    /// once `flush_behind` bytes wait. Callable from a thread outside the runtime: the
    /// FUSE threads answer most writes this way, without a task.
    pub fn try_write(self: &Arc<Self>, fh: u64, off: u64, data: &[u8]) -> FsResult<Buffered> {
        let (inode, _) = self.handle(fh)?;
        // The client's door: past the largest file is EFBIG here, before anything is
        // buffered or sent (the data servers and meta refuse it again).
        let end = cirrus_types::limits::check_file_range(off, data.len() as u64)?;
        let start_behind = {
            let mut st = lock(&inode.state);
            let held = st.buf.len() + st.inflight.len();
            if held > 0 && held + data.len() > self.cfg.max_dirty {
                return Ok(Buffered::Full);
            }
            // The client-wide budget. Checked, not reserved: writers of other inodes
            // checking at the same moment may each add one write past it.
            let all = self.dirty.bytes.load(Ordering::Relaxed);
            if all > 0 && all + data.len() > self.cfg.max_dirty_total {
                return Ok(Buffered::Full);
            }
            st.buf.insert(off, data);
            st.ra.drop_range(off, end);
            inode.recount(&mut st);
            st.size = st.size.max(end);
            st.mtime_ns = now_ns();
            st.write_gen += 1;
            st.uncommitted = true;
            self.changed(&mut st);
            let go = !st.behind && !st.behind_failed && st.buf.len() >= self.cfg.flush_behind;
            if go {
                st.behind = true;
            }
            go
        };
        if start_behind {
            let (c, i) = (self.clone(), inode.clone());
            self.rt.spawn(async move { c.flush_behind(i).await });
        }
        Ok(Buffered::Done(data.len()))
    }

    /// write(2): buffers the bytes, waiting for room while `max_dirty` bytes of this
    /// inode or `max_dirty_total` of the client are held. A writer short of room with
    /// no flush behind it flushes its own inode in the foreground, so a failing chain
    /// surfaces here as that flush's error; one that holds nothing while other files
    /// fill the client's budget flushes the fullest of them.
    pub async fn write(self: &Arc<Self>, fh: u64, off: u64, data: &[u8]) -> FsResult<usize> {
        let deadline = self.deadline();
        let timeout = || {
            FsError::Timeout("write: no room in the write-back buffer before the deadline".into())
        };
        loop {
            let (inode, _) = self.handle(fh)?;
            // Registered before the check, so a flush finishing in between still wakes it.
            let notified = inode.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let drained = self.dirty.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if let Buffered::Done(n) = self.try_write(fh, off, data)? {
                return Ok(n);
            }
            let (behind, held) = {
                let st = lock(&inode.state);
                (st.behind, st.buf.len() + st.inflight.len())
            };
            if behind {
                if tokio::time::timeout_at(deadline.into(), notified)
                    .await
                    .is_err()
                {
                    return Err(timeout());
                }
            } else if held > 0 {
                self.flush_inode(&inode, deadline).await?;
            } else {
                // Other inodes hold the client's budget. Their bytes are not this
                // writer's to fail on: a flush that fails leaves them buffered and the
                // writer waits for any flush until its deadline.
                let flushed = match self.fullest() {
                    Some(other) => self.flush_inode(&other, deadline).await.map_err(|e| {
                        tracing::warn!(ino = %other.ino, err = %e, "flush for room in the client's write-back budget failed");
                    }),
                    None => Err(()),
                };
                if flushed.is_err()
                    && tokio::time::timeout_at(deadline.into(), drained)
                        .await
                        .is_err()
                {
                    return Err(timeout());
                }
            }
        }
    }

    /// The open inode holding the most buffered bytes not yet being sent, if any holds
    /// some.
    fn fullest(&self) -> Option<Arc<OpenInode>> {
        let inodes = lock(&self.inodes);
        inodes
            .values()
            .map(|i| (lock(&i.state).buf.len(), i))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)
            .map(|(_, i)| i.clone())
    }

    /// Dirty bytes this client holds across all its files (buffered or being sent).
    pub fn dirty_bytes(&self) -> usize {
        self.dirty.bytes.load(Ordering::Relaxed)
    }

    /// Bytes of read-ahead blocks this client holds across all its files (fetched or
    /// being fetched).
    pub fn read_ahead_bytes(&self) -> u64 {
        self.dirty.ra_blocks.load(Ordering::Relaxed) as u64 * SEG_BLOCK
    }

    /// Sends settled dirty bytes (all but a block still being filled) batch after batch
    /// while at least `flush_behind` bytes wait, then ends.
    async fn flush_behind(self: Arc<Self>, inode: Arc<OpenInode>) {
        loop {
            let io = inode.io_lock.lock().await;
            let r = self.flush_batch(&inode, self.deadline(), true).await;
            drop(io);
            let again = {
                let mut st = lock(&inode.state);
                if r.is_err() {
                    st.behind_failed = true;
                }
                let again = r.is_ok() && st.buf.len() >= self.cfg.flush_behind;
                if !again {
                    st.behind = false;
                }
                again
            };
            inode.flushed.notify_waiters();
            if let Err(e) = r {
                tracing::warn!(ino = %inode.ino, err = %e, "flush behind the writer failed; the bytes stay buffered for the next flush");
            }
            if !again {
                return;
            }
        }
    }

    /// Sends the inode's buffer to the chains, in parallel, one RPC per chunk.
    async fn flush_inode(&self, inode: &Arc<OpenInode>, deadline: Instant) -> FsResult<()> {
        let _io = inode.io_lock.lock().await;
        self.flush_locked(inode, deadline).await
    }

    async fn flush_locked(&self, inode: &Arc<OpenInode>, deadline: Instant) -> FsResult<()> {
        self.flush_batch(inode, deadline, false).await?;
        lock(&inode.state).behind_failed = false;
        Ok(())
    }

    /// One flush under the io lock: every dirty byte, or with `settled` all but a block
    /// still being filled. The batch is frozen, so its RPCs carry slices of the buffer's
    /// own allocations and reads lay it over server bytes without a copy.
    async fn flush_batch(
        &self,
        inode: &Arc<OpenInode>,
        deadline: Instant,
        settled: bool,
    ) -> FsResult<()> {
        let batch = {
            let mut st = lock(&inode.state);
            let mut b = if settled {
                st.buf.take_settled()
            } else {
                std::mem::take(&mut st.buf)
            };
            if b.is_empty() {
                return Ok(());
            }
            b.freeze();
            st.inflight = b.clone();
            inode.recount(&mut st);
            b
        };
        let chunks = plan_flush(&batch, &inode.layout, self.cfg.max_chunk);
        drop(batch);
        let objects: BTreeSet<u32> = chunks.iter().map(|c| c.object_index).collect();
        let results: Vec<FsResult<()>> = stream::iter(chunks.into_iter().map(|c| {
            let chain = inode.layout.chains[c.object_index as usize];
            let key = ObjectKey {
                inode: inode.ino,
                index: c.object_index,
            };
            self.data
                .write(chain, key, c.object_offset, c.data, deadline)
        }))
        .buffer_unordered(self.cfg.max_inflight)
        .collect()
        .await;
        let err = results.into_iter().find_map(Result::err);
        let mut st = lock(&inode.state);
        let inflight = std::mem::take(&mut st.inflight);
        st.touched.extend(objects);
        let r = match err {
            Some(e) => {
                // Keep the bytes: a later flush retries them (writes since then stay on top).
                let newer = std::mem::take(&mut st.buf);
                st.buf = inflight;
                st.buf.absorb_newer(newer);
                let size = st.size;
                st.buf.truncate(size);
                Err(e)
            }
            None => Ok(()),
        };
        inode.recount(&mut st);
        drop(st);
        self.dirty.drained.notify_waiters();
        r
    }

    /// Records size and mtime at meta when local writes are not yet committed. Called
    /// with the inode's io lock held: meta keeps the larger of its size and a commit's,
    /// so a commit that read the size before a truncate and reached meta after it would
    /// grow the file back (a close in another process, or the close-on-exec of a child,
    /// sends FLUSH while this one truncates).
    async fn commit(&self, inode: &Arc<OpenInode>, handle: HandleId) -> FsResult<()> {
        let (size, mtime, gen) = {
            let st = lock(&inode.state);
            if !st.uncommitted {
                return Ok(());
            }
            (st.size, st.mtime_ns, st.write_gen)
        };
        let ns = self.ns();
        let a = self
            .meta
            .commit_write(inode.ino, handle, size, mtime)
            .await?;
        let mut st = lock(&inode.state);
        if st.write_gen == gen && st.buf.is_empty() {
            st.uncommitted = false;
        }
        st.attr = Some(CachedAttr {
            attr: a,
            at: Instant::now(),
            ns_gen: ns,
        });
        self.changed(&mut st);
        Ok(())
    }

    /// close(2): data to the chains, size and mtime to meta (close-to-open).
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let (inode, handle) = self.handle(fh)?;
        let deadline = self.deadline();
        let _io = inode.io_lock.lock().await;
        self.flush_locked(&inode, deadline).await?;
        self.commit(&inode, handle).await
    }

    /// fsync(2): flush, then every object written since the last sync is made durable on
    /// every member of its chain, then size and mtime are committed.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let (inode, handle) = self.handle(fh)?;
        let deadline = self.deadline();
        let _io = inode.io_lock.lock().await;
        self.flush_locked(&inode, deadline).await?;
        let touched = std::mem::take(&mut lock(&inode.state).touched);
        let mut per_chain: BTreeMap<u32, Vec<ObjectKey>> = BTreeMap::new();
        for i in &touched {
            per_chain
                .entry(inode.layout.chains[*i as usize].0)
                .or_default()
                .push(ObjectKey {
                    inode: inode.ino,
                    index: *i,
                });
        }
        let results: Vec<FsResult<()>> = stream::iter(
            per_chain
                .into_iter()
                .map(|(c, keys)| self.data.sync(cirrus_types::ChainId(c), keys, deadline)),
        )
        .buffer_unordered(self.cfg.max_inflight)
        .collect()
        .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            lock(&inode.state).touched.extend(touched);
            return Err(e);
        }
        self.commit(&inode, handle).await
    }

    /// Last close of a handle: flush, commit, release at meta. Errors of the flush are
    /// returned after the handle is released anyway (the kernel ignores release errors,
    /// but `flush` already reported them to close(2)).
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let (res, handle) = self.close_local(fh).await?;
        let rel = self.meta.release(handle).await;
        res.and(rel)
    }

    /// Like `release`, but the handle is released at meta behind the call: closes of the
    /// next `release_delay` share one meta call and one raft entry. Until then the file
    /// only stays referenced at meta (an unlinked file's objects are collected a few ms
    /// later); a batch that fails is sent again, and the mount's lease covers a client
    /// that dies first. `drain_releases` sends what waits (unmount).
    pub async fn close(self: &Arc<Self>, fh: u64) -> FsResult<()> {
        let (res, handle) = self.close_local(fh).await?;
        let start = {
            let mut q = lock(&self.releases);
            q.handles.push(handle);
            !std::mem::replace(&mut q.sender, true)
        };
        if start {
            let c = self.clone();
            self.rt.spawn(async move { c.send_releases().await });
        }
        res
    }

    /// `F_GETLK`: the first lock of another owner in the way of `owner` taking `kind` on
    /// `start..=end` (its range, kind and holder's pid), if any.
    pub async fn getlk(
        &self,
        fh: u64,
        owner: u64,
        kind: LockKind,
        start: u64,
        end: u64,
        pid: u32,
    ) -> FsResult<Option<HeldLock>> {
        let (inode, _) = self.handle(fh)?;
        let args = self.lock_args(inode.ino, owner, Some(kind), start, end, pid);
        self.meta.get_lock(&args).await
    }

    /// `F_SETLK`, `F_SETLKW` (with `interrupted`: resolves when the caller got a signal)
    /// and `flock`; `kind` `None` unlocks. NFS-like coherence for the bytes a lock
    /// guards: before a lock is released or downgraded, this mount's writes to the file
    /// go to the chains and its size is committed; after one is taken, the size is
    /// fetched from meta again and no byte fetched before it is served.
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        fh: u64,
        owner: u64,
        kind: Option<LockKind>,
        start: u64,
        end: u64,
        pid: u32,
        interrupted: Option<BoxFuture<'static, ()>>,
    ) -> FsResult<()> {
        let (inode, _) = self.handle(fh)?;
        let args = self.lock_args(inode.ino, owner, kind, start, end, pid);
        match kind {
            None => {
                // An unlock goes out even when the flush failed (the flush's error is
                // the answer): a lock must not outlive a write error.
                let flushed = self.flush(fh).await;
                self.meta.set_lock(&args, None).await?;
                return flushed;
            }
            Some(LockKind::Read) => self.flush(fh).await?,
            Some(LockKind::Write) => {}
        }
        self.locks.note(inode.ino, owner, fh);
        match interrupted {
            Some(signal) => self.wait_lock(&args, signal).await?,
            None => self.meta.set_lock(&args, None).await?,
        }
        self.revalidate(&inode).await;
        Ok(())
    }

    /// Drops `owner`'s locks on the file of `fh` if it may hold any (every close: POSIX
    /// locks die with any close of the file by their process). Call after the flush.
    pub async fn unlock_owner(&self, fh: u64, owner: u64) -> FsResult<()> {
        let (inode, _) = self.handle(fh)?;
        if !self.locks.take_owner(inode.ino, owner) {
            return Ok(());
        }
        let args = self.lock_args(inode.ino, owner, None, 0, u64::MAX, 0);
        self.meta.set_lock(&args, None).await
    }

    /// Drops the locks taken through `fh` alone (its release: `flock` and OFD locks are
    /// owned by the open file). Call before `close`.
    pub async fn unlock_handle(&self, fh: u64) -> FsResult<()> {
        let (inode, _) = self.handle(fh)?;
        let mut res = Ok(());
        for owner in self.locks.release_handle(inode.ino, fh) {
            let args = self.lock_args(inode.ino, owner, None, 0, u64::MAX, 0);
            res = res.and(self.meta.set_lock(&args, None).await);
        }
        res
    }

    fn lock_args(
        &self,
        ino: InodeId,
        owner: u64,
        kind: Option<LockKind>,
        start: u64,
        end: u64,
        pid: u32,
    ) -> LockCall {
        LockCall {
            ino,
            owner: LockOwner {
                client: self.client_id,
                owner,
            },
            kind,
            start,
            end,
            pid,
        }
    }

    /// A blocking lock: one wait slice at the meta leader after another until the lock
    /// is granted. When the caller gets a signal the wait is cancelled at meta and its
    /// answer taken: granted if the lock came first (as a local lock call that returns
    /// before the signal is handled), `Interrupted` otherwise, with nothing held.
    async fn wait_lock(&self, args: &LockCall, mut signal: BoxFuture<'static, ()>) -> FsResult<()> {
        let wait_id = self.locks.next_wait();
        // Well inside one attempt's deadline, so a slice never looks like a lost call.
        let slice = self.cfg.meta_per_try * 3 / 5;
        loop {
            let call = self.meta.set_lock(args, Some((wait_id, slice)));
            tokio::pin!(call);
            let r = tokio::select! {
                r = &mut call => r,
                _ = &mut signal => {
                    if let Err(e) = self.meta.cancel_lock_wait(self.client_id, wait_id).await {
                        tracing::debug!(err = %e, wait_id, "cancel lock wait");
                    }
                    return match call.await {
                        Err(FsError::WouldBlock(_)) => Err(FsError::Interrupted(
                            "signal while waiting for a lock".into(),
                        )),
                        r => r,
                    };
                }
            };
            match r {
                Err(FsError::WouldBlock(_)) => continue,
                r => return r,
            }
        }
    }

    /// After a lock is taken: meta's size (unless this mount holds bytes not yet
    /// committed), and no read-ahead block from before the lock. An answer fetched while
    /// this inode's size changed here (a flush behind the writer committing a larger
    /// size, a truncate) may predate the change: meta is asked again, a few times, and
    /// then the larger of the two sizes is kept. Keeping the local size instead let a
    /// mount read a counter "100" as the "10" it had written itself, under the lock.
    async fn revalidate(&self, inode: &Arc<OpenInode>) {
        const ASKS: usize = 3;
        for ask in 1..=ASKS {
            let (ns, seen) = (self.ns(), self.gen());
            let fresh = self.meta.getattr(inode.ino).await;
            let mut st = lock(&inode.state);
            st.ra.clear();
            inode.recount(&mut st);
            match fresh {
                Ok(a) => {
                    let pending = st.uncommitted || !st.buf.is_empty() || !st.inflight.is_empty();
                    if !pending {
                        if st.size_at <= seen {
                            st.size = a.size;
                            st.mtime_ns = a.mtime_ns;
                        } else if ask < ASKS {
                            continue;
                        } else {
                            st.size = st.size.max(a.size);
                            st.mtime_ns = st.mtime_ns.max(a.mtime_ns);
                        }
                        self.changed(&mut st);
                    }
                    st.attr = Some(CachedAttr {
                        attr: a,
                        at: Instant::now(),
                        ns_gen: ns,
                    });
                }
                Err(e) => {
                    tracing::debug!(ino = %inode.ino, err = %e, "attributes after a lock");
                    st.attr = None;
                }
            }
            break;
        }
    }

    /// Flush and commit, then forget the handle here; returns the flush's result and the
    /// meta handle still to release.
    async fn close_local(&self, fh: u64) -> FsResult<(FsResult<()>, HandleId)> {
        let res = self.flush(fh).await;
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return Err(FsError::StaleHandle);
        };
        {
            let mut inodes = lock(&self.inodes);
            let mut st = lock(&h.inode.state);
            st.opens = st.opens.saturating_sub(1);
            let idle = st.opens == 0 && st.buf.is_empty() && !st.uncommitted;
            drop(st);
            if idle {
                inodes.remove(&h.inode.ino);
            }
        }
        Ok((res, h.meta))
    }

    /// The release sender: after `release_delay` (or at once when hurried), sends
    /// everything queued in one call; stops once the queue is empty.
    async fn send_releases(self: Arc<Self>) {
        let mut pause = self.cfg.release_delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.release_now.notified() => {}
            }
            let batch: Vec<HandleId> = {
                let mut q = lock(&self.releases);
                if q.handles.is_empty() {
                    q.sender = false;
                    drop(q);
                    self.releases_idle.notify_waiters();
                    return;
                }
                let n = q.handles.len().min(cirrus_types::MAX_RELEASE_BATCH);
                q.handles.drain(..n).collect()
            };
            pause = match self.meta.release_many(&batch).await {
                Ok(()) => self.cfg.release_delay,
                // Io too: a transport failure of the batch says nothing about the handles.
                Err(e) if e.is_retryable() || matches!(e, FsError::Io(_)) => {
                    tracing::warn!(err = %e, handles = batch.len(), "release at meta, will retry");
                    lock(&self.releases).handles.extend(batch);
                    RELEASE_RETRY
                }
                Err(e) => {
                    // Refused outright (wrong cluster, bad input): retrying cannot help;
                    // meta drops the handles when this mount's lease ends.
                    tracing::error!(err = %e, handles = batch.len(), "release at meta");
                    self.cfg.release_delay
                }
            };
        }
    }

    /// Sends the releases queued by `close` now and waits until none is left or in
    /// flight. The caller bounds the wait (a meta group that stays down keeps it going;
    /// `release_all` gives it the deadline).
    pub async fn drain_releases(&self) {
        loop {
            let idle = self.releases_idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let q = lock(&self.releases);
                if q.handles.is_empty() && !q.sender {
                    return;
                }
            }
            self.release_now.notify_one();
            idle.await;
        }
    }

    /// read(2): the bytes of `[off, off + len)` up to the size this mount knows, from
    /// read-ahead blocks where held and the data servers otherwise, with this mount's
    /// dirty bytes laid over. A read served by one block or one RPC with no dirty bytes
    /// over it returns the server's buffer itself.
    pub async fn read(self: &Arc<Self>, fh: u64, off: u64, len: u32) -> FsResult<Bytes> {
        let (inode, _) = self.handle(fh)?;
        let deadline = self.deadline();
        let (n, pieces, overlay_in, overlay_buf) = {
            let mut guard = lock(&inode.state);
            let st = &mut *guard;
            let n = clamp_read(off, len, st.size);
            if n == 0 {
                return Ok(Bytes::new());
            }
            let pieces = self.plan_read(&inode, st, off, n, deadline);
            inode.recount(st);
            (
                n,
                pieces,
                st.inflight.clone_range(off, n),
                st.buf.clone_range(off, n),
            )
        };
        let parts = futures::future::join_all(pieces.into_iter().map(|p| {
            let inode = inode.clone();
            async move {
                if let Some(fetch) = p.block {
                    match fetch.await {
                        Ok(bytes) if bytes.len() as u64 >= p.off - p.block_start + p.len => {
                            let at = (p.off - p.block_start) as usize;
                            return Ok((p.off, bytes.slice(at..at + p.len as usize)));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(ino = %inode.ino, err = %e, "read-ahead block failed; reading the range itself");
                        }
                    }
                }
                let got = self.clone().fetch(inode, p.off, p.len, deadline).await?;
                Ok::<_, FsError>((p.off, got))
            }
        }))
        .await;
        let mut parts = parts.into_iter().collect::<FsResult<Vec<_>>>()?;
        if parts.len() == 1 && overlay_in.is_empty() && overlay_buf.is_empty() {
            if let Some((_, only)) = parts.pop() {
                return Ok(only);
            }
        }
        let mut out = vec![0u8; n as usize];
        for (p_off, got) in parts {
            place(&mut out, (p_off - off) as usize, &got);
        }
        overlay_in.overlay(off, &mut out);
        overlay_buf.overlay(off, &mut out);
        Ok(Bytes::from(out))
    }

    /// Cuts a read into pieces at block boundaries, moves the read-ahead window and
    /// starts fetching the blocks a sequential reader will want (its current ones
    /// included). Blocks holding local dirty bytes are not fetched ahead: their pieces
    /// are read per request, with the overlay taken under the same lock.
    fn plan_read(
        self: &Arc<Self>,
        inode: &Arc<OpenInode>,
        st: &mut InodeState,
        off: u64,
        n: u64,
        deadline: Instant,
    ) -> Vec<ReadPiece> {
        let end = off + n;
        let max = self.cfg.read_ahead;
        let ra = &mut st.ra;
        let sequential = off + SEG_BLOCK >= ra.next && off <= ra.next + SEG_BLOCK;
        if max > 0 && sequential {
            ra.window = (ra.window * 2).max(2 * n).min(max);
        } else {
            ra.clear();
        }
        ra.next = end;
        let first = off / SEG_BLOCK * SEG_BLOCK;
        // Blocks behind the reader are done with.
        let behind: Vec<u64> = ra.blocks.range(..first).map(|(&b, _)| b).collect();
        for b in behind {
            ra.blocks.remove(&b);
        }
        if ra.window > 0 {
            let until = end.saturating_add(ra.window).min(st.size);
            // Blocks past this read are fetched ahead only within the client-wide budget;
            // the blocks of the read itself always are.
            let held = inode.dirty.ra_blocks.load(Ordering::Relaxed) as u64;
            let mut room = (self.cfg.read_ahead_total / SEG_BLOCK).saturating_sub(held);
            let mut b = first;
            while b < until {
                if b >= end {
                    if room == 0 {
                        break;
                    }
                    room -= 1;
                }
                let len = SEG_BLOCK.min(st.size - b);
                if !ra.blocks.contains_key(&b)
                    && !st.buf.overlaps(b, len)
                    && !st.inflight.overlaps(b, len)
                {
                    let task = self
                        .rt
                        .spawn(self.clone().fetch(inode.clone(), b, len, deadline));
                    let fetch: Fetch = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(FsError::Io(format!("read-ahead task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    ra.blocks.insert(b, fetch);
                }
                b += SEG_BLOCK;
            }
        }
        let mut pieces = Vec::new();
        let mut pos = off;
        while pos < end {
            let b = pos / SEG_BLOCK * SEG_BLOCK;
            let p_end = (b + SEG_BLOCK).min(end);
            pieces.push(ReadPiece {
                off: pos,
                len: p_end - pos,
                block_start: b,
                block: ra.blocks.get(&b).cloned(),
            });
            pos = p_end;
        }
        pieces
    }

    /// `[off, off + len)` of the file from the data servers, every extent in parallel,
    /// exactly `len` bytes (holes and bytes past an object's end read as zeros). One
    /// extent that came back whole is returned without a copy.
    async fn fetch(
        self: Arc<Self>,
        inode: Arc<OpenInode>,
        off: u64,
        len: u64,
        deadline: Instant,
    ) -> FsResult<Bytes> {
        let extents = inode.layout.extents(off, len);
        let results: Vec<FsResult<(usize, Bytes)>> = stream::iter(extents.into_iter().map(|e| {
            let chain = inode.layout.chains[e.object_index as usize];
            let key = ObjectKey {
                inode: inode.ino,
                index: e.object_index,
            };
            let data = &self.data;
            async move {
                let got = data
                    .read(chain, key, e.object_offset, e.len as u32, deadline)
                    .await?;
                Ok(((e.file_offset - off) as usize, got))
            }
        }))
        .buffer_unordered(self.cfg.max_inflight)
        .collect()
        .await;
        let mut results = results.into_iter().collect::<FsResult<Vec<_>>>()?;
        if results.len() == 1 && results[0].1.len() as u64 == len {
            if let Some((_, only)) = results.pop() {
                return Ok(only);
            }
        }
        let mut out = vec![0u8; len as usize];
        for (at, got) in results {
            place(&mut out, at, &got);
        }
        Ok(Bytes::from(out))
    }

    /// setattr, including truncate: pending writes go out first, then every object is cut
    /// to the size the layout gives it, then meta records the new size.
    pub async fn setattr(&self, ino: InodeId, set: SetAttr, fh: Option<u64>) -> FsResult<Attr> {
        let meta_handle = fh
            .and_then(|f| self.handle(f).ok())
            .map(|(_, h)| h.0)
            .unwrap_or(0);
        if let Some(size) = set.size {
            // Before any data server is asked to truncate an object: a size past the
            // largest file changes nothing anywhere.
            cirrus_types::limits::check_file_size(size)?;
        }
        let Some(size) = set.size else {
            let (seen, ns) = (self.gen(), self.ns());
            let a = self.meta.setattr(ino, &set, meta_handle).await?;
            self.remember_attr(&a, ns);
            return Ok(self.overlay_attr(a, seen));
        };
        let deadline = self.deadline();
        let open = lock(&self.inodes).get(&ino).cloned();
        let _io = match &open {
            Some(i) => Some(i.io_lock.lock().await),
            None => None,
        };
        let layout = match &open {
            Some(i) => {
                self.flush_locked(i, deadline).await?;
                i.layout.clone()
            }
            None => {
                let a = self.meta.getattr(ino).await?;
                match a.kind {
                    FileKind::Dir => return Err(FsError::IsDir),
                    FileKind::Symlink => {
                        return Err(FsError::Invalid("truncate of a symlink".into()))
                    }
                    FileKind::File => {}
                    k => return Err(FsError::Invalid(format!("truncate of a {k:?}"))),
                }
                self.meta.get_layout(ino).await?
            }
        };
        let results: Vec<FsResult<()>> = stream::iter((0..layout.stripe_count()).map(|i| {
            let chain = layout.chains[i as usize];
            let key = ObjectKey {
                inode: ino,
                index: i,
            };
            self.data
                .truncate(chain, key, layout.object_size(i, size), deadline)
        }))
        .buffer_unordered(self.cfg.max_inflight)
        .collect()
        .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        let mut set = set;
        if set.mtime.is_none() {
            // truncate(2) updates mtime and ctime, as on a local filesystem.
            set.mtime = Some(crate::meta::TimeSet::Now);
        }
        let ns = self.ns();
        let a = self.meta.setattr(ino, &set, meta_handle).await?;
        if let Some(i) = &open {
            let mut st = lock(&i.state);
            st.buf.truncate(size);
            st.ra.clear();
            i.recount(&mut st);
            st.size = size;
            st.mtime_ns = a.mtime_ns;
            st.attr = Some(CachedAttr {
                attr: a.clone(),
                at: Instant::now(),
                ns_gen: ns,
            });
            self.changed(&mut st);
        }
        Ok(self.overlay_attr(a, self.gen()))
    }

    /// copy_file_range(2) from `fh_in` to `fh_out`, both open here: pending writes of
    /// both go out, then the data servers copy, piece by piece (at most `MAX_COPY` each,
    /// cut where either file's stripe unit ends), each piece read from a member of the
    /// source's chain by the head of the destination's, so the bytes never cross this
    /// client; the destination then reads as if this mount had written them (size, mtime,
    /// committed at close or fsync like a write). At most `COPY_PER_CALL` bytes per call
    /// (callers loop on a short count, as for any copy_file_range) and never past the
    /// source's size. Data servers without the call (`NotSupported`) get the bytes read
    /// and written through this client instead.
    pub async fn copy_file_range(
        self: &Arc<Self>,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u64> {
        let (src, _) = self.handle(fh_in)?;
        let (dst, _) = self.handle(fh_out)?;
        let deadline = self.deadline();
        match self
            .copy_by_servers(&src, off_in, &dst, off_out, len, deadline)
            .await
        {
            Err(FsError::NotSupported(why)) => {
                tracing::debug!(%why, "copy_file_range through the client");
            }
            r => return r,
        }
        let n = copy_len(&src, off_in, len);
        let mut done = 0;
        while done < n {
            let want = (n - done).min(cirrus_types::limits::MAX_COPY as u64) as u32;
            let got = self.read(fh_in, off_in + done, want).await?;
            if got.is_empty() {
                break;
            }
            self.write(fh_out, off_out + done, &got).await?;
            done += got.len() as u64;
        }
        Ok(done)
    }

    async fn copy_by_servers(
        &self,
        src: &Arc<OpenInode>,
        off_in: u64,
        dst: &Arc<OpenInode>,
        off_out: u64,
        len: u64,
        deadline: Instant,
    ) -> FsResult<u64> {
        let same = Arc::ptr_eq(src, dst);
        // Both io locks, in inode order: two copies in opposite directions cannot deadlock.
        let (first, second) = if src.ino <= dst.ino {
            (src, dst)
        } else {
            (dst, src)
        };
        let _first = first.io_lock.lock().await;
        let _second = match same {
            true => None,
            false => Some(second.io_lock.lock().await),
        };
        self.flush_locked(src, deadline).await?;
        if !same {
            self.flush_locked(dst, deadline).await?;
        }
        let n = copy_len(src, off_in, len);
        if n == 0 {
            return Ok(0);
        }
        let end = cirrus_types::limits::check_file_range(off_out, n)?;
        if same && off_in < end && off_out < off_in + n {
            return Err(FsError::Invalid(
                "copy_file_range within one file between overlapping ranges".into(),
            ));
        }
        let unit_left = |layout: &Layout, at: u64| {
            let unit = layout.stripe_unit as u64;
            unit - at % unit
        };
        let mut pieces = Vec::new();
        let mut pos = 0;
        while pos < n {
            let (s_at, d_at) = (off_in + pos, off_out + pos);
            let piece = (n - pos)
                .min(unit_left(&src.layout, s_at))
                .min(unit_left(&dst.layout, d_at))
                .min(cirrus_types::limits::MAX_COPY as u64);
            pieces.push((s_at, d_at, piece as u32));
            pos += piece;
        }
        let objects: BTreeSet<u32> = pieces
            .iter()
            .map(|&(_, d_at, _)| dst.layout.locate(d_at).0)
            .collect();
        let results: Vec<FsResult<()>> =
            stream::iter(pieces.into_iter().map(|(s_at, d_at, piece)| {
                let (si, so) = src.layout.locate(s_at);
                let (di, dof) = dst.layout.locate(d_at);
                self.data.copy(
                    dst.layout.chains[di as usize],
                    ObjectKey {
                        inode: dst.ino,
                        index: di,
                    },
                    dof,
                    src.layout.chains[si as usize],
                    ObjectKey {
                        inode: src.ino,
                        index: si,
                    },
                    so,
                    piece,
                    deadline,
                )
            }))
            .buffer_unordered(self.cfg.max_inflight)
            .collect()
            .await;
        let mut st = lock(&dst.state);
        // Objects written even by a failed copy are synced by the next fsync.
        st.touched.extend(objects);
        results.into_iter().collect::<FsResult<Vec<()>>>()?;
        st.ra.drop_range(off_out, end);
        dst.recount(&mut st);
        st.size = st.size.max(end);
        st.mtime_ns = now_ns();
        st.write_gen += 1;
        st.uncommitted = true;
        self.changed(&mut st);
        drop(st);
        Ok(n)
    }

    /// fallocate. `Allocate` (mode 0, or `KEEP_SIZE`): the range reads as zeros and,
    /// without `keep_size`, the file is at least that long; space is not reserved
    /// (objects are sparse), a documented limit. `Zero` (`ZERO_RANGE`) and `PunchHole`
    /// (`PUNCH_HOLE | KEEP_SIZE`): pending writes go out, then every member of every
    /// object's chain makes the range read as zeros (whole blocks given back, edges
    /// rewritten under fresh crcs), then `Zero` without `keep_size` extends the file to
    /// the range's end; mtime and ctime change, as on a local filesystem.
    pub async fn fallocate(
        &self,
        ino: InodeId,
        fh: u64,
        off: u64,
        len: u64,
        mode: Fallocate,
    ) -> FsResult<()> {
        let end = cirrus_types::limits::check_file_range(off, len)?;
        let (zero, keep_size) = match mode {
            Fallocate::Allocate { keep_size } => (false, keep_size),
            Fallocate::Zero { keep_size } => (true, keep_size),
            Fallocate::PunchHole => (true, true),
        };
        if zero {
            self.zero_range(ino, off, end).await?;
        }
        let cur = self.getattr(ino).await?.size;
        let grow = (!keep_size && end > cur).then_some(end);
        if grow.is_some() || zero {
            self.setattr(
                ino,
                SetAttr {
                    size: grow,
                    mtime: zero.then_some(crate::meta::TimeSet::Now),
                    ..SetAttr::default()
                },
                Some(fh),
            )
            .await?;
        }
        Ok(())
    }

    /// Makes `[off, end)` of the file, below its size, read as zeros on every member.
    /// File range `[off, end)` is object range `[object_size(i, off), object_size(i,
    /// end))` of each object `i`, so there is one call per object, whatever the length.
    async fn zero_range(&self, ino: InodeId, off: u64, end: u64) -> FsResult<()> {
        let deadline = self.deadline();
        let open = lock(&self.inodes).get(&ino).cloned();
        let Some(inode) = open else {
            return Err(FsError::StaleHandle);
        };
        let _io = inode.io_lock.lock().await;
        self.flush_locked(&inode, deadline).await?;
        let size = lock(&inode.state).size;
        let end = end.min(size);
        let layout = inode.layout.clone();
        if off < end {
            let results: Vec<FsResult<()>> =
                stream::iter((0..layout.stripe_count()).filter_map(|i| {
                    let (a, b) = (layout.object_size(i, off), layout.object_size(i, end));
                    (a < b).then(|| {
                        let key = ObjectKey {
                            inode: ino,
                            index: i,
                        };
                        self.data
                            .punch(layout.chains[i as usize], key, a, b - a, deadline)
                    })
                }))
                .buffer_unordered(self.cfg.max_inflight)
                .collect()
                .await;
            results.into_iter().collect::<FsResult<Vec<()>>>()?;
        }
        let mut st = lock(&inode.state);
        st.ra.clear();
        inode.recount(&mut st);
        Ok(())
    }

    /// Flushes and commits every open inode (unmount).
    pub async fn flush_all(&self) -> FsResult<()> {
        let fhs: Vec<u64> = lock(&self.handles).keys().copied().collect();
        let mut first = Ok(());
        for fh in fhs {
            if let Err(e) = self.flush(fh).await.or_else(|e| match e {
                FsError::StaleHandle => Ok(()),
                e => Err(e),
            }) {
                tracing::error!(err = %e, "flush at unmount");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Releases every handle still open and every release `close` queued (unmount):
    /// flushes, then releases at meta.
    pub async fn release_all(&self) {
        let fhs: Vec<u64> = lock(&self.handles).keys().copied().collect();
        for fh in fhs {
            // A handle the kernel released meanwhile (its own RELEASE raced this sweep)
            // is gone from the table: nothing is left to do for it.
            if let Err(e) = self.release(fh).await.or_else(|e| match e {
                FsError::StaleHandle => Ok(()),
                e => Err(e),
            }) {
                tracing::error!(err = %e, "release at unmount");
            }
        }
        if tokio::time::timeout(self.cfg.deadline, self.drain_releases())
            .await
            .is_err()
        {
            tracing::error!(
                "releases at meta still pending after {:?}; meta drops them when this \
                 mount's lease lapses",
                self.cfg.deadline
            );
        }
    }
}
