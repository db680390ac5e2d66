//! Rebuild: when this server appears in a chain's `syncing` list, copy every object of
//! that chain from a member (ListObjects + verified ranged reads), throttled, resumable
//! after a restart, while new chain writes keep arriving; then report the chain as caught
//! up in heartbeats so meta promotes it to `members`.
//!
//! Why the copy never overwrites newer data: members persist a write before forwarding
//! it, and syncing members sit at the end of the route, so anything applied here was
//! already applied at the source. Every chain write, truncate or punch that reaches this server
//! as a syncing member bumps a per-object generation (and records its blocks). A copy
//! step reads the generation, reads the source, takes the object's range lock, and
//! writes only if the generation did not move: then the source bytes include every
//! operation applied here. If it moved, the step is retried; after a few tries (an object
//! under constant writes) it writes only blocks no chain operation touched since the
//! sync began.
//!
//! A pass is valid for one chain version: the version this server's table had when it
//! listed the source (the source refuses an older one and refreshes to a newer one, and
//! members answer a write only if their version did not move while they applied it, so
//! every write acknowledged at an older version is in the listing). Any version change
//! during the pass (this server may have been dropped and re-added meanwhile, missing
//! writes acknowledged without it) starts a new pass. The caught-up report names the
//! version, and meta promotes only at exactly that version.
//!
//! Progress (`<dir>/rebuild/<chain>.json`) is the last fully copied object key of the pass
//! at the version it records; a pass at another version starts over.
//!
//! A block that fails its crc on the source is taken from another member; when no member
//! has it good, it is written here as lost (a crc that can never match, so reads of it
//! fail with EIO, never return wrong bytes), counted in `cirrus_data_lost_blocks_total`
//! and logged, and the rebuild goes on: the chain gets back to full R.

use crate::node::Node;
use crate::store::BLOCK;
use cirrus_types::Chain;
use cirrus_types::{ChainId, ChainVersion, FsError, FsResult, ObjectKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Copy unit: one ranged read from the source.
const CHUNK: u32 = 1 << 20;
/// Tries of one copy step before falling back to skipping touched blocks.
const CLEAN_TRIES: usize = 4;

#[derive(Default)]
struct ObjTrack {
    gen: u64,
    dirty: BTreeSet<u64>,
    trunc_at: Option<u64>,
    /// Block ranges `[first, end)` punched (a punch may name petabytes: kept as ranges).
    punched: Vec<(u64, u64)>,
}

/// What chain operations touched an object during a pass.
#[derive(Default)]
struct Touched {
    dirty: BTreeSet<u64>,
    trunc_at: Option<u64>,
    punched: Vec<(u64, u64)>,
}

impl Touched {
    /// Whether block `b` was touched.
    fn block(&self, b: u64) -> bool {
        self.dirty.contains(&b)
            || self.trunc_at.is_some_and(|t| (b + 1) * BLOCK > t)
            || self.punched.iter().any(|r| r.0 <= b && b < r.1)
    }
}

/// Chain operations seen while syncing, per chain and object.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<HashMap<ChainId, HashMap<ObjectKey, ObjTrack>>>,
}

