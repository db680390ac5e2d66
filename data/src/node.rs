//! The data server's core, independent of tonic: the cached chain table (the source of
//! truth for versions, refreshed from meta), the chain-replication write path (verify,
//! order, persist, forward), reads with repair from another member, sync, truncate,
//! delete, and the counters that Info and /metrics show.
//!
//! Ordering: every member holds a per-object range lock over the block-aligned range of a
//! write or truncate while it persists locally and forwards downstream, so overlapping
//! operations (serialized first at the head) reach every member in the same order; the
//! rebuild copy takes the same lock (see rebuild.rs).

use crate::peer::Peers;
use crate::rangelock::RangeLock;
use crate::rebuild::Tracker;
use crate::store::{ChunkStore, ReadOut, StoreError, BLOCK};
use crate::transport::ChainTransport;
use bytes::Bytes;
use cirrus_proto::metrics::{Counter, Registry};
use cirrus_proto::{pb, MetaConn};
use cirrus_types::checksum::verify_pieces;
use cirrus_types::sync::{lock, read, write};
use cirrus_types::{
    Chain, ChainId, ChainTable, ChainVersion, ClusterId, FsError, FsResult, ObjectKey, ServerId,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Largest read one request may ask for: what one reply can carry. The buffer a read
/// allocates is bounded by this, never by the length a caller names.
pub const MAX_READ: u32 = cirrus_proto::bulk::MAX_PAYLOAD;

/// One object of a rebuild listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: ObjectKey,
    pub size: u64,
    /// Where it may hold data (`ChunkStore::data_ranges`); None from a server that does
    /// not say, meaning all of it.
    pub ranges: Option<Vec<(u64, u64)>>,
}

/// Tunables of the node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Deadline of one forward to the next member (and of repair reads).
    pub forward_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            forward_timeout: Duration::from_secs(4),
        }
    }
}

/// Counters shown by Info and /metrics.
pub struct Stats {
    pub writes: Counter,
    pub write_bytes: Counter,
    pub reads: Counter,
    pub read_bytes: Counter,
    pub corrupt_blocks: Counter,
    pub repaired_blocks: Counter,
    pub scrub_done_bytes: Counter,
    pub scrub_errors: Counter,
    pub scrub_passes: Counter,
    pub rebuild_copied_bytes: Counter,
    pub lost_blocks: Counter,
    pub stale_rejected: Counter,
    pub copied_bytes: Counter,
}

impl Stats {
    fn new(r: &Registry) -> Stats {
        let c = |n: &str, h: &str| r.counter(n, h, &[]);
        Stats {
            copied_bytes: c(
                "cirrus_data_copied_bytes_total",
                "bytes copied between objects for a client's copy_file_range, as chain head",
            ),
            writes: c("cirrus_data_writes_total", "chain writes applied locally"),
            write_bytes: c("cirrus_data_write_bytes_total", "bytes written locally"),
            reads: c("cirrus_data_reads_total", "reads served"),
            read_bytes: c("cirrus_data_read_bytes_total", "bytes served by reads"),
            corrupt_blocks: c(
                "cirrus_data_corrupt_blocks_total",
                "4 KiB blocks found failing their crc32c (reads and scrub)",
            ),
            repaired_blocks: c(
                "cirrus_data_repaired_blocks_total",
                "blocks rewritten from another member's good copy",
            ),
            scrub_done_bytes: c("cirrus_data_scrub_bytes_total", "bytes verified by scrub"),
            scrub_errors: c(
                "cirrus_data_scrub_errors_total",
                "scrub findings: bad blocks and unreadable ranges",
            ),
            scrub_passes: c("cirrus_data_scrub_passes_total", "completed scrub passes"),
            rebuild_copied_bytes: c(
                "cirrus_data_rebuild_bytes_total",
                "bytes copied from members while rebuilding chains",
            ),
            lost_blocks: c(
                "cirrus_data_lost_blocks_total",
                "blocks a rebuild found bad on every member it could read, kept as lost (reads of them fail with EIO)",
            ),
            stale_rejected: c(
                "cirrus_data_stale_chain_rejected_total",
                "requests refused for an old chain version",
            ),
        }
    }
}

