//! `FileStore`: objects as files under `<dir>/objects/<chain>/`, data opened O_DIRECT and
//! every data and sidecar read/write going through the io_uring driver. The sidecar
//! (`format.rs`) is opened buffered: its writes are a few bytes per 4 KiB of data and
//! O_DIRECT would turn each into a 4 KiB read-modify-write.
//!
//! Space: ext4 collapses on extending O_DIRECT writes at queue depth > 1, so data files
//! are pre-extended with fallocate(mode 0) in growing steps (64 KiB doubling to 64 MiB)
//! and writes land inside allocated space. The file's length is therefore not the object
//! size; the logical size lives in the sidecar header. ENOSPC surfaces from fallocate,
//! before any data is written, so a full disk fails the write cleanly.
//!
//! Sparse: a write far past the allocated end allocates around itself only (the gap stays
//! a hole of the data file), a truncate up allocates nothing, the crcs are a sparse map
//! (`crcmap.rs`) and the sidecar holds only written blocks' crcs (`format.rs`, version 2),
//! so memory and disk follow the bytes written, never the size a caller set.
//!
//! Large objects: an object's bytes live in 4 TiB segment files (`segments.rs`), because
//! one ext4 file stops at 16 TiB and an object may be as long as the largest file.
//!
//! Crash order: data first, then the sidecar crcs and header. A crash between leaves
//! blocks whose crc does not match; reads report them and replication repairs them from
//! another member, which is also how any other torn state is healed.

use super::crcmap::CrcMap;
use super::format::{crc_offset, loaded_crc, stored_crc, Header, HEADER_LEN, VERSION_RAW};
use super::segments::{parse_segment_name, pieces, Segments};
use super::{
    bad_blocks_in, check_range, lost_block_crc, piece_crcs_from_blocks, zero_block_crc, ChunkStore,
    ObjectInfo, ReadOut, StoreError, StoreResult, BLOCK,
};
use crate::rangelock::RangeLock;
use crate::uring::{AlignedBuf, Ring};
use bytes::Bytes;
use cirrus_types::{ChainId, InodeId, ObjectKey};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// First allocation step. Small: every object pays it, and a 1 MiB step made each small
/// file cost 1 MiB of disk (a chaos soak filled its 256 MiB data disks with them).
const MIN_PREALLOC: u64 = 64 << 10;
const MAX_PREALLOC: u64 = 64 << 20;
/// fallocate mode that frees a range and keeps the file's length.
const PUNCH_MODE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

struct Meta {
    size: u64,
    /// The crc of every block of `size` (rounded up), sparse: holes implicit.
    crcs: CrcMap,
    /// Bytes allocated in the data file (its length).
    allocated: u64,
    /// Where the current run of allocation began (0, the start of the last write far
    /// past the end, or the length at load): steps grow with the run, not with the file's
    /// length, so an append after a jump to 2^40 takes 64 KiB, not 64 MiB.
    run_start: u64,
}

struct Obj {
    chain: ChainId,
    key: ObjectKey,
    data: Segments,
    side: Arc<File>,
    /// Held across sidecar IO so header writes land in order.
    meta: tokio::sync::Mutex<Meta>,
    /// Mirror of `Meta::size` for lock-free peeks (listing, heartbeats).
    size: AtomicU64,
    blocks: RangeLock,
}

pub struct FileStore {
    root: PathBuf,
    ring: Ring,
    direct: bool,
    objs: Mutex<HashMap<ObjectKey, Arc<Obj>>>,
    create: tokio::sync::Mutex<()>,
}

fn obj_dir(root: &Path, chain: ChainId) -> PathBuf {
    root.join("objects").join(chain.0.to_string())
}

fn base_name(key: ObjectKey) -> String {
    format!("{}_{}", key.inode.0, key.index)
}

fn parse_base(name: &str) -> Option<ObjectKey> {
    let stem = name.strip_suffix(".crc")?;
    let (ino, idx) = stem.split_once('_')?;
    Some(ObjectKey {
        inode: InodeId(ino.parse().ok()?),
        index: idx.parse().ok()?,
    })
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::from_io(what, e)
}

fn align_down(x: u64) -> u64 {
    x / BLOCK * BLOCK
}
fn align_up(x: u64) -> u64 {
    x.div_ceil(BLOCK) * BLOCK
}

