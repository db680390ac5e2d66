//! Durability of the meta group with real `cirrus meta` processes: acknowledged
//! operations survive a SIGKILLed leader, a SIGKILL of all three nodes, and a node whose
//! directory was wiped rejoins (by snapshot) with the same state as the others.

use crate::meta_common;

use anyhow::{anyhow, Context, Result};
use cirrus_proto::CallPolicy;
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::FsError;
use meta_common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn patient() -> CallPolicy {
    CallPolicy {
        per_try: Duration::from_secs(3),
        total: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_and_renames_survive_leader_kill_and_replicas_agree() -> Result<()> {
    let mut c = ClusterBuilder::new()
        .server_timeout(Duration::from_secs(3600))
        .start()
        .await?;
    let conn = Arc::new(c.conn_with(patient()).await?);
    register_fake_servers(&conn, 2).await?;

    const OPS: usize = 120;
    let acked = Arc::new(AtomicUsize::new(0));
    let client = {
        let conn = conn.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            // (index, renamed?) of every operation the group acknowledged.
            let mut done: Vec<(usize, bool)> = Vec::new();
            for i in 0..OPS {
                let name = format!("f{i}");
                match create(&conn, ROOT, name.as_bytes()).await {
                    // Exists: our own create whose reply was lost, retried by MetaConn.
                    Ok(_) | Err(FsError::Exists) => {}
                    Err(e) => return Err(anyhow!("create {name}: {e}")),
                }
                let mut renamed = false;
                if i % 3 == 0 {
                    let new = format!("r{i}");
                    match rename(&conn, ROOT, name.as_bytes(), ROOT, new.as_bytes(), 0).await {
                        Ok(()) => renamed = true,
                        // A retried rename whose first attempt applied: source gone.
                        Err(FsError::NotFound) => {
                            lookup(&conn, ROOT, new.as_bytes())
                                .await
                                .map_err(|e| anyhow!("rename {name} -> {new} lost: {e}"))?;
                            renamed = true;
                        }
                        Err(e) => return Err(anyhow!("rename {name}: {e}")),
                    }
                }
                done.push((i, renamed));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, anyhow::Error>(done)
        })
    };

    c.wait_until("the client to get going", HANG, || async {
        acked.load(Ordering::SeqCst) >= 20
    })
    .await?;
    let old = c.leader_index().await?;
    c.kill_meta(old);
    c.wait_until("a new leader among the survivors", HANG, || async {
        matches!(c.leader_index().await, Ok(i) if i != old)
    })
    .await?;
    let at_failover = acked.load(Ordering::SeqCst);
    c.wait_until(
        "the client to continue under the new leader",
        HANG,
        || async { acked.load(Ordering::SeqCst) > at_failover + 10 },
    )
    .await?;
    c.restart_meta(old).await?;

    let done = client.await.context("client task")??;
    assert_eq!(done.len(), OPS);
    for (i, renamed) in done {
        let (present, absent) = if renamed {
            (format!("r{i}"), Some(format!("f{i}")))
        } else {
            (format!("f{i}"), None)
        };
        lookup(&conn, ROOT, present.as_bytes())
            .await
            .map_err(|e| anyhow!("acknowledged {present} missing: {e}"))?;
        if let Some(a) = absent {
            assert_eq!(
                lookup(&conn, ROOT, a.as_bytes()).await.err(),
                Some(FsError::NotFound),
                "{a} was renamed away"
            );
        }
    }
    let (applied, digest) = wait_converged(&c).await?;
    eprintln!("converged at {applied}: {digest}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_is_identical_after_all_three_are_killed() -> Result<()> {
    let mut c = ClusterBuilder::new()
        .server_timeout(Duration::from_secs(3600))
        .start()
        .await?;
    let conn = c.conn_with(patient()).await?;
    register_fake_servers(&conn, 2).await?;
    for d in 0..5 {
        let dir = mkdir(&conn, ROOT, format!("d{d}").as_bytes()).await?;
        for f in 0..8 {
            create(&conn, dir.ino, format!("file{f}").as_bytes()).await?;
        }
    }
    rename(&conn, ROOT, b"d0", ROOT, b"d0-renamed", 0).await?;
    let before = readdir_all(&conn, ROOT).await?;
    let (_, digest_before) = wait_converged(&c).await?;

    for i in 0..3 {
        c.kill_meta(i);
    }
    for i in 0..3 {
        c.restart_meta(i).await?;
    }
    c.wait_until("a leader after the full restart", HANG, || async {
        c.leader_index().await.is_ok()
    })
    .await?;
    let conn = c.conn_with(patient()).await?;
    let after = readdir_all(&conn, ROOT).await?;
    assert_eq!(after, before, "root directory changed across a full kill");
    for (name, ino) in &after {
        assert_eq!(
            readdir_all(&conn, *ino).await?.len(),
            8,
            "{} lost files",
            String::from_utf8_lossy(name)
        );
    }
    let (_, digest_after) = wait_converged(&c).await?;
    assert_eq!(
        digest_after, digest_before,
        "state digest changed across a full kill"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_rejoins_and_catches_up_by_snapshot() -> Result<()> {
    // Snapshot every 40 entries (log kept behind it: 10) so the leader's log no longer
    // starts at 1 and a wiped node can only catch up from a snapshot.
    let mut c = ClusterBuilder::new()
        .server_timeout(Duration::from_secs(3600))
        .meta_args(vec!["--snapshot-every".into(), "40".into()])
        .start()
        .await?;
    let conn = c.conn_with(patient()).await?;
    for d in 0..60 {
        mkdir(&conn, ROOT, format!("before{d}").as_bytes()).await?;
    }
    let cluster_id = conn.cluster_id();
    // Node 1 is the lowest id: the one that bootstraps. Wiping it is the hard case.
    let wiped = 0;
    c.kill_meta(wiped);
    let dir = c.meta_dir(wiped);
    std::fs::remove_dir_all(&dir)?;
    std::fs::create_dir_all(&dir)?;
    for d in 0..60 {
        mkdir(&conn, ROOT, format!("after{d}").as_bytes()).await?;
    }
    c.restart_meta(wiped).await?;
    let (applied, _) = wait_converged(&c).await?;
    let info = c.info(wiped).await?;
    assert_eq!(
        info.cluster_id, cluster_id,
        "the wiped node joined the same cluster"
    );
    assert!(applied > 120, "applied {applied}");
    let full = std::fs::read_to_string(c.meta_log(wiped))?;
    // Only what the node logged since its restart with the empty directory.
    let log = full
        .rsplit("=== cirrus-raft-tests: start")
        .next()
        .unwrap_or_default();
    assert!(
        log.contains("installed snapshot from the leader"),
        "the wiped node did not install a snapshot; its log:\n{log}"
    );
    assert!(
        !log.contains("initialised the raft group"),
        "the wiped node re-initialised a group; its log:\n{log}"
    );
    assert_eq!(readdir_all(&conn, ROOT).await?.len(), 120);
    Ok(())
}
