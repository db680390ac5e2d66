//! A close (FLUSH) and a truncate of the same open inode, at once: meta keeps the larger
//! of its size and a commit's, so a commit that read the size before the truncate and
//! reached meta after it grew the file back. Found by the CI chaos run (seed 2, exerciser
//! seed 2097154: a file written past 3 MiB, then cut to 3 MiB, ended 2010 bytes long
//! again). The FLUSH came from outside the exerciser's calls: every child the harness
//! spawned closed the exerciser's close-on-exec descriptors at exec, and each close of a
//! FUSE file is a FLUSH with a commit.
//!
//! The meta group is paused while the commit is in flight, so the commit cannot land
//! before the truncate has had every chance to overtake it.

use crate::fixtures::metric_sum as metric;
use crate::fixtures::{client_with, deadline, single_server};
use anyhow::{anyhow, ensure, Context, Result};
use cirrus_client::client::ClientConfig;
use cirrus_client::meta::SetAttr;
use cirrus_types::InodeId;
use std::time::{Duration, Instant};

const CUT: u64 = 3 << 20;
const TAIL: usize = 2010;

/// Polls `f` every 20 ms until it holds; an error after `limit` (a hang, not a speed).
async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + limit;
    while !f()? {
        ensure!(Instant::now() < end, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_waits_for_a_commit_in_flight_and_the_file_keeps_the_truncated_size(
) -> Result<()> {
    let c = single_server().await?;
    let data_metrics = c.data_metrics_addr(0);
    // Deadlines long enough to outlast the paused meta group.
    let cl = client_with(&c, deadline(Duration::from_secs(60))).await?;
    let (fh, attr) = cl
        .create(InodeId::ROOT, b"f", 0o644, 0, 0, true)
        .await
        .map_err(|e| anyhow!("create: {e}"))?;
    cl.write(fh, CUT, &[7u8; TAIL])
        .await
        .map_err(|e| anyhow!("write: {e}"))?;

    let writes = metric(&data_metrics, "cirrus_data_writes_total", "")?;
    let truncates = metric(&data_metrics, "cirrus_requests_total", "op=\"Truncate\"")?;
    for i in 0..c.meta_count() {
        c.stop_meta(i);
    }
    // The close: its bytes reach the data server, then its commit of size CUT + TAIL
    // waits on the paused meta group.
    let closing = tokio::spawn({
        let cl = cl.clone();
        async move { cl.flush(fh).await }
    });
    until(
        "the close's bytes at the data server",
        Duration::from_secs(30),
        || Ok(metric(&data_metrics, "cirrus_data_writes_total", "")? > writes),
    )
    .await?;
    let cutting = tokio::spawn({
        let cl = cl.clone();
        async move {
            cl.setattr(
                attr.ino,
                SetAttr {
                    size: Some(CUT),
                    ..SetAttr::default()
                },
                Some(fh),
            )
            .await
        }
    });
    // A truncate that does not wait for the commit cuts the object within milliseconds;
    // one that waits cannot reach the data server while meta is paused.
    let overtook = until(
        "a truncate at the data server",
        Duration::from_secs(2),
        || Ok(metric(&data_metrics, "cirrus_requests_total", "op=\"Truncate\"")? > truncates),
    )
    .await
    .is_ok();
    for i in 0..c.meta_count() {
        c.cont_meta(i);
    }
    let closed = tokio::time::timeout(Duration::from_secs(90), closing)
        .await
        .context("the close hung")??;
    let cut = tokio::time::timeout(Duration::from_secs(90), cutting)
        .await
        .context("the truncate hung")??;
    closed.map_err(|e| anyhow!("close: {e}"))?;
    let cut = cut.map_err(|e| anyhow!("truncate: {e}"))?;
    ensure!(
        !overtook,
        "the truncate reached the data server while the close's commit of the older, larger \
         size was still in flight"
    );
    ensure!(cut.size == CUT, "truncate answered size {}", cut.size);
    cl.release(fh).await.map_err(|e| anyhow!("release: {e}"))?;

    // Meta's size, as another mount sees it.
    let other = client_with(&c, ClientConfig::default()).await?;
    let size = other
        .getattr(attr.ino)
        .await
        .map_err(|e| anyhow!("getattr: {e}"))?
        .size;
    ensure!(
        size == CUT,
        "after the truncate to {CUT} the file is {size} bytes: the close's commit grew it back"
    );
    Ok(())
}