/// Probes whether `dir`'s filesystem accepts O_DIRECT (open and an aligned write).
fn probe_direct(dir: &Path) -> std::io::Result<bool> {
    let p = dir.join(".odirect-probe");
    let _ = std::fs::remove_file(&p);
    let r = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p);
    let ok = match r {
        Ok(f) => {
            use std::os::unix::fs::FileExt;
            let buf = AlignedBuf::zeroed(BLOCK as usize);
            match f.write_at(buf.as_slice(), 0) {
                Ok(_) => true,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
                // A full disk: the open took O_DIRECT (filesystems that refuse it refuse
                // the open), and a full server must still start and serve reads.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    tracing::warn!(dir = %dir.display(), "the data disk is full: writes fail with ENOSPC until space is freed; reads are served");
                    true
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            tracing::warn!(dir = %dir.display(), "the data disk is full (no room for the O_DIRECT probe file): assuming O_DIRECT; reads are served");
            true
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
        Err(e) => return Err(e),
    };
    let _ = std::fs::remove_file(&p);
    Ok(ok)
}

impl FileStore {
    /// Opens (or creates) the store under `root` and loads every object's sidecar.
    pub fn open(root: &Path) -> StoreResult<FileStore> {
        std::fs::create_dir_all(root.join("objects")).map_err(io_err("create objects dir"))?;
        let direct = probe_direct(root).map_err(io_err("probe O_DIRECT"))?;
        if direct {
            tracing::info!(dir = %root.display(), "object files use O_DIRECT + io_uring");
        } else {
            tracing::warn!(
                dir = %root.display(),
                "the filesystem refuses O_DIRECT (EINVAL): using BUFFERED io for object files \
                 (page cache, slower and double-cached); put --dir on ext4/xfs for O_DIRECT"
            );
        }
        let ring = Ring::new(128).map_err(io_err("start io_uring"))?;
        let store = FileStore {
            root: root.to_path_buf(),
            ring,
            direct,
            objs: Mutex::new(HashMap::new()),
            create: tokio::sync::Mutex::new(()),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> StoreResult<()> {
        let objects = self.root.join("objects");
        let mut loaded = HashMap::new();
        for chain_ent in std::fs::read_dir(&objects).map_err(io_err("list objects dir"))? {
            let chain_ent = chain_ent.map_err(io_err("list objects dir"))?;
            let Some(chain) = chain_ent
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let mut ents = Vec::new();
            // Segment files past the first, by object base name.
            let mut extra: HashMap<String, Vec<u64>> = HashMap::new();
            for ent in std::fs::read_dir(chain_ent.path()).map_err(io_err("list chain dir"))? {
                let ent = ent.map_err(io_err("list chain dir"))?;
                if let Some((base, k)) = ent.file_name().to_str().and_then(parse_segment_name) {
                    extra.entry(base.to_string()).or_default().push(k);
                }
                ents.push(ent);
            }
            for ent in ents {
                let name = ent.file_name();
                let Some(key) = name.to_str().and_then(parse_base) else {
                    continue;
                };
                let segs = extra.get(&base_name(key)).map(Vec::as_slice).unwrap_or(&[]);
                match self.load_one(ChainId(chain), key, segs) {
                    Ok(o) => {
                        loaded.insert(key, Arc::new(o));
                    }
                    Err(e) => {
                        // Keep the bytes for an operator; the object will be rebuilt or
                        // repaired from another member.
                        tracing::error!(path = %ent.path().display(), err = %e, "unreadable object, set aside");
                        let mut bad = ent.path().into_os_string();
                        bad.push(".bad");
                        let _ = std::fs::rename(ent.path(), bad);
                    }
                }
            }
        }
        tracing::info!(objects = loaded.len(), "loaded object store");
        *cirrus_types::sync::lock(&self.objs) = loaded;
        Ok(())
    }

    fn load_one(&self, chain: ChainId, key: ObjectKey, segs: &[u64]) -> StoreResult<Obj> {
        let dir = obj_dir(&self.root, chain);
        let path = dir.join(format!("{}.crc", base_name(key)));
        let f = File::open(&path).map_err(io_err("open sidecar"))?;
        let mut head = [0u8; HEADER_LEN as usize];
        read_full_at(&f, &mut head, 0).map_err(io_err("read sidecar header"))?;
        let (h, version) = Header::decode_versioned(&head)?;
        if h.key != key || h.chain != chain {
            return Err(StoreError::Invalid(format!(
                "sidecar names {:?} in chain {}, file is {key:?} in chain {chain}",
                h.key, h.chain
            )));
        }
        check_range(h.size, 0)?;
        let nblocks = h.size.div_ceil(BLOCK);
        let crcs = if version == VERSION_RAW {
            let m = load_raw_v1(&f, nblocks).map_err(io_err("read sidecar"))?;
            drop(f);
            rewrite_sidecar(&path, &h, &m).map_err(io_err("convert sidecar to version 2"))?;
            tracing::info!(path = %path.display(), "converted checksum sidecar to version 2 (sparse)");
            m
        } else {
            load_sparse(&f, nblocks).map_err(io_err("read sidecar"))?
        };
        let (data, side) = self.open_files(chain, key, false, segs)?;
        let allocated = data.allocated()?;
        Ok(Obj {
            chain,
            key,
            data,
            side: Arc::new(side),
            meta: tokio::sync::Mutex::new(Meta {
                size: h.size,
                crcs,
                allocated,
                run_start: allocated,
            }),
            size: AtomicU64::new(h.size),
            blocks: RangeLock::default(),
        })
    }

    fn open_files(
        &self,
        chain: ChainId,
        key: ObjectKey,
        create: bool,
        segs: &[u64],
    ) -> StoreResult<(Segments, File)> {
        let dir = obj_dir(&self.root, chain);
        if create {
            std::fs::create_dir_all(&dir).map_err(io_err("create chain dir"))?;
        }
        let base = base_name(key);
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(create);
        let side = o
            .open(dir.join(format!("{base}.crc")))
            .map_err(io_err("open sidecar"))?;
        let data = Segments::open(&dir, &base, self.direct, create, segs)?;
        Ok((data, side))
    }

    /// Pages of crcs held in memory for an object (tests bound the sparse map with it).
    #[cfg(test)]
    fn crc_pages(&self, key: ObjectKey) -> usize {
        self.get(key)
            .and_then(|o| o.meta.try_lock().ok().map(|m| m.crcs.pages()))
            .unwrap_or(0)
    }

    /// Path of an object's data file (tests corrupt it behind the server's back).
    pub fn data_path(&self, chain: ChainId, key: ObjectKey) -> PathBuf {
        obj_dir(&self.root, chain).join(format!("{}.dat", base_name(key)))
    }

    fn get(&self, key: ObjectKey) -> Option<Arc<Obj>> {
        self.objs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    async fn get_or_create(&self, chain: ChainId, key: ObjectKey) -> StoreResult<Arc<Obj>> {
        if let Some(o) = self.get(key) {
            return check_chain(o, chain);
        }
        let _g = self.create.lock().await;
        if let Some(o) = self.get(key) {
            return check_chain(o, chain);
        }
        let (data, side) = self.open_files(chain, key, true, &[])?;
        let side = Arc::new(side);
        let h = Header {
            chain,
            key,
            size: 0,
        };
        self.ring
            .write_at(&side, 0, AlignedBuf::from_slice(&h.encode()))
            .await
            .map_err(io_err("write sidecar header"))?;
        let o = Arc::new(Obj {
            chain,
            key,
            data,
            side,
            meta: tokio::sync::Mutex::new(Meta {
                size: 0,
                crcs: CrcMap::default(),
                allocated: 0,
                run_start: 0,
            }),
            size: AtomicU64::new(0),
            blocks: RangeLock::default(),
        });
        self.objs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, o.clone());
        Ok(o)
    }

    /// Makes `[start, end)` of the data file allocated: appends near the end grow it in
    /// steps; a write far past the end (more than one step beyond it) allocates around
    /// itself only and leaves the gap a hole, so a write at 4 PiB costs its own blocks.
    /// Writes inside the file's length land in allocated space or in a hole (which the
    /// filesystem fills as a plain, non-extending write).
    async fn ensure_allocated(&self, o: &Obj, start: u64, end: u64) -> StoreResult<()> {
        let mut m = o.meta.lock().await;
        if end <= m.allocated {
            return Ok(());
        }
        let jump = align_down(start) > m.allocated.saturating_add(MAX_PREALLOC);
        // A jump is not an append stream: it takes the first step only.
        if jump {
            m.run_start = align_down(start);
        }
        let from = if jump { align_down(start) } else { m.allocated };
        let step = from
            .saturating_sub(m.run_start)
            .clamp(MIN_PREALLOC, MAX_PREALLOC);
        let target = from + (end - from).div_ceil(step) * step;
        let r = self.allocate(o, from, target - from).await;
        match r {
            Ok(()) => m.allocated = target,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && target > align_up(end) => {
                // Not room for the whole step: take exactly what this write needs.
                self.allocate(o, from, align_up(end) - from)
                    .await
                    .map_err(io_err("allocate object space"))?;
                m.allocated = align_up(end);
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // Filesystems without fallocate: grow the file instead (sparse).
                self.extend(o, from, target)?;
                m.allocated = target;
            }
            Err(e) => return Err(StoreError::from_io("allocate object space", e)),
        }
        Ok(())
    }

    /// fallocate(mode 0) of `[from, from + len)` of the object, segment by segment.
    async fn allocate(&self, o: &Obj, from: u64, len: u64) -> std::io::Result<()> {
        for p in pieces(from, len) {
            let f = seg_file(o, p.seg)?;
            self.ring.fallocate(&f, p.off, p.len as u64, 0).await?;
        }
        Ok(())
    }

    /// Grows the data files to cover `[from, target)` without allocating (filesystems
    /// without fallocate).
    fn extend(&self, o: &Obj, from: u64, target: u64) -> StoreResult<()> {
        for p in pieces(from, target - from) {
            let f = seg_file(o, p.seg).map_err(io_err("create object file"))?;
            let end = p.off + p.len as u64;
            if f.metadata().map_err(io_err("stat object file"))?.len() < end {
                f.set_len(end).map_err(io_err("extend object file"))?;
            }
        }
        Ok(())
    }

    /// Reads whole blocks `[a, b)` (byte offsets, aligned) from the data files; a segment
    /// never created reads as zeros.
    async fn read_blocks(&self, o: &Obj, a: u64, b: u64) -> StoreResult<AlignedBuf> {
        let len = (b - a) as usize;
        let mut parts = pieces(a, b - a);
        if let Some(p) = parts.next().filter(|p| p.len == len) {
            let Some(f) = o
                .data
                .get(p.seg, false)
                .map_err(io_err("open object file"))?
            else {
                return Ok(AlignedBuf::zeroed(len));
            };
            let (r, buf) = self.ring.read_new(&f, p.off, len).await;
            r.map_err(io_err("read object file"))?;
            return Ok(buf);
        }
        // Across a segment boundary (rare: once per 4 TiB): piece by piece.
        let mut out = AlignedBuf::zeroed(len);
        for p in pieces(a, b - a) {
            let Some(f) = o
                .data
                .get(p.seg, false)
                .map_err(io_err("open object file"))?
            else {
                continue;
            };
            let (r, buf) = self.ring.read_new(&f, p.off, p.len).await;
            r.map_err(io_err("read object file"))?;
            out.as_mut_slice()[p.at..p.at + p.len].copy_from_slice(buf.as_slice());
        }
        Ok(out)
    }

    /// Writes `buf` at object offset `off` (aligned), creating the segments it reaches.
    async fn write_blocks(&self, o: &Obj, off: u64, buf: AlignedBuf) -> StoreResult<()> {
        let len = buf.len();
        let mut parts = pieces(off, len as u64);
        if let Some(p) = parts.next().filter(|p| p.len == len) {
            let f = seg_file(o, p.seg).map_err(io_err("create object file"))?;
            return self
                .ring
                .write_at(&f, p.off, buf)
                .await
                .map_err(io_err("write object file"));
        }
        for p in pieces(off, len as u64) {
            let f = seg_file(o, p.seg).map_err(io_err("create object file"))?;
            let part = AlignedBuf::from_slice(&buf.as_slice()[p.at..p.at + p.len]);
            self.ring
                .write_at(&f, p.off, part)
                .await
                .map_err(io_err("write object file"))?;
        }
        Ok(())
    }

    /// `write_blocks` of an aligned shared buffer, without a copy (a piece of an aligned
    /// buffer cut at a segment boundary is still aligned).
    async fn write_blocks_shared(&self, o: &Obj, off: u64, data: Bytes) -> StoreResult<()> {
        for p in pieces(off, data.len() as u64) {
            let f = seg_file(o, p.seg).map_err(io_err("create object file"))?;
            self.ring
                .write_shared(&f, p.off, data.slice(p.at..p.at + p.len))
                .await
                .map_err(io_err("write object file"))?;
        }
        Ok(())
    }

    /// Records new crcs for blocks starting at `first` and the new size, in memory and
    /// in the sidecar. `shrink` allows the size to go down (truncate). Only the given
    /// crcs are written: blocks a growing size adds are holes, implicit in both.
    async fn commit_meta(
        &self,
        o: &Obj,
        first: u64,
        new_crcs: &[u32],
        size: u64,
        shrink: bool,
    ) -> StoreResult<u64> {
        let mut m = o.meta.lock().await;
        let old_size = m.size;
        let new_size = if shrink { size } else { m.size.max(size) };
        let nblocks = new_size.div_ceil(BLOCK);
        if shrink {
            m.crcs.truncate(nblocks);
        }
        let n = (new_crcs.len() as u64).min(nblocks.saturating_sub(first));
        for (i, c) in new_crcs.iter().take(n as usize).enumerate() {
            m.crcs.set(first + i as u64, *c);
        }
        m.size = new_size;
        o.size.store(new_size, Ordering::Release);
        if n > 0 {
            let mut bytes = Vec::with_capacity(n as usize * 4);
            for c in &new_crcs[..n as usize] {
                bytes.extend_from_slice(&stored_crc(*c).to_le_bytes());
            }
            self.ring
                .write_at(&o.side, crc_offset(first), AlignedBuf::from_slice(&bytes))
                .await
                .map_err(io_err("write checksum sidecar"))?;
        }
        if new_size != old_size {
            if new_size < old_size {
                o.side
                    .set_len(crc_offset(nblocks))
                    .map_err(io_err("truncate checksum sidecar"))?;
            }
            let h = Header {
                chain: o.chain,
                key: o.key,
                size: new_size,
            };
            self.ring
                .write_at(&o.side, 0, AlignedBuf::from_slice(&h.encode()))
                .await
                .map_err(io_err("write sidecar header"))?;
        }
        Ok(new_size)
    }

    /// The crcs of blocks `[first, first + n)` (holes as zero blocks). Only the window,
    /// bounded by the request.
    fn snapshot(&self, m: &Meta, first: u64, n: u64) -> Vec<u32> {
        m.crcs.window(first, n)
    }

    /// `piece_crcs`: verified wire piece crcs of `data` (see `ChunkStore::write_verified`).
    async fn do_write(
        &self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &[u8],
        piece_crcs: Option<&[u32]>,
    ) -> StoreResult<u64> {
        let end = check_range(off, data.len() as u64)?;
        let o = self.get_or_create(chain, key).await?;
        if data.is_empty() {
            return Ok(o.meta.lock().await.size);
        }
        let (a, b) = (align_down(off), align_up(end));
        let _g = o.blocks.lock(a, b).await;
        self.ensure_allocated(&o, a, b).await?;
        // Only the bytes around `data` are zeroed (edge blocks past the old size, read as
        // zeros); the payload is copied in once.
        let mut buf = AlignedBuf::with_copy_at((b - a) as usize, (off - a) as usize, data);
        let (size, crcs) = {
            let m = o.meta.lock().await;
            (m.size, self.snapshot(&m, a / BLOCK, (b - a) / BLOCK))
        };
        // Edge blocks that hold old bytes (inside the old size) are read and verified:
        // rewriting a corrupt block with a fresh crc would launder the corruption.
        let mut edges = Vec::new();
        if off != a && a < size {
            edges.push(a);
        }
        if end != b && b - BLOCK < size && (edges.first() != Some(&(b - BLOCK))) {
            edges.push(b - BLOCK);
        }
        for e in edges {
            let blk = self.read_blocks(&o, e, e + BLOCK).await?;
            let bad = bad_blocks_in(
                e / BLOCK,
                blk.as_slice(),
                &crcs[((e - a) / BLOCK) as usize..],
            );
            if !bad.is_empty() {
                return Err(StoreError::Corrupt { key, blocks: bad });
            }
            // Merge: the old bytes of the block around this write's bytes.
            let at = (e - a) as usize;
            let dst = &mut buf.as_mut_slice()[at..at + BLOCK as usize];
            let old = blk.as_slice();
            let (lo, hi) = ((off.max(e) - e) as usize, (end.min(e + BLOCK) - e) as usize);
            dst[..lo].copy_from_slice(&old[..lo]);
            dst[hi..].copy_from_slice(&old[hi..]);
        }
        // Piece i of the payload lies in block a / BLOCK + i; a whole-block piece's
        // verified crc is the block's crc, the edge blocks are computed on the merge.
        let nblocks = buf.len() / BLOCK as usize;
        let pieces = piece_crcs.filter(|c| c.len() == nblocks);
        let new_crcs: Vec<u32> = buf
            .as_slice()
            .chunks(BLOCK as usize)
            .enumerate()
            .map(|(i, blk)| {
                let whole = (i > 0 || off == a) && (i + 1 < nblocks || end == b);
                match pieces {
                    Some(p) if whole => p[i],
                    _ => cirrus_types::checksum::crc32c(blk),
                }
            })
            .collect();
        self.write_blocks(&o, a, buf).await?;
        self.commit_meta(&o, a / BLOCK, &new_crcs, end, false).await
    }

    /// `write_owned` of whole blocks at an aligned address: no edge to merge and no copy;
    /// the verified piece crcs are the block crcs.
    async fn do_write_whole(
        &self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: Bytes,
        crcs: &[u32],
    ) -> StoreResult<u64> {
        let b = check_range(off, data.len() as u64)?;
        let o = self.get_or_create(chain, key).await?;
        let _g = o.blocks.lock(off, b).await;
        self.ensure_allocated(&o, off, b).await?;
        self.write_blocks_shared(&o, off, data).await?;
        self.commit_meta(&o, off / BLOCK, crcs, b, false).await
    }

    async fn do_put_blocks(
        &self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &[u8],
        logical_end: u64,
    ) -> StoreResult<u64> {
        if !off.is_multiple_of(BLOCK) || !(data.len() as u64).is_multiple_of(BLOCK) {
            return Err(StoreError::Invalid("put_blocks needs whole blocks".into()));
        }
        let b = check_range(off, data.len() as u64)?;
        check_range(logical_end, 0)?;
        let o = self.get_or_create(chain, key).await?;
        if data.is_empty() {
            return Ok(o.meta.lock().await.size);
        }
        let _g = o.blocks.lock(off, b).await;
        self.ensure_allocated(&o, off, b).await?;
        let new_crcs: Vec<u32> = data
            .chunks(BLOCK as usize)
            .map(cirrus_types::checksum::crc32c)
            .collect();
        self.write_blocks(&o, off, AlignedBuf::from_slice(data))
            .await?;
        self.commit_meta(&o, off / BLOCK, &new_crcs, logical_end.min(b), false)
            .await
    }

    async fn do_put_lost_block(
        &self,
        chain: ChainId,
        key: ObjectKey,
        block: u64,
        logical_end: u64,
    ) -> StoreResult<u64> {
        let off = block.checked_mul(BLOCK).ok_or(StoreError::TooBig)?;
        let b = check_range(off, BLOCK)?;
        self.do_put_blocks(chain, key, off, &[0u8; BLOCK as usize], logical_end)
            .await?;
        let o = self.get_or_create(chain, key).await?;
        let _g = o.blocks.lock(off, b).await;
        self.commit_meta(&o, block, &[lost_block_crc()], logical_end.min(b), false)
            .await
    }

    async fn do_read(&self, key: ObjectKey, off: u64, len: usize) -> StoreResult<ReadOut> {
        let Some(o) = self.get(key) else {
            return Ok(ReadOut::default());
        };
        let size = o.meta.lock().await.size;
        let end = off.saturating_add(len as u64).min(size);
        if off >= end {
            return Ok(ReadOut {
                size,
                ..ReadOut::default()
            });
        }
        let (a, b) = (align_down(off), align_up(end));
        let _g = o.blocks.lock(a, b).await;
        let (size, crcs) = {
            let m = o.meta.lock().await;
            (m.size, self.snapshot(&m, a / BLOCK, (b - a) / BLOCK))
        };
        let end = end.min(size);
        if off >= end {
            return Ok(ReadOut {
                size,
                ..ReadOut::default()
            });
        }
        let buf = self.read_blocks(&o, a, b).await?;
        let bad = bad_blocks_in(a / BLOCK, buf.as_slice(), &crcs);
        if !bad.is_empty() {
            return Err(StoreError::Corrupt { key, blocks: bad });
        }
        // The reply shares the aligned buffer (no copy) and takes its whole-block piece
        // crcs from the stored crcs just verified.
        let (lo, hi) = ((off - a) as usize, (end - a) as usize);
        let data = Bytes::from_owner(buf).slice(lo..hi);
        Ok(ReadOut {
            crcs: piece_crcs_from_blocks(off, &data, &crcs),
            data,
            size,
        })
    }

    async fn do_truncate(&self, chain: ChainId, key: ObjectKey, size: u64) -> StoreResult<()> {
        check_range(size, 0)?;
        let o = self.get_or_create(chain, key).await?;
        let cur = o.meta.lock().await.size;
        let lo = align_down(size.min(cur));
        let _g = o.blocks.lock(lo, u64::MAX).await;
        let cur = o.meta.lock().await.size;
        if size >= cur {
            // Growing exposes zeros: the tail of the old last block is already zero and
            // the blocks past it are holes or preallocated zeros.
            self.commit_meta(&o, cur.div_ceil(BLOCK), &[], size, false)
                .await?;
            return Ok(());
        }
        let mut tail_crc = Vec::new();
        if !size.is_multiple_of(BLOCK) {
            tail_crc.push(self.zero_in_block(&o, size, align_up(size)).await?);
        }
        {
            let mut m = o.meta.lock().await;
            o.data.cut(align_up(size))?;
            m.allocated = align_up(size);
        }
        self.commit_meta(&o, align_down(size) / BLOCK, &tail_crc, size, true)
            .await?;
        Ok(())
    }

    /// Zeroes bytes `[from, to)` of one block (both inside it) on disk after verifying the
    /// block's old bytes (a corrupt block is refused, not laundered under a fresh crc);
    /// returns the block's new crc for the caller to commit.
    async fn zero_in_block(&self, o: &Obj, from: u64, to: u64) -> StoreResult<u32> {
        let e = align_down(from);
        let crcs = {
            let m = o.meta.lock().await;
            self.snapshot(&m, e / BLOCK, 1)
        };
        let mut blk = self.read_blocks(o, e, e + BLOCK).await?;
        let bad = bad_blocks_in(e / BLOCK, blk.as_slice(), &crcs);
        if !bad.is_empty() {
            return Err(StoreError::Corrupt {
                key: o.key,
                blocks: bad,
            });
        }
        blk.as_mut_slice()[(from - e) as usize..(to - e) as usize].fill(0);
        let crc = cirrus_types::checksum::crc32c(blk.as_slice());
        self.write_blocks(o, e, blk).await?;
        Ok(crc)
    }

    async fn do_punch(
        &self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        len: u64,
    ) -> StoreResult<()> {
        let end = check_range(off, len)?;
        let Some(o) = self.get(key) else {
            return Ok(());
        };
        let o = check_chain(o, chain)?;
        let _g = o.blocks.lock(align_down(off), align_up(end)).await;
        let size = o.meta.lock().await.size;
        let end = end.min(size);
        if off >= end {
            return Ok(());
        }
        // Whole blocks become holes; the block holding the size counts as whole when the
        // range reaches the size (its bytes past the size are zeros already).
        let wa = align_up(off);
        let wb = if end == size {
            align_up(end)
        } else {
            align_down(end)
        };
        let mut edges: Vec<u64> = Vec::new();
        if off < wa.min(end) || wa > wb {
            edges.push(align_down(off));
        }
        if wb < end && wa <= wb && edges.first() != Some(&align_down(end)) {
            edges.push(align_down(end));
        }
        // Data first, then crcs (as a write): a crash between leaves blocks failing their
        // crc, which replication repairs.
        let mut edge_crcs = Vec::new();
        for e in edges {
            let crc = self
                .zero_in_block(&o, off.max(e), end.min(e + BLOCK))
                .await?;
            edge_crcs.push((e / BLOCK, crc));
        }
        if wa < wb {
            self.punch_data(&o, wa, wb).await?;
        }
        for (b, c) in edge_crcs {
            self.commit_meta(&o, b, &[c], size, false).await?;
        }
        if wa < wb {
            let mut m = o.meta.lock().await;
            let written = m.crcs.written_in(wa / BLOCK, wb / BLOCK);
            m.crcs.punch(wa / BLOCK, wb / BLOCK);
            if !written.is_empty() {
                let (from, to) = (crc_offset(wa / BLOCK), crc_offset(wb / BLOCK));
                match self
                    .ring
                    .fallocate(&o.side, from, to - from, PUNCH_MODE)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        for b in written {
                            self.ring
                                .write_at(&o.side, crc_offset(b), AlignedBuf::from_slice(&[0; 4]))
                                .await
                                .map_err(io_err("write checksum sidecar"))?;
                        }
                    }
                    Err(e) => return Err(StoreError::from_io("punch checksum sidecar", e)),
                }
            }
        }
        Ok(())
    }

    /// Gives back the disk space of whole blocks `[a, b)` (they read as zeros after);
    /// without hole punching, writes zeros over the blocks that were written.
    async fn punch_data(&self, o: &Obj, a: u64, b: u64) -> StoreResult<()> {
        for p in pieces(a, b - a) {
            let Some(f) = o
                .data
                .get(p.seg, false)
                .map_err(io_err("open object file"))?
            else {
                continue;
            };
            match self
                .ring
                .fallocate(&f, p.off, p.len as u64, PUNCH_MODE)
                .await
            {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    let written = o.meta.lock().await.crcs.written_in(a / BLOCK, b / BLOCK);
                    for blk in written {
                        self.write_blocks(o, blk * BLOCK, AlignedBuf::zeroed(BLOCK as usize))
                            .await?;
                    }
                    return Ok(());
                }
                Err(e) => return Err(StoreError::from_io("punch object file", e)),
            }
        }
        Ok(())
    }

    async fn do_sync(&self, key: ObjectKey) -> StoreResult<()> {
        let Some(o) = self.get(key) else {
            return Ok(());
        };
        let files = o.data.sync_files().map_err(io_err("open object file"))?;
        let (a, b) = tokio::join!(
            futures::future::join_all(files.iter().map(|f| self.ring.sync(f, true))),
            self.ring.sync(&o.side, true)
        );
        for r in a {
            r.map_err(io_err("fdatasync object file"))?;
        }
        b.map_err(io_err("fdatasync checksum sidecar"))?;
        Ok(())
    }

    async fn do_delete(&self, key: ObjectKey) -> StoreResult<()> {
        let o = self
            .objs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let Some(o) = o else {
            return Ok(());
        };
        // Wait for in-flight IO on the object before the files go.
        let _g = o.blocks.lock(0, u64::MAX).await;
        let dir = obj_dir(&self.root, o.chain);
        match std::fs::remove_file(dir.join(format!("{}.crc", base_name(key)))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::from_io("delete object", e)),
        }
        o.data.remove_all()
    }
}

