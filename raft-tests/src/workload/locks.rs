//! The lock workload: lockers on several client processes take exclusive and shared
//! locks on a few shared files at the meta group (blocking waits, as `F_SETLKW`), hold
//! each for a few milliseconds and unlock. Each hold is recorded as the interval from the
//! moment the lock call returned granted to the moment the unlock was sent: meta held the
//! lock over at least that interval, so if meta's exclusion is right no exclusive hold
//! overlaps another hold of the same file (`check::exclusive_locks`).
//!
//! A lock call whose outcome is unknown (the call's deadline passed under a fault) may
//! have been granted: the locker unlocks that owner best-effort and carries on as a new
//! client, so a lock it could not undo is dropped with the old client's lease and never
//! stalls the others for longer.

use cirrus_client::meta::MetaClient;
use cirrus_proto::{CallPolicy, MetaConn};
use cirrus_types::{ClientId, FsError, InodeId, LockCall, LockKind, LockOwner};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One confirmed hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockHold {
    /// Client id and lock owner of the holder.
    pub client: u64,
    pub owner: u64,
    pub ino: u64,
    pub exclusive: bool,
    /// When the lock call returned granted.
    pub acquired_ns: u64,
    /// When the unlock was sent.
    pub released_ns: u64,
}

#[derive(Clone)]
pub struct LockWorkload {
    t0: Instant,
    pub holds: Arc<Mutex<Vec<LockHold>>>,
    /// Lock calls whose outcome stayed unknown.
    pub unknown: Arc<Mutex<u64>>,
}

/// One wait slice at the leader: well inside the per-try deadline below.
const SLICE: Duration = Duration::from_millis(1500);

impl LockWorkload {
    pub fn new(t0: Instant) -> Self {
        LockWorkload {
            t0,
            holds: Arc::default(),
            unknown: Arc::default(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn connect(addrs: &str) -> anyhow::Result<MetaClient> {
        let list = cirrus_proto::leader::parse_addrs(addrs)?;
        let conn = MetaConn::new(
            list,
            CallPolicy {
                per_try: Duration::from_secs(3),
                total: Duration::from_secs(10),
            },
        )?;
        Ok(MetaClient::new(Arc::new(conn)))
    }

    /// Creates (or finds) the shared lock files in directory `dir`; returns their inodes.
    pub async fn make_files(addrs: &str, dir: u64, n: usize) -> anyhow::Result<Vec<u64>> {
        let meta = Self::connect(addrs)?;
        meta.conn().connect().await?;
        let mut inos = Vec::new();
        for i in 0..n {
            let name = format!("lock-{i}");
            let args = cirrus_types::CreateArgs {
                parent: InodeId(dir),
                name: name.clone().into_bytes(),
                mode: 0o644,
                ..Default::default()
            };
            let f = meta
                .create(&args)
                .await
                .map_err(|e| anyhow::anyhow!("create {name}: {e}"))?;
            inos.push(f.attr.ino.0);
        }
        Ok(inos)
    }

    /// Runs one locker until `stop`.
    pub async fn locker(
        self,
        seed: u64,
        addrs: String,
        files: Vec<u64>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let meta = match Self::connect(&addrs) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("locker: {e:#}");
                return;
            }
        };
        if meta.conn().connect().await.is_err() {
            // The harness started the cluster; a first failure is retried by the calls.
        }
        let mut client = ClientId(rng.gen::<u64>() | 1);
        let mut owner = 1u64;
        let mut wait_id = 0u64;
        while !*stop.borrow() && !files.is_empty() {
            let args = LockCall {
                ino: InodeId(files[rng.gen_range(0..files.len())]),
                owner: LockOwner { client, owner },
                kind: Some(if rng.gen_bool(0.7) {
                    LockKind::Write
                } else {
                    LockKind::Read
                }),
                start: 0,
                end: u64::MAX,
                pid: 1,
            };
            wait_id += 1;
            let granted = loop {
                if *stop.borrow() {
                    break Err(FsError::Interrupted("run over".into()));
                }
                match meta.set_lock(&args, Some((wait_id, SLICE))).await {
                    Err(FsError::WouldBlock(_)) => continue,
                    r => break r,
                }
            };
            match granted {
                Ok(()) => {
                    let acquired_ns = self.now_ns();
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
                    let released_ns = self.now_ns();
                    let unlock = LockCall { kind: None, ..args };
                    let unlocked = meta.set_lock(&unlock, None).await;
                    if let Ok(mut h) = self.holds.lock() {
                        h.push(LockHold {
                            client: client.0,
                            owner,
                            ino: args.ino.0,
                            exclusive: args.kind == Some(LockKind::Write),
                            acquired_ns,
                            released_ns,
                        });
                    }
                    if unlocked.is_err() {
                        // Still held at meta: nobody else gets it until the lease goes.
                        client = ClientId(rng.gen::<u64>() | 1);
                    }
                }
                Err(FsError::Interrupted(_)) => {}
                Err(_) => {
                    if let Ok(mut u) = self.unknown.lock() {
                        *u += 1;
                    }
                    let _ = meta.set_lock(&LockCall { kind: None, ..args }, None).await;
                    client = ClientId(rng.gen::<u64>() | 1);
                }
            }
            owner += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(rng.gen_range(5..30))) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
