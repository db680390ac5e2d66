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
//!   the tail on `ServerCaughtUpAt` for the chain's current version only: a copy listed at
//!   an older version may predate a drop and re-add of that server, during which writes
//!   were acknowledged without it.
//! - A syncing member moves to a live server in at least two fewer chains (fewest, then
//!   lowest id) at every membership event. Chains that started rebuilding while only a
//!   few servers were up all sync onto those; when the others come back the copies spread
//!   over them instead of filling one disk (a chaos run had one server syncing all four
//!   chains of a cluster into a disk that could hold two, forever). A syncing member was
//!   never acknowledged as holding the chain, so moving it loses nothing; its partial
//!   copy is deleted by the data server's sweep of left chains.
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
            Chain {
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

    /// A caught-up report that names the chain version the copy is valid for. A report
    /// for another version (the chain changed since the copy listed its source; the
    /// server may have been dropped and re-added meanwhile, missing writes) is refused
    /// with `StaleChain` and changes nothing: the server copies again at the new version.
    pub(super) fn server_caught_up_at(
        &mut self,
        server: ServerId,
        chain: ChainId,
        version: ChainVersion,
    ) -> Response {
        if !self.servers.contains_key(&server) {
            return Err(FsError::NotFound);
        }
        let c = self.chains.get(&chain).ok_or(FsError::NotFound)?;
        if c.members.contains(&server) {
            // Heartbeats repeat the report until they see the new table: not an error.
            return Ok(Reply::Done);
        }
        if !c.syncing.contains(&server) {
            return Err(FsError::Invalid(format!(
                "server {server} is not syncing into chain {chain}"
            )));
        }
        if c.version != version {
            return Err(FsError::StaleChain { current: c.version });
        }
        self.server_caught_up(server, chain)
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
                self.spread_syncing(*id, &live);
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

    /// Chains (members or syncing) server `s` is in.
    fn load(&self, s: ServerId) -> usize {
        self.chains
            .values()
            .filter(|c| c.members.contains(&s) || c.syncing.contains(&s))
            .count()
    }

    /// Moves each syncing member of chain `id` to a live server outside the chain that is
    /// in at least two fewer chains (see the module doc).
    fn spread_syncing(&mut self, id: ChainId, live: &[ServerId]) {
        let n = self.chains.get(&id).map_or(0, |c| c.syncing.len());
        let mut moved = false;
        for i in 0..n {
            let Some(c) = self.chains.get(&id) else {
                return;
            };
            let current = c.syncing[i];
            let inside: Vec<ServerId> = c.members.iter().chain(&c.syncing).copied().collect();
            let Some(pick) = live
                .iter()
                .copied()
                .filter(|s| !inside.contains(s))
                .min_by_key(|s| (self.load(*s), *s))
            else {
                continue;
            };
            if self.load(current) > self.load(pick) + 1 {
                if let Some(c) = self.chains.get_mut(&id) {
                    c.syncing[i] = pick;
                    moved = true;
                }
            }
        }
        if moved {
            if let Some(c) = self.chains.get_mut(&id) {
                bump(c);
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
            let Some(pick) = live
                .iter()
                .copied()
                .filter(|s| !have.contains(s))
                .min_by_key(|s| (self.load(*s), *s))
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

fn bump(c: &mut Chain) {
    c.version = ChainVersion(c.version.0 + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000_000_000;

    fn chain(s: &MetaState, id: u32) -> Chain {
        s.chain(ChainId(id)).cloned().expect("chain")
    }

    /// R=2, three servers, chain 1 holding data (so it changes only incrementally).
    fn state() -> MetaState {
        let mut s = MetaState::new();
        s.apply(&Command::Init {
            cluster_id: ClusterId(0xc1),
            replicas: 2,
            now_ns: T0,
        })
        .expect("init");
        for i in 0..3 {
            s.apply(&Command::RegisterServer {
                uuid: format!("uuid-{i}"),
                address: format!("s{i}.example:7101"),
                capacity: 1000,
                free: 600,
                now_ns: T0,
            })
            .expect("register");
        }
        s.chain_refs.insert(ChainId(1), 1);
        s
    }

    /// Four servers, R=2, every chain holding data.
    fn four() -> MetaState {
        let mut s = state();
        s.apply(&Command::RegisterServer {
            uuid: "uuid-3".into(),
            address: "s3.example:7101".into(),
            capacity: 1000,
            free: 600,
            now_ns: T0,
        })
        .expect("register");
        for id in 1..=4 {
            s.chain_refs.insert(ChainId(id), 1);
        }
        s
    }

    fn set(s: &mut MetaState, id: u64, up: bool) {
        let cmd = if up {
            Command::ServerUp {
                server: ServerId(id),
                now_ns: T0,
            }
        } else {
            Command::ServerDown {
                server: ServerId(id),
                now_ns: T0,
            }
        };
        s.apply(&cmd).expect("membership");
    }

    #[test]
    fn rebuilds_started_on_two_survivors_spread_over_the_servers_that_come_back() {
        let mut s = four();
        // What a chaos run ended in: servers 2 and 3 were down while every chain lost a
        // member, so every chain is held by 4 and syncing onto 1.
        set(&mut s, 2, false);
        set(&mut s, 3, false);
        for id in 1..=4 {
            let c = s.chains.get_mut(&ChainId(id)).expect("chain");
            c.members = vec![ServerId(4)];
            c.syncing = vec![ServerId(1)];
        }
        let before: Vec<Chain> = (1..=4).map(|id| chain(&s, id)).collect();
        set(&mut s, 2, true);
        set(&mut s, 3, true);
        // Server 4 holds every chain (members never move); the four copies spread over
        // 1, 2 and 3 instead of all landing on 1.
        let syncs: Vec<usize> = (1..=3)
            .map(|id| {
                (1..=4)
                    .filter(|c| chain(&s, *c).syncing.contains(&ServerId(id)))
                    .count()
            })
            .collect();
        assert_eq!(
            syncs.iter().sum::<usize>(),
            4,
            "every chain still syncs one copy"
        );
        assert!(
            syncs.iter().max().unwrap() - syncs.iter().min().unwrap() <= 1,
            "copies stay piled on one server: syncing per server {syncs:?}"
        );
        for (id, old) in (1..=4).zip(before) {
            let c = chain(&s, id);
            // Members (acknowledged holders) never change by the move; the version does
            // whenever the syncing list did.
            assert_eq!(c.members, old.members, "chain {id}");
            assert!(c.members.len() + c.syncing.len() == 2, "chain {id}: {c:?}");
            if c.syncing != old.syncing {
                assert!(c.version > old.version, "chain {id} moved without a bump");
            }
        }
    }

    #[test]
    fn caught_up_report_for_an_older_sync_after_a_drop_and_re_add_does_not_promote() {
        let mut s = state();
        assert_eq!(chain(&s, 1).members, vec![ServerId(1), ServerId(2)]);
        let down = |s: &mut MetaState, id: u64| {
            s.apply(&Command::ServerDown {
                server: ServerId(id),
                now_ns: T0,
            })
            .expect("down")
        };
        down(&mut s, 2);
        let synced = chain(&s, 1);
        assert_eq!(
            (synced.members.clone(), synced.syncing.clone()),
            (vec![ServerId(1)], vec![ServerId(3)])
        );
        // Server 3 copies at `synced.version`, then is dropped (writes are acknowledged
        // without it) and re-added before its report arrives.
        down(&mut s, 3);
        s.apply(&Command::ServerUp {
            server: ServerId(3),
            now_ns: T0,
        })
        .expect("up");
        let readded = chain(&s, 1);
        assert_eq!(readded.syncing, vec![ServerId(3)]);
        assert!(readded.version > synced.version);
        let before = s.digest();
        let r = s.apply(&Command::ServerCaughtUpAt {
            server: ServerId(3),
            chain: ChainId(1),
            version: synced.version,
        });
        assert_eq!(
            r,
            Err(FsError::StaleChain {
                current: readded.version
            })
        );
        assert_eq!(s.digest(), before, "a refused report changes nothing");
        // A report for the current version promotes; repeating it is harmless.
        s.apply(&Command::ServerCaughtUpAt {
            server: ServerId(3),
            chain: ChainId(1),
            version: readded.version,
        })
        .expect("caught up");
        let promoted = chain(&s, 1);
        assert_eq!(promoted.members, vec![ServerId(1), ServerId(3)]);
        assert_eq!(promoted.version.0, readded.version.0 + 1);
        s.apply(&Command::ServerCaughtUpAt {
            server: ServerId(3),
            chain: ChainId(1),
            version: readded.version,
        })
        .expect("repeat");
        assert_eq!(chain(&s, 1), promoted);
        // Not syncing at all: invalid.
        assert!(matches!(
            s.apply(&Command::ServerCaughtUpAt {
                server: ServerId(2),
                chain: ChainId(1),
                version: promoted.version,
            }),
            Err(FsError::Invalid(_))
        ));
    }
}
