//! Gauges of a meta node for `/metrics`, refreshed every second from the local raft
//! metrics and the local replica of the state (so every node reports, not only the
//! leader): raft term, last log and commit index, chain health (chains, chains with fewer
//! serving members than the replication factor, chains being rebuilt, chains with no
//! member) and data servers alive and down. Per-RPC counts and latencies come from
//! `cirrus_proto::metrics::Metered` around the gRPC services.

use crate::node::MetaNode;
use crate::raft_types::NodeId;
use cirrus_proto::metrics::Registry;
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;

/// The commit index as this node knows it. A leader: the highest index a majority of
/// voters has (its own last log and the followers' matched indexes). A follower only
/// knows what it has applied, which trails the leader's commit index by moments.
pub fn commit_index(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> u64 {
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let (ServerState::Leader, Some(repl)) = (m.state, m.replication.as_ref()) else {
        return applied;
    };
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    if voters.is_empty() {
        return applied;
    }
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|v| {
            let r = repl.get(v).copied().flatten().map(|l| l.index).unwrap_or(0);
            if *v == m.id {
                r.max(m.last_log_index.unwrap_or(0))
            } else {
                r
            }
        })
        .collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[voters.len() / 2].max(applied)
}

/// Refreshes the gauges every `every`, forever.
pub async fn run(node: Arc<MetaNode>, registry: Arc<Registry>, every: Duration) {
    let label = node.id.to_string();
    let l = [("node", label.as_str())];
    let g = |n: &str, h: &str| registry.gauge(n, h, &l);
    let term = g("cirrus_raft_term", "current raft term");
    let last_log = g(
        "cirrus_raft_last_log_index",
        "index of the last raft entry in this node's log",
    );
    let commit = g(
        "cirrus_raft_commit_index",
        "raft commit index (leader: majority-matched index; follower: last applied)",
    );
    let applied = g(
        "cirrus_raft_last_applied",
        "index of the last raft entry applied to the state machine",
    );
    let chains = g("cirrus_meta_chains", "replication chains in the table");
    let degraded = g(
        "cirrus_meta_chains_degraded",
        "chains with fewer serving members than the replication factor",
    );
    let unavailable = g(
        "cirrus_meta_chains_unavailable",
        "chains with no serving member: their data cannot be read",
    );
    let syncing = g(
        "cirrus_meta_chains_rebuilding",
        "chains with a member being rebuilt (syncing)",
    );
    let alive = g(
        "cirrus_meta_data_servers_alive",
        "registered data servers that heartbeat",
    );
    let down = g(
        "cirrus_meta_data_servers_down",
        "registered data servers marked down (no heartbeat within --server-timeout)",
    );
    loop {
        {
            let m = node.raft.metrics().borrow().clone();
            term.set(m.current_term as i64);
            last_log.set(m.last_log_index.unwrap_or(0) as i64);
            applied.set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
            commit.set(commit_index(&m) as i64);
        }
        if let Ok(s) = node.shared.read() {
            let t = s.state.chain_table();
            let r = t.replicas as usize;
            chains.set(t.chains.len() as i64);
            degraded.set(t.chains.values().filter(|c| c.members.len() < r).count() as i64);
            unavailable.set(t.chains.values().filter(|c| c.members.is_empty()).count() as i64);
            syncing.set(t.chains.values().filter(|c| !c.syncing.is_empty()).count() as i64);
            alive.set(t.servers.values().filter(|s| s.alive).count() as i64);
            down.set(t.servers.values().filter(|s| !s.alive).count() as i64);
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{
        BasicNode, CommittedLeaderId, LogId, Membership, RaftMetrics, StoredMembership,
    };
    use std::collections::{BTreeMap, BTreeSet};

    fn log(i: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), i)
    }

    fn metrics(state: ServerState, last_log: u64, applied: u64) -> RaftMetrics<NodeId, BasicNode> {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let nodes: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .map(|v| (*v, BasicNode::new(format!("h{v}:7001"))))
            .collect();
        let mut m = RaftMetrics::new_initial(1);
        m.state = state;
        m.last_log_index = Some(last_log);
        m.last_applied = Some(log(applied));
        m.membership_config = Arc::new(StoredMembership::new(
            Some(log(1)),
            Membership::new(vec![voters], nodes),
        ));
        m
    }

    #[test]
    fn leader_commit_index_is_the_majority_matched_index() {
        let mut m = metrics(ServerState::Leader, 10, 7);
        m.replication = Some([(1, Some(log(10))), (2, Some(log(8))), (3, Some(log(5)))].into());
        assert_eq!(commit_index(&m), 8);
        // The leader's own entry may lag in the map: its last log index counts.
        m.replication = Some([(2, Some(log(9))), (3, None)].into());
        assert_eq!(commit_index(&m), 9);
        // Nobody matched yet: never below what was applied.
        m.replication = Some([(2, None), (3, None)].into());
        assert_eq!(commit_index(&m), 7);
    }

    #[test]
    fn follower_commit_index_is_what_it_applied() {
        let mut m = metrics(ServerState::Follower, 12, 11);
        m.replication = None;
        assert_eq!(commit_index(&m), 11);
    }
}
