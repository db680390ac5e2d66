//! Rebuild: when this server appears in a chain's `syncing` list, copy every object of
//! that chain from a member (ListObjects + verified ranged reads), throttled, resumable
//! after a restart, while new chain writes keep arriving; then report the chain as caught
//! up in heartbeats so meta promotes it to `members`.
//!
//! Why the copy never overwrites newer data: members persist a write before forwarding
//! it, and syncing members sit at the end of the route, so anything applied here was
//! already applied at the source. Every chain write or truncate that reaches this server
//! as a syncing member bumps a per-object generation (and records its blocks). A copy
//! step reads the generation, reads the source, takes the object's range lock, and
//! writes only if the generation did not move: then the source bytes include every
//! operation applied here. If it moved, the step is retried; after a few tries (an object
//! under constant writes) it writes only blocks no chain operation touched since the
//! sync began.
//!
//! Progress (`<dir>/rebuild/<chain>.json`) is the last fully copied object key, valid only
//! for the chain version it was recorded at: a version change while this server was down
//! may mean it was dropped and re-added, so the copy starts over.

use crate::node::{ChainEntry, Node};
use crate::store::BLOCK;
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
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
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

    pub fn gen(&self, chain: ChainId, key: ObjectKey) -> u64 {
        self.with(|m| m.get(&chain).and_then(|c| c.get(&key)).map_or(0, |t| t.gen))
    }

    fn touched(&self, chain: ChainId, key: ObjectKey) -> (BTreeSet<u64>, Option<u64>) {
        self.with(|m| {
            m.get(&chain)
                .and_then(|c| c.get(&key))
                .map(|t| (t.dirty.clone(), t.trunc_at))
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
    done: Arc<Mutex<HashSet<ChainId>>>,
}

impl Rebuilds {
    pub fn new(cfg: RebuildConfig) -> Rebuilds {
        Rebuilds {
            cfg,
            running: HashMap::new(),
            done: Arc::new(Mutex::new(HashSet::new())),
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
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        // Chains we no longer sync into (promoted, or dropped): forget their state.
        let gone: Vec<ChainId> = done
            .iter()
            .filter(|id| !syncing.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            done.remove(&id);
        }
        for id in node.tracker_chains() {
            if !syncing.contains_key(&id) {
                node.tracker.clear(id);
                let _ = std::fs::remove_file(progress_path(&self.cfg.dir, id));
            }
        }
        for (id, _) in syncing {
            if self.running.contains_key(&id) || done.contains(&id) {
                continue;
            }
            let (node, cfg, done_set) = (node.clone(), self.cfg.clone(), self.done.clone());
            tracing::info!(chain = %id, "this server is syncing into chain: starting rebuild");
            self.running.insert(
                id,
                tokio::spawn(async move {
                    loop {
                        match rebuild_chain(&node, &cfg, id).await {
                            Ok(()) => {
                                done_set
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(id);
                                tracing::info!(chain = %id, "rebuild complete, reporting caught up");
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(chain = %id, "rebuild interrupted, retrying: {e}");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                let _ = node.refresh().await;
                            }
                        }
                    }
                }),
            );
        }
    }

    pub fn caught_up(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| c.0)
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

fn current(node: &Node, id: ChainId) -> FsResult<ChainEntry> {
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

/// One full pass of copying `id` from a member. Resumes from saved progress.
async fn rebuild_chain(node: &Arc<Node>, cfg: &RebuildConfig, id: ChainId) -> FsResult<()> {
    let c = current(node, id)?;
    let mut p = match load_progress(&cfg.dir, id) {
        Some(p) if p.version == c.version.0 => p,
        _ => Progress {
            version: c.version.0,
            ..Progress::default()
        },
    };
    if p.done {
        return Ok(());
    }
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
    let mut list = node.peers.list(&src, id).await?;
    list.sort_by_key(|(k, _)| (k.inode.0, k.index));
    let total: u64 = list.iter().map(|(_, s)| *s).sum();
    tracing::info!(chain = %id, from = %src, objects = list.len(), bytes = total, resume_after = ?p.cursor, "rebuild pass");
    let mut throttle = Throttle::new(cfg.rate);
    for (key, listed_size) in &list {
        if let Some(cur) = p.cursor {
            if (key.inode.0, key.index) <= cur {
                continue;
            }
        }
        let n = copy_object(node, id, &src, *key, *listed_size, &mut throttle).await?;
        p.copied_bytes += n;
        p.cursor = Some((key.inode.0, key.index));
        p.version = current(node, id)?.version.0;
        save_progress(&cfg.dir, id, &p)?;
    }
    // Objects here that the source does not have (deleted while this server was away),
    // untouched by any chain operation since: remove them.
    let theirs: HashSet<ObjectKey> = list.iter().map(|(k, _)| *k).collect();
    for o in node.store.list() {
        if o.chain == id && !theirs.contains(&o.key) && node.tracker.gen(id, o.key) == 0 {
            let lock = node.obj_lock(o.key);
            let _g = lock.lock(0, u64::MAX).await;
            if node.tracker.gen(id, o.key) == 0 {
                node.store.delete(o.key).await?;
            }
        }
    }
    p.done = true;
    p.version = current(node, id)?.version.0;
    save_progress(&cfg.dir, id, &p)?;
    Ok(())
}

/// Copies one object up to `listed_size`, its size when this pass listed the source, or
/// to its end if that comes first; returns the bytes copied. Bytes past the listed size
/// were written after this server joined the chain as syncing, so they reach it through
/// the chain itself: chasing them let a copy that streaming writers outpace run forever.
async fn copy_object(
    node: &Arc<Node>,
    id: ChainId,
    src: &str,
    key: ObjectKey,
    listed_size: u64,
    throttle: &mut Throttle,
) -> FsResult<u64> {
    let mut off = 0u64;
    let mut copied = 0u64;
    loop {
        let mut tries = 0;
        let (n, at_end) = loop {
            tries += 1;
            let c = current(node, id)?;
            let g1 = node.tracker.gen(id, key);
            let (data, size) = node.peers.read(src, &c, key, off, CHUNK, true).await?;
            let natural_end = (data.len() as u32) < CHUNK;
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
                if clean {
                    node.store
                        .put_blocks(id, key, off, &buf, logical_end)
                        .await?;
                } else {
                    // Under constant writes: skip every block a chain operation touched.
                    let (dirty, trunc_at) = node.tracker.touched(id, key);
                    let first = off / BLOCK;
                    for (i, blk) in buf.chunks(BLOCK as usize).enumerate() {
                        let b = first + i as u64;
                        let b_end = (b + 1) * BLOCK;
                        if dirty.contains(&b) || trunc_at.is_some_and(|t| b_end > t) {
                            continue;
                        }
                        node.store
                            .put_blocks(id, key, b * BLOCK, blk, logical_end.min(b_end))
                            .await?;
                    }
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
