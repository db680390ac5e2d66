//! Chain versions fence requests (3 meta + 2 data, R=2): after meta drops a killed member
//! (version bump), a write or read carrying the old version is refused with the current
//! version and changes nothing; the same write with the refreshed version succeeds, and
//! the client library refreshes its cached chain table by itself.

use crate::data_common;

use anyhow::{anyhow, bail, ensure, Result};
use cirrus_data::node::WriteArgs;
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::checksum::piece_crcs;
use cirrus_types::{ChainVersion, FsError, ObjectKey};
use data_common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_chain_write_is_rejected_with_current_version_and_succeeds_after_refresh(
) -> Result<()> {
    let mut c = ClusterBuilder::new()
        .data_servers(2)
        .replicas(2)
        .server_timeout(Duration::from_secs(3))
        .start()
        .await?;
    let cl = client(&c).await?;
    let (ino, layout) = new_file(&cl, "fenced").await?;
    let chain_id = layout.chains[0];
    let key = ObjectKey {
        inode: ino,
        index: 0,
    };
    let old = pattern(1, 0, 20_000);
    write(&cl, chain_id, key, 0, old.clone())
        .await
        .map_err(|e| anyhow!("first write: {e}"))?;
    let v0 = chain(&c, chain_id).await?;
    ensure!(v0.members.len() == 2, "chain should have 2 members: {v0:?}");

    // Kill the tail: meta drops it and bumps the version; the head survives alone.
    let survivor = index_of(&c, v0.members[0]).await?;
    let victim = index_of(&c, v0.members[1]).await?;
    c.kill_data(victim);
    let v1 = wait_for("meta to drop the killed member", || async {
        let ch = chain(&c, chain_id).await.ok()?;
        (ch.version > v0.version).then_some(ch)
    })
    .await?;
    ensure!(
        v1.members == vec![v0.members[0]],
        "only the survivor should remain: {v1:?}"
    );

    let p = peers(&c).await?;
    // A request carrying the newer version makes the survivor fetch the table from meta
    // (it would otherwise learn of the bump with its next heartbeat).
    let v1v = ChainVersion(v1.version);
    local_read(&c, &p, survivor, chain_id, v1v, key, 0, 1)
        .await
        .map_err(|e| anyhow!("read at the new version: {e}"))?;
    let new = pattern(2, 4000, 9000);
    let mut w = WriteArgs {
        chain: chain_id,
        version: ChainVersion(v0.version),
        key,
        off: 4000,
        data: new.clone().into(),
        crcs: piece_crcs(4000, &new),
        sync: false,
        hop: 0,
    };
    match p.write(&c.data_addr(survivor), &w).await {
        Err(FsError::StaleChain { current }) => ensure!(
            current == ChainVersion(v1.version),
            "refused with version {current}, the current one is {}",
            v1.version
        ),
        Ok(_) => bail!(
            "a write with stale chain version {} was accepted",
            v0.version
        ),
        Err(e) => bail!("expected StaleChain, got {e}"),
    }
    // Reads are fenced too, and the refused write changed nothing.
    match p
        .read(
            &c.data_addr(survivor),
            &entry(chain_id, ChainVersion(v0.version)),
            key,
            0,
            100,
            false,
        )
        .await
    {
        Err(FsError::StaleChain { current }) => ensure!(current == ChainVersion(v1.version)),
        other => bail!("a read with a stale version was not refused: {other:?}"),
    }
    let (got, size) = local_read(&c, &p, survivor, chain_id, v1v, key, 0, 1 << 20)
        .await
        .map_err(|e| anyhow!("read after the refused write: {e}"))?;
    ensure!(
        got == old && size == old.len() as u64,
        "the refused write changed the object"
    );

    // Refreshed: the same write goes through.
    w.version = v1v;
    p.write(&c.data_addr(survivor), &w)
        .await
        .map_err(|e| anyhow!("write with the current version: {e}"))?;
    let mut want = old.clone();
    want[4000..13_000].copy_from_slice(&new);
    let (got, _) = local_read(&c, &p, survivor, chain_id, v1v, key, 0, 1 << 20)
        .await
        .map_err(|e| anyhow!("read back: {e}"))?;
    ensure!(got == want, "the refreshed write did not land");

    // The client library still caches version v0; it is refused, refreshes and retries.
    let cached = cl.data().table().chains.get(&chain_id).map(|ch| ch.version);
    ensure!(
        cached == Some(ChainVersion(v0.version)),
        "client cache: {cached:?}"
    );
    let third = pattern(3, 0, 100);
    write(&cl, chain_id, key, 0, third.clone())
        .await
        .map_err(|e| anyhow!("client write through a stale cache: {e}"))?;
    want[..100].copy_from_slice(&third);
    let got = read(&cl, chain_id, key, 0, 1 << 20)
        .await
        .map_err(|e| anyhow!("client read: {e}"))?;
    ensure!(got == want, "client read back wrong bytes");
    let cached = cl.data().table().chains.get(&chain_id).map(|ch| ch.version);
    ensure!(
        cached == Some(v1v),
        "client cache not refreshed: {cached:?}"
    );
    Ok(())
}
