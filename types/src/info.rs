//! What a node says about itself (`ClusterInfo` of a meta node, `Info` of a data server),
//! for `cirrus doctor`, `cirrus status` and the test harness: answered from the node's
//! own view, without asking the leader.

/// One voter of the meta group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaMember {
    pub id: u64,
    pub address: String,
}

/// A meta node's own view of the group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaInfo {
    /// Empty before the group's first entry is applied.
    pub cluster_id: String,
    /// The node that answered.
    pub node_id: u64,
    /// 0 if unknown.
    pub leader_id: u64,
    pub leader_address: String,
    pub term: u64,
    pub last_applied: u64,
    pub commit_index: u64,
    pub members: Vec<MetaMember>,
    /// Hex digest of the state machine at `last_applied`.
    pub state_digest: String,
    /// This node's clock (ms since the epoch), for skew checks.
    pub now_ms: i64,
    /// "leader", "follower", "candidate" or "learner".
    pub role: String,
}

/// A data server's own view of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataInfo {
    pub cluster_id: String,
    pub server_id: u64,
    pub address: String,
    /// False: the buffered fallback is in use.
    pub direct_io: bool,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub objects: u64,
    pub scrub_done_bytes: u64,
    pub scrub_errors: u64,
    pub repaired_blocks: u64,
    pub now_ms: i64,
    /// Blocks found failing their crc (reads and scrub).
    pub corrupt_blocks: u64,
    /// Bytes copied into chains this server is syncing into.
    pub rebuild_copied_bytes: u64,
    pub rebuilding_chains: Vec<u32>,
    pub caught_up_chains: Vec<u32>,
    /// Completed full scrub passes.
    pub scrub_passes: u64,
}