/// Reads exactly `buf.len()` bytes at `off` (EOF: `UnexpectedEof`).
fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, off)
}

/// Bytes read per step when loading a sidecar: memory while loading stays this.
const LOAD_CHUNK: usize = 1 << 20;

/// The next offset at or after `off` holding data (`SEEK_DATA`), or None past the last.
/// Filesystems without it answer as if the whole file were data.
fn seek_data(f: &File, off: u64) -> std::io::Result<Option<u64>> {
    use std::os::unix::io::AsRawFd;
    let Ok(o) = i64::try_from(off) else {
        return Ok(None);
    };
    // SAFETY: lseek on a descriptor this function's caller owns; it only moves that
    // open file description's offset, which nothing here uses (reads are positional).
    let r = unsafe { libc::lseek(f.as_raw_fd(), o, libc::SEEK_DATA) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some(off)),
        _ => Err(e),
    }
}

/// The end of the data region starting at `off` (`SEEK_HOLE`).
fn seek_hole(f: &File, off: u64, len: u64) -> u64 {
    use std::os::unix::io::AsRawFd;
    let Ok(o) = i64::try_from(off) else {
        return len;
    };
    // SAFETY: as in `seek_data`.
    let r = unsafe { libc::lseek(f.as_raw_fd(), o, libc::SEEK_HOLE) };
    if r >= 0 {
        (r as u64).min(len)
    } else {
        len
    }
}

