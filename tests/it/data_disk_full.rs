//! A full disk (3 meta + 1 data, R=1, the data dir on a 24 MiB tmpfs): writes fail with
//! ENOSPC (`FsError::NoSpace`) once the space is gone, the server keeps running and serving
//! reads, and every acknowledged byte reads back, also after the server restarts.
//!
//! Needs root (to mount the tmpfs); fails with the reason otherwise.

use crate::data_common;

use anyhow::{anyhow, bail, ensure, Context, Result};
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::{FsError, ObjectKey};
use data_common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const TMPFS_MIB: u64 = 24;

/// Unmounts the tmpfs on every exit path (lazily: the server may still hold files).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, mib: u64) -> Result<Mounted> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this test mounts a small tmpfs to fill a data disk and needs root");
    }
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .status()
        .context("run mount")?;
    ensure!(
        st.success(),
        "mount -t tmpfs on {} failed: {st}",
        dir.display()
    );
    Ok(Mounted(dir.to_path_buf()))
}

/// Writes `path` until the disk refuses another byte; returns the bytes it took.
fn fill(path: &Path) -> Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).context("create filler")?;
    let mut n = 0u64;
    for chunk in [65536usize, 4096, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("write filler"),
            }
        }
    }
    let _ = f.sync_all();
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_writes_with_enospc_keeps_serving_reads_and_loses_nothing_acked(
) -> Result<()> {
    let mut c = ClusterBuilder::new()
        .data_servers(1)
        .replicas(1)
        .start()
        .await?;
    // Move the registered server onto a small tmpfs: same identity, same address.
    let dir = c.data_dir(0);
    c.kill_data(0);
    let identity = std::fs::read(dir.join("identity.json")).context("read identity")?;
    let mounted = mount_tmpfs(&dir, TMPFS_MIB)?;
    std::fs::write(dir.join("identity.json"), identity).context("restore identity")?;
    c.restart_data(0).await?;
    let info = c.data_info(0).await?;
    eprintln!(
        "data server on tmpfs: capacity {} free {} direct_io {}",
        info.capacity_bytes, info.free_bytes, info.direct_io
    );
    ensure!(
        info.capacity_bytes <= TMPFS_MIB * MIB,
        "the server is not on the tmpfs: {info:?}"
    );

    let cl = client(&c).await?;
    let (ino, layout) = new_file(&cl, "big").await?;
    let chain_id = layout.chains[0];
    let key = ObjectKey {
        inode: ino,
        index: 0,
    };
    let mut acked = 0u64;
    let err = loop {
        ensure!(
            acked < 2 * TMPFS_MIB,
            "wrote {acked} MiB to a {TMPFS_MIB} MiB tmpfs"
        );
        match write(
            &cl,
            chain_id,
            key,
            acked * MIB,
            pattern(acked, acked * MIB, MIB as usize),
        )
        .await
        {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
    };
    eprintln!("{acked} MiB acknowledged, then: {err}");
    ensure!(
        matches!(err, FsError::NoSpace),
        "expected ENOSPC, got {err}"
    );
    ensure!(
        acked >= 8,
        "only {acked} MiB fit on a {TMPFS_MIB} MiB tmpfs"
    );
    // Still full: a write elsewhere fails the same way, and the server stays up.
    let again = write(&cl, chain_id, key, 64 * MIB, vec![1u8; MIB as usize]).await;
    ensure!(
        matches!(again, Err(FsError::NoSpace)),
        "second write: {again:?}"
    );

    let check = |label: &'static str| {
        let cl = cl.clone();
        async move {
            for m in 0..acked {
                let got = read(&cl, chain_id, key, m * MIB, MIB as u32)
                    .await
                    .map_err(|e| anyhow!("{label}: read MiB {m}: {e}"))?;
                ensure!(
                    got == pattern(m, m * MIB, MIB as usize),
                    "{label}: MiB {m} reads back wrong"
                );
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    check("while full").await?;
    ensure!(c.data_running(0), "the data server died on a full disk");
    // Take the last free bytes too (the failed 1 MiB step left a few pages): a restart
    // must not need a single byte of disk (it once rewrote identity.json and exited with
    // ENOSPC).
    let filler = fill(&dir.join("filler"))?;
    eprintln!("filled the last {filler} bytes");
    c.restart_data(0).await?;
    check("after restart").await?;

    c.kill_data(0);
    drop(mounted);
    Ok(())
}
