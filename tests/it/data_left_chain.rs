//! A server dropped from a chain deletes its stale copy once the chain is back at full R on
//! other servers (3 meta + 3 data, R=2). Found by the chaos soak (seed 1002): every killed
//! and restarted server kept its copies of the chains it had left, until each of the small
//! data disks held every chain and was full, so no rebuild could finish and a restarted
//! server could not start.

use crate::data_common;

use anyhow::{anyhow, ensure, Result};
use data_common::*;

const LEN: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_after_its_chain_was_rebuilt_elsewhere_deletes_its_stale_copy() -> Result<()>
{
    let mut c = r2_rebuild_cluster().start().await?;
    let bytes = pattern(3, 0, LEN);
    let Written {
        cl,
        chain_id,
        key,
        members,
    } = write_one_object(&c, bytes.clone()).await?;
    let b = index_of(&c, members[1]).await?;
    let b_sid = members[1];
    let (dat, crc) = object_files(&c, b, chain_id, key);
    ensure!(
        dat.exists() && crc.exists(),
        "the member should hold the object before it is killed"
    );

    // B dies; the chain is rebuilt to full R on the third server without it.
    c.kill_data(b);
    wait_for(
        "the chain back at full R without the killed server",
        || async {
            let ch = chain(&c, chain_id).await.ok()?;
            (ch.members.len() == 2 && ch.syncing.is_empty() && !ch.members.contains(&b_sid))
                .then_some(())
        },
    )
    .await?;

    // B comes back: its copy is stale and not needed, so it goes.
    c.restart_data(b).await?;
    wait_for("the returning server to delete its stale copy", || async {
        (!dat.exists() && !crc.exists()).then_some(())
    })
    .await?;

    // The chain still serves the bytes, from its current members.
    let got = read(&cl, chain_id, key, 0, LEN as u32)
        .await
        .map_err(|e| anyhow!("read after the sweep: {e}"))?;
    ensure!(
        got == bytes,
        "the chain's bytes changed after the stale copy was deleted"
    );
    Ok(())
}