/// Loads a version-2 sidecar's crcs for blocks below `nblocks`, reading only the regions
/// of the (sparse) file that hold data; zero entries are zero blocks and cost nothing.
fn load_sparse(f: &File, nblocks: u64) -> std::io::Result<CrcMap> {
    let mut m = CrcMap::default();
    let len = f.metadata()?.len().min(crc_offset(nblocks));
    let mut at = HEADER_LEN;
    let mut buf = vec![0u8; LOAD_CHUNK];
    while at < len {
        let Some(d) = seek_data(f, at)? else { break };
        // Entries are 4-byte aligned after the 64-byte header.
        let d = HEADER_LEN + (d.max(HEADER_LEN) - HEADER_LEN) / 4 * 4;
        if d >= len {
            break;
        }
        let region_end = seek_hole(f, d, len).max(d + 4).min(len);
        let mut pos = d;
        while pos < region_end {
            let n = ((region_end - pos) as usize).min(LOAD_CHUNK) / 4 * 4;
            if n == 0 {
                break;
            }
            read_full_at(f, &mut buf[..n], pos)?;
            for (i, e) in buf[..n].chunks_exact(4).enumerate() {
                let v = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                if v != 0 {
                    m.set((pos - HEADER_LEN) / 4 + i as u64, loaded_crc(v));
                }
            }
            pos += n as u64;
        }
        at = region_end.max(at + 4);
    }
    Ok(m)
}

