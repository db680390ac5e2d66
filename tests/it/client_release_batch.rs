//! `close` releases the file's meta handle behind the call, and the closes of a short
//! window share one release call (one raft entry): a create-and-close loop costs one
//! replicated write per file instead of two. A batch must still release every handle
//! (an unlinked file is collected only then), a handle not yet released must not let
//! another mount open a file unlinked elsewhere, and `drain_releases` (unmount) must send
//! whatever still waits.

use crate::data_common;
use crate::fixtures::{client_with, single_server};

use anyhow::{anyhow, ensure, Result};
use cirrus_client::client::ClientConfig;
use cirrus_types::{FsError, InodeId};
use data_common::{metric, pattern};
use std::time::Duration;

const FILES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_release_in_batches_and_every_unlinked_file_is_gone_after_the_drain() -> Result<()> {
    let c = single_server().await?;
    // A long gathering window, so the batching does not depend on this machine's speed.
    let cfg = ClientConfig {
        release_delay: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let cl = client_with(&c, cfg).await?;
    let release_calls = || async {
        let mut n = 0.0;
        for i in 0..3 {
            n += metric(
                &c.meta_metrics_addr(i),
                "cirrus_latency_seconds_count{op=\"Release\"}",
            )
            .await?;
        }
        anyhow::Ok(n)
    };
    let before = release_calls().await?;

    let mut inos = Vec::new();
    for i in 0..FILES {
        let name = format!("f{i}");
        let (fh, attr) = cl
            .create(InodeId::ROOT, name.as_bytes(), 0o644, 0, 0, true)
            .await
            .map_err(|e| anyhow!("create {name}: {e}"))?;
        if i % 4 == 0 {
            cl.write(fh, 0, &pattern(i as u64, 0, 10_000))
                .await
                .map_err(|e| anyhow!("write {name}: {e}"))?;
        }
        cl.close(fh)
            .await
            .map_err(|e| anyhow!("close {name}: {e}"))?;
        inos.push(attr.ino);
    }
    // Unlinked after close: meta keeps an inode only while a handle is open, so these
    // go once the queued releases are sent.
    for i in 0..FILES {
        let name = format!("f{i}");
        cl.unlink(InodeId::ROOT, name.as_bytes())
            .await
            .map_err(|e| anyhow!("unlink {name}: {e}"))?;
    }
    tokio::time::timeout(Duration::from_secs(60), cl.drain_releases())
        .await
        .map_err(|_| anyhow!("drain_releases did not finish in 60 s"))?;

    for ino in &inos {
        let r = cl.meta().getattr(*ino).await;
        ensure!(
            r == Err(FsError::NotFound),
            "inode {ino:?} unlinked and closed is still at meta after the drain: {r:?}"
        );
    }
    let calls = release_calls().await? - before;
    ensure!(
        calls >= 1.0 && calls <= (FILES / 4) as f64,
        "{FILES} closes took {calls} release calls; batching should need a few"
    );
    Ok(())
}

/// A release can trail its mount's unlink (the kernel sends RELEASE after close(2) has
/// returned), so meta may still keep an unlinked inode for a handle. Another mount that
/// opens it through a stale entry must get ESTALE (the kernel then looks the name up
/// again, so the open acts on what the name is now, as `O_CREAT` needs); the mount that
/// holds it open may still reopen it (as through /proc/self/fd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_of_a_file_unlinked_elsewhere_is_stale_while_a_handle_still_keeps_it() -> Result<()>
{
    let c = single_server().await?;
    let connect = || client_with(&c, ClientConfig::default());
    let (a, b) = (connect().await?, connect().await?);
    let (held, attr) = b
        .create(InodeId::ROOT, b"f", 0o644, 0, 0, true)
        .await
        .map_err(|e| anyhow!("create f: {e}"))?;
    b.unlink(InodeId::ROOT, b"f")
        .await
        .map_err(|e| anyhow!("unlink f: {e}"))?;
    ensure!(
        b.meta().getattr(attr.ino).await.is_ok(),
        "meta dropped the unlinked inode while b still holds it open"
    );
    let r = a.open(attr.ino).await.map(|(fh, _)| fh);
    ensure!(
        r == Err(FsError::StaleHandle),
        "an open from another mount of the unlinked inode answered {r:?}, not StaleHandle"
    );
    let (again, _) = b
        .open(attr.ino)
        .await
        .map_err(|e| anyhow!("b's reopen of the inode it holds open: {e}"))?;
    for fh in [again, held] {
        b.release(fh).await.map_err(|e| anyhow!("release: {e}"))?;
    }
    Ok(())
}