/// A write as the node sees it (validated wire request).
#[derive(Clone, Debug)]
pub struct WriteArgs {
    pub chain: ChainId,
    pub version: ChainVersion,
    pub key: ObjectKey,
    pub off: u64,
    pub data: Bytes,
    pub crcs: Vec<u32>,
    pub sync: bool,
    pub hop: u32,
}

pub struct Node {
    pub store: Arc<dyn ChunkStore>,
    pub cluster: ClusterId,
    pub me: ServerId,
    pub address: String,
    table: RwLock<ChainTable>,
    meta: Option<Arc<MetaConn>>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// How this server reaches the other members: `Peers` in a server, an in-process
    /// network in unit tests (`testing::Net`).
    pub peers: Arc<dyn ChainTransport>,
    locks: Mutex<HashMap<ObjectKey, Arc<RangeLock>>>,
    pub tracker: Tracker,
    pub stats: Stats,
    pub registry: Arc<Registry>,
    pub cfg: NodeConfig,
    /// (rebuilding, caught up) chains, as last seen by the heartbeat loop, for Info.
    pub rebuild_view: Mutex<(Vec<u32>, Vec<u32>)>,
    /// Copies (`copy`) in flight here, at most `MAX_COPIES`: each holds up to `MAX_COPY`
    /// bytes that a small request made this server read.
    copies: tokio::sync::Semaphore,
}

/// Copies one server runs at once (64 MiB of buffers at most); the next is refused as
/// busy, and the client backs off and asks again.
pub const MAX_COPIES: usize = 64;

