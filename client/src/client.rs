//! `Client`: the filesystem as a library. Namespace calls go to meta through `MetaClient`;
//! file data goes straight to the data servers through `DataPath`, striped by the file's
//! layout. Owns the open-file table and, per open inode, the write-back buffer, the size
//! as this mount knows it, and which objects were written since the last sync.
//!
//! Consistency is close-to-open: `open` revalidates attributes at meta; `flush` (close)
//! writes the buffer to the chains and commits size and mtime to meta; `fsync` also makes
//! every touched object durable on every chain member first. Within one mount all handles
//! of an inode share one buffer, so a read through any handle sees every write.

use crate::buffer::{clamp_read, place, plan_flush, WriteBuffer};
use crate::data::{DataPath, DataPolicy};
use crate::meta::{Attr, MetaClient, Opened, SetAttr};
use cirrus_proto::{CallPolicy, MetaConn};
use cirrus_types::{ClientId, FileKind, FsError, FsResult, HandleId, InodeId, Layout, ObjectKey};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Dirty bytes per open inode before writes flush inline.
    pub max_dirty: usize,
    /// Largest single data write RPC.
    pub max_chunk: usize,
    /// Data RPCs in flight per flush or read.
    pub max_inflight: usize,
    /// How often open handles' lease is renewed at meta.
    pub lease_interval: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            deadline: Duration::from_secs(30),
            meta_per_try: Duration::from_secs(5),
            data_per_try: Duration::from_secs(10),
            max_dirty: 32 << 20,
            max_chunk: 4 << 20,
            max_inflight: 16,
            lease_interval: Duration::from_secs(5),
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
    uncommitted: bool,
    opens: usize,
    /// Meta's attributes of the inode from the last reply that carried them (open,
    /// create, setattr, link, commit), when, and `ns_gen` at the time the call started.
    /// While the inode is open here, a getattr is answered from them (size and mtime
    /// laid over): this mount is the writer, and close-to-open only promises another
    /// mount's changes at the next open.
    attr: Option<CachedAttr>,
}

#[derive(Clone, Debug)]
struct CachedAttr {
    attr: Attr,
    at: Instant,
    ns_gen: u64,
}

/// How long attributes of an open inode are served from this mount before meta is asked
/// again (bounds how late a chmod or chown from another mount is seen by a stat here).
pub const OPEN_ATTR_TTL: Duration = Duration::from_secs(1);

/// An inode with at least one open handle in this mount.
struct OpenInode {
    ino: InodeId,
    layout: Layout,
    state: Mutex<InodeState>,
    /// Serialises flushes, truncates and syncs of this inode.
    io_lock: tokio::sync::Mutex<()>,
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
    meta: MetaClient,
    data: DataPath,
    cfg: ClientConfig,
    client_id: ClientId,
    inodes: Mutex<HashMap<InodeId, Arc<OpenInode>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Bumped by every local change of an open inode's size (write, truncate, commit,
    /// open, failed flush). A meta reply may replace the local size only if no change
    /// happened while it was in flight: a getattr answered before a local write and
    /// commit would otherwise shrink the size this mount reads up to.
    local_gen: AtomicU64,
    /// Bumped after every namespace call of this mount that can change an inode's
    /// attributes without returning them (unlink, rename, rmdir, xattrs): cached
    /// attributes of open inodes fetched before it are not served any more.
    ns_gen: AtomicU64,
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
        let client_id = ClientId(rand::random::<u64>() | 1);
        Ok(Arc::new(Client {
            meta,
            data,
            cfg,
            client_id,
            inodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            local_gen: AtomicU64::new(0),
            ns_gen: AtomicU64::new(0),
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

    fn bump(&self) {
        self.local_gen.fetch_add(1, Ordering::SeqCst);
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
            } else if self.gen() == seen {
                // Meta is authoritative when nothing local is pending and nothing local
                // changed while the call was in flight.
                st.size = attr.size;
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
            st.attr = Some(CachedAttr {
                attr: opened.attr.clone(),
                at: Instant::now(),
                ns_gen: ns,
            });
            self.bump();
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
        let opened = self.meta.open(ino, self.client_id, false).await?;
        if opened.attr.kind != FileKind::File {
            let _ = self.meta.release(opened.handle).await;
            return Err(FsError::IsDir);
        }
        Ok(self.register(opened, ns))
    }

    /// Creates (or with `exclusive == false` opens an existing) regular file and opens it.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
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
                mode & 0o7777,
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
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let o = self
            .meta
            .create(parent, name, mode & 0o7777, uid, gid, true, None)
            .await?;
        Ok(o.attr)
    }

    pub async fn write(&self, fh: u64, off: u64, data: &[u8]) -> FsResult<usize> {
        let (inode, _) = self.handle(fh)?;
        off.checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(FsError::TooBig)?;
        let full = {
            let mut st = lock(&inode.state);
            st.buf.insert(off, data);
            st.size = st.size.max(off + data.len() as u64);
            st.mtime_ns = now_ns();
            st.write_gen += 1;
            st.uncommitted = true;
            self.bump();
            st.buf.len() >= self.cfg.max_dirty
        };
        if full {
            self.flush_inode(&inode, self.deadline()).await?;
        }
        Ok(data.len())
    }

    /// Sends the inode's buffer to the chains, in parallel, one RPC per chunk.
    async fn flush_inode(&self, inode: &Arc<OpenInode>, deadline: Instant) -> FsResult<()> {
        let _io = inode.io_lock.lock().await;
        self.flush_locked(inode, deadline).await
    }

    async fn flush_locked(&self, inode: &Arc<OpenInode>, deadline: Instant) -> FsResult<()> {
        let batch = {
            let mut st = lock(&inode.state);
            if st.buf.is_empty() {
                return Ok(());
            }
            let b = std::mem::take(&mut st.buf);
            st.inflight = b.clone();
            b
        };
        let chunks = plan_flush(&batch, &inode.layout, self.cfg.max_chunk);
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
        if let Some(e) = err {
            // Keep the bytes: a later flush retries them (writes since then stay on top).
            let newer = std::mem::take(&mut st.buf);
            st.buf = inflight;
            st.buf.absorb_newer(newer);
            let size = st.size;
            st.buf.truncate(size);
            return Err(e);
        }
        Ok(())
    }

    /// Records size and mtime at meta when local writes are not yet committed.
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
        self.bump();
        Ok(())
    }

    /// close(2): data to the chains, size and mtime to meta (close-to-open).
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let (inode, handle) = self.handle(fh)?;
        let deadline = self.deadline();
        self.flush_inode(&inode, deadline).await?;
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
        drop(_io);
        self.commit(&inode, handle).await
    }

