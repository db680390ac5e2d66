//! The metadata workload: several client processes issue random namespace operations
//! against the meta group over the wire, and every operation is recorded with an exact
//! outcome class (ok / fail / info, see `history`).
//!
//! It deliberately does NOT use `MetaConn::call`, whose retries are at-least-once: a
//! retried create that was applied the first time answers `Exists`, which a history
//! checker would rightly call a violation of what the client saw. Here an attempt is
//! retried only when it certainly had no effect (the TCP connect failed, or the node
//! answered "not leader"); anything else ambiguous ends the op as `info`.
//!
//! Operations run in *groups*: each group owns two directories made before the run and
//! is active for one time window, and operations never cross groups. Groups are therefore
//! independent (P-compositionality), so each group's short history is checked on its own,
//! which keeps the linearizability search small even for long runs.

use crate::history::{DirIx, ErrKind, MetaOp, MetaRet, OpRecord, Outcome, SeenAttr};
use anyhow::{bail, Context, Result};
use cirrus_proto::{from_status, net, pb};
use cirrus_types::FsError;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Names used inside each directory: few, so that operations collide often.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// One independent group: two directories and the time window it is used in.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Group {
    pub id: usize,
    pub dirs: [u64; 2],
}

/// Sends single operations to the meta group with precise outcome classification.
pub struct Executor {
    addrs: Vec<String>,
    cluster_id: String,
    channels: HashMap<String, Channel>,
    leader: Option<String>,
    next: usize,
    /// Deadline of one attempt (an attempt that times out ends the op as `info`).
    pub per_try: Duration,
    /// Deadline of the op (connect failures and leader hops included).
    pub total: Duration,
}

/// How an attempt ended.
enum Attempt {
    Done(MetaRet),
    NotSent(String),
    NotLeader(Option<String>),
    Unknown(String),
}

fn classify_err(e: &FsError) -> Option<ErrKind> {
    Some(match e {
        FsError::NotFound | FsError::StaleHandle => ErrKind::NotFound,
        FsError::Exists => ErrKind::Exists,
        FsError::IsDir => ErrKind::IsDir,
        FsError::NotDir => ErrKind::NotDir,
        FsError::NotEmpty => ErrKind::NotEmpty,
        FsError::NoSpace => ErrKind::NoSpace,
        FsError::NotLeader { .. }
        | FsError::Unavailable(_)
        | FsError::Timeout(_)
        | FsError::Io(_) => return None,
        _ => ErrKind::Other,
    })
}

/// Whether a transport status means the request never left this process.
fn never_sent(s: &tonic::Status) -> bool {
    if s.metadata().get("cirrus-error").is_some() {
        return false;
    }
    let text = format!("{s:?}").to_lowercase();
    text.contains("tcp connect error")
        || text.contains("error trying to connect")
        || text.contains("connection refused")
        || text.contains("no route to host")
}

fn seen(a: Option<pb::Attr>) -> Result<SeenAttr, String> {
    let a = a.ok_or("reply without attr")?;
    Ok(SeenAttr {
        ino: a.ino,
        dir: a.kind == 2,
        mode: a.mode & 0o7777,
        nlink: a.nlink,
    })
}

impl Executor {
    pub fn new(addrs: Vec<String>, cluster_id: String) -> Self {
        Executor {
            addrs,
            cluster_id,
            channels: HashMap::new(),
            leader: None,
            next: rand::random::<usize>(),
            per_try: Duration::from_secs(3),
            total: Duration::from_secs(6),
        }
    }

    fn pick(&mut self) -> Result<(String, Channel), String> {
        let addr = match &self.leader {
            Some(l) => l.clone(),
            None => {
                self.next = self.next.wrapping_add(1);
                self.addrs[self.next % self.addrs.len()].clone()
            }
        };
        if let Some(c) = self.channels.get(&addr) {
            return Ok((addr, c.clone()));
        }
        let c = net::channel(&addr).map_err(|e| e.to_string())?;
        self.channels.insert(addr.clone(), c.clone());
        Ok((addr, c))
    }