fn align_down(x: u64) -> u64 {
    x / BLOCK * BLOCK
}
fn align_up(x: u64) -> u64 {
    x.div_ceil(BLOCK) * BLOCK
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn ChunkStore>,
        cluster: ClusterId,
        me: ServerId,
        address: String,
        table: ChainTable,
        meta: Option<Arc<MetaConn>>,
        registry: Arc<Registry>,
        cfg: NodeConfig,
    ) -> Node {
        let stats = Stats::new(&registry);
        Node {
            store,
            cluster,
            me,
            address,
            table: RwLock::new(table),
            meta,
            refresh_lock: tokio::sync::Mutex::new(()),
            peers: Arc::new(Peers::new(cluster, cfg.forward_timeout)),
            locks: Mutex::new(HashMap::new()),
            tracker: Tracker::default(),
            stats,
            registry,
            cfg,
            rebuild_view: Mutex::new((Vec::new(), Vec::new())),
            copies: tokio::sync::Semaphore::new(MAX_COPIES),
        }
    }

    /// The same node reaching the other members through `t` instead of `Peers`.
    pub fn with_transport(mut self, t: Arc<dyn ChainTransport>) -> Node {
        self.peers = t;
        self
    }

    pub fn table(&self) -> ChainTable {
        read(&self.table).clone()
    }

    pub fn chain(&self, id: ChainId) -> Option<Chain> {
        read(&self.table).chains.get(&id).cloned()
    }

    /// Installs a table from meta (heartbeat or GetChains). Versions never go back: a
    /// reply from a lagging node cannot undo a newer table.
    pub fn set_table(&self, new: ChainTable) {
        let mut t = write(&self.table);
        let mut merged = new;
        for (id, old) in t.chains.iter() {
            if let Some(n) = merged.chains.get(id) {
                if n.version < old.version {
                    merged.chains.insert(*id, old.clone());
                }
            }
        }
        *t = merged;
    }

    pub fn addr_of(&self, id: ServerId) -> Option<String> {
        read(&self.table).address(id).map(str::to_string)
    }

    /// Asks meta for the chain table (coalescing concurrent callers).
    pub async fn refresh(&self) -> FsResult<()> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let before = self.table();
        let _g = self.refresh_lock.lock().await;
        // Someone refreshed while we waited: their table is as good as ours would be.
        if self.table().chains != before.chains {
            return Ok(());
        }
        let cid = self.cluster.to_string();
        let t = meta
            .call("get chains", |mut c| {
                let req = pb::GetChainsRequest {
                    cluster_id: cid.clone(),
                };
                async move { c.get_chains(req).await }
            })
            .await?;
        self.set_table(ChainTable::from(&t));
        Ok(())
    }

    /// The chain at exactly `version`: older is refused with the current version, newer
    /// makes this server refresh from meta first.
    pub async fn check_chain(&self, id: ChainId, version: ChainVersion) -> FsResult<Chain> {
        for attempt in 0..2 {
            match self.chain(id) {
                Some(c) if c.version == version => return Ok(c),
                Some(c) if version < c.version => {
                    self.stats.stale_rejected.inc();
                    return Err(FsError::StaleChain { current: c.version });
                }
                _ if attempt == 0 => self.refresh().await?,
                Some(c) => {
                    return Err(FsError::Unavailable(format!(
                        "chain {id} version {version} is newer than this server's {} even after a refresh",
                        c.version
                    )))
                }
                None => {
                    return Err(FsError::Unavailable(format!(
                        "chain {id} is unknown to this server"
                    )))
                }
            }
        }
        Err(FsError::Unavailable(format!("chain {id} not resolved")))
    }

    /// Refuses to answer for an operation of `c` once this server holds a newer version
    /// of the chain. A member that learns a new version while applying a write may have
    /// served a rebuild listing at that version before the write landed; answering would
    /// acknowledge bytes the new syncing member never gets. The caller retries at the new
    /// version, through the whole new route.
    fn still_at(&self, c: &Chain) -> FsResult<()> {
        match self.chain(c.id) {
            Some(now) if now.version != c.version => {
                self.stats.stale_rejected.inc();
                Err(FsError::StaleChain {
                    current: now.version,
                })
            }
            _ => Ok(()),
        }
    }

    /// Objects (key, size, data ranges) of `chain` here, for a rebuild listing at
    /// `version` (0: any). The version check orders the listing after every write this
    /// server answered at an older version (see `still_at`). The ranges say where each
    /// object may hold data, so a rebuild copies those and not the holes.
    pub async fn list_objects(
        &self,
        chain: ChainId,
        version: ChainVersion,
    ) -> FsResult<Vec<Listed>> {
        if version.0 != 0 {
            self.check_chain(chain, version).await?;
        }
        let mut out = Vec::new();
        for o in self.store.list().into_iter().filter(|o| o.chain == chain) {
            out.push(Listed {
                key: o.key,
                size: o.size,
                ranges: Some(self.store.data_ranges(o.key).await),
            });
        }
        Ok(out)
    }

    /// The per-object lock used for ordering writes, truncates and rebuild copies.
    pub fn obj_lock(&self, key: ObjectKey) -> Arc<RangeLock> {
        let mut g = lock(&self.locks);
        g.entry(key).or_default().clone()
    }

    /// Chains with tracked syncing state.
    pub fn tracker_chains(&self) -> Vec<ChainId> {
        self.tracker.chains()
    }

    /// Drops locks of idle objects (called periodically).
    pub fn gc_locks(&self) {
        let mut g = lock(&self.locks);
        g.retain(|_, l| Arc::strong_count(l) > 1 || !l.is_idle());
    }

    fn position(&self, c: &Chain, hop: u32) -> FsResult<usize> {
        let route = c.route();
        let pos = route.iter().position(|s| *s == self.me).ok_or_else(|| {
            FsError::Invalid(format!(
                "server {} is not in chain {} version {}",
                self.me, c.id, c.version
            ))
        })?;
        if pos != hop as usize {
            return Err(FsError::Invalid(format!(
                "hop {hop} of chain {} version {} reached server {} at position {pos}",
                c.id, c.version, self.me
            )));
        }
        Ok(pos)
    }

    fn next_addr(&self, c: &Chain, pos: usize) -> FsResult<Option<String>> {
        let route = c.route();
        match route.get(pos + 1) {
            None => Ok(None),
            Some(s) => self
                .addr_of(*s)
                .map(Some)
                .ok_or_else(|| FsError::Unavailable(format!("no address known for server {s}"))),
        }
    }

    /// Chain write: verify, order, persist, forward; returns the object size.
    #[tracing::instrument(level = "debug", name = "chain_write", skip_all, fields(chain = %w.chain, key = ?w.key, off = w.off, len = w.data.len(), hop = w.hop))]
    pub async fn write(&self, w: WriteArgs) -> FsResult<u64> {
        let c = self.check_chain(w.chain, w.version).await?;
        let pos = self.position(&c, w.hop)?;
        // Past the largest object: refused here, before anything is written or forwarded,
        // so the next member never sees it.
        let end = cirrus_types::limits::check_file_range(w.off, w.data.len() as u64)?;
        verify_pieces(w.off, &w.data, &w.crcs)?;
        let lock = self.obj_lock(w.key);
        let _g = lock.lock(align_down(w.off), align_up(end)).await;
        let syncing = pos >= c.members.len();
        if syncing {
            self.tracker
                .note_write(c.id, w.key, w.off / BLOCK, end.div_ceil(BLOCK));
        }
        let size = if syncing && (!w.off.is_multiple_of(BLOCK) || !end.is_multiple_of(BLOCK)) {
            self.write_blocks_from_tail(&c, &w, end).await?
        } else {
            // The piece crcs were verified above: the store keeps them as block crcs.
            self.with_repair(&c, w.key, || {
                self.store
                    .write_owned(c.id, w.key, w.off, w.data.clone(), &w.crcs)
            })
            .await?
        };
        if w.sync {
            self.store.sync(w.key).await?;
        }
        self.stats.writes.inc();
        self.stats.write_bytes.add(w.data.len() as u64);
        if let Some(next) = self.next_addr(&c, pos)? {
            let mut fw = w.clone();
            fw.hop += 1;
            self.peers.write(&next, &fw).await?;
        }
        self.still_at(&c)?;
        Ok(size)
    }

    /// `copy_file_range` without the bytes crossing the client: `len` bytes (at most
    /// `MAX_COPY`) of object `src` at `src_off` of chain `src_chain`, read from this
    /// server's own copy when it is a readable member of that chain, else from its members
    /// tail first (each verified by its crcs; zeros past the object's end), are written at
    /// `w.off` of `w.key` through `w.chain`, of which this server must be the head, as a
    /// client's write: same ordering, crcs and forwarding.
    pub async fn copy(
        &self,
        mut w: WriteArgs,
        src_chain: ChainId,
        src_version: ChainVersion,
        src: ObjectKey,
        src_off: u64,
        len: u32,
    ) -> FsResult<()> {
        if len > cirrus_types::limits::MAX_COPY {
            return Err(FsError::Invalid(format!(
                "copy of {len} bytes: at most {} per call",
                cirrus_types::limits::MAX_COPY
            )));
        }
        if w.hop != 0 {
            return Err(FsError::Invalid(
                "a copy is sent to the head of its chain".into(),
            ));
        }
        cirrus_types::limits::check_file_range(src_off, len as u64)?;
        cirrus_types::limits::check_file_range(w.off, len as u64)?;
        let _slot = self.copies.try_acquire().map_err(|_| {
            FsError::Unavailable(format!(
                "{MAX_COPIES} copies already in flight on this server"
            ))
        })?;
        // The destination first: a stale or wrong head reads nothing.
        let c = self.check_chain(w.chain, w.version).await?;
        self.position(&c, 0)?;
        let sc = self.check_chain(src_chain, src_version).await?;
        let mut data = if sc.members.contains(&self.me) {
            self.read(src_chain, src_version, src, src_off, len, false)
                .await?
                .data
                .to_vec()
        } else {
            let mut last = FsError::Unavailable(format!("chain {src_chain} has no members"));
            let mut got = None;
            for m in sc.members.iter().rev() {
                let Some(addr) = self.addr_of(*m) else {
                    last = FsError::Unavailable(format!("no address known for server {m}"));
                    continue;
                };
                match self.peers.read(&addr, &sc, src, src_off, len, false).await {
                    Ok((d, _)) => {
                        got = Some(d.to_vec());
                        break;
                    }
                    Err(e @ FsError::StaleChain { .. }) => return Err(e),
                    Err(e) => last = e,
                }
            }
            got.ok_or(last)?
        };
        data.resize(len as usize, 0);
        w.crcs = cirrus_types::checksum::piece_crcs(w.off, &data);
        w.data = Bytes::from(data);
        self.write(w).await?;
        self.stats.copied_bytes.add(len as u64);
        Ok(())
    }

    /// An unaligned write reaching a member that is still syncing. Its edge blocks may hold
    /// bytes rebuild has not copied yet, so a local read-modify-write would persist a block
    /// that is right only where this write covers it, and rebuild skips blocks a chain
    /// write touched. Instead the whole blocks come from the tail member: it has applied
    /// this write (members persist before forwarding) and holds the range locked until
    /// this server answers, so its blocks are exactly the state after this write.
    async fn write_blocks_from_tail(&self, c: &Chain, w: &WriteArgs, end: u64) -> FsResult<u64> {
        let (a, b) = (align_down(w.off), align_up(end));
        let (mut buf, _) = self.tail_blocks(c, w.key, a, b).await?;
        let at = (w.off - a) as usize;
        if buf[at..at + w.data.len()] != w.data[..] {
            return Err(FsError::Io(format!(
                "the tail of chain {} version {} holds other bytes than the write it forwarded for {:?} at {}",
                c.id, c.version, w.key, w.off
            )));
        }
        buf.resize((b - a) as usize, 0);
        Ok(self.store.put_blocks(c.id, w.key, a, &buf, end).await?)
    }

    /// Blocks `[a, b)` (aligned byte offsets) of the tail member's copy, zero-filled past
    /// its object end, and the tail's size of the object.
    async fn tail_blocks(
        &self,
        c: &Chain,
        key: ObjectKey,
        a: u64,
        b: u64,
    ) -> FsResult<(Vec<u8>, u64)> {
        let tail = c.members.last().filter(|s| **s != self.me).ok_or_else(|| {
            FsError::Unavailable(format!("chain {} has no member to sync from", c.id))
        })?;
        let addr = self
            .addr_of(*tail)
            .ok_or_else(|| FsError::Unavailable(format!("no address known for server {tail}")))?;
        let (data, size) = self
            .peers
            .read(&addr, c, key, a, (b - a) as u32, true)
            .await?;
        let mut buf = data.to_vec();
        buf.resize((b - a) as usize, 0);
        Ok((buf, size))
    }

    /// Runs a store operation; on a checksum failure of blocks it must read (an edge
    /// block), repairs them from another member and runs it once more.
    async fn with_repair<'a, T, F>(&'a self, c: &Chain, key: ObjectKey, op: F) -> FsResult<T>
    where
        F: Fn() -> futures::future::BoxFuture<'a, Result<T, StoreError>>,
    {
        match op().await {
            Err(StoreError::Corrupt { blocks, .. }) => {
                self.stats.corrupt_blocks.add(blocks.len() as u64);
                self.repair(c, key, &blocks).await?;
                Ok(op().await?)
            }
            r => Ok(r?),
        }
    }

    /// Rewrites `blocks` of `key` from the first other member with a good copy.
    #[tracing::instrument(level = "debug", skip(self, c, blocks), fields(chain = %c.id, blocks = blocks.len()))]
    pub async fn repair(&self, c: &Chain, key: ObjectKey, blocks: &[u64]) -> FsResult<()> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut sorted = blocks.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for b in sorted {
            match runs.last_mut() {
                Some((_, e)) if *e == b => *e += 1,
                _ => runs.push((b, b + 1)),
            }
        }
        let others: Vec<ServerId> = c
            .members
            .iter()
            .copied()
            .filter(|s| *s != self.me)
            .collect();
        for (first, end) in runs {
            let off = first * BLOCK;
            let len = ((end - first) * BLOCK) as u32;
            let mut last = FsError::Checksum(format!(
                "blocks {first}..{end} of {key:?} are bad and chain {} has no other member",
                c.id
            ));
            let mut fixed = false;
            for s in &others {
                let Some(addr) = self.addr_of(*s) else {
                    continue;
                };
                match self.peers.read(&addr, c, key, off, len, true).await {
                    Ok((data, _)) => {
                        let mut buf = data.to_vec();
                        buf.resize(len as usize, 0);
                        self.store.put_blocks(c.id, key, off, &buf, 0).await?;
                        self.stats.repaired_blocks.add(end - first);
                        tracing::warn!(
                            ?key, chain = %c.id, from = %addr, first, end,
                            "repaired blocks [first, end) from another member"
                        );
                        fixed = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(?key, from = %addr, err = %e, "repair read failed");
                        last = e;
                    }
                }
            }
            if !fixed {
                return Err(last);
            }
        }
        Ok(())
    }

    /// Read from a member: verified locally, repaired from another member on a bad
    /// block unless `local_only`. Returns the bytes, their piece crcs and the object size.
    #[tracing::instrument(level = "debug", name = "chain_read", skip(self))]
    pub async fn read(
        &self,
        chain: ChainId,
        version: ChainVersion,
        key: ObjectKey,
        off: u64,
        len: u32,
        local_only: bool,
    ) -> FsResult<ReadOut> {
        let c = self.check_chain(chain, version).await?;
        if !c.members.contains(&self.me) {
            return Err(FsError::Unavailable(format!(
                "server {} is not a readable member of chain {} version {} (catching up or absent)",
                self.me, c.id, c.version
            )));
        }
        if off > cirrus_types::MAX_FILE_SIZE {
            return Err(FsError::Invalid(format!(
                "read offset {off} past the largest object ({})",
                cirrus_types::MAX_FILE_SIZE
            )));
        }
        if len > MAX_READ {
            return Err(FsError::Invalid(format!(
                "read of {len} bytes: at most {MAX_READ} per request"
            )));
        }
        let r = match self.store.read(key, off, len as usize).await {
            Err(StoreError::Corrupt { blocks, .. }) if !local_only => {
                self.stats.corrupt_blocks.add(blocks.len() as u64);
                tracing::error!(?key, ?blocks, "checksum mismatch on read, repairing");
                self.repair(&c, key, &blocks).await?;
                self.store.read(key, off, len as usize).await?
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                if let StoreError::Corrupt { blocks, .. } = &e {
                    self.stats.corrupt_blocks.add(blocks.len() as u64);
                }
                return Err(e.into());
            }
            r => r?,
        };
        self.stats.reads.inc();
        self.stats.read_bytes.add(r.data.len() as u64);
        Ok(r)
    }

    /// fdatasync of each object here, then downstream.
    #[tracing::instrument(level = "debug", name = "chain_sync", skip(self, keys), fields(objects = keys.len()))]
    pub async fn sync(
        &self,
        chain: ChainId,
        version: ChainVersion,
        keys: &[ObjectKey],
        hop: u32,
    ) -> FsResult<()> {
        let c = self.check_chain(chain, version).await?;
        let pos = self.position(&c, hop)?;
        let rs = futures::future::join_all(keys.iter().map(|k| self.store.sync(*k))).await;
        for r in rs {
            r?;
        }
        if let Some(next) = self.next_addr(&c, pos)? {
            self.peers.sync(&next, &c, keys, hop + 1).await?;
        }
        Ok(())
    }

    /// Truncate here, then downstream.
    #[tracing::instrument(level = "debug", name = "chain_truncate", skip(self))]
    pub async fn truncate(
        &self,
        chain: ChainId,
        version: ChainVersion,
        key: ObjectKey,
        size: u64,
        hop: u32,
    ) -> FsResult<()> {
        cirrus_types::limits::check_file_size(size)?;
        let c = self.check_chain(chain, version).await?;
        let pos = self.position(&c, hop)?;
        let lock = self.obj_lock(key);
        let _g = lock.lock(align_down(size), u64::MAX).await;
        let syncing = pos >= c.members.len();
        if syncing {
            self.tracker.note_truncate(c.id, key, size);
        }
        self.with_repair(&c, key, || self.store.truncate(c.id, key, size))
            .await?;
        if syncing && !size.is_multiple_of(BLOCK) {
            // The kept head of the new last block may not have been copied yet (see
            // write_blocks_from_tail); the tail member has applied this truncate.
            let a = align_down(size);
            let (blk, _) = self.tail_blocks(&c, key, a, a + BLOCK).await?;
            self.store.put_blocks(c.id, key, a, &blk, size).await?;
        }
        if let Some(next) = self.next_addr(&c, pos)? {
            self.peers.truncate(&next, &c, key, size, hop + 1).await?;
        }
        self.still_at(&c)?;
        Ok(())
    }

    /// Makes `[off, off + len)` of the object read as zeros here, then downstream
    /// (fallocate PUNCH_HOLE / ZERO_RANGE); the size does not change.
    #[tracing::instrument(level = "debug", name = "chain_punch", skip(self))]
    pub async fn punch(
        &self,
        chain: ChainId,
        version: ChainVersion,
        key: ObjectKey,
        off: u64,
        len: u64,
        hop: u32,
    ) -> FsResult<()> {
        let end = cirrus_types::limits::check_file_range(off, len)?;
        let c = self.check_chain(chain, version).await?;
        let pos = self.position(&c, hop)?;
        let lock = self.obj_lock(key);
        let (a, b) = (align_down(off), end.div_ceil(BLOCK) * BLOCK);
        let _g = lock.lock(a, b).await;
        let syncing = pos >= c.members.len();
        if syncing {
            self.tracker.note_punch(c.id, key, a / BLOCK, b / BLOCK);
        }
        self.with_repair(&c, key, || self.store.punch(c.id, key, off, len))
            .await?;
        if syncing {
            // The kept bytes of a partial edge block may not have been copied here yet,
            // and rebuild now skips the block: take it from the tail, which has applied
            // this punch.
            let mut edges = Vec::new();
            if off != a {
                edges.push(a);
            }
            if end != b && edges.first() != Some(&(b - BLOCK)) {
                edges.push(b - BLOCK);
            }
            for e in edges {
                let (blk, tail_size) = self.tail_blocks(&c, key, e, e + BLOCK).await?;
                if e < tail_size {
                    self.store
                        .put_blocks(c.id, key, e, &blk, tail_size.min(e + BLOCK))
                        .await?;
                }
            }
        }
        if let Some(next) = self.next_addr(&c, pos)? {
            self.peers.punch(&next, &c, key, off, len, hop + 1).await?;
        }
        self.still_at(&c)?;
        Ok(())
    }

    /// Local delete (garbage collection).
    pub async fn delete(&self, keys: &[ObjectKey]) -> FsResult<()> {
        for k in keys {
            let lock = self.obj_lock(*k);
            let _g = lock.lock(0, u64::MAX).await;
            self.store.delete(*k).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
