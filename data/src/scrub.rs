//! Scrub: a background, throttled re-read of every object that verifies each block's
//! crc and repairs bad blocks from a member with good data. Progress (bytes verified,
//! findings, passes) is in Info, heartbeats and /metrics.

use crate::node::Node;
use crate::rebuild::Throttle;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;

const CHUNK: usize = 1 << 20;

/// Settings of scrub.
#[derive(Clone, Debug)]
pub struct ScrubConfig {
    /// Read rate limit, bytes per second.
    pub rate: u64,
    /// Pause between the end of one pass and the start of the next.
    pub interval: Duration,
}

/// Runs scrub passes forever.
pub async fn run(node: Arc<Node>, cfg: ScrubConfig) {
    loop {
        pass(&node, &cfg).await;
        node.stats.scrub_passes.inc();
        tokio::time::sleep(cfg.interval).await;
    }
}

/// One pass over every object.
pub async fn pass(node: &Arc<Node>, cfg: &ScrubConfig) {
    let mut throttle = Throttle::new(cfg.rate);
    let mut objs = node.store.list();
    objs.sort_by_key(|o| (o.chain.0, o.key.inode.0, o.key.index));
    for o in objs {
        // Only where the object holds data: holes read as zeros without a stored crc to
        // check, and walking them would make a sparse 4 PiB object a pass of days.
        let ranges = node.store.data_ranges(o.key).await;
        let mut off = ranges.first().map_or(0, |r| r.0);
        while let Some(at) = crate::store::crcmap::next_data(&ranges, off) {
            off = at;
            let r = node.store.read(o.key, off, CHUNK).await;
            match r {
                Ok(r) => {
                    let n = r.data.len() as u64;
                    node.stats.scrub_done_bytes.add(n);
                    throttle.take(n.max(1)).await;
                    if r.data.len() < CHUNK {
                        break;
                    }
                    off += n;
                }
                Err(StoreError::Corrupt { blocks, .. }) => {
                    node.stats.scrub_errors.add(blocks.len() as u64);
                    node.stats.corrupt_blocks.add(blocks.len() as u64);
                    tracing::error!(key = ?o.key, chain = %o.chain, ?blocks, "scrub: checksum mismatch");
                    let Some(c) = node.chain(o.chain) else {
                        break;
                    };
                    // Only a readable member repairs: a syncing one is being rewritten by
                    // rebuild anyway.
                    if !c.members.contains(&node.me) {
                        break;
                    }
                    let lock = node.obj_lock(o.key);
                    let _g = lock.lock(0, u64::MAX).await;
                    if let Err(e) = node.repair(&c, o.key, &blocks).await {
                        tracing::error!(key = ?o.key, err = %e, "scrub: repair failed");
                        break;
                    }
                    // Re-read the same range after the repair.
                }
                Err(e) => {
                    // Deleted meanwhile or an IO error: count, move on.
                    if node.store.size(o.key).is_some() {
                        node.stats.scrub_errors.inc();
                        tracing::error!(key = ?o.key, err = %e, "scrub");
                    }
                    break;
                }
            }
        }
    }
}