    async fn attempt(&self, ch: Channel, op: &MetaOp, dirs: &[u64; 2]) -> Attempt {
        let mut c = net::meta_client(ch);
        let cid = self.cluster_id.clone();
        let d = |i: DirIx| dirs[usize::from(i) % 2];
        let call = async {
            let r: Result<MetaRet, tonic::Status> = match op {
                MetaOp::Create { dir, name, mode } => c
                    .create(pb::CreateRequest {
                        cluster_id: cid,
                        parent: d(*dir),
                        name: name.as_bytes().to_vec(),
                        mode: *mode,
                        exclusive: true,
                        ..Default::default()
                    })
                    .await
                    .map(|r| match seen(r.into_inner().attr) {
                        Ok(attr) => MetaRet::Attr { attr },
                        Err(m) => MetaRet::Err {
                            err: ErrKind::Other,
                            msg: m,
                        },
                    }),
                MetaOp::Mkdir { dir, name, mode } => c
                    .mkdir(pb::MkdirRequest {
                        cluster_id: cid,
                        parent: d(*dir),
                        name: name.as_bytes().to_vec(),
                        mode: *mode,
                        ..Default::default()
                    })
                    .await
                    .map(|r| attr_ret(r.into_inner().attr)),
                MetaOp::Unlink { dir, name } => c
                    .unlink(pb::UnlinkRequest {
                        cluster_id: cid,
                        parent: d(*dir),
                        name: name.as_bytes().to_vec(),
                    })
                    .await
                    .map(|_| MetaRet::Done),
                MetaOp::Rmdir { dir, name } => c
                    .rmdir(pb::RmdirRequest {
                        cluster_id: cid,
                        parent: d(*dir),
                        name: name.as_bytes().to_vec(),
                    })
                    .await
                    .map(|_| MetaRet::Done),
                MetaOp::Rename {
                    dir,
                    name,
                    to_dir,
                    to_name,
                } => c
                    .rename(pb::RenameRequest {
                        cluster_id: cid,
                        parent: d(*dir),
                        name: name.as_bytes().to_vec(),
                        new_parent: d(*to_dir),
                        new_name: to_name.as_bytes().to_vec(),
                        flags: 0,
                    })
                    .await
                    .map(|_| MetaRet::Done),
                MetaOp::Link { ino, dir, name } => c
                    .link(pb::LinkRequest {
                        cluster_id: cid,
                        ino: *ino,
                        new_parent: d(*dir),
                        new_name: name.as_bytes().to_vec(),
                    })
                    .await
                    .map(|r| attr_ret(r.into_inner().attr)),
                MetaOp::Setattr { ino, mode } => c
                    .setattr(pb::SetattrRequest {
                        cluster_id: cid,
                        ino: *ino,
                        mode: Some(*mode),
                        ..Default::default()
                    })
                    .await
                    .map(|r| attr_ret(r.into_inner().attr)),
                MetaOp::Getattr { ino } => c
                    .getattr(pb::GetattrRequest {
                        cluster_id: cid,
                        ino: *ino,
                    })
                    .await
                    .map(|r| attr_ret(r.into_inner().attr)),
                MetaOp::Lookup { dir, name } => c
                    .lookup(pb::LookupRequest {
                        cluster_id: cid,
                        parent: d(*dir),
                        name: name.as_bytes().to_vec(),
                    })
                    .await
                    .map(|r| attr_ret(r.into_inner().attr)),
                MetaOp::Readdir { dir } => c
                    .readdir(pb::ReaddirRequest {
                        cluster_id: cid,
                        ino: d(*dir),
                        cookie: 0,
                        limit: 10_000,
                        plus: false,
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        if !r.eof {
                            // A multi-page listing is not one atomic observation.
                            return MetaRet::Err {
                                err: ErrKind::Other,
                                msg: "readdir not complete in one page".into(),
                            };
                        }
                        let mut names: Vec<String> = r
                            .entries
                            .iter()
                            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                            .filter(|n| n != "." && n != "..")
                            .collect();
                        names.sort();
                        MetaRet::Names { names }
                    }),
            };
            r
        };
        match tokio::time::timeout(self.per_try, call).await {
            Err(_) => Attempt::Unknown(format!("no answer within {:?}", self.per_try)),
            Ok(Ok(ret)) => Attempt::Done(ret),
            Ok(Err(status)) => {
                if never_sent(&status) {
                    return Attempt::NotSent(status.message().to_string());
                }
                let e = from_status(&status);
                if let FsError::NotLeader { leader_hint } = e {
                    return Attempt::NotLeader(leader_hint);
                }
                match classify_err(&e) {
                    Some(k) => Attempt::Done(MetaRet::Err {
                        err: k,
                        msg: e.to_string(),
                    }),
                    None => Attempt::Unknown(e.to_string()),
                }
            }
        }
    }

