//! Group bootstrap. `--peers 1=H:P,2=H:P,3=H:P` names every voter. On first start the
//! LOWEST id waits until every peer answers ClusterInfo, then initialises the raft group
//! with all of them as voters; the first leader then proposes Init (cluster id + root
//! directory, see `node`). It never initialises when:
//! - its own directory has raft state (a restart with the same arguments), or
//! - any peer already belongs to a group (has a cluster id or a term above 0): this is
//!   the wiped-node rejoin, where the node starts empty and the leader, which still
//!   counts it as a voter, brings it up to date by snapshot.
//!
//! While waiting it logs, every few seconds, exactly which peer address does not answer
//! and why, instead of hanging silently ("waiting for mon").

use crate::raft_types::{NodeId, Raft};
use cirrus_proto::{net, pb};
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Deadline of one ClusterInfo probe.
const PROBE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("peer {0:?} is not ID=HOST:PORT")]
    Syntax(String),
    #[error("peer id {0} appears twice")]
    Duplicate(NodeId),
    #[error("this node's id {0} is not in --peers")]
    SelfMissing(NodeId),
    #[error("--peers is empty")]
    Empty,
}

/// Parses `1=H:P,2=H:P,3=H:P`.
pub fn parse_peers(s: &str, self_id: NodeId) -> Result<BTreeMap<NodeId, String>, PeersError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| PeersError::Syntax(part.into()))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| PeersError::Syntax(part.into()))?;
        let addr = addr.trim();
        match addr.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
            _ => return Err(PeersError::Syntax(part.into())),
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(PeersError::Duplicate(id));
        }
    }
    if out.is_empty() {
        return Err(PeersError::Empty);
    }
    if !out.contains_key(&self_id) {
        return Err(PeersError::SelfMissing(self_id));
    }
    Ok(out)
}

async fn probe(addr: &str) -> Result<pb::ClusterInfoReply, String> {
    let ch = net::channel(addr).map_err(|e| e.to_string())?;
    let mut c = net::meta_client(ch);
    match tokio::time::timeout(PROBE, c.cluster_info(pb::ClusterInfoRequest {})).await {
        Err(_) => Err(format!(
            "no answer within {PROBE:?} (a firewall or security group dropping the port?)"
        )),
        Ok(Err(s)) => Err(format!("{} ({})", s.message(), s.code())),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// Initialises the group if this node is the lowest id and nobody has yet.
pub async fn bootstrap(
    raft: Raft,
    self_id: NodeId,
    peers: BTreeMap<NodeId, String>,
    has_state: bool,
) {
    let lowest = peers.keys().next().copied();
    if lowest != Some(self_id) {
        tracing::info!(
            ?lowest,
            "not the lowest id: waiting for that node to initialise the group"
        );
        return;
    }
    match raft.is_initialized().await {
        Ok(true) => return,
        Ok(false) if has_state => return,
        Ok(false) => {}
        Err(e) => {
            tracing::error!(%e, "raft core stopped before bootstrap");
            return;
        }
    }
    let started = Instant::now();
    let mut last_report = Instant::now() - Duration::from_secs(60);
    loop {
        let mut missing = Vec::new();
        let mut existing = None;
        for (id, addr) in peers.iter().filter(|(id, _)| **id != self_id) {
            match probe(addr).await {
                Ok(r) if !r.cluster_id.is_empty() || r.term > 0 => {
                    existing = Some((*id, addr.clone(), r.cluster_id));
                }
                Ok(_) => {}
                Err(e) => missing.push(format!("node {id} at {addr}: {e}")),
            }
        }
        if let Some((id, addr, cid)) = existing {
            tracing::warn!(
                peer = id, %addr, cluster_id = %cid,
                "a peer already belongs to a meta group: not initialising; this node rejoins \
                 as an empty voter and the leader catches it up (by snapshot if needed)"
            );
            return;
        }
        if missing.is_empty() {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            tracing::warn!(
                waited = ?started.elapsed(),
                unreachable = %missing.join("; "),
                "initialising needs every peer; some are still unreachable"
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let members: BTreeMap<NodeId, BasicNode> = peers
        .iter()
        .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(voters = ?peers, "initialised the raft group"),
        Err(e) => tracing::warn!(%e, "initialise the raft group (already initialised?)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_lists_are_refused() {
        let p = parse_peers("1=a:1, 2=b:2,3=c:3", 2).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "b:2");
        assert!(matches!(
            parse_peers("1=a:1,1=b:2", 1),
            Err(PeersError::Duplicate(1))
        ));
        assert!(matches!(
            parse_peers("1=a:1", 2),
            Err(PeersError::SelfMissing(2))
        ));
        assert!(matches!(parse_peers("1=a", 1), Err(PeersError::Syntax(_))));
        assert!(matches!(
            parse_peers("x=a:1", 1),
            Err(PeersError::Syntax(_))
        ));
        assert!(matches!(parse_peers("", 1), Err(PeersError::Empty)));
    }
}