/// Loads a version-1 sidecar (raw crcs, one per block; a sidecar cut short by a crash
/// leaves the missing crcs "unknown", 0, which never match real data unless it is a hole,
/// so those blocks get repaired). Version 1 was dense, so this costs what it always did,
/// once: the store rewrites it as version 2.
fn load_raw_v1(f: &File, nblocks: u64) -> std::io::Result<CrcMap> {
    let mut m = CrcMap::default();
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; LOAD_CHUNK];
    let mut b = 0u64;
    while b < nblocks {
        let n = ((nblocks - b) as usize).min(LOAD_CHUNK / 4);
        let at = crc_offset(b);
        let have = (len.saturating_sub(at) as usize).min(n * 4) / 4 * 4;
        buf[..n * 4].fill(0);
        if have > 0 {
            read_full_at(f, &mut buf[..have], at)?;
        }
        for (i, e) in buf[..n * 4].chunks_exact(4).enumerate() {
            let c = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            if c != zero_block_crc() {
                m.set(b + i as u64, c);
            }
        }
        b += n as u64;
    }
    Ok(m)
}

/// Writes `m` as a version-2 sidecar beside `path` and renames it over, durably.
fn rewrite_sidecar(path: &Path, h: &Header, m: &CrcMap) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let tmp = path.with_extension("crc.v2tmp");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)?;
    f.write_all_at(&h.encode(), 0)?;
    for (b, c) in m.written() {
        f.write_all_at(&stored_crc(c).to_le_bytes(), crc_offset(b))?;
    }
    f.set_len(crc_offset(h.size.div_ceil(BLOCK)).max(HEADER_LEN))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Segment `seg` of an object's data, created when missing.
fn seg_file(o: &Obj, seg: u64) -> std::io::Result<Arc<File>> {
    o.data
        .get(seg, true)?
        .ok_or_else(|| std::io::Error::other("segment not created"))
}

fn check_chain(o: Arc<Obj>, chain: ChainId) -> StoreResult<Arc<Obj>> {
    if o.chain != chain {
        return Err(StoreError::Invalid(format!(
            "object {:?} belongs to chain {}, not {chain}",
            o.key, o.chain
        )));
    }
    Ok(o)
}