    /// Last close of a handle: flush, commit, release at meta. Errors of the flush are
    /// returned after the handle is released anyway (the kernel ignores release errors,
    /// but `flush` already reported them to close(2)).
    pub async fn release(&self, fh: u64) -> FsResult<()> {
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
        let rel = self.meta.release(h.meta).await;
        res.and(rel)
    }

    pub async fn read(&self, fh: u64, off: u64, len: u32) -> FsResult<Vec<u8>> {
        let (inode, _) = self.handle(fh)?;
        let (n, overlay_in, overlay_buf) = {
            let st = lock(&inode.state);
            let n = clamp_read(off, len, st.size);
            (
                n,
                st.inflight.clone_range(off, n),
                st.buf.clone_range(off, n),
            )
        };
        let mut out = vec![0u8; n as usize];
        if n == 0 {
            return Ok(out);
        }
        let deadline = self.deadline();
        let extents = inode.layout.extents(off, n);
        let results: Vec<FsResult<(usize, bytes::Bytes)>> =
            stream::iter(extents.into_iter().map(|e| {
                let chain = inode.layout.chains[e.object_index as usize];
                let key = ObjectKey {
                    inode: inode.ino,
                    index: e.object_index,
                };
                async move {
                    let got = self
                        .data
                        .read(chain, key, e.object_offset, e.len as u32, deadline)
                        .await?;
                    Ok(((e.file_offset - off) as usize, got))
                }
            }))
            .buffer_unordered(self.cfg.max_inflight)
            .collect()
            .await;
        for r in results {
            let (at, got) = r?;
            place(&mut out, at, &got);
        }
        overlay_in.overlay(off, &mut out);
        overlay_buf.overlay(off, &mut out);
        Ok(out)
    }

    /// setattr, including truncate: pending writes go out first, then every object is cut
    /// to the size the layout gives it, then meta records the new size.
    pub async fn setattr(&self, ino: InodeId, set: SetAttr, fh: Option<u64>) -> FsResult<Attr> {
        let meta_handle = fh
            .and_then(|f| self.handle(f).ok())
            .map(|(_, h)| h.0)
            .unwrap_or(0);
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
            set.mtime = Some(crate::meta::SetTime::Now);
        }
        let ns = self.ns();
        let a = self.meta.setattr(ino, &set, meta_handle).await?;
        if let Some(i) = &open {
            let mut st = lock(&i.state);
            st.buf.truncate(size);
            st.size = size;
            st.mtime_ns = a.mtime_ns;
            st.attr = Some(CachedAttr {
                attr: a.clone(),
                at: Instant::now(),
                ns_gen: ns,
            });
            self.bump();
        }
        Ok(self.overlay_attr(a, self.gen()))
    }

    /// fallocate mode 0: the range reads as zeros and the file is at least that long.
    /// Space is not reserved (objects are sparse); that is a documented limit.
    pub async fn fallocate(&self, ino: InodeId, fh: u64, off: u64, len: u64) -> FsResult<()> {
        let end = off.checked_add(len).ok_or(FsError::TooBig)?;
        let cur = self.getattr(ino).await?.size;
        if end > cur {
            self.setattr(
                ino,
                SetAttr {
                    size: Some(end),
                    ..SetAttr::default()
                },
                Some(fh),
            )
            .await?;
        }
        Ok(())
    }

    /// Flushes and commits every open inode (unmount).
    pub async fn flush_all(&self) -> FsResult<()> {
        let fhs: Vec<u64> = lock(&self.handles).keys().copied().collect();
        let mut first = Ok(());
        for fh in fhs {
            if let Err(e) = self.flush(fh).await {
                tracing::error!(err = %e, "flush at unmount");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Releases every handle still open (unmount): flushes, then releases at meta.
    pub async fn release_all(&self) {
        let fhs: Vec<u64> = lock(&self.handles).keys().copied().collect();
        for fh in fhs {
            if let Err(e) = self.release(fh).await {
                tracing::error!(err = %e, "release at unmount");
            }
        }
    }
}

impl WriteBuffer {
    /// A copy of the dirty bytes inside `[off, off + len)` (for overlay without the lock).
    pub fn clone_range(&self, off: u64, len: u64) -> WriteBuffer {
        let mut out = WriteBuffer::default();
        if len == 0 {
            return out;
        }
        let end = off + len;
        for (s, d) in self.segments() {
            let s_end = s + d.len() as u64;
            if s_end <= off || s >= end {
                continue;
            }
            let from = s.max(off);
            let to = s_end.min(end);
            out.insert(from, &d[(from - s) as usize..(to - s) as usize]);
        }
        out
    }
}
