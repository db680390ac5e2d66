//! Truncate and garbage collection through real processes (3 meta + 2 data, R=2): a chain
//! truncate reaches every member, and bytes cut off read as zeros when a later write
//! extends the object again, on each member's own copy; unlinking a file makes meta hand
//! its objects to the data servers as garbage, and every member deletes the files.

use crate::data_common;

use anyhow::{anyhow, ensure, Result};
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::{ChainId, ChainVersion, InodeId, ObjectKey};
use data_common::*;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bytes_read_as_zeros_after_extension_and_unlinked_objects_are_collected(
) -> Result<()> {
    let c = ClusterBuilder::new()
        .data_servers(2)
        .replicas(2)
        .start()
        .await?;
    let cl = client(&c).await?;
    let p = peers(&c).await?;
    let (ino, layout) = new_file(&cl, "cut").await?;
    let mut keys = Vec::new();
    for (index, chain_id) in layout.chains.iter().enumerate() {
        let key = ObjectKey {
            inode: ino,
            index: index as u32,
        };
        write(&cl, *chain_id, key, 0, pattern(index as u64, 0, 50_000))
            .await
            .map_err(|e| anyhow!("write object {index}: {e}"))?;
        keys.push((*chain_id, key));
    }
    let (chain_id, key) = keys[0];

    // Cut inside a block, then extend far past the old end.
    cl.data()
        .truncate(chain_id, key, 5_000, Instant::now() + HANG)
        .await
        .map_err(|e| anyhow!("truncate: {e}"))?;
    let tail = pattern(9, 70_000, 300);
    write(&cl, chain_id, key, 70_000, tail.clone())
        .await
        .map_err(|e| anyhow!("extend: {e}"))?;
    let mut want = pattern(0, 0, 5_000);
    want.resize(70_000, 0);
    want.extend_from_slice(&tail);
    let got = read(&cl, chain_id, key, 0, 1 << 20)
        .await
        .map_err(|e| anyhow!("read: {e}"))?;
    ensure!(
        got == want,
        "client read after truncate + extension is wrong"
    );
    every_member_holds(&c, &p, chain_id, key, &want, "after truncate + extension").await?;

    // Unlink: every member of every chain of the file deletes its objects.
    cl.meta()
        .unlink(InodeId::ROOT, b"cut")
        .await
        .map_err(|e| anyhow!("unlink: {e}"))?;
    let chains: Vec<ChainId> = layout.chains.clone();
    wait_for(
        "every object of the unlinked file deleted on every member",
        || async {
            for ch in &chains {
                let Ok(info) = chain(&c, *ch).await else {
                    return None;
                };
                for sid in info.members.iter().chain(info.syncing.iter()) {
                    let i = index_of(&c, *sid).await.ok()?;
                    let listed = list_objects(&c, &p, i, *ch).await.ok()?;
                    if listed.iter().any(|(o, _, _)| *o == ino.0) {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await?;
    for i in 0..c.data_count() {
        for (ch, key) in &keys {
            let (dat, crc) = object_files(&c, i, *ch, *key);
            ensure!(
                !dat.exists() && !crc.exists(),
                "data-{} still has files of the unlinked object {key:?}",
                i + 1
            );
        }
    }
    Ok(())
}

/// fallocate PUNCH_HOLE/ZERO_RANGE at the data servers: a chain punch reaches every
/// member, each member's own copy reads zeros in the range and the old bytes around it
/// (unaligned edges included), the size is kept, and a punch to the largest file size
/// costs no more than one past the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_punched_range_reads_as_zeros_on_every_member_and_keeps_the_size() -> Result<()> {
    let c = ClusterBuilder::new()
        .data_servers(2)
        .replicas(2)
        .start()
        .await?;
    let cl = client(&c).await?;
    let p = peers(&c).await?;
    let (ino, layout) = new_file(&cl, "holes").await?;
    let chain_id = layout.chains[0];
    let key = ObjectKey {
        inode: ino,
        index: 0,
    };
    let data = pattern(3, 0, 100_000);
    write(&cl, chain_id, key, 0, data.clone())
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    let deadline = Instant::now() + HANG;
    cl.data()
        .punch(chain_id, key, 1_000, 50_000, deadline)
        .await
        .map_err(|e| anyhow!("punch: {e}"))?;
    cl.data()
        .punch(
            chain_id,
            key,
            90_001,
            cirrus_types::MAX_FILE_SIZE - 90_001,
            deadline,
        )
        .await
        .map_err(|e| anyhow!("punch to the largest size: {e}"))?;
    let mut want = data.clone();
    want[1_000..51_000].fill(0);
    want[90_001..].fill(0);
    let got = read(&cl, chain_id, key, 0, 1 << 20)
        .await
        .map_err(|e| anyhow!("read: {e}"))?;
    ensure!(got == want, "client read after the punches is wrong");
    // `want` is `data` with zeros punched in: the same length, so this also checks that
    // every member kept the size.
    every_member_holds(&c, &p, chain_id, key, &want, "after the punches").await?;
    // Past the largest file: refused, nothing changed.
    let r = cl
        .data()
        .punch(chain_id, key, cirrus_types::MAX_FILE_SIZE, 1, deadline)
        .await;
    ensure!(
        matches!(r, Err(cirrus_types::FsError::TooBig)),
        "a punch past the largest file answered {r:?}"
    );
    // A missing object has nothing to zero, on every member.
    let missing = ObjectKey {
        inode: InodeId(ino.0 + 1_000_000),
        index: 0,
    };
    cl.data()
        .punch(chain_id, missing, 0, 1 << 30, deadline)
        .await
        .map_err(|e| anyhow!("punch of a missing object: {e}"))?;
    Ok(())
}

/// copy_file_range at the data servers: the destination chain's head reads the source
/// object (unaligned, across blocks, past its end as zeros) and writes it through its
/// chain, so every member's own copy holds the bytes under verified crcs; a copy past the
/// per-call ceiling or the largest file is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_by_the_data_servers_lands_on_every_member_and_bad_copies_change_nothing(
) -> Result<()> {
    let c = ClusterBuilder::new()
        .data_servers(2)
        .replicas(2)
        .start()
        .await?;
    let cl = client(&c).await?;
    let p = peers(&c).await?;
    let (src_ino, src_layout) = new_file(&cl, "copy-src").await?;
    let (dst_ino, dst_layout) = new_file(&cl, "copy-dst").await?;
    let (sc, dc) = (src_layout.chains[0], dst_layout.chains[0]);
    let src = ObjectKey {
        inode: src_ino,
        index: 0,
    };
    let dst = ObjectKey {
        inode: dst_ino,
        index: 0,
    };
    let data = pattern(5, 0, 200_000);
    write(&cl, sc, src, 0, data.clone())
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    let old = pattern(6, 0, 50_000);
    write(&cl, dc, dst, 0, old.clone())
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    let deadline = Instant::now() + HANG;
    // 100,000 bytes from 150,001: the last 49,999 exist, the rest reads as zeros.
    cl.data()
        .copy(dc, dst, 10_003, sc, src, 150_001, 100_000, deadline)
        .await
        .map_err(|e| anyhow!("copy: {e}"))?;
    let mut want = old.clone();
    want.resize(110_003, 0);
    want[10_003..10_003 + 49_999].copy_from_slice(&data[150_001..]);
    want[10_003 + 49_999..].fill(0);
    let got = read(&cl, dc, dst, 0, 1 << 20)
        .await
        .map_err(|e| anyhow!("read: {e}"))?;
    ensure!(got == want, "client read after the copy is wrong");
    every_member_holds(&c, &p, dc, dst, &want, "after the copy").await?;
    for (what, off, len) in [
        (
            "past the per-call ceiling",
            0,
            cirrus_types::limits::MAX_COPY + 1,
        ),
        (
            "past the largest file",
            cirrus_types::MAX_FILE_SIZE - 10,
            100,
        ),
    ] {
        let r = cl
            .data()
            .copy(dc, dst, off, sc, src, 0, len, deadline)
            .await;
        ensure!(r.is_err(), "a copy {what} answered {r:?}");
    }
    every_member_holds(&c, &p, dc, dst, &want, "after the refused copies").await?;
    Ok(())
}

/// Each member of the 2-member chain holds exactly `want` (bytes and size) in its own
/// copy, read locally.
async fn every_member_holds(
    c: &cirrus_raft_tests::cluster::TestCluster,
    p: &cirrus_data::peer::Peers,
    chain_id: ChainId,
    key: ObjectKey,
    want: &[u8],
    when: &str,
) -> Result<()> {
    let ch = chain(c, chain_id).await?;
    ensure!(ch.members.len() == 2, "chain should have 2 members: {ch:?}");
    for sid in &ch.members {
        let i = index_of(c, *sid).await?;
        let (own, size) = local_read(c, p, i, chain_id, ChainVersion(ch.version), key, 0, 1 << 20)
            .await
            .map_err(|e| anyhow!("local read on data-{}: {e}", i + 1))?;
        ensure!(
            size == want.len() as u64,
            "data-{} has size {size} {when}",
            i + 1
        );
        ensure!(own == want, "data-{} holds other bytes {when}", i + 1);
    }
    Ok(())
}
