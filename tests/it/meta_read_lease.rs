//! The meta leader's read lease with real `cirrus meta` processes: reads inside the lease
//! a read barrier earned are answered without a heartbeat round to the followers, and a
//! leader that can no longer reach a quorum stops answering reads once that lease ends
//! instead of serving a state another leader may have moved past
//! (`docs/design/0001-meta-raft-storage.md`, "Read lease").

use crate::data_common;
use crate::meta_common;

use anyhow::{ensure, Result};
use cirrus_proto::CallPolicy;
use cirrus_raft_tests::cluster::{ClusterBuilder, TestCluster};
use cirrus_types::FsError;
use meta_common::*;
use std::time::{Duration, Instant};

/// AppendEntries calls the three meta nodes received (heartbeats and read barriers
/// included; the leader receives none).
async fn append_entries(c: &TestCluster) -> Result<f64> {
    let mut n = 0.0;
    for i in 0..c.meta_count() {
        n += data_common::metric(
            &c.meta_metrics_addr(i),
            "cirrus_latency_seconds_count{op=\"AppendEntries\"}",
        )
        .await?;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_inside_the_lease_make_no_heartbeat_round() -> Result<()> {
    const READS: usize = 2000;
    let c = ClusterBuilder::new().data_servers(0).start().await?;
    let conn = c.conn().await?;
    let dir = mkdir(&conn, ROOT, b"d").await?;
    // The first read may need a barrier of its own.
    lookup(&conn, ROOT, b"d").await?;

    let before = append_entries(&c).await?;
    let start = Instant::now();
    for _ in 0..READS {
        let a = lookup(&conn, ROOT, b"d").await?;
        ensure!(
            a.ino == dir.ino,
            "lookup of d answered inode {}, not {}",
            a.ino,
            dir.ino
        );
    }
    let took = start.elapsed();
    let calls = append_entries(&c).await? - before;
    // Without the lease every read is one heartbeat to each of the two followers:
    // 2 x READS calls. With it: the 100 ms heartbeats and one barrier per 500 ms lease,
    // to each follower, plus slack for entries the leader's duties propose.
    let ticks = took.as_millis() as f64 / 100.0 + took.as_millis() as f64 / 500.0;
    let allowed = 2.0 * (ticks + 2.0) + 20.0;
    ensure!(
        calls <= allowed,
        "{READS} reads in {took:?} cost {calls} AppendEntries calls at the followers, more \
         than the {allowed} the heartbeats and lease renewals explain: reads are not \
         using the lease"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_followers_stops_answering_reads_when_its_lease_ends(
) -> Result<()> {
    let c = ClusterBuilder::new().data_servers(0).start().await?;
    let conn = c.conn().await?;
    mkdir(&conn, ROOT, b"d").await?;
    lookup(&conn, ROOT, b"d").await?;
    let leader = c.leader_index().await?;
    let followers: Vec<usize> = (0..c.meta_count()).filter(|&i| i != leader).collect();
    // Asks the leader alone, with deadlines short enough to end while the followers are
    // still stopped.
    let short = CallPolicy {
        per_try: Duration::from_secs(2),
        total: Duration::from_secs(4),
    };
    let only_leader = cirrus_proto::MetaConn::new(vec![c.meta_addr(leader)], short)?;
    only_leader.connect().await?;
    for &f in &followers {
        c.stop_meta(f);
    }
    // Reads inside the lease may still be answered; once it ends they must not be. The
    // deadline only catches a lease that never ends.
    let stopped = Instant::now();
    let r = loop {
        match lookup(&only_leader, ROOT, b"d").await {
            Ok(a) if stopped.elapsed() >= HANG => break Ok(a),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    for &f in &followers {
        c.cont_meta(f);
    }
    match r {
        Ok(a) => anyhow::bail!(
            "the leader still answered reads (inode {}) {HANG:?} after both followers \
             stopped: its lease never ends",
            a.ino
        ),
        Err(FsError::Timeout(_) | FsError::Unavailable(_) | FsError::NotLeader { .. }) => {}
        Err(e) => anyhow::bail!("the read failed, but not as unavailable: {e}"),
    }
    // Liveness after: the group serves reads again once the followers are back.
    let conn = c.conn().await?;
    lookup(&conn, ROOT, b"d").await?;
    Ok(())
}
