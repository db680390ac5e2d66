//! Node self-descriptions (`cirrus_types::info`) on the wire.

use crate::pb;
use cirrus_types::{DataInfo, MetaInfo, MetaMember};

impl From<&pb::ClusterInfoReply> for MetaInfo {
    fn from(r: &pb::ClusterInfoReply) -> Self {
        MetaInfo {
            cluster_id: r.cluster_id.clone(),
            node_id: r.node_id,
            leader_id: r.leader_id,
            leader_address: r.leader_address.clone(),
            term: r.term,
            last_applied: r.last_applied,
            commit_index: r.commit_index,
            members: r
                .members
                .iter()
                .map(|m| MetaMember {
                    id: m.id,
                    address: m.address.clone(),
                })
                .collect(),
            state_digest: r.state_digest.clone(),
            now_ms: r.now_ms,
            role: r.role.clone(),
        }
    }
}

impl From<&MetaInfo> for pb::ClusterInfoReply {
    fn from(i: &MetaInfo) -> Self {
        pb::ClusterInfoReply {
            cluster_id: i.cluster_id.clone(),
            node_id: i.node_id,
            leader_id: i.leader_id,
            leader_address: i.leader_address.clone(),
            term: i.term,
            last_applied: i.last_applied,
            commit_index: i.commit_index,
            members: i
                .members
                .iter()
                .map(|m| pb::MetaMember {
                    id: m.id,
                    address: m.address.clone(),
                })
                .collect(),
            state_digest: i.state_digest.clone(),
            now_ms: i.now_ms,
            role: i.role.clone(),
        }
    }
}

impl From<&pb::DataInfoReply> for DataInfo {
    fn from(r: &pb::DataInfoReply) -> Self {
        DataInfo {
            cluster_id: r.cluster_id.clone(),
            server_id: r.server_id,
            address: r.address.clone(),
            direct_io: r.direct_io,
            capacity_bytes: r.capacity_bytes,
            free_bytes: r.free_bytes,
            objects: r.objects,
            scrub_done_bytes: r.scrub_done_bytes,
            scrub_errors: r.scrub_errors,
            repaired_blocks: r.repaired_blocks,
            now_ms: r.now_ms,
            corrupt_blocks: r.corrupt_blocks,
            rebuild_copied_bytes: r.rebuild_copied_bytes,
            rebuilding_chains: r.rebuilding_chains.clone(),
            caught_up_chains: r.caught_up_chains.clone(),
            scrub_passes: r.scrub_passes,
        }
    }
}

impl From<&DataInfo> for pb::DataInfoReply {
    fn from(i: &DataInfo) -> Self {
        pb::DataInfoReply {
            cluster_id: i.cluster_id.clone(),
            server_id: i.server_id,
            address: i.address.clone(),
            direct_io: i.direct_io,
            capacity_bytes: i.capacity_bytes,
            free_bytes: i.free_bytes,
            objects: i.objects,
            scrub_done_bytes: i.scrub_done_bytes,
            scrub_errors: i.scrub_errors,
            repaired_blocks: i.repaired_blocks,
            now_ms: i.now_ms,
            corrupt_blocks: i.corrupt_blocks,
            rebuild_copied_bytes: i.rebuild_copied_bytes,
            rebuilding_chains: i.rebuilding_chains.clone(),
            caught_up_chains: i.caught_up_chains.clone(),
            scrub_passes: i.scrub_passes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_infos_round_trip() {
        let m = MetaInfo {
            cluster_id: "c".into(),
            node_id: 2,
            leader_id: 1,
            members: vec![MetaMember {
                id: 1,
                address: "a:7001".into(),
            }],
            role: "follower".into(),
            ..Default::default()
        };
        assert_eq!(MetaInfo::from(&pb::ClusterInfoReply::from(&m)), m);
        let d = DataInfo {
            server_id: 3,
            direct_io: true,
            rebuilding_chains: vec![4],
            scrub_passes: 9,
            ..Default::default()
        };
        assert_eq!(DataInfo::from(&pb::DataInfoReply::from(&d)), d);
    }
}