    /// Runs `op` once (hops only where the request certainly had no effect).
    /// Returns the outcome and the node last tried.
    pub async fn run(&mut self, op: &MetaOp, dirs: &[u64; 2]) -> (Outcome, String) {
        let start = Instant::now();
        let mut last = String::new();
        let mut why = String::from("no attempt");
        let mut pause = Duration::from_millis(10);
        while start.elapsed() < self.total {
            let (addr, ch) = match self.pick() {
                Ok(x) => x,
                Err(e) => return (Outcome::Fail { why: e }, last),
            };
            last = addr.clone();
            match self.attempt(ch, op, dirs).await {
                Attempt::Done(ret) => return (Outcome::Ok { ret }, addr),
                Attempt::Unknown(w) => {
                    // The node may be gone or deposed: find the leader afresh next time.
                    self.leader = None;
                    return (
                        Outcome::Info {
                            why: format!("{addr}: {w}"),
                        },
                        addr,
                    );
                }
                Attempt::NotSent(w) => {
                    self.leader = None;
                    self.channels.remove(&addr);
                    why = format!("{addr}: {w}");
                }
                Attempt::NotLeader(hint) => {
                    why = format!("{addr}: not leader (hint {hint:?})");
                    match hint {
                        Some(h) if h != addr => {
                            self.leader = Some(h);
                            continue;
                        }
                        _ => self.leader = None,
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        (
            Outcome::Fail {
                why: format!("not sent within {:?}: {why}", self.total),
            },
            last,
        )
    }
}

fn attr_ret(a: Option<pb::Attr>) -> MetaRet {
    match seen(a) {
        Ok(attr) => MetaRet::Attr { attr },
        Err(m) => MetaRet::Err {
            err: ErrKind::Other,
            msg: m,
        },
    }
}

/// Makes the directories of `count` groups under a fresh top directory, with retries
/// (run before faults start). Mkdir with retries is safe here: `Exists` after a retry is
/// resolved by a lookup.
pub async fn make_groups(
    addrs: Vec<String>,
    cluster_id: String,
    top: &str,
    count: usize,
) -> Result<Vec<Group>> {
    let mut ex = Executor::new(addrs, cluster_id);
    let root = [1u64, 1u64];
    let top_ino = mkdir_retry(&mut ex, &root, top).await?;
    let parent = [top_ino, top_ino];
    let mut groups = Vec::with_capacity(count);
    for g in 0..count {
        let a = mkdir_retry(&mut ex, &parent, &format!("g{g}-x")).await?;
        let b = mkdir_retry(&mut ex, &parent, &format!("g{g}-y")).await?;
        groups.push(Group {
            id: g,
            dirs: [a, b],
        });
    }
    Ok(groups)
}

async fn mkdir_retry(ex: &mut Executor, parent: &[u64; 2], name: &str) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mk = MetaOp::Mkdir {
            dir: 0,
            name: name.into(),
            mode: 0o755,
        };
        let (out, _) = ex.run(&mk, parent).await;
        match out {
            Outcome::Ok {
                ret: MetaRet::Attr { attr },
            } => return Ok(attr.ino),
            Outcome::Ok {
                ret:
                    MetaRet::Err {
                        err: ErrKind::Exists,
                        ..
                    },
            } => {
                let lk = MetaOp::Lookup {
                    dir: 0,
                    name: name.into(),
                };
                if let (
                    Outcome::Ok {
                        ret: MetaRet::Attr { attr },
                    },
                    _,
                ) = ex.run(&lk, parent).await
                {
                    return Ok(attr.ino);
                }
            }
            Outcome::Ok { ret } => bail!("mkdir {name}: unexpected answer {ret:?}"),
            Outcome::Fail { .. } | Outcome::Info { .. } => {}
        }
        if Instant::now() > deadline {
            bail!("mkdir {name}: the meta group did not answer within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Picks a random op for a process that knows inodes `known`.
pub fn random_op(rng: &mut SmallRng, known: &[u64]) -> MetaOp {
    let dir = rng.gen_range(0..2u8);
    let name = NAMES[rng.gen_range(0..NAMES.len())].to_string();
    let to_dir = rng.gen_range(0..2u8);
    let to_name = NAMES[rng.gen_range(0..NAMES.len())].to_string();
    let ino = if known.is_empty() {
        None
    } else {
        Some(known[rng.gen_range(0..known.len())])
    };
    let mode = [0o600u32, 0o644, 0o640, 0o755][rng.gen_range(0..4)];
    match (rng.gen_range(0..100u32), ino) {
        (0..=19, _) => MetaOp::Create { dir, name, mode },
        (20..=26, _) => MetaOp::Mkdir {
            dir,
            name,
            mode: 0o755,
        },
        (27..=36, _) => MetaOp::Unlink { dir, name },
        (37..=41, _) => MetaOp::Rmdir { dir, name },
        (42..=54, _) => MetaOp::Rename {
            dir,
            name,
            to_dir,
            to_name,
        },
        (55..=61, Some(ino)) => MetaOp::Link { ino, dir, name },
        (62..=67, Some(ino)) => MetaOp::Setattr { ino, mode },
        (68..=74, Some(ino)) => MetaOp::Getattr { ino },
        (75..=87, _) => MetaOp::Lookup { dir, name },
        _ => MetaOp::Readdir { dir },
    }
}

/// Shared state of a running metadata workload.
pub struct MetaWorkload {
    pub history: Mutex<Vec<(usize, OpRecord)>>,
    next_process: AtomicU64,
    next_id: AtomicU64,
    pub t0: Instant,
}

impl MetaWorkload {
    pub fn new(t0: Instant) -> Arc<Self> {
        Arc::new(MetaWorkload {
            history: Mutex::new(Vec::new()),
            next_process: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            t0,
        })
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// One client loop: until `stop`, runs random ops on the group active at the time
    /// (`group_for(now)`), pausing `pace` between ops to keep the history small.
    #[allow(clippy::too_many_arguments)]
    pub async fn client(
        self: Arc<Self>,
        seed: u64,
        addrs: Vec<String>,
        cluster_id: String,
        groups: Vec<Group>,
        window: Duration,
        pace: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut ex = Executor::new(addrs, cluster_id);
        let mut process = self.next_process.fetch_add(1, Ordering::Relaxed);
        let mut known: Vec<(usize, u64)> = Vec::new();
        while !*stop.borrow() {
            let gi = ((self.t0.elapsed().as_nanos() / window.as_nanos().max(1)) as usize)
                .min(groups.len() - 1);
            let g = &groups[gi];
            let mine: Vec<u64> = known
                .iter()
                .filter(|(k, _)| *k == gi)
                .map(|(_, i)| *i)
                .collect();
            let op = random_op(&mut rng, &mine);
            let invoke_ns = self.now_ns();
            let (outcome, node) = ex.run(&op, &g.dirs).await;
            let complete_ns = self.now_ns();
            if let Outcome::Ok {
                ret: MetaRet::Attr { attr },
            } = &outcome
            {
                if !attr.dir && !known.contains(&(gi, attr.ino)) {
                    known.push((gi, attr.ino));
                    if known.len() > 16 {
                        known.remove(0);
                    }
                }
            }
            let retire = matches!(outcome, Outcome::Info { .. });
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) as usize;
            let rec = OpRecord {
                id,
                process,
                op,
                invoke_ns,
                complete_ns,
                outcome,
                node,
            };
            if let Ok(mut h) = self.history.lock() {
                h.push((gi, rec));
            }
            if retire {
                // Its request may still be in flight: continue as a new process.
                process = self.next_process.fetch_add(1, Ordering::Relaxed);
            }
            let jitter = rng.gen_range(0..=pace.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
    }

    /// The recorded history, each op with its group.
    pub fn take(&self) -> Vec<(usize, OpRecord)> {
        let mut h = self.history.lock().map(|h| h.clone()).unwrap_or_default();
        h.sort_by_key(|(_, r)| r.invoke_ns);
        h
    }
}

/// Resolves the cluster id through any node (with a deadline).
pub async fn cluster_id(addrs: &[String]) -> Result<String> {
    let conn = cirrus_proto::MetaConn::new(addrs.to_vec(), cirrus_proto::CallPolicy::default())
        .context("meta conn")?;
    Ok(conn
        .connect()
        .await
        .context("learn the cluster id")?
        .to_string())
}
