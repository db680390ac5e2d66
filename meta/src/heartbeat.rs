//! Leader policy for data servers: registration, and what a heartbeat does (mark the
//! server up, promote chains it caught up on, record its capacity, tell it which garbage
//! objects to delete). The gRPC door (`service.rs`) only converts and checks; the
//! decisions live here, with their tunables named in `HeartbeatPolicy`.

use crate::node::{now_ns, MetaNode};
use crate::raft_types::Command;
use crate::state::{ChainTable, Reply};
use cirrus_types::sync::lock;
use cirrus_types::{ChainId, ChainVersion, FsError, FsResult, ObjectKey, ServerId};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Tunables of the heartbeat policy.
#[derive(Clone, Debug)]
pub struct HeartbeatPolicy {
    /// At most one `UpdateCapacity` entry per server per interval: capacity feeds statfs
    /// and placement, not worth a raft entry per beat.
    pub capacity_interval: Duration,
    /// Garbage files looked at per heartbeat: bounds the reply and the work per beat.
    pub garbage_per_beat: usize,
}

impl Default for HeartbeatPolicy {
    fn default() -> Self {
        HeartbeatPolicy {
            capacity_interval: Duration::from_secs(10),
            garbage_per_beat: 1024,
        }
    }
}

/// One heartbeat of a data server, as the door validated it.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    pub server: ServerId,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// Chains (at a version) this server has finished syncing into.
    pub caught_up: Vec<(ChainId, ChainVersion)>,
}

/// What a data server learns from its heartbeat.
#[derive(Clone, Debug)]
pub struct HeartbeatAnswer {
    pub table: ChainTable,
    /// Objects of deleted files this server may hold: delete them.
    pub garbage: Vec<ObjectKey>,
}

/// A data server's registration, as the door validated it.
#[derive(Clone, Debug)]
pub struct Registration {
    pub uuid: String,
    /// host:port of its data service.
    pub address: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

impl MetaNode {
    /// Registers (or re-registers) a data server; `wrap` adds the caller's request id.
    pub async fn register_server(
        &self,
        reg: Registration,
        wrap: impl FnOnce(Command) -> Command,
    ) -> FsResult<ServerId> {
        let cmd = Command::RegisterServer {
            uuid: reg.uuid,
            address: reg.address,
            capacity: reg.capacity_bytes,
            free: reg.free_bytes,
            now_ns: now_ns(),
        };
        match self.write(wrap(cmd)).await? {
            Reply::Server(id) => {
                self.touch_server(id);
                Ok(id)
            }
            other => Err(FsError::Io(format!("unexpected apply result {other:?}"))),
        }
    }

    /// One heartbeat: the server is alive; its caught-up reports for the chains' current
    /// versions promote it; its capacity is recorded (throttled); and it is told the
    /// garbage objects it may hold. A garbage file is acknowledged once every server
    /// holding its objects has been told (deletion is idempotent, and a server that was
    /// down then is cleaned up by its own scrub).
    pub async fn heartbeat(&self, beat: Heartbeat) -> FsResult<HeartbeatAnswer> {
        let sid = beat.server;
        let limit = self.heartbeat_policy.garbage_per_beat;
        let (info, mut table, garbage) = self
            .read(|s| {
                let info = s.server(sid).cloned().ok_or(FsError::NotFound)?;
                Ok((info, s.chain_table(), s.garbage(limit)))
            })
            .await?;
        self.touch_server(sid);
        if !info.alive {
            self.write(Command::ServerUp {
                server: sid,
                now_ns: now_ns(),
            })
            .await?;
            table = self.read(|s| Ok(s.chain_table())).await?;
        }
        // Only reports for the chain's current version promote. A refused report must not
        // fail the heartbeat: its reply brings the table the server needs.
        for &(chain, version) in &beat.caught_up {
            let current = table
                .chains
                .get(&chain)
                .is_some_and(|ch| ch.version == version && ch.syncing.contains(&sid));
            if !current {
                continue;
            }
            let cmd = Command::ServerCaughtUpAt {
                server: sid,
                chain,
                version,
            };
            match self.write(cmd).await {
                Ok(_) => table = self.read(|s| Ok(s.chain_table())).await?,
                Err(e @ (FsError::StaleChain { .. } | FsError::Invalid(_))) => {
                    tracing::info!(server = %sid, %chain, %version, err = %e, "caught-up report refused")
                }
                Err(e) => return Err(e),
            }
        }
        let capacity_changed = info.capacity != beat.capacity_bytes || info.free != beat.free_bytes;
        if capacity_changed && self.capacity_due(sid) {
            self.write(Command::UpdateCapacity {
                server: sid,
                capacity: beat.capacity_bytes,
                free: beat.free_bytes,
            })
            .await?;
        }
        let mut objects = Vec::new();
        let mut acked = Vec::new();
        {
            let mut g = lock(&self.leader);
            for gb in &garbage {
                let mut holders = BTreeSet::new();
                for (idx, chain) in gb.layout.chains.iter().enumerate() {
                    let Some(ch) = table.chains.get(chain) else {
                        continue;
                    };
                    let route = ch.route();
                    if route.contains(&sid) {
                        objects.push(ObjectKey {
                            inode: gb.ino,
                            index: idx as u32,
                        });
                    }
                    holders.extend(route);
                }
                let told = g.garbage_told.entry(gb.ino).or_default();
                told.insert(sid);
                if holders.iter().all(|h| told.contains(h)) {
                    acked.push(gb.ino);
                }
            }
            for i in &acked {
                g.garbage_told.remove(i);
            }
        }
        if !acked.is_empty() {
            if let Err(e) = self.write(Command::AckGarbage { inos: acked }).await {
                tracing::debug!(err = %e, "propose AckGarbage");
            }
        }
        Ok(HeartbeatAnswer {
            table,
            garbage: objects,
        })
    }

    /// Whether a capacity update of `sid` may be proposed now; if so, the interval
    /// starts again.
    fn capacity_due(&self, sid: ServerId) -> bool {
        let mut g = lock(&self.leader);
        let now = Instant::now();
        let interval = self.heartbeat_policy.capacity_interval;
        let due = g
            .capacity_sent
            .get(&sid)
            .is_none_or(|t| now.duration_since(*t) > interval);
        if due {
            g.capacity_sent.insert(sid, now);
        }
        due
    }
}
