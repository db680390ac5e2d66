//! Gauges of a data server for `/metrics`, refreshed every few seconds: rebuild progress
//! (chains being rebuilt into this server, chains it has caught up in), the store (objects,
//! their bytes, which is what one scrub pass reads, capacity, free bytes) and whether
//! O_DIRECT is in use. Counters (requests and bytes, scrub and rebuild bytes, passes,
//! errors) are bumped where the work happens (`node::Stats`, `metrics::Metered`).

use crate::node::Node;
use cirrus_proto::metrics::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Refreshes the gauges every `every`, forever.
pub async fn run(node: Arc<Node>, registry: Arc<Registry>, every: Duration) {
    let g = |n: &str, h: &str| registry.gauge(n, h, &[]);
    let rebuilding = g(
        "cirrus_data_rebuilding_chains",
        "chains this server is being rebuilt into (syncing, serves no reads yet)",
    );
    let caught_up = g(
        "cirrus_data_caught_up_chains",
        "chains this server finished rebuilding, waiting for the meta group to make it a member",
    );
    let objects = g("cirrus_data_objects", "objects in the store");
    let stored = g(
        "cirrus_data_stored_bytes",
        "logical bytes of all objects: one scrub pass reads this much",
    );
    let capacity = g("cirrus_data_capacity_bytes", "size of the data file system");
    let free = g(
        "cirrus_data_free_bytes",
        "free bytes of the data file system",
    );
    let direct = g(
        "cirrus_data_direct_io",
        "1 if the store uses O_DIRECT, 0 on the buffered fallback",
    );
    loop {
        let (r, c) = node
            .rebuild_view
            .lock()
            .map(|v| (v.0.len(), v.1.len()))
            .unwrap_or_default();
        rebuilding.set(r as i64);
        caught_up.set(c as i64);
        let store = node.store.clone();
        if let Ok((cap, fr, n, bytes)) = tokio::task::spawn_blocking(move || {
            let (cap, fr) = store.space();
            let list = store.list();
            let bytes: u64 = list.iter().map(|o| o.size).sum();
            (cap, fr, list.len(), bytes)
        })
        .await
        {
            capacity.set(cap as i64);
            free.set(fr as i64);
            objects.set(n as i64);
            stored.set(bytes as i64);
        }
        direct.set(i64::from(node.store.direct_io()));
        tokio::time::sleep(every).await;
    }
}
