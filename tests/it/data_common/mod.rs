//! Helpers shared by the data-server tests (`tests/data_*.rs`): a library client on a
//! real cluster, files whose objects the tests write directly through the data path, and
//! per-member views of one object (a local-only read through that member's Data API and
//! the object's files on its disk).

#![allow(dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use cirrus_client::client::{Client, ClientConfig};

use cirrus_data::peer::Peers;
use cirrus_data::server::parse_cluster;
use cirrus_proto::pb;
use cirrus_raft_tests::cluster::TestCluster;
use cirrus_types::{Chain, ChainId, ChainVersion, FsError, InodeId, Layout, ObjectKey};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::fixtures::HANG;

/// A client whose calls may span a data-server loss (server timeout + version bump).
pub async fn client(c: &TestCluster) -> Result<Arc<Client>> {
    let cfg = ClientConfig {
        deadline: HANG,
        data_per_try: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    Client::connect(&c.meta_addrs(), cfg)
        .await
        .map_err(|e| anyhow!("connect the client library to {}: {e}", c.meta_addrs()))
}

/// Creates `/name` (not opened) and returns its inode and layout: the objects the test
/// then writes live on chains that meta knows hold data (so a lost member is rebuilt,
/// not re-placed empty).
pub async fn new_file(cl: &Client, name: &str) -> Result<(InodeId, Layout)> {
    let attr = cl
        .mknod(InodeId::ROOT, name.as_bytes(), 0o644, 0, 0)
        .await
        .map_err(|e| anyhow!("create /{name}: {e}"))?;
    let layout = cl
        .meta()
        .get_layout(attr.ino)
        .await
        .map_err(|e| anyhow!("layout of /{name}: {e}"))?;
    Ok((attr.ino, layout))
}

/// Deterministic bytes for object offset `off`: every 8-byte word names its offset and
/// the `seed` (the write's identity), so a misplaced or stale block never matches.
pub fn pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let first = off / 8;
    let last = (off + len as u64).div_ceil(8);
    for w in first..last {
        let x = (w * 8) ^ seed.rotate_left(40) ^ 0x9e37_79b9_7f4a_7c15;
        v.extend_from_slice(&x.to_le_bytes());
    }
    let skip = (off - first * 8) as usize;
    v[skip..skip + len].to_vec()
}

/// Writes through the client's data path (head of the chain, acked by the tail).
pub async fn write(
    cl: &Client,
    chain: ChainId,
    key: ObjectKey,
    off: u64,
    data: Vec<u8>,
) -> Result<(), FsError> {
    cl.data()
        .write(chain, key, off, data.into(), Instant::now() + HANG)
        .await
}

/// Reads through the client's data path (checksums verified by the client).
pub async fn read(
    cl: &Client,
    chain: ChainId,
    key: ObjectKey,
    off: u64,
    len: u32,
) -> Result<Vec<u8>, FsError> {
    cl.data()
        .read(chain, key, off, len, Instant::now() + HANG)
        .await
        .map(|b| b.to_vec())
}

/// The chain as meta has it now.
pub async fn chain(c: &TestCluster, id: ChainId) -> Result<pb::Chain> {
    let t = c.chain_table().await?;
    t.chains
        .into_iter()
        .find(|x| x.id == id.0)
        .ok_or_else(|| anyhow!("chain {id} is not in the chain table"))
}

/// The data-server index (0-based, as TestCluster counts) of server id `sid`.
pub async fn index_of(c: &TestCluster, sid: u64) -> Result<usize> {
    let t = c.chain_table().await?;
    let addr = t
        .servers
        .iter()
        .find(|s| s.id == sid)
        .map(|s| s.address.clone())
        .ok_or_else(|| anyhow!("server {sid} is not registered"))?;
    (0..c.data_count())
        .find(|i| c.data_addr(*i) == addr)
        .ok_or_else(|| anyhow!("server {sid} ({addr}) is none of the test's data servers"))
}

/// A peer client as data servers use among themselves (verifies crcs of every reply).
pub async fn peers(c: &TestCluster) -> Result<Peers> {
    let cid = c.conn().await?.cluster_id();
    let cluster = parse_cluster(&cid).map_err(|e| anyhow!("cluster id {cid:?}: {e}"))?;
    Ok(Peers::new(cluster, Duration::from_secs(10)))
}

/// The node-side view of a chain at `version`, for peer calls.
pub fn entry(chain: ChainId, version: ChainVersion) -> Chain {
    Chain {
        id: chain,
        version,
        members: Vec::new(),
        syncing: Vec::new(),
    }
}

/// A read served by data server `i` from its own copy only (no repair from another
/// member): what that member really holds. Returns (bytes, object size).
#[allow(clippy::too_many_arguments)]
pub async fn local_read(
    c: &TestCluster,
    p: &Peers,
    i: usize,
    chain: ChainId,
    version: ChainVersion,
    key: ObjectKey,
    off: u64,
    len: u32,
) -> Result<(Vec<u8>, u64), FsError> {
    p.read(&c.data_addr(i), &entry(chain, version), key, off, len, true)
        .await
        .map(|(d, size)| (d.to_vec(), size))
}

