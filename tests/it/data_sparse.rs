//! Sparse objects cost what was written (issue 19): one `truncate` to a huge size made
//! every data server allocate gigabytes until the OOM killer ended all three. Real
//! processes (3 meta + 3 data, R=2): an object truncated to the largest size with bytes
//! at 0, 2^40, 2^50 and the very end, written through the chain; past the largest size the head
//! refuses (EFBIG) before anything is written or forwarded; every data server's resident
//! memory and the object's disk stay small; scrub passes over it and a member lost is
//! rebuilt from it, each in a bounded time (the hang deadline of `wait_for`).

use crate::data_common;

use anyhow::{anyhow, ensure, Result};
use cirrus_types::{FsError, MAX_FILE_SIZE};
use data_common::*;

/// Growth of a data server's resident memory the test allows: a few MiB of buffers and
/// maps, nothing proportional to a 4 PiB size (the bug held gigabytes within seconds).
const RSS_SLACK: u64 = 16 << 20;
/// Disk one member may spend on the object: three written regions and their crcs.
const DISK_BOUND: u64 = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_the_largest_size_is_sparse_on_every_member_and_in_scrub_and_rebuild(
) -> Result<()> {
    let mut c = r2_rebuild_cluster()
        .data_args(vec!["--scrub-interval".into(), "1s".into()])
        .start()
        .await?;
    let before: Vec<u64> = (0..3)
        .map(|i| rss_bytes(c.data_pid(i).ok_or_else(|| anyhow!("data-{} pid", i + 1))?))
        .collect::<Result<_>>()?;
    let Written {
        cl,
        chain_id,
        key,
        members,
    } = write_one_object(&c, b"hi\n".to_vec()).await?;
    let p = peers(&c).await?;
    let head = index_of(&c, members[0]).await?;
    let version = cirrus_types::ChainVersion(chain(&c, chain_id).await?.version);
    let ent = {
        let mut e = entry(chain_id, version);
        e.members = members.iter().map(|m| cirrus_types::ServerId(*m)).collect();
        e
    };

    // The truncate, then bytes in the far holes and at the very end.
    p.truncate(&c.data_addr(head), &ent, key, MAX_FILE_SIZE, 0)
        .await
        .map_err(|e| anyhow!("truncate to the largest size: {e}"))?;
    write(&cl, chain_id, key, 1 << 40, b"A".to_vec())
        .await
        .map_err(|e| anyhow!("write at 2^40: {e}"))?;
    write(&cl, chain_id, key, 1 << 50, b"B".to_vec())
        .await
        .map_err(|e| anyhow!("write at 2^50: {e}"))?;
    write(&cl, chain_id, key, MAX_FILE_SIZE - 1, b"Z".to_vec())
        .await
        .map_err(|e| anyhow!("write of the last byte: {e}"))?;

    // Past the largest size: EFBIG at the head, and nothing changed on either member.
    let past = p
        .truncate(&c.data_addr(head), &ent, key, MAX_FILE_SIZE + 1, 0)
        .await;
    ensure!(
        past == Err(FsError::TooBig),
        "truncate past the largest size: {past:?}"
    );
    let past = write(&cl, chain_id, key, MAX_FILE_SIZE, b"x".to_vec()).await;
    ensure!(
        past == Err(FsError::TooBig),
        "write past the largest size: {past:?}"
    );

    let check_member = |i: usize| {
        let (c, p) = (&c, &p);
        async move {
            let at = |off: u64, len: u32| async move {
                local_read(c, p, i, chain_id, version, key, off, len).await
            };
            let (d, size) = at(0, 4).await.map_err(|e| anyhow!("data-{}: {e}", i + 1))?;
            ensure!(size == MAX_FILE_SIZE, "data-{} size {size}", i + 1);
            ensure!(d == b"hi\n\0", "data-{} head {d:?}", i + 1);
            let (d, _) = at((1 << 40) - 1, 3).await.map_err(|e| anyhow!("{e}"))?;
            ensure!(d == b"\0A\0", "data-{} at 2^40: {d:?}", i + 1);
            let (d, _) = at((1 << 50) - 1, 3).await.map_err(|e| anyhow!("{e}"))?;
            ensure!(d == b"\0B\0", "data-{} at 2^50: {d:?}", i + 1);
            let (d, _) = at(MAX_FILE_SIZE - 2, 8).await.map_err(|e| anyhow!("{e}"))?;
            ensure!(d == b"\0Z", "data-{} at the end: {d:?}", i + 1);
            let (d, _) = at(1 << 42, 1 << 20).await.map_err(|e| anyhow!("{e}"))?;
            ensure!(
                d.len() == 1 << 20 && d.iter().all(|b| *b == 0),
                "data-{}: a hole read {} bytes, not all zero",
                i + 1,
                d.len()
            );
            let used = object_disk_bytes(c, i, chain_id, key)?;
            ensure!(
                used <= DISK_BOUND,
                "data-{} holds {used} bytes of disk for an object with 6 bytes written",
                i + 1
            );
            Ok::<(), anyhow::Error>(())
        }
    };
    for m in &members {
        check_member(index_of(&c, *m).await?).await?;
    }

    // Scrub passes over it on every server (a pass walking 4 PiB would never end).
    let passes: Vec<u64> = scrub_passes(&c).await?;
    wait_for("two scrub passes on every data server", || async {
        let now = scrub_passes(&c).await.ok()?;
        now.iter()
            .zip(&passes)
            .all(|(n, b)| *n >= b + 2)
            .then_some(())
    })
    .await?;

    for (i, b) in before.iter().enumerate() {
        let now = rss_bytes(c.data_pid(i).ok_or_else(|| anyhow!("data-{} pid", i + 1))?)?;
        ensure!(
            now <= b + RSS_SLACK,
            "data-{} resident memory grew from {} to {} MiB",
            i + 1,
            b >> 20,
            now >> 20
        );
    }

    // Lose the tail: the third server is rebuilt from the head, hole by hole skipped.
    let tail = index_of(&c, members[1]).await?;
    let x = (0..3)
        .find(|i| *i != head && *i != tail)
        .expect("a third server");
    let x_sid = c.data_info(x).await?.server_id;
    c.kill_data(tail);
    wait_for("the third server rebuilt into the chain", || async {
        let ch = chain(&c, chain_id).await.ok()?;
        (ch.members.contains(&x_sid) && ch.syncing.is_empty()).then_some(())
    })
    .await?;
    let version = cirrus_types::ChainVersion(chain(&c, chain_id).await?.version);
    let (d, size) = local_read(&c, &p, x, chain_id, version, key, MAX_FILE_SIZE - 2, 8)
        .await
        .map_err(|e| anyhow!("rebuilt copy: {e}"))?;
    ensure!(
        size == MAX_FILE_SIZE && d == b"\0Z",
        "rebuilt copy: size {size}, end {d:?}"
    );
    let (d, _) = local_read(&c, &p, x, chain_id, version, key, (1 << 40) - 1, 3)
        .await
        .map_err(|e| anyhow!("rebuilt copy: {e}"))?;
    ensure!(d == b"\0A\0", "rebuilt copy at 2^40: {d:?}");
    let (d, _) = local_read(&c, &p, x, chain_id, version, key, (1 << 50) - 1, 3)
        .await
        .map_err(|e| anyhow!("rebuilt copy: {e}"))?;
    ensure!(d == b"\0B\0", "rebuilt copy at 2^50: {d:?}");
    let (d, _) = local_read(&c, &p, x, chain_id, version, key, 0, 3)
        .await
        .map_err(|e| anyhow!("rebuilt copy: {e}"))?;
    ensure!(d == b"hi\n", "rebuilt copy head: {d:?}");
    let used = object_disk_bytes(&c, x, chain_id, key)?;
    ensure!(
        used <= DISK_BOUND,
        "the rebuilt copy holds {used} bytes of disk"
    );
    let now = rss_bytes(c.data_pid(x).ok_or_else(|| anyhow!("pid"))?)?;
    ensure!(
        now <= before[x] + RSS_SLACK,
        "the rebuilt server's resident memory grew from {} to {} MiB",
        before[x] >> 20,
        now >> 20
    );
    Ok(())
}

/// Completed scrub passes of every running data server, in index order.
async fn scrub_passes(c: &cirrus_raft_tests::cluster::TestCluster) -> Result<Vec<u64>> {
    let mut v = Vec::new();
    for i in 0..c.data_count() {
        v.push(c.data_info(i).await?.scrub_passes);
    }
    Ok(v)
}
