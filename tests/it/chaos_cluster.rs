//! The shared test-cluster builder against the real `cirrus` binary: it starts a group
//! that elects a leader, registers data servers, survives a leader kill and restart, and
//! a pause/resume. Every other multi-process test relies on these behaviours.

use cirrus_raft_tests::cluster::ClusterBuilder;

use crate::fixtures::HANG;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_starts_with_leader_and_registered_data_servers() -> anyhow::Result<()> {
    let c = ClusterBuilder::new()
        .data_servers(2)
        .replicas(2)
        .start()
        .await?;
    assert_eq!(c.meta_addrs().split(',').count(), 3);
    let conn = c.conn().await?;
    assert_eq!(conn.cluster_id().len(), 32, "cluster id is 32 hex digits");
    let l = c.leader_index().await?;
    assert!(l < 3);
    let table = c.chain_table().await?;
    for i in 0..2 {
        assert!(
            table
                .servers
                .iter()
                .any(|s| s.address == c.data_addr(i) && s.alive),
            "data-{} missing from the chain table {table:?}",
            i + 1
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_and_restarted_node_rejoins() -> anyhow::Result<()> {
    let mut c = ClusterBuilder::new().start().await?;
    let old = c.leader_index().await?;
    let old_term = c.info(old).await?.term;
    c.kill_meta(old);
    c.wait_until("a new leader among the survivors", HANG, || async {
        matches!(c.leader_index().await, Ok(i) if i != old)
    })
    .await?;
    c.restart_meta(old).await?;
    c.wait_until(
        "the restarted node to follow a newer term",
        HANG,
        || async {
            c.info(old)
                .await
                .is_ok_and(|r| r.term > old_term && r.leader_id != 0)
        },
    )
    .await?;
    // The group still serves through a connection over all three addresses.
    c.conn().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_is_replaced_and_resumes_as_follower() -> anyhow::Result<()> {
    let c = ClusterBuilder::new().start().await?;
    let old = c.leader_index().await?;
    c.stop_meta(old);
    c.wait_until("a new leader while the old one is paused", HANG, || async {
        matches!(c.leader_index().await, Ok(i) if i != old)
    })
    .await?;
    c.cont_meta(old);
    c.wait_until("the resumed node to step down", HANG, || async {
        c.info(old).await.is_ok_and(|r| r.role == "follower")
    })
    .await?;
    Ok(())
}
