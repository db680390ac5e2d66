//! The openraft type configuration of the meta group: one raft entry is one
//! `state::Command`, its result a `state::Response`; nodes are `u64` ids with their
//! gRPC address (`BasicNode`); snapshots travel as whole in-memory byte buffers.

pub use crate::state::{Command, MetaState, Response};
use cirrus_types::ClusterId;
use std::io::Cursor;

openraft::declare_raft_types!(
    /// Type configuration of the Cirrus meta raft group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;

/// The cluster id recorded by the applied Init entry, if any.
pub fn cluster_id_of(state: &MetaState) -> Option<ClusterId> {
    state.cluster_id()
}

/// True for the entry that creates the cluster (so apply learns the id only then).
pub fn is_init(cmd: &Command) -> bool {
    matches!(cmd, Command::Init { .. })
}

/// The result recorded for entries that carry no command (blank, membership).
pub fn no_reply() -> Response {
    Ok(crate::state::Reply::Done)
}
