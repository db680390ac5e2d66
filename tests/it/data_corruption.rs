//! Bit rot behind a data server's back (3 meta + 2 data, R=2): bytes flipped in an object
//! file on disk are never served. A read still returns the right bytes (the server
//! repairs the block from the other member), the finding shows in the server's Info
//! counters, and the file on disk is fixed. A block bad on every member is an error, never
//! data. Scrub finds and repairs a bad block that nobody reads.

use crate::data_common;

use anyhow::{anyhow, ensure, Result};
use cirrus_raft_tests::cluster::{ClusterBuilder, TestCluster};
use cirrus_types::{ChainId, ChainVersion, FsError, ObjectKey};
use data_common::*;
use std::os::unix::fs::FileExt;
use std::path::Path;

const LEN: usize = 256 << 10;
/// The damaged block and where in it the bytes flip.
const BAD_BLOCK: u64 = 5;
const BAD_AT: u64 = BAD_BLOCK * 4096 + 17;

/// XORs three bytes of the file at `at`, as a failing disk or a stray write would.
fn flip(path: &Path, at: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = [0u8; 3];
    f.read_exact_at(&mut b, at)?;
    for x in &mut b {
        *x ^= 0xa5;
    }
    f.write_all_at(&b, at)?;
    f.sync_all()?;
    Ok(())
}

/// A file whose object 0 holds `LEN` pattern bytes on both members; returns
/// (key, chain, version, head index, tail index, data).
async fn setup(
    c: &TestCluster,
    name: &str,
) -> Result<(ObjectKey, ChainId, ChainVersion, usize, usize, Vec<u8>)> {
    let cl = client(c).await?;
    let (ino, layout) = new_file(&cl, name).await?;
    let chain_id = layout.chains[0];
    let key = ObjectKey {
        inode: ino,
        index: 0,
    };
    let data = pattern(7, 0, LEN);
    write(&cl, chain_id, key, 0, data.clone())
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    let ch = chain(c, chain_id).await?;
    ensure!(ch.members.len() == 2, "chain should have 2 members: {ch:?}");
    let head = index_of(c, ch.members[0]).await?;
    let tail = index_of(c, ch.members[1]).await?;
    Ok((key, chain_id, ChainVersion(ch.version), head, tail, data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_block_is_reported_read_correctly_and_repaired_and_never_served() -> Result<()> {
    let c = ClusterBuilder::new()
        .allow_errors(cirrus_raft_tests::cluster::CORRUPTION_ERRORS)
        .data_servers(2)
        .replicas(2)
        .start()
        .await?;
    let (key, chain_id, version, head, tail, data) = setup(&c, "rot").await?;
    let cl = client(&c).await?;
    let p = peers(&c).await?;
    let before = c.data_info(tail).await?;

    // The client reads from the tail first: damage the tail's copy.
    let (dat, _) = object_files(&c, tail, chain_id, key);
    flip(&dat, BAD_AT)?;
    let got = read(&cl, chain_id, key, 0, LEN as u32)
        .await
        .map_err(|e| anyhow!("read over a corrupt block: {e}"))?;
    ensure!(got == data, "the read returned wrong bytes");

    let after = c.data_info(tail).await?;
    ensure!(
        after.corrupt_blocks > before.corrupt_blocks,
        "corruption not reported: corrupt_blocks {} -> {}",
        before.corrupt_blocks,
        after.corrupt_blocks
    );
    ensure!(
        after.repaired_blocks > before.repaired_blocks,
        "no repair reported: repaired_blocks {} -> {}",
        before.repaired_blocks,
        after.repaired_blocks
    );
    // Repaired in place: the file on disk and a local-only read of the tail are right.
    let disk = read_file(&dat)?;
    ensure!(
        disk[..LEN] == data[..],
        "the tail's file on disk is still damaged"
    );
    let (local, size) = local_read(&c, &p, tail, chain_id, version, key, 0, LEN as u32)
        .await
        .map_err(|e| anyhow!("local read of the repaired tail: {e}"))?;
    ensure!(
        local == data && size == LEN as u64,
        "the tail's own copy is wrong"
    );

    // The same block bad on both members: an error, never data.
    for i in [head, tail] {
        flip(&object_files(&c, i, chain_id, key).0, BAD_AT)?;
    }
    match read(&cl, chain_id, key, 0, LEN as u32).await {
        Err(FsError::Checksum(_)) => {}
        Ok(_) => return Err(anyhow!("a block bad on every member was served as data")),
        Err(e) => return Err(anyhow!("expected a checksum error, got {e}")),
    }
    // Blocks away from the damage still read.
    let tail_bytes = read(&cl, chain_id, key, (BAD_BLOCK + 1) * 4096, 8192)
        .await
        .map_err(|e| anyhow!("read past the bad block: {e}"))?;
    let from = ((BAD_BLOCK + 1) * 4096) as usize;
    ensure!(
        tail_bytes == data[from..from + 8192],
        "good blocks read wrong"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_and_repairs_a_corrupt_block_nobody_reads() -> Result<()> {
    let c = ClusterBuilder::new()
        .allow_errors(cirrus_raft_tests::cluster::CORRUPTION_ERRORS)
        .data_servers(2)
        .replicas(2)
        .data_args(vec!["--scrub-interval".into(), "300ms".into()])
        .start()
        .await?;
    let (key, chain_id, _, head, _, data) = setup(&c, "scrubbed").await?;
    let before = c.data_info(head).await?;
    let (dat, _) = object_files(&c, head, chain_id, key);
    flip(&dat, BAD_AT)?;
    let info = wait_for("scrub on the head to find and repair the block", || async {
        let i = c.data_info(head).await.ok()?;
        (i.scrub_errors > before.scrub_errors && i.repaired_blocks > before.repaired_blocks)
            .then_some(i)
    })
    .await?;
    ensure!(
        info.scrub_passes > 0 && info.scrub_done_bytes > 0,
        "scrub progress not shown: {info:?}"
    );
    let disk = read_file(&dat)?;
    ensure!(
        disk[..LEN] == data[..],
        "scrub did not fix the file on disk"
    );
    Ok(())
}
