//! One running meta node: the shared context every RPC handler uses (`MetaNode`), the
//! two request paths (linearizable read, replicated write), and the leader's in-memory
//! duties: proposing Init on a fresh group, dropping data servers that stopped
//! heartbeating, and releasing handles of clients whose lease lapsed. Liveness and
//! leases live only in the leader's memory; a new leader grants everyone a full grace
//! period first, so a failover never looks like a mass timeout.

use crate::identity::Identity;
use crate::locks::LockWaits;
use crate::raft_types::{Command, MetaState, NodeId, Raft};
use crate::sm_store::Shared;
use crate::state::Reply;
use cirrus_proto::metrics::{Gauge, Registry};
use cirrus_types::sync::lock;
use cirrus_types::{ClientId, ClusterId, FsError, FsResult, InodeId, LockCall, LockKind, ServerId};
use openraft::error::{ForwardToLeader, RaftError};
use openraft::{BasicNode, LogId, ServerState, Vote};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Server-side bound of one replicated write or read barrier: the client's own deadline
/// is usually shorter, this only guarantees that no handler waits forever.
const OP_DEADLINE: Duration = Duration::from_secs(20);

/// What the leader remembers and nobody else needs to.
#[derive(Default)]
pub struct LeaderMem {
    /// Term in which this node last took over as leader (None: not leader).
    pub term: Option<u64>,
    /// Last heartbeat (or registration) of each data server.
    pub server_seen: BTreeMap<ServerId, Instant>,
    /// Last capacity update proposed per server (throttles UpdateCapacity entries).
    pub capacity_sent: BTreeMap<ServerId, Instant>,
    /// Last lease renewal (or handle open) per client.
    pub client_seen: BTreeMap<ClientId, Instant>,
    /// Which servers have been told to delete each garbage file's objects.
    pub garbage_told: BTreeMap<InodeId, BTreeSet<ServerId>>,
    /// Wall clock (ms) of each server's last heartbeat, for status output.
    pub server_seen_ms: BTreeMap<ServerId, i64>,
}

pub struct Gauges {
    pub term: Gauge,
    pub is_leader: Gauge,
    pub last_applied: Gauge,
    pub inodes: Gauge,
}

/// Coalesces linearizable-read barriers and keeps the read lease they earn (see
/// `MetaNode::read`).
pub struct ReadBarrier {
    /// Held by the one barrier in flight.
    turn: tokio::sync::Mutex<()>,
    /// Number of barriers started.
    started: AtomicU64,
    /// Start number of the latest barrier that completed successfully.
    done: AtomicU64,
    /// How long after a barrier *started* reads may skip the quorum round.
    lease: Duration,
    /// The latest lease earned, if any.
    held: Mutex<Option<Lease>>,
}

/// What a successful barrier proved: at `since` (taken before its heartbeats went out)
/// this node led with `vote` under the membership of log id `membership`, and a quorum
/// acknowledged it after that instant.
#[derive(Clone, Debug)]
struct Lease {
    since: Instant,
    vote: Vote<NodeId>,
    membership: Option<LogId<NodeId>>,
}

/// The leader-side read lease: a third of openraft's follower-side lease (a follower that
/// acknowledged a heartbeat refuses every vote request for `election_timeout_max` after
/// it), so the leader stops trusting its lease well before any other node can be elected,
/// with room for clock rate differences between machines.
pub fn read_lease(config: &openraft::Config) -> Duration {
    Duration::from_millis(config.election_timeout_max / 3)
}

impl ReadBarrier {
    pub fn new(lease: Duration) -> Self {
        ReadBarrier {
            turn: tokio::sync::Mutex::new(()),
            started: AtomicU64::new(0),
            done: AtomicU64::new(0),
            lease,
            held: Mutex::new(None),
        }
    }

    fn lease(&self) -> Option<Lease> {
        lock(&self.held).clone()
    }

    fn set_lease(&self, l: Option<Lease>) {
        *lock(&self.held) = l;
    }
}

/// This node's vote and membership log id if it leads, read inside the raft core (so in
/// order with vote requests it handles: once it granted another node's vote, this says
/// so).
async fn leading(raft: &Raft, me: NodeId) -> Option<(Vote<NodeId>, Option<LogId<NodeId>>)> {
    raft.with_raft_state(move |st| {
        let vote = st.vote_ref();
        let membership = st.membership_state.effective();
        (st.server_state == ServerState::Leader
            && vote.is_committed()
            && vote.leader_id().voted_for() == Some(me)
            // A joint configuration has two quorums to reason about: no lease there.
            && membership.membership().get_joint_config().len() == 1)
            .then(|| (*vote, *membership.log_id()))
    })
    .await
    .ok()
    .flatten()
}