impl Tracker {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<ChainId, HashMap<ObjectKey, ObjTrack>>) -> T,
    ) -> T {
        f(&mut cirrus_types::sync::lock(&self.inner))
    }

    pub fn note_write(&self, chain: ChainId, key: ObjectKey, first: u64, end: u64) {
        self.with(|m| {
            let t = m.entry(chain).or_default().entry(key).or_default();
            t.gen += 1;
            t.dirty.extend(first..end);
        })
    }

    pub fn note_truncate(&self, chain: ChainId, key: ObjectKey, size: u64) {
        self.with(|m| {
            let t = m.entry(chain).or_default().entry(key).or_default();
            t.gen += 1;
            t.trunc_at = Some(t.trunc_at.map_or(size, |s| s.min(size)));
        })
    }

    pub fn note_punch(&self, chain: ChainId, key: ObjectKey, first: u64, end: u64) {
        self.with(|m| {
            let t = m.entry(chain).or_default().entry(key).or_default();
            t.gen += 1;
            t.punched.push((first, end));
        })
    }

    /// A new pass begins: operations from now on are the ones a copy must not overwrite
    /// (everything applied here before is already at the source, which persists first,
    /// and every source read of the pass comes later). Generations keep counting.
    fn begin_pass(&self, chain: ChainId) {
        self.with(|m| {
            if let Some(c) = m.get_mut(&chain) {
                for t in c.values_mut() {
                    t.dirty.clear();
                    t.trunc_at = None;
                    t.punched.clear();
                }
            }
        })
    }

    pub fn gen(&self, chain: ChainId, key: ObjectKey) -> u64 {
        self.with(|m| m.get(&chain).and_then(|c| c.get(&key)).map_or(0, |t| t.gen))
    }

    fn touched(&self, chain: ChainId, key: ObjectKey) -> Touched {
        self.with(|m| {
            m.get(&chain)
                .and_then(|c| c.get(&key))
                .map(|t| Touched {
                    dirty: t.dirty.clone(),
                    trunc_at: t.trunc_at,
                    punched: t.punched.clone(),
                })
                .unwrap_or_default()
        })
    }

    pub fn chains(&self) -> Vec<ChainId> {
        self.with(|m| m.keys().copied().collect())
    }

    pub fn clear(&self, chain: ChainId) {
        self.with(|m| {
            m.remove(&chain);
        })
    }
}

#[derive(Serialize, Deserialize, Default, Debug)]
struct Progress {
    version: u64,
    cursor: Option<(u64, u32)>,
    done: bool,
    copied_bytes: u64,
}

fn progress_path(dir: &Path, chain: ChainId) -> PathBuf {
    dir.join("rebuild").join(format!("{}.json", chain.0))
}

fn load_progress(dir: &Path, chain: ChainId) -> Option<Progress> {
    let b = std::fs::read(progress_path(dir, chain)).ok()?;
    serde_json::from_slice(&b).ok()
}

fn save_progress(dir: &Path, chain: ChainId, p: &Progress) -> FsResult<()> {
    let path = progress_path(dir, chain);
    let io = |e: std::io::Error| FsError::Io(format!("save rebuild progress: {e}"));
    std::fs::create_dir_all(path.parent().unwrap_or(dir)).map_err(io)?;
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(p).map_err(|e| FsError::Io(e.to_string()))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Settings of rebuild.
#[derive(Clone, Debug)]
pub struct RebuildConfig {
    /// Directory holding progress files.
    pub dir: PathBuf,
    /// Copy rate limit, bytes per second.
    pub rate: u64,
}

/// A byte-rate limiter: callers sleep so that their running average stays under `rate`.
pub struct Throttle {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            rate: rate.max(1),
            start: Instant::now(),
            bytes: 0,
        }
    }
    pub async fn take(&mut self, n: u64) {
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let el = self.start.elapsed();
        if due > el {
            tokio::time::sleep(due - el).await;
        }
        // Restart the window now and then so an idle spell does not become a burst.
        if self.start.elapsed() > Duration::from_secs(10) {
            self.start = Instant::now();
            self.bytes = 0;
        }
    }
}

/// The rebuild tasks of this server.
pub struct Rebuilds {
    cfg: RebuildConfig,
    running: HashMap<ChainId, tokio::task::JoinHandle<()>>,
    /// Chains copied completely, with the chain version each copy is valid for.
    done: Arc<Mutex<HashMap<ChainId, ChainVersion>>>,
}

