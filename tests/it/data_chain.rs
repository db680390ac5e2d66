//! Chain replication with real processes (3 meta + 3 data, R=2): a member SIGKILLed while
//! a client streams writes. Writes resume after meta bumps the chain version, everything
//! acknowledged reads back (client-verified checksums), the chain is rebuilt to R=2 while
//! the writes go on, and every final member holds identical bytes: the same local-only
//! reads through each member's Data API and the same object files on each member's disk.

use crate::data_common;

use anyhow::{anyhow, bail, ensure, Result};
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::{ChainVersion, ObjectKey};
use data_common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes per write. Writes start `SKEW` bytes past a 4 KiB boundary, so neighbouring
/// writes share an edge block (read-modify-written under the object's range lock).
const CHUNK: u64 = 32 << 10;
const SKEW: u64 = 1000;
/// Cap on writes, so a slow rebuild cannot make the test fill the disk.
const MAX_WRITES: u64 = 2000;
const WRITERS: usize = 4;

fn chunk_off(i: u64) -> u64 {
    i * CHUNK + SKEW
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_member_kill_resume_after_version_bump_and_rebuilt_member_is_identical(
) -> Result<()> {
    let mut c = ClusterBuilder::new()
        .data_servers(3)
        .replicas(2)
        .server_timeout(Duration::from_secs(3))
        .start()
        .await?;
    let cl = client(&c).await?;
    let (ino, layout) = new_file(&cl, "stream").await?;
    let chain_id = layout.chains[0];
    let key = ObjectKey {
        inode: ino,
        index: 0,
    };
    let before = chain(&c, chain_id).await?;
    ensure!(
        before.members.len() == 2 && before.syncing.is_empty(),
        "chain {chain_id} should start with 2 members: {before:?}"
    );

    // Writers take chunk numbers from one counter and record what was acknowledged.
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (cl, next, stop, acked, failed) = (
            cl.clone(),
            next.clone(),
            stop.clone(),
            acked.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= MAX_WRITES {
                    return;
                }
                let data = pattern(i, chunk_off(i), CHUNK as usize);
                match write(&cl, chain_id, key, chunk_off(i), data).await {
                    Ok(()) => {
                        acked.lock().unwrap().insert(i);
                    }
                    Err(e) => failed.lock().unwrap().push(format!("write {i}: {e}")),
                }
            }
        }));
    }
    let acked_count = || acked.lock().unwrap().len();

    wait_for("30 acknowledged writes before the kill", || async {
        (acked_count() >= 30).then_some(())
    })
    .await?;
    let victim_sid = before.members[0];
    let victim = index_of(&c, victim_sid).await?;
    c.kill_data(victim);
    let at_kill = acked_count();
    eprintln!("killed data-{} (server {victim_sid}, head of chain {chain_id}) after {at_kill} acked writes", victim + 1);

    let bumped = wait_for("meta to drop the killed server from the chain", || async {
        let ch = chain(&c, chain_id).await.ok()?;
        (ch.version > before.version && !ch.members.contains(&victim_sid)).then_some(ch)
    })
    .await?;
    eprintln!("chain after the bump: {bumped:?}");
    wait_for(
        "30 more acknowledged writes after the version bump",
        || async { (acked_count() >= at_kill + 30).then_some(()) },
    )
    .await?;

    // Writes go on while a third server is brought in and copies the chain.
    let rebuilt = wait_for("the chain rebuilt to 2 members", || async {
        let ch = chain(&c, chain_id).await.ok()?;
        (ch.members.len() == 2 && ch.syncing.is_empty() && !ch.members.contains(&victim_sid))
            .then_some(ch)
    })
    .await
    .map_err(|e| {
        // The cluster dir is removed on return: show why the rebuild did not finish.
        let logs: Vec<String> = (0..c.data_count())
            .map(|i| {
                format!(
                    "--- data-{} log tail:\n{}",
                    i + 1,
                    cirrus_raft_tests::cluster::log_tail(&c.data_log(i), 30)
                )
            })
            .collect();
        anyhow!("{e}\n{}", logs.join("\n"))
    })?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let failed = failed.lock().unwrap().clone();
    ensure!(
        failed.is_empty(),
        "writes failed although one member stayed alive: {failed:?}"
    );
    let acked: Vec<u64> = acked.lock().unwrap().iter().copied().collect();
    ensure!(acked.len() > at_kill + 30, "expected writes after the kill");
    let new_member = rebuilt
        .members
        .iter()
        .copied()
        .find(|m| !before.members.contains(m))
        .ok_or_else(|| anyhow!("no new member in {rebuilt:?}"))?;
    eprintln!(
        "{} acked writes; rebuilt chain {rebuilt:?}, new member {new_member}",
        acked.len()
    );

    // Everything acknowledged reads back through the client (checksums verified).
    for &i in &acked {
        let got = read(&cl, chain_id, key, chunk_off(i), CHUNK as u32)
            .await
            .map_err(|e| anyhow!("read acked write {i}: {e}"))?;
        if got != pattern(i, chunk_off(i), CHUNK as usize) {
            bail!("acked write {i} reads back different bytes");
        }
    }

    // Every member holds the same bytes: compare local-only reads through each member's
    // Data API, then the object files on their disks.
    let p = peers(&c).await?;
    let version = ChainVersion(rebuilt.version);
    let mut copies = Vec::new();
    for sid in &rebuilt.members {
        let i = index_of(&c, *sid).await?;
        let listed = list_objects(&c, &p, i, chain_id).await?;
        let size = listed
            .iter()
            .find(|(o, x, _)| *o == ino.0 && *x == 0)
            .map(|(_, _, s)| *s)
            .ok_or_else(|| anyhow!("data-{} does not list the object: {listed:?}", i + 1))?;
        let mut bytes = Vec::new();
        while (bytes.len() as u64) < size {
            let (d, _) = local_read(
                &c,
                &p,
                i,
                chain_id,
                version,
                key,
                bytes.len() as u64,
                4 << 20,
            )
            .await
            .map_err(|e| anyhow!("local read on data-{}: {e}", i + 1))?;
            ensure!(!d.is_empty(), "short local read on data-{}", i + 1);
            bytes.extend_from_slice(&d);
        }
        for &a in &acked {
            let (s, e) = (chunk_off(a) as usize, (chunk_off(a) + CHUNK) as usize);
            ensure!(
                bytes.get(s..e) == Some(&pattern(a, chunk_off(a), CHUNK as usize)[..]),
                "data-{} (server {sid}) lacks acked write {a}",
                i + 1
            );
        }
        let (dat, crc) = object_files(&c, i, chain_id, key);
        let mut disk = read_file(&dat)?;
        ensure!(
            disk.len() as u64 >= size,
            "data file shorter than the object"
        );
        disk.truncate(size as usize);
        ensure!(
            disk == bytes,
            "data-{}: file on disk differs from what it serves",
            i + 1
        );
        copies.push((i, *sid, size, bytes, read_file(&crc)?));
    }
    let (i0, s0, size0, bytes0, crc0) = &copies[0];
    for (i, sid, size, bytes, crc) in &copies[1..] {
        ensure!(
            size == size0 && bytes == bytes0,
            "data-{} (server {sid}) and data-{} (server {s0}) hold different bytes (sizes {size} vs {size0})",
            i + 1,
            i0 + 1
        );
        ensure!(
            crc == crc0,
            "checksum sidecars of data-{} and data-{} differ",
            i + 1,
            i0 + 1
        );
    }
    let info = c.data_info(index_of(&c, new_member).await?).await?;
    ensure!(
        info.rebuild_copied_bytes > 0,
        "the new member reports no rebuild progress: {info:?}"
    );
    Ok(())
}
