//! A rebuild's caught-up report is valid only for the chain version its copy was made at
//! (3 meta + 3 data, R=2). Found by the chaos replay of seed 1010 (an fsync-acknowledged
//! block read back as zeros): a syncing server that finished its copy, was dropped from the
//! chain before its report got through (writes were then acknowledged without it) and was
//! re-added by the very heartbeat that carried the report, got promoted to tail without
//! those writes, and served reads from the stale copy.
//!
//! Made deterministic here: the copy finishes while every meta node is paused (so the
//! report cannot arrive), the syncing server is then paused until meta drops it, a write
//! is acknowledged by the remaining member alone, and the server resumes.

use crate::data_common;

use anyhow::{anyhow, ensure, Result};
use cirrus_types::ChainVersion;
use data_common::*;

/// Object size: at `--rebuild-rate 1` (MiB/s) the copy takes about 8 s, time enough to
/// pause meta while it runs.
const LEN: usize = 8 << 20;
/// The write acknowledged while the syncing server is out of the chain.
const LATE: usize = 64 << 10;

/// A cluster (3 meta + 3 data, R=2, rebuild at 1 MiB/s) whose one object's chain lost
/// member B (killed) and has the third server X syncing into it, its copy from A begun.
struct Rebuilding {
    c: cirrus_raft_tests::cluster::TestCluster,
    w: Written,
    a: usize,
    x: usize,
    x_sid: u64,
}

async fn rebuilding_into_a_third_server(data: Vec<u8>) -> Result<Rebuilding> {
    let mut c = r2_rebuild_cluster()
        .data_args(vec!["--rebuild-rate".into(), "1".into()])
        .start()
        .await?;
    let w = write_one_object(&c, data).await?;
    let a = index_of(&c, w.members[0]).await?;
    let b = index_of(&c, w.members[1]).await?;
    let x = (0..3).find(|i| *i != a && *i != b).expect("a third server");
    let x_sid = c.data_info(x).await?.server_id;

    // B dies: meta drops it and X joins as syncing, copying from A.
    c.kill_data(b);
    wait_for("X syncing into the chain", || async {
        let ch = chain(&c, w.chain_id).await.ok()?;
        (ch.syncing == vec![x_sid]).then_some(())
    })
    .await?;
    wait_for("X to start copying", || async {
        let i = c.data_info(x).await.ok()?;
        (i.rebuild_copied_bytes > 0).then_some(())
    })
    .await?;
    Ok(Rebuilding { c, w, a, x, x_sid })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_report_of_a_copy_made_before_a_drop_and_re_add_does_not_promote_a_member_missing_writes(
) -> Result<()> {
    let old = pattern(1, 0, LEN);
    let Rebuilding {
        c,
        w: Written {
            cl, chain_id, key, ..
        },
        x,
        x_sid,
        ..
    } = rebuilding_into_a_third_server(old.clone()).await?;
    // The copy finishes while no meta node answers: the caught-up report stays pending.
    for m in 0..3 {
        c.stop_meta(m);
    }
    let done = wait_for("X to finish its copy while meta is paused", || async {
        let i = c.data_info(x).await.ok()?;
        i.caught_up_chains.contains(&chain_id.0).then_some(i)
    })
    .await;
    // Pause X before meta hears from it again, then let meta drop it.
    c.stop_data(x);
    for m in 0..3 {
        c.cont_meta(m);
    }
    done?;
    let dropped = wait_for("meta to drop the paused X from the chain", || async {
        let ch = chain(&c, chain_id).await.ok()?;
        (!ch.syncing.contains(&x_sid) && !ch.members.contains(&x_sid)).then_some(ch)
    })
    .await
    .inspect_err(|_| c.cont_data(x))?;
    eprintln!("chain without X: {dropped:?}");

    // Acknowledged by A alone: X never sees this write through the chain.
    let late = pattern(2, 0, LATE);
    let w = write(&cl, chain_id, key, 0, late.clone()).await;
    c.cont_data(x);
    w.map_err(|e| anyhow!("write while X is out of the chain: {e}"))?;

    let back = wait_for("the chain back at 2 members with X", || async {
        let ch = chain(&c, chain_id).await.ok()?;
        (ch.members.len() == 2 && ch.members.contains(&x_sid) && ch.syncing.is_empty())
            .then_some(ch)
    })
    .await?;
    let p = peers(&c).await?;
    let version = ChainVersion(back.version);
    let (got, size) = local_read(&c, &p, x, chain_id, version, key, 0, LEN as u32)
        .await
        .map_err(|e| anyhow!("local read of X's copy: {e}"))?;
    ensure!(size == LEN as u64, "X's copy has size {size}, want {LEN}");
    ensure!(
        got[..LATE] == late[..],
        "X serves reads but lacks the write acknowledged while it was out of the chain"
    );
    ensure!(
        got[LATE..] == old[LATE..],
        "X's copy differs past the late write"
    );
    let via_client = read(&cl, chain_id, key, 0, LATE as u32)
        .await
        .map_err(|e| anyhow!("client read: {e}"))?;
    ensure!(via_client == late, "the client read the old bytes");
    Ok(())
}

/// Holes punched while a server is syncing into the chain (3 meta + 3 data, R=2): the
/// punch reaches the syncing server too, the copy never writes old bytes over a punched
/// range, and the kept bytes of a partial edge block that was not copied yet are taken
/// from the tail, so the rebuilt copy equals the member's byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_punched_during_a_rebuild_are_holes_in_the_rebuilt_copy() -> Result<()> {
    let old = pattern(3, 0, LEN);
    let Rebuilding {
        c,
        w: Written {
            cl, chain_id, key, ..
        },
        a,
        x,
        x_sid,
    } = rebuilding_into_a_third_server(old.clone()).await?;
    // Unaligned at both ends: one near the start (copied or being copied), two far
    // ahead of the copy, one reaching the end.
    let mut want = old.clone();
    for (off, len) in [
        (500_123u64, 1_000_000u64),
        (5_000_001, 1_234_567),
        (7_000_000, 3),
        (LEN as u64 - 5_007, 5_007),
    ] {
        cl.data()
            .punch(chain_id, key, off, len, std::time::Instant::now() + HANG)
            .await
            .map_err(|e| anyhow!("punch {off}+{len} during the rebuild: {e}"))?;
        want[off as usize..(off + len) as usize].fill(0);
    }
    let back = wait_for("the chain back at 2 members with X", || async {
        let ch = chain(&c, chain_id).await.ok()?;
        (ch.members.len() == 2 && ch.members.contains(&x_sid) && ch.syncing.is_empty())
            .then_some(ch)
    })
    .await?;
    let p = peers(&c).await?;
    let version = ChainVersion(back.version);
    for i in [a, x] {
        let (got, size) = local_read(&c, &p, i, chain_id, version, key, 0, LEN as u32)
            .await
            .map_err(|e| anyhow!("local read on data-{}: {e}", i + 1))?;
        ensure!(size == LEN as u64, "data-{} has size {size}", i + 1);
        if got != want {
            let first = got.iter().zip(&want).position(|(g, w)| g != w);
            return Err(anyhow!(
                "data-{} differs from the punched object, first at {first:?}",
                i + 1
            ));
        }
    }
    Ok(())
}