/// Everything a handler needs.
pub struct MetaNode {
    pub id: NodeId,
    pub raft: Raft,
    pub shared: Shared,
    pub identity: Arc<Identity>,
    /// Voter id -> meta address, from `--peers`.
    pub peers: BTreeMap<NodeId, String>,
    pub replicas: u32,
    pub server_timeout: Duration,
    pub client_lease: Duration,
    /// What a data server's heartbeat does, and how often (`crate::heartbeat`).
    pub heartbeat_policy: crate::heartbeat::HeartbeatPolicy,
    pub leader: Mutex<LeaderMem>,
    pub registry: Arc<Registry>,
    pub gauges: Gauges,
    pub read_barrier: ReadBarrier,
    /// Blocking lock waits (leader only; see `crate::locks`).
    pub lock_waits: LockWaits,
}

/// The raft command of a lock call.
fn lock_command(c: &LockCall) -> Command {
    Command::SetLock {
        ino: c.ino,
        owner: c.owner,
        kind: c.kind,
        start: c.start,
        end: c.end,
        pid: c.pid,
    }
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl MetaNode {
    /// The address to send a client to when `leader` is the leader.
    pub fn addr_of(&self, leader: Option<NodeId>) -> Option<String> {
        leader.and_then(|id| self.peers.get(&id).cloned())
    }

    fn not_leader(&self, f: &ForwardToLeader<NodeId, BasicNode>) -> FsError {
        FsError::NotLeader {
            leader_hint: f
                .leader_node
                .as_ref()
                .map(|n| n.addr.clone())
                .or_else(|| self.addr_of(f.leader_id)),
        }
    }

    /// The cluster id, or Unavailable before the group is initialised.
    pub fn cluster_id(&self) -> FsResult<ClusterId> {
        self.identity
            .get()
            .ok_or_else(|| FsError::Unavailable("meta group not initialised yet".into()))
    }

    /// Refuses requests for another cluster (`allow_empty` for first contact only).
    pub fn check(&self, theirs: &str, allow_empty: bool) -> FsResult<()> {
        let ours = self.cluster_id()?;
        cirrus_proto::convert::check_cluster(ours, theirs, allow_empty)
    }

    /// A linearizable read: a read-index round through the leader (openraft's
    /// `ensure_linearizable`: confirm leadership with a quorum, wait until applied reaches
    /// the commit index seen at the start), then the query on the local state; or, inside
    /// the read lease that round earned, the query alone.
    ///
    /// Concurrent reads share barriers: a read needs one barrier that *started after it
    /// arrived* (that barrier's commit index covers every write acknowledged before the
    /// read began), not one of its own. Barriers run one at a time; every read that
    /// arrives while one runs is served by the next, so N concurrent reads cost about two
    /// quorum round trips instead of N.
    ///
    /// Inside the lease a barrier earned (why that is safe:
    /// `docs/design/0001-meta-raft-storage.md`, "Read lease"), a read asks the raft core
    /// whether this node still leads with the same vote and membership, holds the state
    /// still, and only then checks the clock, so a pause anywhere before sends it to a
    /// barrier instead.
    pub async fn read<T>(&self, f: impl FnOnce(&MetaState) -> FsResult<T>) -> FsResult<T> {
        let f = match self.lease_read(f).await {
            Ok(answer) => return answer,
            Err(f) => f,
        };
        match tokio::time::timeout(OP_DEADLINE, self.barrier()).await {
            Err(_) => return Err(FsError::Timeout("read barrier of the meta leader".into())),
            Ok(r) => r?,
        }
        let g = self
            .shared
            .read()
            .map_err(|_| FsError::Io("state machine lock poisoned".into()))?;
        f(&g.state)
    }

    /// The read under the lease, or `f` back when there is no valid lease.
    async fn lease_read<T, F>(&self, f: F) -> Result<FsResult<T>, F>
    where
        F: FnOnce(&MetaState) -> FsResult<T>,
    {
        let rb = &self.read_barrier;
        let Some(lease) = rb.lease() else {
            return Err(f);
        };
        let deadline = lease.since + rb.lease;
        if Instant::now() >= deadline {
            return Err(f);
        }
        match leading(&self.raft, self.id).await {
            Some((vote, membership)) if vote == lease.vote && membership == lease.membership => {}
            _ => {
                rb.set_lease(None);
                return Err(f);
            }
        }
        // The guard holds the state still: the answer is the state as of taking it, so
        // the clock is checked after that (a pause before it is caught here).
        let g = match self.shared.read() {
            Ok(g) => g,
            Err(_) => return Ok(Err(FsError::Io("state machine lock poisoned".into()))),
        };
        if Instant::now() >= deadline {
            drop(g);
            return Err(f);
        }
        Ok(f(&g.state))
    }

    /// Waits for a read barrier that started after this call (see `read`), and keeps the
    /// lease a successful one earns.
    async fn barrier(&self) -> FsResult<()> {
        let rb = &self.read_barrier;
        let need = rb.started.load(Ordering::SeqCst) + 1;
        let done = || rb.done.load(Ordering::SeqCst) >= need;
        if done() {
            return Ok(());
        }
        let _turn = rb.turn.lock().await;
        if done() {
            return Ok(());
        }
        let n = rb.started.fetch_add(1, Ordering::SeqCst) + 1;
        // Taken before the heartbeats go out: the lease runs from here.
        let since = Instant::now();
        let before = leading(&self.raft, self.id).await;
        match self.raft.ensure_linearizable().await {
            Ok(_) => {
                // Barriers run one at a time under `turn`, so `done` only grows.
                rb.done.store(n, Ordering::SeqCst);
                // A lease only if the round confirmed the vote and membership this node
                // held before it started.
                let after = leading(&self.raft, self.id).await;
                rb.set_lease(match (before, after) {
                    (Some(b), Some(a)) if a == b => Some(Lease {
                        since,
                        vote: a.0,
                        membership: a.1,
                    }),
                    _ => None,
                });
                Ok(())
            }
            Err(e) => {
                rb.set_lease(None);
                Err(match e.forward_to_leader() {
                    Some(f) => self.not_leader(f),
                    None => FsError::Unavailable(format!("read barrier: {e}")),
                })
            }
        }
    }

    /// Proposes one command and returns its apply result. Acknowledged only once the
    /// entry is fsynced on a majority and applied here.
    pub async fn write(&self, cmd: Command) -> FsResult<Reply> {
        match tokio::time::timeout(OP_DEADLINE, self.raft.client_write(cmd)).await {
            Err(_) => Err(FsError::Timeout(
                "replicated write on the meta leader".into(),
            )),
            Ok(Ok(resp)) => resp.data,
            Ok(Err(e)) => Err(match &e {
                RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f)) => {
                    self.not_leader(f)
                }
                _ => FsError::Unavailable(format!("replicated write: {e}")),
            }),
        }
    }

    /// `F_SETLK`: sets or clears the lock, or `WouldBlock`; wakes the waiters of the file
    /// when the change can free bytes for them (an unlock or a downgrade).
    pub async fn set_lock(&self, call: LockCall) -> FsResult<()> {
        self.write(lock_command(&call)).await?;
        if call.kind != Some(LockKind::Write) {
            self.lock_waits.wake(call.ino);
        }
        Ok(())
    }

    /// `F_SETLKW` for one wait slice: takes the lock as soon as nothing conflicts, woken
    /// by the commits that free locks on the file (no raft entry for an attempt that
    /// must wait: the leader's state says so). `WouldBlock` when the slice ends first,
    /// `Interrupted` when the caller cancels, `Deadlock` when waiting would close a cycle.
    pub async fn wait_for_lock(
        &self,
        call: LockCall,
        wait_id: u64,
        slice: Duration,
    ) -> FsResult<()> {
        let Some(kind) = call.kind else {
            return self.set_lock(call).await;
        };
        let wait = self.lock_waits.begin(wait_id, call.owner, call.ino)?;
        let until = tokio::time::Instant::now() + slice.min(crate::locks::MAX_WAIT_SLICE);
        loop {
            if wait.cancelled() {
                return Err(FsError::Interrupted(format!(
                    "lock wait {wait_id} cancelled"
                )));
            }
            let mut freed = self.lock_waits.subscribe(call.ino);
            wait.unblocked();
            let (ino, owner, start, end) = (call.ino, call.owner, call.start, call.end);
            let holder = match self
                .read(move |s| Ok(s.lock_conflict(ino, owner, kind, start, end)))
                .await?
            {
                Some(h) => Some(h),
                None => match self.write(lock_command(&call)).await {
                    Ok(_) => return Ok(()),
                    Err(FsError::WouldBlock(_)) => None,
                    Err(e) => return Err(e),
                },
            };
            if let Some(h) = holder {
                wait.blocked_by(h.owner)?;
            }
            tokio::select! {
                _ = freed.changed() => {}
                _ = wait.on_cancel() => {}
                _ = tokio::time::sleep_until(until) => {
                    return Err(FsError::WouldBlock(format!(
                        "bytes {start}..={end} still locked after a wait slice of {slice:?}"
                    )));
                }
            }
        }
    }

    /// Notes that a client is alive (handle open, lease renewal), if we lead.
    pub fn touch_client(&self, c: ClientId) {
        {
            let mut g = lock(&self.leader);
            if g.term.is_some() {
                g.client_seen.insert(c, Instant::now());
            }
        }
    }

    /// Notes a data server heartbeat or registration, if we lead.
    pub fn touch_server(&self, s: ServerId) {
        {
            let mut g = lock(&self.leader);
            if g.term.is_some() {
                g.server_seen.insert(s, Instant::now());
                g.server_seen_ms.insert(s, now_ns() / 1_000_000);
            }
        }
    }

    /// One round of leader duties. Called periodically by `duties`.
    async fn duty_round(&self) {
        let m = self.raft.metrics().borrow().clone();
        self.gauges.term.set(m.current_term as i64);
        self.gauges
            .last_applied
            .set(m.last_applied.map(|l| l.index as i64).unwrap_or(0));
        let leading = m.state == ServerState::Leader;
        self.gauges.is_leader.set(i64::from(leading));
        if !leading {
            {
                let mut g = lock(&self.leader);
                if g.term.is_some() {
                    *g = LeaderMem::default();
                }
            }
            return;
        }
        // Bring the local state up to date before acting on it.
        let snapshot = match self
            .read(|s| {
                Ok((
                    s.cluster_id(),
                    s.chain_table(),
                    s.leased_clients(),
                    s.inode_count(),
                ))
            })
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(%e, "leader duties: read barrier failed");
                return;
            }
        };
        let (cluster_id, table, clients, inodes) = snapshot;
        self.gauges.inodes.set(inodes as i64);
        if cluster_id.is_none() {
            self.propose_init().await;
            return;
        }
        let now = Instant::now();
        let mut down = Vec::new();
        let mut lapsed = Vec::new();
        {
            let mut g = lock(&self.leader);
            if g.term != Some(m.current_term) {
                // Just took over: everyone gets a full grace period from now.
                *g = LeaderMem {
                    term: Some(m.current_term),
                    ..LeaderMem::default()
                };
                tracing::info!(
                    term = m.current_term,
                    "leading: liveness and lease timers start now"
                );
            }
            for (&id, _) in table.servers.iter().filter(|(_, s)| s.alive) {
                let seen = *g.server_seen.entry(id).or_insert(now);
                if now.duration_since(seen) > self.server_timeout {
                    down.push(id);
                }
            }
            for c in &clients {
                let seen = *g.client_seen.entry(*c).or_insert(now);
                if now.duration_since(seen) > self.client_lease {
                    lapsed.push(*c);
                }
            }
            let live: BTreeSet<ClientId> = clients.iter().copied().collect();
            g.client_seen.retain(|c, _| live.contains(c));
        }
        for s in down {
            tracing::warn!(server = %s, timeout = ?self.server_timeout, "data server stopped heartbeating: marking it down");
            if let Err(e) = self
                .write(Command::ServerDown {
                    server: s,
                    now_ns: now_ns(),
                })
                .await
            {
                tracing::warn!(server = %s, %e, "propose ServerDown");
            }
            {
                let mut g = lock(&self.leader);
                g.server_seen.remove(&s);
            }
        }
        for c in lapsed {
            tracing::info!(client = %c, lease = ?self.client_lease, "client lease lapsed: releasing its handles");
            match self
                .write(Command::ReleaseClient {
                    client: c,
                    now_ns: now_ns(),
                })
                .await
            {
                Ok(_) => {
                    {
                        let mut g = lock(&self.leader);
                        g.client_seen.remove(&c);
                    }
                    // Its locks are gone too: waiters anywhere may take them now.
                    self.lock_waits.wake_all();
                }
                Err(e) => tracing::warn!(client = %c, %e, "propose ReleaseClient"),
            }
        }
    }

    async fn propose_init(&self) {
        let mut id = 0u128;
        while id == 0 {
            id = rand::random();
        }
        let cmd = Command::Init {
            cluster_id: ClusterId(id),
            replicas: self.replicas,
            now_ns: now_ns(),
        };
        match self.write(cmd).await {
            Ok(_) => {
                tracing::info!(cluster_id = %ClusterId(id), "initialised the cluster: cluster id created, root directory made")
            }
            // Another leader's Init may have won the race; the state then refuses ours.
            Err(e) => tracing::warn!(%e, "propose Init"),
        }
    }
}

/// Runs the leader duties until the task is aborted.
pub async fn duties(node: Arc<MetaNode>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        node.duty_round().await;
    }
}
