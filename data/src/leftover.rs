//! Copies of chains this server has left. A server dropped from a chain (it stopped
//! heartbeating, was killed, was cut off) keeps its object files of that chain; when the
//! chain is rebuilt to full R on other servers, those files are stale (they missed every
//! write since) and nobody will read them again, yet they fill the disk: a chaos soak saw
//! every server of a small cluster end up holding all the chains, full, unable to take a
//! rebuild or even to start. They are deleted once the chain table shows the chain at full
//! R without this server, neither member nor syncing.
//!
//! The check runs again under each object's lock with the table of that moment, so a server
//! added back to the chain (as syncing, through a rebuild) keeps what it holds: a write or
//! a rebuild copy for that chain needs the newer table first, and takes the same lock.

use crate::node::Node;
use cirrus_types::Chain;
use cirrus_types::ServerId;
use std::collections::HashSet;
use std::sync::Arc;

/// Whether `c` is at full R (`replicas`) without `me`: this server's copy is not needed.
pub fn left_behind(c: &Chain, me: ServerId, replicas: u32) -> bool {
    replicas > 0
        && !c.members.contains(&me)
        && !c.syncing.contains(&me)
        && c.members.len() >= replicas as usize
}

/// Deletes this server's objects of chains it has left; returns how many were deleted.
pub async fn drop_left_chains(node: &Arc<Node>) -> usize {
    let t = node.table();
    let left: HashSet<_> = t
        .chains
        .values()
        .filter(|c| left_behind(c, node.me, t.replicas))
        .map(|c| c.id)
        .collect();
    if left.is_empty() {
        return 0;
    }
    let mut deleted = 0;
    for o in node.store.list() {
        if !left.contains(&o.chain) {
            continue;
        }
        let lock = node.obj_lock(o.key);
        let _g = lock.lock(0, u64::MAX).await;
        let replicas = node.table().replicas;
        if !node
            .chain(o.chain)
            .is_some_and(|c| left_behind(&c, node.me, replicas))
        {
            continue;
        }
        match node.store.delete(o.key).await {
            Ok(()) => deleted += 1,
            Err(e) => {
                tracing::warn!(key = ?o.key, chain = %o.chain, err = %e, "delete a copy of a chain this server left")
            }
        }
    }
    if deleted > 0 {
        tracing::info!(
            objects = deleted,
            chains = ?left,
            "deleted the copies of chains this server left (each is at full R on other servers)"
        );
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirrus_types::{ChainId, ChainVersion};

    fn chain(members: &[u64], syncing: &[u64]) -> Chain {
        Chain {
            id: ChainId(1),
            version: ChainVersion(7),
            members: members.iter().copied().map(ServerId).collect(),
            syncing: syncing.iter().copied().map(ServerId).collect(),
        }
    }

    #[test]
    fn a_copy_is_left_behind_only_when_the_chain_is_at_full_r_without_this_server() {
        let me = ServerId(3);
        assert!(left_behind(&chain(&[1, 2], &[]), me, 2));
        assert!(
            !left_behind(&chain(&[1, 3], &[]), me, 2),
            "a member keeps its copy"
        );
        assert!(
            !left_behind(&chain(&[1, 2], &[3]), me, 2),
            "a syncing server keeps its copy"
        );
        assert!(
            !left_behind(&chain(&[1], &[2]), me, 2),
            "below full R every copy may matter"
        );
        assert!(!left_behind(&chain(&[1], &[]), me, 2));
        assert!(
            !left_behind(&chain(&[1, 2], &[]), me, 0),
            "an unknown R deletes nothing"
        );
    }
}