impl ChunkStore for FileStore {
    fn write<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &'a [u8],
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(self.do_write(chain, key, off, data, None))
    }

    fn write_verified<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &'a [u8],
        crcs: &'a [u32],
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(self.do_write(chain, key, off, data, Some(crcs)))
    }

    fn write_owned<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: Bytes,
        crcs: &'a [u32],
    ) -> BoxFuture<'a, StoreResult<u64>> {
        let blocks = data.len() as u64 / BLOCK;
        let whole = off.is_multiple_of(BLOCK)
            && !data.is_empty()
            && (data.len() as u64).is_multiple_of(BLOCK)
            && crcs.len() as u64 == blocks
            && (data.as_ptr() as usize).is_multiple_of(crate::uring::ALIGN);
        if whole {
            Box::pin(self.do_write_whole(chain, key, off, data, crcs))
        } else {
            Box::pin(async move { self.do_write(chain, key, off, &data, Some(crcs)).await })
        }
    }

    fn put_blocks<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &'a [u8],
        logical_end: u64,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(self.do_put_blocks(chain, key, off, data, logical_end))
    }

    fn put_lost_block(
        &self,
        chain: ChainId,
        key: ObjectKey,
        block: u64,
        logical_end: u64,
    ) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(self.do_put_lost_block(chain, key, block, logical_end))
    }

    fn read(&self, key: ObjectKey, off: u64, len: usize) -> BoxFuture<'_, StoreResult<ReadOut>> {
        Box::pin(self.do_read(key, off, len))
    }

    fn truncate(
        &self,
        chain: ChainId,
        key: ObjectKey,
        size: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.do_truncate(chain, key, size))
    }

    fn punch(
        &self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        len: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.do_punch(chain, key, off, len))
    }

    fn sync(&self, key: ObjectKey) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.do_sync(key))
    }

    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.do_delete(key))
    }

    fn size(&self, key: ObjectKey) -> Option<u64> {
        Some(self.get(key)?.size.load(Ordering::Acquire))
    }

    fn list(&self) -> Vec<ObjectInfo> {
        let objs: Vec<Arc<Obj>> = self
            .objs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        objs.into_iter()
            .map(|o| ObjectInfo {
                chain: o.chain,
                key: o.key,
                size: o.size.load(Ordering::Acquire),
            })
            .collect()
    }

    fn data_ranges(&self, key: ObjectKey) -> BoxFuture<'_, Vec<(u64, u64)>> {
        Box::pin(async move {
            let Some(o) = self.get(key) else {
                return Vec::new();
            };
            let m = o.meta.lock().await;
            m.crcs.data_ranges(m.size)
        })
    }

    fn direct_io(&self) -> bool {
        self.direct
    }

    fn space(&self) -> (u64, u64) {
        statvfs(&self.root).unwrap_or((0, 0))
    }
}

