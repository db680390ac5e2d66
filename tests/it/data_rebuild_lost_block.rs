//! A rebuild whose only source has a bad block (3 meta + 3 data, R=2): it used to retry
//! forever ("rebuild interrupted, retrying: checksum mismatch", chaos seed 1002), so the
//! chain never got back to full R. Now the block, bad on every member that could give it,
//! is kept as lost on the new member: the chain returns to full R, reads of that block
//! fail with EIO (never wrong bytes), every other block reads correctly, and the loss is
//! counted in `cirrus_data_lost_blocks_total`.

use crate::data_common;

use anyhow::{anyhow, ensure, Result};
use cirrus_types::{ChainVersion, FsError};
use data_common::*;

const LEN: usize = 256 << 10;
const BAD_BLOCK: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_from_a_source_with_a_bad_block_finishes_and_that_block_reads_eio_while_the_rest_reads_correctly(
) -> Result<()> {
    let mut c = r2_rebuild_cluster()
        .allow_errors(cirrus_raft_tests::cluster::CORRUPTION_ERRORS)
        .start()
        .await?;
    let data = pattern(3, 0, LEN);
    let Written {
        cl,
        chain_id,
        key,
        members,
    } = write_one_object(&c, data.clone()).await?;
    let a = index_of(&c, members[0]).await?;
    let b = index_of(&c, members[1]).await?;
    let x = (0..3).find(|i| *i != a && *i != b).expect("a third server");
    let x_sid = c.data_info(x).await?.server_id;

    // The only good copy left after B dies has one bad block.
    flip(&object_files(&c, a, chain_id, key).0, BAD_BLOCK * 4096 + 17)?;
    c.kill_data(b);
    let back = wait_for("the chain back at full R with X", || async {
        let ch = chain(&c, chain_id).await.ok()?;
        (ch.members.len() == 2 && ch.members.contains(&x_sid) && ch.syncing.is_empty())
            .then_some(ch)
    })
    .await
    .map_err(|e| {
        let tail = cirrus_raft_tests::cluster::log_tail(&c.data_log(x), 30);
        anyhow!("{e}\n--- X's log tail:\n{tail}")
    })?;

    let lost = metric(&c.data_metrics_addr(x), "cirrus_data_lost_blocks_total").await?;
    ensure!(lost >= 1.0, "the lost block is not counted on X: {lost}");
    match read(&cl, chain_id, key, 0, LEN as u32).await {
        Err(FsError::Checksum(_)) => {}
        Ok(_) => return Err(anyhow!("a block bad on every member was served as data")),
        Err(e) => return Err(anyhow!("expected a checksum error (EIO), got {e}")),
    }
    let bad = (BAD_BLOCK * 4096) as usize;
    let before = read(&cl, chain_id, key, 0, bad as u32)
        .await
        .map_err(|e| anyhow!("read before the lost block: {e}"))?;
    ensure!(
        before == data[..bad],
        "blocks before the lost one read wrong"
    );
    let from = bad + 4096;
    let after = read(&cl, chain_id, key, from as u64, (LEN - from) as u32)
        .await
        .map_err(|e| anyhow!("read after the lost block: {e}"))?;
    ensure!(
        after == data[from..],
        "blocks after the lost one read wrong"
    );
    // X's own copy: right everywhere but the lost block, which it refuses to serve.
    let p = peers(&c).await?;
    let version = ChainVersion(back.version);
    let (mine, _) = local_read(&c, &p, x, chain_id, version, key, from as u64, 8192)
        .await
        .map_err(|e| anyhow!("local read of X past the lost block: {e}"))?;
    ensure!(mine == data[from..from + 8192], "X's copy is wrong");
    match local_read(&c, &p, x, chain_id, version, key, bad as u64, 4096).await {
        Err(FsError::Checksum(_)) => {}
        Ok(_) => return Err(anyhow!("X served its lost block as data")),
        Err(e) => return Err(anyhow!("expected a checksum error from X, got {e}")),
    }
    Ok(())
}
