//! Replication chains and the table that names them: what meta's state machine holds,
//! what `GetChains` and heartbeat replies carry, and what clients and data servers
//! cache. One definition, so a chain means the same thing at every node.

use crate::ids::{ChainId, ChainVersion, ServerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A replication chain. Stored in meta's state (snapshots pin its bincode: fields in
/// this order, docs/design/0008-encodings.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub id: ChainId,
    pub version: ChainVersion,
    /// Serving members, head first, tail last: these serve reads.
    pub members: Vec<ServerId>,
    /// Being rebuilt: they receive writes after `members`, serve no reads, and join
    /// `members` (as tail) once caught up.
    pub syncing: Vec<ServerId>,
}

impl Chain {
    /// The order writes travel in: members, then syncing members.
    pub fn route(&self) -> Vec<ServerId> {
        self.members
            .iter()
            .chain(self.syncing.iter())
            .copied()
            .collect()
    }

    /// The chain as readers see it: serving members only.
    pub fn serving(&self) -> Chain {
        Chain {
            syncing: Vec::new(),
            ..self.clone()
        }
    }
}

/// A data server as the chain table names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEntry {
    /// Advertised host:port of its data service.
    pub address: String,
    /// Heartbeating within the timeout.
    pub alive: bool,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// The meta leader's clock (ms since the epoch) at its last heartbeat; 0 unknown.
    pub last_heartbeat_ms: i64,
}

/// Chains by id, the data servers' addresses, and the replication factor R.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainTable {
    pub chains: BTreeMap<ChainId, Chain>,
    pub servers: BTreeMap<ServerId, ServerEntry>,
    /// The configured replication factor R.
    pub replicas: u32,
}

impl ChainTable {
    /// The address of data server `id`, if the table names it.
    pub fn address(&self, id: ServerId) -> Option<&str> {
        self.servers.get(&id).map(|s| s.address.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_route_through_members_then_syncing() {
        let c = Chain {
            id: ChainId(1),
            version: ChainVersion(4),
            members: vec![ServerId(3), ServerId(1)],
            syncing: vec![ServerId(2)],
        };
        assert_eq!(c.route(), vec![ServerId(3), ServerId(1), ServerId(2)]);
        assert!(c.serving().syncing.is_empty());
        assert_eq!(c.serving().members, c.members);
    }
}