impl Rebuilds {
    pub fn new(cfg: RebuildConfig) -> Rebuilds {
        Rebuilds {
            cfg,
            running: HashMap::new(),
            done: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Starts, keeps or stops tasks to match the chain table.
    pub fn reconcile(&mut self, node: &Arc<Node>) {
        let t = node.table();
        let syncing: HashMap<ChainId, ChainVersion> = t
            .chains
            .values()
            .filter(|c| c.syncing.contains(&node.me))
            .map(|c| (c.id, c.version))
            .collect();
        self.running.retain(|id, h| {
            if !syncing.contains_key(id) {
                h.abort();
                return false;
            }
            !h.is_finished()
        });
        let mut done = cirrus_types::sync::lock(&self.done);
        // Chains we no longer sync into (promoted, or dropped), and copies made at another
        // version than the table's (the chain changed: it is copied again): forget them.
        done.retain(|id, v| syncing.get(id) == Some(v));
        for id in node.tracker_chains() {
            if !syncing.contains_key(&id) {
                node.tracker.clear(id);
                let _ = std::fs::remove_file(progress_path(&self.cfg.dir, id));
            }
        }
        for (id, _) in syncing {
            if self.running.contains_key(&id) || done.contains_key(&id) {
                continue;
            }
            let (node, cfg, done_set) = (node.clone(), self.cfg.clone(), self.done.clone());
            tracing::info!(chain = %id, "this server is syncing into chain: starting rebuild");
            self.running.insert(
                id,
                tokio::spawn(async move {
                    loop {
                        match rebuild_chain(&node, &cfg, id).await {
                            Ok(version) => {
                                done_set
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(id, version);
                                tracing::info!(chain = %id, %version, "rebuild complete, reporting caught up");
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(chain = %id, err = %e, "rebuild interrupted, retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                let _ = node.refresh().await;
                            }
                        }
                    }
                }),
            );
        }
    }

    /// Chains copied completely, each with the version the copy is valid for.
    pub fn caught_up(&self) -> Vec<(ChainId, ChainVersion)> {
        let mut v: Vec<(ChainId, ChainVersion)> = self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, v)| (*c, *v))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn rebuilding(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .running
            .iter()
            .filter(|(_, h)| !h.is_finished())
            .map(|(c, _)| c.0)
            .collect();
        v.sort_unstable();
        v
    }
}

impl Drop for Rebuilds {
    fn drop(&mut self) {
        for h in self.running.values() {
            h.abort();
        }
    }
}

fn current(node: &Node, id: ChainId) -> FsResult<Chain> {
    let c = node
        .chain(id)
        .ok_or_else(|| FsError::Unavailable(format!("chain {id} vanished")))?;
    if !c.syncing.contains(&node.me) {
        return Err(FsError::Unavailable(format!(
            "no longer syncing into chain {id}"
        )));
    }
    Ok(c)
}

/// The chain as the pass at `version` sees it; any other version ends the pass.
fn at_version(node: &Node, id: ChainId, version: ChainVersion) -> FsResult<Chain> {
    let c = current(node, id)?;
    if c.version != version {
        return Err(FsError::StaleChain { current: c.version });
    }
    Ok(c)
}

/// One full pass of copying `id` from a member, at the chain version this server holds
/// now; returns that version. Resumes from progress saved at the same version.
async fn rebuild_chain(
    node: &Arc<Node>,
    cfg: &RebuildConfig,
    id: ChainId,
) -> FsResult<ChainVersion> {
    let c = current(node, id)?;
    let version = c.version;
    let mut p = match load_progress(&cfg.dir, id) {
        Some(p) if p.version == version.0 => p,
        _ => Progress {
            version: version.0,
            ..Progress::default()
        },
    };
    if p.done {
        return Ok(version);
    }
    node.tracker.begin_pass(id);
    let source = c
        .members
        .iter()
        .rev()
        .find(|s| **s != node.me)
        .copied()
        .ok_or_else(|| FsError::Unavailable(format!("chain {id} has no member to copy from")))?;
    let src = node
        .addr_of(source)
        .ok_or_else(|| FsError::Unavailable(format!("no address for server {source}")))?;
    let mut list = node.peers.list(&src, id, version).await?;
    list.sort_by_key(|l| (l.key.inode.0, l.key.index));
    let total: u64 = list
        .iter()
        .map(|l| {
            l.ranges
                .as_ref()
                .map_or(l.size, |r| r.iter().map(|(s, e)| e - s).sum())
        })
        .sum();
    tracing::info!(chain = %id, from = %src, objects = list.len(), bytes = total, resume_after = ?p.cursor, "rebuild pass");
    let mut throttle = Throttle::new(cfg.rate);
    for l in &list {
        let key = &l.key;
        if let Some(cur) = p.cursor {
            if (key.inode.0, key.index) <= cur {
                continue;
            }
        }
        // What to copy: where the source holds data, and where this server still holds
        // bytes of its own (stale ones must be overwritten by the source's zeros); the
        // rest is a hole on both and a truncate to the size is all it needs.
        let ranges = match &l.ranges {
            Some(theirs) => Some(crate::store::crcmap::union(
                theirs,
                &node.store.data_ranges(*key).await,
            )),
            None => None,
        };
        let n = copy_object(
            node,
            id,
            version,
            &src,
            *key,
            l.size,
            ranges.as_deref(),
            &mut throttle,
        )
        .await?;
        p.copied_bytes += n;
        p.cursor = Some((key.inode.0, key.index));
        at_version(node, id, version)?;
        save_progress(&cfg.dir, id, &p)?;
    }
    // Objects here that the source does not have (deleted while this server was away),
    // untouched by any chain operation since: remove them.
    let theirs: HashSet<ObjectKey> = list.iter().map(|l| l.key).collect();
    for o in node.store.list() {
        if o.chain == id && !theirs.contains(&o.key) && node.tracker.gen(id, o.key) == 0 {
            let lock = node.obj_lock(o.key);
            let _g = lock.lock(0, u64::MAX).await;
            if node.tracker.gen(id, o.key) == 0 {
                node.store.delete(o.key).await?;
            }
        }
    }
    // Copies are plain writes: make them durable before this server may serve reads
    // (chain writes and syncs that reached it meanwhile were made durable by their sync).
    for l in &list {
        node.store.sync(l.key).await?;
    }
    at_version(node, id, version)?;
    p.done = true;
    save_progress(&cfg.dir, id, &p)?;
    Ok(version)
}

/// Copies one object up to `listed_size`, its size when this pass listed the source, or
/// to its end if that comes first; returns the bytes copied. Bytes past the listed size
/// were written after this server joined the chain as syncing, so they reach it through
/// the chain itself: chasing them let a copy that streaming writers outpace run forever.
/// With `ranges`, only those are read (holes are skipped, then the size is set).
#[allow(clippy::too_many_arguments)]
async fn copy_object(
    node: &Arc<Node>,
    id: ChainId,
    version: ChainVersion,
    src: &str,
    key: ObjectKey,
    listed_size: u64,
    ranges: Option<&[(u64, u64)]>,
    throttle: &mut Throttle,
) -> FsResult<u64> {
    let mut off = 0u64;
    let mut copied = 0u64;
    loop {
        if let Some(r) = ranges {
            // Past the last range: read at the listed size, which ends the copy through
            // the same short-read path (and sets the size) as a dense object's end.
            off = crate::store::crcmap::next_data(r, off)
                .unwrap_or(listed_size)
                .min(listed_size.max(off));
        }
        let mut tries = 0;
        let (n, at_end) = loop {
            tries += 1;
            let c = at_version(node, id, version)?;
            let g1 = node.tracker.gen(id, key);
            let mut chunk = read_chunk(node, &c, src, key, off, listed_size).await?;
            // Copy no further than the range being copied: past it is a hole (or the next
            // range, reached by the jump at the top of the loop).
            let mut cut = false;
            if let Some(end) = ranges.and_then(|r| crate::store::crcmap::range_end(r, off)) {
                let lim = (end - off).div_ceil(BLOCK) * BLOCK;
                if chunk.data.len() as u64 > lim {
                    chunk.data.truncate(lim as usize);
                    cut = true;
                }
            }
            let (data, size) = (&chunk.data, chunk.size);
            let natural_end = !cut && (data.len() as u32) < CHUNK;
            let at_end = natural_end || off + data.len() as u64 >= listed_size;
            let lock = node.obj_lock(key);
            let hi = if at_end {
                u64::MAX
            } else {
                off + data.len() as u64
            };
            let _g = lock.lock(off, hi).await;
            let clean = node.tracker.gen(id, key) == g1;
            if !clean && tries < CLEAN_TRIES {
                continue;
            }
            if !data.is_empty() {
                let mut buf = data.to_vec();
                buf.resize(
                    (data.len() as u64).div_ceil(BLOCK) as usize * BLOCK as usize,
                    0,
                );
                let logical_end = off + data.len() as u64;
                let first = off / BLOCK;
                if clean {
                    node.store
                        .put_blocks(id, key, off, &buf, logical_end)
                        .await?;
                    for b in &chunk.lost {
                        let end = logical_end.min((b + 1) * BLOCK);
                        node.store.put_lost_block(id, key, *b, end).await?;
                    }
                } else {
                    // Under constant writes: skip every block a chain operation touched.
                    let touched = node.tracker.touched(id, key);
                    for (i, blk) in buf.chunks(BLOCK as usize).enumerate() {
                        let b = first + i as u64;
                        let b_end = (b + 1) * BLOCK;
                        if touched.block(b) {
                            continue;
                        }
                        let end = logical_end.min(b_end);
                        if chunk.lost.contains(&b) {
                            node.store.put_lost_block(id, key, b, end).await?;
                        } else {
                            node.store.put_blocks(id, key, b * BLOCK, blk, end).await?;
                        }
                    }
                }
                if !chunk.lost.is_empty() {
                    node.stats.lost_blocks.add(chunk.lost.len() as u64);
                    tracing::error!(
                        ?key, chain = %id, blocks = ?chunk.lost,
                        "rebuild: no member has a good copy of these blocks; they are kept as lost (reads of them fail with EIO)"
                    );
                }
            }
            if natural_end && clean && node.store.size(key) != Some(size) {
                node.store.truncate(id, key, size).await?;
            }
            break (data.len() as u64, at_end);
        };
        copied += n;
        node.stats.rebuild_copied_bytes.add(n);
        throttle.take(n).await;
        off += n;
        if at_end {
            return Ok(copied);
        }
    }
}

/// One copy unit read from the source: its bytes (lost blocks as zeros), the object
/// size, and the blocks no member could give good bytes for.
struct Chunk {
    data: Vec<u8>,
    size: u64,
    lost: BTreeSet<u64>,
}

/// Reads up to `CHUNK` bytes at `off` from the source. When the source reports a bad
/// block, the chunk is read again block by block, each bad block from another member
/// (local-only reads, so no member starts a repair of its own) or else marked lost.
async fn read_chunk(
    node: &Arc<Node>,
    c: &Chain,
    src: &str,
    key: ObjectKey,
    off: u64,
    listed_size: u64,
) -> FsResult<Chunk> {
    match node.peers.read(src, c, key, off, CHUNK, true).await {
        Ok((data, size)) => {
            return Ok(Chunk {
                data: data.to_vec(),
                size,
                lost: BTreeSet::new(),
            })
        }
        Err(FsError::Checksum(e)) => {
            tracing::warn!(?key, chain = %c.id, from = %src, err = %e, "rebuild: bad block at the source; reading this chunk block by block");
        }
        Err(e) => return Err(e),
    }
    let others: Vec<String> = c
        .members
        .iter()
        .filter(|s| **s != node.me)
        .filter_map(|s| node.addr_of(*s))
        .filter(|a| a != src)
        .collect();
    let mut data = Vec::with_capacity(CHUNK as usize);
    let mut lost = BTreeSet::new();
    // Until some block tells the object size, assume the listed one.
    let mut size = None;
    let blocks = u64::from(CHUNK) / BLOCK;
    for i in 0..blocks {
        let at = off + i * BLOCK;
        let got = match node.peers.read(src, c, key, at, BLOCK as u32, true).await {
            Ok(r) => Some(r),
            Err(FsError::Checksum(_)) => {
                let mut good = None;
                for a in &others {
                    match node.peers.read(a, c, key, at, BLOCK as u32, true).await {
                        Ok(r) => {
                            tracing::warn!(?key, block = at / BLOCK, from = %a, "rebuild: took a block bad at the source from another member");
                            good = Some(r);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(?key, block = at / BLOCK, from = %a, err = %e, "rebuild: other member has no good copy either")
                        }
                    }
                }
                good
            }
            Err(e) => return Err(e),
        };
        let (bytes, len) = match got {
            Some((d, s)) => {
                size = Some(s);
                let len = d.len();
                (d.to_vec(), len)
            }
            None => {
                lost.insert(at / BLOCK);
                let end = size.unwrap_or(listed_size).max(at + 1);
                let len = (end - at).min(BLOCK) as usize;
                (vec![0u8; len], len)
            }
        };
        data.extend_from_slice(&bytes);
        if len < BLOCK as usize {
            break;
        }
    }
    let size = size.unwrap_or(listed_size).max(off + data.len() as u64);
    Ok(Chunk { data, size, lost })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeConfig;
    use crate::store::mem::MemStore;
    use crate::store::{ChunkStore, StoreError};
    use cirrus_proto::metrics::Registry;
    use cirrus_types::ChainTable;
    use cirrus_types::{ClusterId, InodeId, ServerId};

    fn key() -> ObjectKey {
        ObjectKey {
            inode: InodeId(7),
            index: 0,
        }
    }

    /// A node without meta, member of chain 1 at version 5, holding one object.
    async fn node() -> Node {
        let store = Arc::new(MemStore::new());
        store
            .write(ChainId(1), key(), 0, &[1u8; 8192])
            .await
            .expect("write");
        let mut t = ChainTable::default();
        t.chains.insert(
            ChainId(1),
            Chain {
                id: ChainId(1),
                version: ChainVersion(5),
                members: vec![ServerId(1)],
                syncing: vec![ServerId(2)],
            },
        );
        Node::new(
            store,
            ClusterId(1),
            ServerId(1),
            "127.0.0.1:1".into(),
            t,
            None,
            Registry::new(),
            NodeConfig::default(),
        )
    }

    #[tokio::test]
    async fn a_rebuild_listing_is_served_only_at_the_listers_chain_version() {
        let n = node().await;
        let at = |v: u64| n.list_objects(ChainId(1), ChainVersion(v));
        assert_eq!(
            at(5).await.expect("same version"),
            vec![crate::node::Listed {
                key: key(),
                size: 8192,
                ranges: Some(vec![(0, 8192)]),
            }]
        );
        // An older lister missed a bump: it must refresh and start over.
        assert_eq!(
            at(4).await,
            Err(FsError::StaleChain {
                current: ChainVersion(5)
            })
        );
        // A newer one: this server must learn that version first (no meta here).
        assert!(matches!(at(6).await, Err(FsError::Unavailable(_))));
        // Version 0: an unchecked listing (tools, tests).
        assert_eq!(at(0).await.expect("unchecked").len(), 1);
    }

    fn obj(inode: u64, index: u32) -> ObjectKey {
        ObjectKey {
            inode: InodeId(inode),
            index,
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i / 4096) as u8)
            .collect()
    }

    fn cfg(dir: &tempfile::TempDir) -> RebuildConfig {
        RebuildConfig {
            dir: dir.path().to_path_buf(),
            rate: 1 << 40,
        }
    }

    #[tokio::test]
    async fn a_rebuild_pass_makes_the_syncing_member_a_copy_of_the_tail() {
        use crate::testing::{chain, contents, write_args, Cluster};
        let c = chain(1, 3, &[1, 2], &[]);
        let cl = Cluster::new(3, std::slice::from_ref(&c));
        let (dense, sparse) = (obj(7, 0), obj(7, 1));
        let w = |k, off, d: &[u8]| cl.node(1).write(write_args(&c, k, off, d));
        w(dense, 0, &pattern(3 * 4096 + 100, 1))
            .await
            .expect("dense");
        w(sparse, 0, &pattern(10, 2)).await.expect("sparse head");
        w(sparse, 5 * BLOCK + 1, &pattern(10, 3))
            .await
            .expect("sparse tail");
        // A stale copy of an object deleted while server 3 was away.
        let gone = obj(9, 0);
        cl.store(3)
            .write(ChainId(1), gone, 0, &[5u8; 100])
            .await
            .expect("stale copy");
        let c4 = chain(1, 4, &[1, 2], &[3]);
        cl.set_chain_everywhere(&c4);
        let dir = tempfile::tempdir().expect("tempdir");
        let v = rebuild_chain(cl.node(3), &cfg(&dir), ChainId(1))
            .await
            .expect("pass");
        assert_eq!(v, ChainVersion(4));
        for k in [dense, sparse] {
            assert!(
                contents(cl.store(3), k).await == contents(cl.store(2), k).await,
                "{k:?} differs from the tail after the pass"
            );
        }
        assert_eq!(cl.store(3).size(gone), None, "a deleted object was kept");
    }

    /// A copy step reads the source, then takes the object's lock to write; a chain
    /// write landing between the two must not be overwritten by the older bytes read.
    #[tokio::test]
    async fn a_chain_write_landing_during_a_copy_step_is_not_overwritten_by_older_bytes() {
        use crate::testing::{chain, contents, write_args, Cluster};
        let c = chain(1, 3, &[1, 2], &[]);
        let cl = Cluster::new(3, std::slice::from_ref(&c));
        let k = obj(7, 0);
        cl.node(1)
            .write(write_args(&c, k, 0, &pattern(2 * 4096, 1)))
            .await
            .expect("before server 3 joins");
        let c4 = chain(1, 4, &[1, 2], &[3]);
        cl.set_chain_everywhere(&c4);
        let reads = cl.net.hold_replies("s2", "read");
        let dir = tempfile::tempdir().expect("tempdir");
        let (node, cfg) = (cl.node(3).clone(), cfg(&dir));
        let pass = tokio::spawn(async move { rebuild_chain(&node, &cfg, ChainId(1)).await });
        tokio::time::timeout(Duration::from_secs(5), reads.arrived(1))
            .await
            .expect("the pass reads the source");
        // The source has answered with the old block 0; a write replaces it meanwhile.
        cl.node(1)
            .write(write_args(&c4, k, 0, &pattern(4096, 9)))
            .await
            .expect("write during the pass");
        reads.resume();
        let v = tokio::time::timeout(Duration::from_secs(5), pass)
            .await
            .expect("the pass ends")
            .expect("pass task")
            .expect("pass");
        assert_eq!(v, ChainVersion(4));
        assert!(
            contents(cl.store(3), k).await == contents(cl.store(1), k).await,
            "the rebuilt copy lost the write that landed during its copy step"
        );
    }

    #[tokio::test]
    async fn a_block_bad_at_the_source_is_taken_from_another_member_else_kept_as_lost() {
        use crate::testing::{chain, contents, write_args, Cluster};
        let c = chain(1, 3, &[1, 2], &[]);
        let cl = Cluster::new(3, std::slice::from_ref(&c));
        let (k, both) = (obj(7, 0), obj(7, 1));
        let data = pattern(3 * 4096, 1);
        for o in [k, both] {
            cl.node(1)
                .write(write_args(&c, o, 0, &data))
                .await
                .expect("write");
        }
        // The source (the tail, server 2) has block 1 of each bad; the head has one good.
        assert!(cl.store(2).corrupt(k, 4096 + 3));
        assert!(cl.store(2).corrupt(both, 4096 + 3));
        assert!(cl.store(1).corrupt(both, 4096 + 4));
        cl.set_chain_everywhere(&chain(1, 4, &[1, 2], &[3]));
        let dir = tempfile::tempdir().expect("tempdir");
        rebuild_chain(cl.node(3), &cfg(&dir), ChainId(1))
            .await
            .expect("a pass finishes despite a block no member has good");
        assert!(
            contents(cl.store(3), k).await.0 == data,
            "block 1 not taken from the head"
        );
        match cl.store(3).read(both, 4096, 4096).await {
            Err(StoreError::Corrupt { blocks, .. }) => assert_eq!(blocks, vec![1]),
            other => panic!(
                "a block bad everywhere was copied: {:?}",
                other.map(|r| r.size)
            ),
        }
        let around = cl
            .store(3)
            .read(both, 2 * 4096, 4096)
            .await
            .expect("block 2");
        assert!(around.data[..] == data[2 * 4096..]);
        assert_eq!(cl.node(3).stats.lost_blocks.get(), 1);
    }

    #[tokio::test]
    async fn a_lost_block_fails_every_read_until_a_whole_block_write_replaces_it() {
        let s = MemStore::new();
        s.write(ChainId(1), key(), 0, &[3u8; 3 * 4096])
            .await
            .expect("write");
        s.put_lost_block(ChainId(1), key(), 1, 3 * 4096)
            .await
            .expect("lost");
        match s.read(key(), 0, 3 * 4096).await {
            Err(StoreError::Corrupt { blocks, .. }) => assert_eq!(blocks, vec![1]),
            other => panic!("a lost block was read: {:?}", other.map(|r| r.size)),
        }
        let around = s.read(key(), 2 * 4096, 4096).await.expect("block 2");
        assert_eq!(around.data, vec![3u8; 4096]);
        s.put_blocks(ChainId(1), key(), 4096, &[9u8; 4096], 3 * 4096)
            .await
            .expect("rewrite");
        let r = s.read(key(), 4096, 4096).await.expect("rewritten block");
        assert_eq!(r.data, vec![9u8; 4096]);
    }
}