/// (capacity, free-for-unprivileged) bytes of the filesystem holding `p`.
pub fn statvfs(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into a zeroed struct we own; c is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((
        s.f_blocks as u64 * s.f_frsize as u64,
        s.f_bavail as u64 * s.f_frsize as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirrus_types::checksum::piece_crcs;
    use proptest::prelude::*;

    fn disk_bytes(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    }

    /// Disk bytes of every segment file of `k` in chain 1.
    fn data_disk_bytes(dir: &Path, k: ObjectKey) -> u64 {
        segment_files(dir, k).iter().map(|p| disk_bytes(p)).sum()
    }

    fn segment_files(dir: &Path, k: ObjectKey) -> Vec<PathBuf> {
        let base = base_name(k);
        let mut v: Vec<PathBuf> = std::fs::read_dir(obj_dir(dir, ChainId(1)))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                n == format!("{base}.dat") || parse_segment_name(n).is_some_and(|(b, _)| b == base)
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn bytes_across_a_segment_boundary_are_one_range_and_segments_go_with_truncate_and_delete(
    ) {
        use crate::store::segments::SEGMENT;
        let dir = tempfile::tempdir().unwrap();
        let k = key(4);
        let at = 3 * SEGMENT - 5000;
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8 + 1).collect();
        {
            let store = FileStore::open(dir.path()).unwrap();
            store.write(ChainId(1), k, 0, b"head").await.unwrap();
            store.write(ChainId(1), k, at, &data).await.unwrap();
            // Whole aligned blocks across the next boundary go through the shared path.
            let mut whole = AlignedBuf::zeroed(4 * BLOCK as usize);
            whole.as_mut_slice().fill(7);
            let whole = Bytes::from_owner(whole);
            let crcs: Vec<u32> = whole
                .chunks(BLOCK as usize)
                .map(cirrus_types::checksum::crc32c)
                .collect();
            store
                .write_owned(ChainId(1), k, 4 * SEGMENT - 2 * BLOCK, whole, &crcs)
                .await
                .unwrap();
            store.sync(k).await.unwrap();
            let r = store.read(k, at, data.len()).await.unwrap();
            assert_eq!(&r.data[..], &data[..]);
            // Only segment 0 stays open: offsets a caller names do not pin descriptors.
            let far_open = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t.starts_with(dir.path().canonicalize().unwrap()))
                .filter(|t| {
                    t.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(parse_segment_name)
                        .is_some_and(|(b, _)| b == base_name(k))
                })
                .count();
            assert_eq!(far_open, 0, "segment files past the first left open");
        }
        // Segments 0, 2, 3 and 4 exist; 1 was never reached.
        let names: Vec<String> = segment_files(dir.path(), k)
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        let base = base_name(k);
        assert_eq!(
            names,
            vec![
                format!("{base}.dat"),
                format!("{base}.dat.2"),
                format!("{base}.dat.3"),
                format!("{base}.dat.4")
            ]
        );
        assert!(data_disk_bytes(dir.path(), k) <= 4 << 20);
        // Reloaded, the same bytes across both boundaries, zeros in the holes.
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.size(k), Some(4 * SEGMENT + 2 * BLOCK));
        let r = store.read(k, at, data.len()).await.unwrap();
        assert_eq!(&r.data[..], &data[..]);
        let r = store
            .read(k, 4 * SEGMENT - 3 * BLOCK, 5 * BLOCK as usize)
            .await
            .unwrap();
        assert!(r.data[..BLOCK as usize].iter().all(|b| *b == 0));
        assert!(r.data[BLOCK as usize..].iter().all(|b| *b == 7));
        let hole = store.read(k, SEGMENT + 4096, 8192).await.unwrap();
        assert!(hole.data.iter().all(|b| *b == 0) && hole.data.len() == 8192);
        // A truncate into segment 3 removes 4 and keeps the bytes below.
        store
            .truncate(ChainId(1), k, 3 * SEGMENT + 10)
            .await
            .unwrap();
        assert_eq!(segment_files(dir.path(), k).len(), 3);
        let r = store.read(k, 3 * SEGMENT - 2, 16).await.unwrap();
        assert_eq!(&r.data[..], &data[4998..5010]);
        // Growing again: zeros where the cut bytes and the removed segment were.
        store.truncate(ChainId(1), k, 5 * SEGMENT).await.unwrap();
        let r = store.read(k, 4 * SEGMENT - 8, 16).await.unwrap();
        assert!(r.data.len() == 16 && r.data.iter().all(|b| *b == 0));
        assert_eq!(&store.read(k, 0, 4).await.unwrap().data[..], b"head");
        store.delete(k).await.unwrap();
        assert!(segment_files(dir.path(), k).is_empty());
    }

    fn side_path(dir: &Path, k: ObjectKey) -> PathBuf {
        obj_dir(dir, ChainId(1)).join(format!("{}.crc", base_name(k)))
    }

    #[tokio::test]
    async fn an_object_of_the_largest_size_costs_what_was_written_and_reloads_the_same() {
        let max = cirrus_types::MAX_FILE_SIZE;
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        {
            let store = FileStore::open(dir.path()).unwrap();
            store.write(ChainId(1), k, 0, b"hi\n").await.unwrap();
            store.truncate(ChainId(1), k, max).await.unwrap();
            store.write(ChainId(1), k, 1 << 40, b"A").await.unwrap();
            store.write(ChainId(1), k, max - 1, b"Z").await.unwrap();
            assert_eq!(store.size(k), Some(max));
            assert!(store.crc_pages(k) <= 3, "{} crc pages", store.crc_pages(k));
            // Past the largest object: refused, nothing changed.
            assert_eq!(
                store.write(ChainId(1), k, max, b"x").await,
                Err(StoreError::TooBig)
            );
            assert_eq!(
                store.truncate(ChainId(1), k, max + 1).await,
                Err(StoreError::TooBig)
            );
            assert_eq!(
                store.write(ChainId(1), k, u64::MAX - 1, b"xy").await,
                Err(StoreError::TooBig)
            );
            assert_eq!(store.size(k), Some(max));
            store.sync(k).await.unwrap();
        }
        let dat = data_disk_bytes(dir.path(), k);
        let side = disk_bytes(&side_path(dir.path(), k));
        assert!(dat <= 1 << 20, "data files hold {dat} bytes of disk");
        assert!(side <= 1 << 20, "sidecar holds {side} bytes of disk");
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.size(k), Some(max));
        assert!(
            store.crc_pages(k) <= 3,
            "{} crc pages after reload",
            store.crc_pages(k)
        );
        let r = store.read(k, 0, 8).await.unwrap();
        assert_eq!(&r.data[..], b"hi\n\0\0\0\0\0");
        let r = store.read(k, (1 << 40) - 2, 4).await.unwrap();
        assert_eq!(&r.data[..], b"\0\0A\0");
        let r = store.read(k, max - 3, 10).await.unwrap();
        assert_eq!(&r.data[..], b"\0\0Z");
        let hole = store.read(k, 1 << 42, 1 << 20).await.unwrap();
        assert!(hole.data.len() == 1 << 20 && hole.data.iter().all(|b| *b == 0));
        let ranges = store.data_ranges(k).await;
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        assert!(
            ranges.iter().map(|(s, e)| e - s).sum::<u64>() <= 3 * crate::store::crcmap::PAGE_BYTES
        );
        // Shrinking forgets the far crcs; growing again reads zeros there.
        store.truncate(ChainId(1), k, 2).await.unwrap();
        store.truncate(ChainId(1), k, max).await.unwrap();
        let r = store.read(k, max - 3, 10).await.unwrap();
        assert_eq!(&r.data[..], b"\0\0\0");
        assert_eq!(&store.read(k, 0, 4).await.unwrap().data[..], b"hi\0\0");
    }

    #[tokio::test]
    async fn a_punch_reads_back_zeros_gives_back_disk_and_crcs_and_reloads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let k = key(3);
        let data = vec![0xabu8; 8 << 20];
        store.write(ChainId(1), k, 0, &data).await.unwrap();
        store.write(ChainId(1), k, 1 << 40, b"far").await.unwrap();
        store.sync(k).await.unwrap();
        let disk_before = data_disk_bytes(dir.path(), k);
        let pages_before = store.crc_pages(k);
        // Unaligned at both ends, and over the far byte's whole block to 4 PiB.
        let (lo, hi) = (BLOCK + 100, (8 << 20) - 100);
        store.punch(ChainId(1), k, lo, hi - lo).await.unwrap();
        store
            .punch(
                ChainId(1),
                k,
                1 << 40,
                cirrus_types::MAX_FILE_SIZE - (1 << 40),
            )
            .await
            .unwrap();
        assert_eq!(store.size(k), Some((1 << 40) + 3), "a punch keeps the size");
        store.sync(k).await.unwrap();
        let disk_after = data_disk_bytes(dir.path(), k);
        assert!(
            disk_after + (6 << 20) < disk_before,
            "disk {disk_before} -> {disk_after}: the punched blocks were not given back"
        );
        assert!(
            store.crc_pages(k) < pages_before,
            "crc pages were not freed"
        );
        let check = |r: ReadOut| {
            assert_eq!(&r.data[..lo as usize], &data[..lo as usize]);
            assert!(r.data[lo as usize..hi as usize].iter().all(|b| *b == 0));
            assert_eq!(&r.data[hi as usize..], &data[hi as usize..]);
        };
        check(store.read(k, 0, 8 << 20).await.unwrap());
        assert_eq!(
            &store.read(k, 1 << 40, 3).await.unwrap().data[..],
            &[0, 0, 0]
        );
        drop(store);
        let store = FileStore::open(dir.path()).unwrap();
        check(store.read(k, 0, 8 << 20).await.unwrap());
        assert_eq!(
            &store.read(k, 1 << 40, 3).await.unwrap().data[..],
            &[0, 0, 0]
        );
        assert!(store.data_ranges(k).await.iter().all(|r| r.1 <= 8 << 20));
        // Missing object and a range past the size: nothing happens, nothing is created.
        store.punch(ChainId(1), key(4), 0, 1 << 30).await.unwrap();
        assert_eq!(store.size(key(4)), None);
    }

    #[tokio::test]
    async fn a_version_one_sidecar_is_read_and_rewritten_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(2);
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
        {
            let store = FileStore::open(dir.path()).unwrap();
            store.write(ChainId(1), k, 0, &data).await.unwrap();
            store.truncate(ChainId(1), k, 64 << 20).await.unwrap();
            store.sync(k).await.unwrap();
        }
        // Rewrite the sidecar as the first releases did: raw crcs, one per block of the size.
        let p = side_path(dir.path(), k);
        let h = Header {
            chain: ChainId(1),
            key: k,
            size: 64 << 20,
        };
        let mut v1 = h.encode_raw_v1().to_vec();
        for b in 0..(64u64 << 20) / BLOCK {
            let c = match data.get((b * BLOCK) as usize..((b + 1) * BLOCK) as usize) {
                Some(blk) => cirrus_types::checksum::crc32c(blk),
                None => zero_block_crc(),
            };
            v1.extend_from_slice(&c.to_le_bytes());
        }
        std::fs::write(&p, &v1).unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(
            &store.read(k, 0, data.len()).await.unwrap().data[..],
            &data[..]
        );
        let (_, version) = Header::decode_versioned(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(version, super::super::format::VERSION);
        assert!(
            disk_bytes(&p) <= 16 << 10,
            "converted sidecar holds {} bytes",
            disk_bytes(&p)
        );
        drop(store);
        // And the converted one loads to the same bytes.
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(
            &store.read(k, 0, data.len()).await.unwrap().data[..],
            &data[..]
        );
        assert_eq!(store.size(k), Some(64 << 20));
    }

    #[tokio::test]
    async fn a_written_block_whose_crc_never_reached_the_sidecar_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(3);
        {
            let store = FileStore::open(dir.path()).unwrap();
            store.write(ChainId(1), k, 0, &[5u8; 8192]).await.unwrap();
            store.sync(k).await.unwrap();
        }
        // A crash between the data write and the sidecar write: block 1's entry is lost.
        let p = side_path(dir.path(), k);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0u8; 4], crc_offset(1)).unwrap();
        drop(f);
        let store = FileStore::open(dir.path()).unwrap();
        match store.read(k, 0, 8192).await {
            Err(StoreError::Corrupt { blocks, .. }) => assert_eq!(blocks, vec![1]),
            other => panic!(
                "a block without its crc was served: {:?}",
                other.map(|r| r.size)
            ),
        }
    }

    fn key(i: u32) -> ObjectKey {
        ObjectKey {
            inode: InodeId(9),
            index: i,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write { off: u64, len: usize, seed: u8 },
        Read { off: u64, len: usize },
        Truncate { size: u64 },
        Punch { off: u64, len: usize },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Offsets cluster around block edges so unaligned edges are common.
        let off = prop_oneof![
            (0u64..24).prop_map(|b| b * BLOCK),
            (0u64..24, 0u64..BLOCK).prop_map(|(b, o)| b * BLOCK + o),
            (0u64..24).prop_map(|b| (b * BLOCK).saturating_sub(1)),
        ];
        let len = prop_oneof![
            1usize..64,
            (1usize..6).prop_map(|b| b * BLOCK as usize),
            1usize..20_000,
        ];
        prop_oneof![
            4 => (off.clone(), len.clone(), any::<u8>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
            3 => (off.clone(), len.clone()).prop_map(|(off, len)| Op::Read { off, len }),
            2 => (off.clone(), len).prop_map(|(off, len)| Op::Punch { off, len }),
            2 => off.prop_map(|size| Op::Truncate { size }),
            1 => Just(Op::Reopen),
        ]
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
        #[test]
        fn file_store_matches_in_memory_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut store = FileStore::open(dir.path()).unwrap();
                assert!(store.direct_io(), "this test wants O_DIRECT (tempdir is on ext4/xfs)");
                let mut model: Vec<u8> = Vec::new();
                let k = key(0);
                for op in ops {
                    match op {
                        Op::Write { off, len, seed } => {
                            let data = pattern(len, seed);
                            // Half the writes hand the store their verified wire crcs (the
                            // server path): a reused crc that is wrong fails a later read.
                            // A quarter hand it an aligned payload it may write without a
                            // copy (the bulk path; whole blocks take the zero-copy write).
                            let size = if seed % 4 == 0 {
                                let crcs = piece_crcs(off, &data);
                                let owned = Bytes::from_owner(AlignedBuf::from_slice(&data));
                                store.write_owned(ChainId(1), k, off, owned, &crcs).await.unwrap()
                            } else if seed % 2 == 0 {
                                let crcs = piece_crcs(off, &data);
                                store.write_verified(ChainId(1), k, off, &data, &crcs).await.unwrap()
                            } else {
                                store.write(ChainId(1), k, off, &data).await.unwrap()
                            };
                            let end = off as usize + len;
                            if model.len() < end { model.resize(end, 0); }
                            model[off as usize..end].copy_from_slice(&data);
                            prop_assert_eq!(size, model.len() as u64);
                        }
                        Op::Read { off, len } => {
                            let r = store.read(k, off, len).await.unwrap();
                            let s = (off as usize).min(model.len());
                            let e = (off as usize + len).min(model.len());
                            prop_assert_eq!(&r.data[..], &model[s..e]);
                            prop_assert_eq!(&r.crcs, &piece_crcs(off, &r.data));
                            prop_assert_eq!(r.size, model.len() as u64);
                        }
                        Op::Truncate { size } => {
                            store.truncate(ChainId(1), k, size).await.unwrap();
                            model.resize(size as usize, 0);
                            prop_assert_eq!(store.size(k), Some(size));
                        }
                        Op::Punch { off, len } => {
                            store.punch(ChainId(1), k, off, len as u64).await.unwrap();
                            let (s, e) = ((off as usize).min(model.len()), (off as usize + len).min(model.len()));
                            model[s..e].fill(0);
                            if let Some(sz) = store.size(k) {
                                prop_assert_eq!(sz, model.len() as u64);
                            }
                        }
                        Op::Reopen => {
                            store.sync(k).await.unwrap();
                            drop(store);
                            store = FileStore::open(dir.path()).unwrap();
                        }
                    }
                }
                // Whole object, and the bytes past the end (must be absent).
                let r = store.read(k, 0, model.len() + 10_000).await.unwrap();
                prop_assert_eq!(r.data, model);
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn corrupted_block_on_disk_is_reported_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let k = key(1);
        store
            .write(ChainId(2), k, 0, &vec![5u8; 3 * BLOCK as usize])
            .await
            .unwrap();
        {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new()
                .write(true)
                .open(store.data_path(ChainId(2), k))
                .unwrap();
            f.write_at(&[6u8], BLOCK + 10).unwrap();
            f.sync_all().unwrap();
        }
        let r = store.read(k, 0, 3 * BLOCK as usize).await;
        assert_eq!(
            r.unwrap_err(),
            StoreError::Corrupt {
                key: k,
                blocks: vec![1]
            }
        );
        // An unaligned write into the bad block must not launder it.
        assert!(matches!(
            store.write(ChainId(2), k, BLOCK + 1, b"x").await,
            Err(StoreError::Corrupt { .. })
        ));
        // Repair by whole blocks, then the read is clean.
        store
            .put_blocks(ChainId(2), k, BLOCK, &vec![5u8; BLOCK as usize], 0)
            .await
            .unwrap();
        let r = store.read(k, 0, 3 * BLOCK as usize).await.unwrap();
        assert!(r.data.iter().all(|&b| b == 5));
        assert_eq!(r.size, 3 * BLOCK);
    }

    #[tokio::test]
    async fn a_small_object_takes_the_first_prealloc_step_not_a_megabyte_of_disk() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let k = key(5);
        store
            .write(ChainId(1), k, 0, &vec![7u8; 4096])
            .await
            .unwrap();
        let used = std::fs::metadata(store.data_path(ChainId(1), k))
            .unwrap()
            .blocks()
            * 512;
        assert!(
            (4096..=64 << 10).contains(&used),
            "a 4 KiB object holds {used} bytes of disk, more than 64 KiB"
        );
    }

    #[tokio::test]
    async fn verified_write_with_crcs_that_do_not_line_up_computes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let k = key(4);
        let data = vec![9u8; 2 * BLOCK as usize];
        // One crc for two pieces: not usable, so the store must compute both blocks'.
        store
            .write_verified(ChainId(2), k, 0, &data, &[0xdead_beef])
            .await
            .unwrap();
        let r = store.read(k, 0, data.len()).await.unwrap();
        assert_eq!(&r.data[..], &data[..]);
        assert_eq!(r.crcs, piece_crcs(0, &data));
        // Unaligned over the first block's tail and into the second: the edge blocks'
        // crcs come from the merged bytes, not from the (partial) pieces.
        let w = vec![3u8; BLOCK as usize];
        let off = BLOCK / 2;
        store
            .write_verified(ChainId(2), k, off, &w, &piece_crcs(off, &w))
            .await
            .unwrap();
        drop(store);
        let store = FileStore::open(dir.path()).unwrap();
        let r = store.read(k, 0, data.len()).await.unwrap();
        let mut want = data.clone();
        want[off as usize..off as usize + w.len()].copy_from_slice(&w);
        assert_eq!(&r.data[..], &want[..]);
        assert_eq!(r.crcs, piece_crcs(0, &want));
    }

    #[tokio::test]
    async fn delete_removes_files_and_object_is_gone_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.write(ChainId(3), key(2), 7, b"abc").await.unwrap();
        store.write(ChainId(3), key(3), 0, b"def").await.unwrap();
        store.delete(key(2)).await.unwrap();
        assert!(!store.data_path(ChainId(3), key(2)).exists());
        drop(store);
        let store = FileStore::open(dir.path()).unwrap();
        let keys: Vec<_> = store.list().into_iter().map(|o| (o.key, o.size)).collect();
        assert_eq!(keys, vec![(key(3), 3)]);
        assert!(matches!(
            store.write(ChainId(4), key(3), 0, b"x").await,
            Err(StoreError::Invalid(_))
        ));
    }
}
