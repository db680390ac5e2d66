//! Data-server registry and chain table: registration (same uuid, same id), liveness
//! (`ServerDown` / `ServerUp`), capacity for statfs, and the placement rules that keep
//! every chain at R members where there are enough live servers.
//!
//! Rules (docs/design/0002-meta-state-machine.md has the reasoning):
//! - Every server registered for the first time adds one chain, so there are as many
//!   chains as servers ever registered.
//! - A chain that holds no objects (no live file or unacknowledged garbage on it) carries
//!   no data, so it is simply re-placed at every membership event to
//!   `ideal_members(index, live, min(R, live))`: head `live[index % n]`, then the next
//!   servers in id order, wrapping.
//! - A chain that holds objects changes only incrementally: a down server leaves it
//!   (unless it is the last member: the data has nowhere else to be, so the chain waits
//!   for it), and while it has a live member and fewer than min(R, live) servers, the live
//!   server in the fewest chains (then the lowest id) joins it as `syncing`. It becomes
//!   the tail on `ServerCaughtUp`.
//! - Every change of a chain's members or syncing list bumps its version.

use super::*;

/// Ideal members of chain number `index` over the live servers (sorted by id): headed by
/// `live[index % n]`, followed by the next `r - 1` live servers in id order, wrapping.
pub fn ideal_members(index: usize, live: &[ServerId], r: usize) -> Vec<ServerId> {
    let n = live.len();
    if n == 0 {
        return Vec::new();
    }
    (0..r.min(n)).map(|j| live[(index + j) % n]).collect()
}

impl MetaState {
    pub(super) fn register_server(
        &mut self,
        uuid: &str,
        address: &str,
        capacity: u64,
        free: u64,
        now: i64,
    ) -> Response {
        if uuid.is_empty() {
            return Err(FsError::Invalid("empty server uuid".into()));
        }
        if address.is_empty() {
            return Err(FsError::Invalid("empty server address".into()));
        }
        if let Some(id) = self.server_by_uuid.get(uuid).copied() {
            let s = self.server_mut(id);
            s.address = address.to_string();
            s.capacity = capacity;
            s.free = free;
            if !s.alive {
                s.alive = true;
                self.reconcile();
            }
            return Ok(Reply::Server(id));
        }
        let id = ServerId(self.next_server);
        self.next_server += 1;
        self.servers.insert(
            id,
            ServerInfo {
                id,
                uuid: uuid.to_string(),
                address: address.to_string(),
                capacity,
                free,
                alive: true,
                registered_ns: now,
            },
        );
        self.server_by_uuid.insert(uuid.to_string(), id);
        let chain = ChainId(self.next_chain);
        self.next_chain += 1;
        self.chains.insert(
            chain,
            ChainInfo {
                id: chain,
                version: ChainVersion(0),
                members: Vec::new(),
                syncing: Vec::new(),
            },
        );
        self.reconcile();
        Ok(Reply::Server(id))
    }

    pub(super) fn update_capacity(
        &mut self,
        server: ServerId,
        capacity: u64,
        free: u64,
    ) -> Response {
        let s = self.servers.get_mut(&server).ok_or(FsError::NotFound)?;
        s.capacity = capacity;
        s.free = free;
        Ok(Reply::Done)
    }

    pub(super) fn server_down(&mut self, server: ServerId) -> Response {
        let s = self.servers.get_mut(&server).ok_or(FsError::NotFound)?;
        if !s.alive {
            return Ok(Reply::Done);
        }
        s.alive = false;
        for c in self.chains.values_mut() {
            let before = (c.members.len(), c.syncing.len());
            c.syncing.retain(|m| *m != server);
            if c.members.len() > 1 {
                c.members.retain(|m| *m != server);
            }
            if before != (c.members.len(), c.syncing.len()) {
                bump(c);
            }
        }
        self.reconcile();
        Ok(Reply::Done)
    }

    pub(super) fn server_up(&mut self, server: ServerId) -> Response {
        let s = self.servers.get_mut(&server).ok_or(FsError::NotFound)?;
        if s.alive {
            return Ok(Reply::Done);
        }
        s.alive = true;
        self.reconcile();
        Ok(Reply::Done)
    }

    pub(super) fn server_caught_up(&mut self, server: ServerId, chain: ChainId) -> Response {
        if !self.servers.contains_key(&server) {
            return Err(FsError::NotFound);
        }
        let c = self.chains.get_mut(&chain).ok_or(FsError::NotFound)?;
        if c.members.contains(&server) {
            // Heartbeats repeat the report until they see the new table: not an error.
            return Ok(Reply::Done);
        }
        let Some(pos) = c.syncing.iter().position(|m| *m == server) else {
            return Err(FsError::Invalid(format!(
                "server {server} is not syncing into chain {chain}"
            )));
        };
        c.syncing.remove(pos);
        c.members.push(server);
        bump(c);
        Ok(Reply::Done)
    }

    /// Chains new files may use: those with at least one live serving member, by id.
    pub(super) fn usable_chains(&self) -> Vec<ChainId> {
        self.chains
            .values()
            .filter(|c| c.members.iter().any(|m| self.is_alive(*m)))
            .map(|c| c.id)
            .collect()
    }

    fn is_alive(&self, s: ServerId) -> bool {
        self.servers.get(&s).is_some_and(|s| s.alive)
    }

    fn server_mut(&mut self, id: ServerId) -> &mut ServerInfo {
        self.servers
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("server {id} checked before mutation"))
    }

    /// Brings every chain to the rules in the module doc after a membership event.
    fn reconcile(&mut self) {
        let live: Vec<ServerId> = self
            .servers
            .values()
            .filter(|s| s.alive)
            .map(|s| s.id)
            .collect();
        if live.is_empty() {
            return;
        }
        let r = (self.replicas as usize).min(live.len());
        let ids: Vec<ChainId> = self.chains.keys().copied().collect();
        for (index, id) in ids.iter().enumerate() {
            let used = self.chain_refs.get(id).is_some_and(|n| *n > 0);
            if used {
                self.refill(*id, &live, r);
            } else if let Some(c) = self.chains.get_mut(id) {
                let ideal = ideal_members(index, &live, r);
                if c.members != ideal || !c.syncing.is_empty() {
                    c.members = ideal;
                    c.syncing.clear();
                    bump(c);
                }
            }
        }
    }

    /// Adds syncing members to a chain holding data until it has `r` servers, choosing the
    /// live server in the fewest chains (ties: lowest id). A chain with no live member has
    /// no source to copy from and is left alone.
    fn refill(&mut self, id: ChainId, live: &[ServerId], r: usize) {
        let Some(c) = self.chains.get(&id) else {
            return;
        };
        if !c.members.iter().any(|m| self.is_alive(*m)) {
            return;
        }
        let mut added = Vec::new();
        let mut have: Vec<ServerId> = c.members.iter().chain(&c.syncing).copied().collect();
        while have.len() < r {
            let load = |s: ServerId| {
                self.chains
                    .values()
                    .filter(|c| c.members.contains(&s) || c.syncing.contains(&s))
                    .count()
            };
            let Some(pick) = live
                .iter()
                .copied()
                .filter(|s| !have.contains(s))
                .min_by_key(|s| (load(*s), *s))
            else {
                break;
            };
            have.push(pick);
            added.push(pick);
        }
        if !added.is_empty() {
            if let Some(c) = self.chains.get_mut(&id) {
                c.syncing.extend(added);
                bump(c);
            }
        }
    }
}

fn bump(c: &mut ChainInfo) {
    c.version = ChainVersion(c.version.0 + 1);
}
