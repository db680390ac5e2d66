//! Chains and the chain table (`cirrus_types::chain`) on the wire.

use crate::pb;
use cirrus_types::{Chain, ChainId, ChainTable, ChainVersion, ServerEntry, ServerId};

impl From<&pb::Chain> for Chain {
    fn from(p: &pb::Chain) -> Self {
        Chain {
            id: ChainId(p.id),
            version: ChainVersion(p.version),
            members: p.members.iter().copied().map(ServerId).collect(),
            syncing: p.syncing.iter().copied().map(ServerId).collect(),
        }
    }
}

impl From<&Chain> for pb::Chain {
    fn from(c: &Chain) -> Self {
        pb::Chain {
            id: c.id.0,
            version: c.version.0,
            members: c.members.iter().map(|s| s.0).collect(),
            syncing: c.syncing.iter().map(|s| s.0).collect(),
        }
    }
}

impl From<&pb::ChainTable> for ChainTable {
    fn from(t: &pb::ChainTable) -> Self {
        ChainTable {
            chains: t
                .chains
                .iter()
                .map(|c| (ChainId(c.id), Chain::from(c)))
                .collect(),
            servers: t
                .servers
                .iter()
                .map(|s| {
                    (
                        ServerId(s.id),
                        ServerEntry {
                            address: s.address.clone(),
                            alive: s.alive,
                            capacity_bytes: s.capacity_bytes,
                            free_bytes: s.free_bytes,
                            last_heartbeat_ms: s.last_heartbeat_ms,
                        },
                    )
                })
                .collect(),
            replicas: t.replicas,
        }
    }
}

impl From<&ChainTable> for pb::ChainTable {
    fn from(t: &ChainTable) -> Self {
        pb::ChainTable {
            chains: t.chains.values().map(pb::Chain::from).collect(),
            servers: t
                .servers
                .iter()
                .map(|(id, s)| pb::ServerInfo {
                    id: id.0,
                    address: s.address.clone(),
                    capacity_bytes: s.capacity_bytes,
                    free_bytes: s.free_bytes,
                    alive: s.alive,
                    last_heartbeat_ms: s.last_heartbeat_ms,
                })
                .collect(),
            replicas: t.replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_table_round_trips() {
        let mut t = ChainTable {
            replicas: 2,
            ..Default::default()
        };
        t.chains.insert(
            ChainId(1),
            Chain {
                id: ChainId(1),
                version: ChainVersion(3),
                members: vec![ServerId(2), ServerId(1)],
                syncing: vec![ServerId(3)],
            },
        );
        t.servers.insert(
            ServerId(2),
            ServerEntry {
                address: "10.0.0.2:7101".into(),
                alive: true,
                capacity_bytes: 10,
                free_bytes: 5,
                last_heartbeat_ms: 77,
            },
        );
        assert_eq!(ChainTable::from(&pb::ChainTable::from(&t)), t);
    }
}