/// Objects (ino, index, size) that data server `i` lists for `chain`, sorted.
pub async fn list_objects(
    c: &TestCluster,
    p: &Peers,
    i: usize,
    chain: ChainId,
) -> Result<Vec<(u64, u32, u64)>> {
    let mut v: Vec<(u64, u32, u64)> = p
        .list(&c.data_addr(i), chain, ChainVersion(0))
        .await
        .map_err(|e| anyhow!("list objects on data-{}: {e}", i + 1))?
        .into_iter()
        .map(|l| (l.key.inode.0, l.key.index, l.size))
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// The data file and checksum sidecar of `key` in data server `i`'s directory (the
/// layout `data/src/store/file.rs` documents: `objects/<chain>/<ino>_<index>.{dat,crc}`).
pub fn object_files(
    c: &TestCluster,
    i: usize,
    chain: ChainId,
    key: ObjectKey,
) -> (PathBuf, PathBuf) {
    let dir = c.data_dir(i).join("objects").join(chain.0.to_string());
    let base = format!("{}_{}", key.inode.0, key.index);
    (
        dir.join(format!("{base}.dat")),
        dir.join(format!("{base}.crc")),
    )
}

/// Disk bytes of every file of one object on data server `i`: its sidecar and all its
/// data segment files (`<base>.dat`, `<base>.dat.<k>`).
pub fn object_disk_bytes(c: &TestCluster, i: usize, chain: ChainId, key: ObjectKey) -> Result<u64> {
    let dir = c.data_dir(i).join("objects").join(chain.0.to_string());
    let base = format!("{}_{}.", key.inode.0, key.index);
    let mut sum = 0;
    for ent in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let ent = ent?;
        if ent.file_name().to_string_lossy().starts_with(&base) {
            sum += disk_bytes(&ent.path())?;
        }
    }
    Ok(sum)
}

/// Resident memory of a process in bytes (VmRSS of `/proc/PID/status`).
pub fn rss_bytes(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// Bytes of disk a file holds (its allocated blocks, not its length).
pub fn disk_bytes(p: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .blocks()
        * 512)
}

/// Polls `f` until it returns Some, within `HANG` (`fixtures::wait_until`).
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::fixtures::wait_until(what, HANG, || {
        let next = f();
        async move {
            Ok(match next.await {
                Some(v) => std::ops::ControlFlow::Break(v),
                None => std::ops::ControlFlow::Continue("not yet".into()),
            })
        }
    })
    .await
}

/// Reads a whole file (buffered; fine for files the server writes O_DIRECT, whose
/// writes invalidate the page cache).
pub fn read_file(p: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("read {}", p.display()))
}

/// The value of the series `name` (labels included, as `/metrics` writes them) on a
/// daemon's `/metrics` (0 if absent).
pub async fn metric(addr: &str, name: &str) -> Result<f64> {
    let text = crate::fixtures::metrics_text(addr)?;
    Ok(crate::fixtures::samples(&text)?
        .into_iter()
        .find(|(k, _)| k == name)
        .map_or(0.0, |(_, v)| v))
}

/// XORs three bytes of the file at `at`, as a failing disk or a stray write would.
pub fn flip(path: &std::path::Path, at: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut b = [0u8; 3];
    f.read_exact_at(&mut b, at)?;
    for x in &mut b {
        *x ^= 0xa5;
    }
    f.write_all_at(&b, at)?;
    f.sync_all()?;
    Ok(())
}

/// 3 meta + 3 data with R=2, where meta drops a silent data server after 3 s: the cluster
/// of the rebuild tests.
pub fn r2_rebuild_cluster() -> cirrus_raft_tests::cluster::ClusterBuilder {
    cirrus_raft_tests::cluster::ClusterBuilder::new()
        .data_servers(3)
        .replicas(2)
        .server_timeout(Duration::from_secs(3))
}

/// One object written through a fresh client, and the members of its chain then.
pub struct Written {
    pub cl: Arc<Client>,
    pub chain_id: ChainId,
    pub key: ObjectKey,
    pub members: Vec<u64>,
}

/// Writes `data` at offset 0 of object 0 of a new file "f" and checks that its chain has
/// the two members of R=2.
pub async fn write_one_object(c: &TestCluster, data: Vec<u8>) -> Result<Written> {
    let cl = client(c).await?;
    let (ino, layout) = new_file(&cl, "f").await?;
    let chain_id = layout.chains[0];
    let key = ObjectKey {
        inode: ino,
        index: 0,
    };
    write(&cl, chain_id, key, 0, data)
        .await
        .map_err(|e| anyhow!("first write: {e}"))?;
    let ch = chain(c, chain_id).await?;
    if ch.members.len() != 2 {
        bail!("chain should have 2 members: {ch:?}");
    }
    Ok(Written {
        cl,
        chain_id,
        key,
        members: ch.members,
    })
}
