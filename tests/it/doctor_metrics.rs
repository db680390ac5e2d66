//! `/metrics` of real meta and data daemons carries what an operator needs (issue 7):
//! requests and latencies by op, bytes, raft term and commit index, chain health, rebuild
//! and scrub progress, and each of them moves when the cluster does the matching work:
//! a client writes and reads a file, then a data server is killed so chains degrade and
//! are rebuilt onto the spare server.

use crate::fixtures::wait_until;
use anyhow::{anyhow, Result};
use cirrus_client::{Client, ClientConfig};
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::InodeId;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

/// Deadline for a metric to move: only there to catch "never".
const MOVE: Duration = Duration::from_secs(60);

/// One scrape: `name{labels}` -> value.
#[derive(Debug, Default, Clone)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Sum of every series of `name` whose labels contain all of `want` (`k="v"` pairs).
    fn sum(&self, name: &str, want: &[&str]) -> Option<f64> {
        let mut found = None;
        for (k, v) in &self.0 {
            let (n, labels) = k.split_once('{').unwrap_or((k.as_str(), ""));
            if n == name && want.iter().all(|w| labels.contains(w)) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    fn get(&self, name: &str, want: &[&str]) -> f64 {
        self.sum(name, want).unwrap_or_else(|| {
            panic!(
                "series {name} {want:?} missing from /metrics: {:?}",
                self.0.keys().collect::<Vec<_>>()
            )
        })
    }
}

async fn scrape(addr: &str) -> Result<Scrape> {
    let text = crate::fixtures::metrics_text(addr)?;
    Ok(Scrape(
        crate::fixtures::samples(&text)?
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    ))
}

/// Scrapes `addr` until `pred` holds; returns that scrape.
async fn scrape_until(what: &str, addr: &str, pred: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
    // A failed scrape is waited past too: the daemon may be restarting.
    wait_until(&format!("{what} (scraping {addr})"), MOVE, || async {
        Ok(match scrape(addr).await {
            Ok(s) if pred(&s) => ControlFlow::Break(s),
            other => ControlFlow::Continue(format!("{other:?}")),
        })
    })
    .await
}

/// Scrapes every address.
async fn scrape_all(addrs: &[String]) -> Result<Vec<Scrape>> {
    let mut v = Vec::new();
    for a in addrs {
        v.push(scrape(a).await?);
    }
    Ok(v)
}

fn total(v: &[Scrape], name: &str, want: &[&str]) -> f64 {
    v.iter().map(|s| s.sum(name, want).unwrap_or(0.0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_meta_and_data_cover_ops_bytes_raft_chains_rebuild_and_scrub_and_move(
) -> Result<()> {
    let mut c = ClusterBuilder::new()
        .data_servers(3)
        .replicas(2)
        .server_timeout(Duration::from_secs(3))
        .data_args(vec!["--scrub-interval".into(), "500ms".into()])
        .start()
        .await?;
    let leader = c.leader_index().await?;
    let lnode = format!("node=\"{}\"", leader + 1);
    let lnode = lnode.as_str();
    let meta_m = c.meta_metrics_addr(leader);

    // Every series named by the issue exists before any file I/O.
    let m0 = scrape_until("meta gauges refreshed", &meta_m, |s| {
        s.sum("cirrus_meta_data_servers_alive", &[]) == Some(3.0)
    })
    .await?;
    for name in [
        "cirrus_raft_term",
        "cirrus_raft_commit_index",
        "cirrus_raft_last_log_index",
        "cirrus_raft_last_applied",
        "cirrus_meta_chains",
        "cirrus_meta_chains_degraded",
        "cirrus_meta_chains_unavailable",
        "cirrus_meta_chains_rebuilding",
        "cirrus_meta_data_servers_down",
    ] {
        m0.get(name, &[lnode]);
    }
    assert!(m0.get("cirrus_raft_term", &[lnode]) >= 1.0, "{m0:?}");
    assert!(m0.get("cirrus_meta_chains", &[]) >= 1.0, "{m0:?}");
    assert_eq!(m0.get("cirrus_meta_chains_degraded", &[]), 0.0, "{m0:?}");
    // Data servers heartbeat to the leader: counted and timed by op.
    assert!(
        m0.get(
            "cirrus_requests_total",
            &["op=\"Heartbeat\"", "code=\"Ok\""]
        ) >= 1.0,
        "{m0:?}"
    );
    m0.get("cirrus_latency_seconds_count", &["op=\"Heartbeat\""]);
    m0.get(
        "cirrus_latency_seconds_bucket",
        &["op=\"Heartbeat\"", "le=\"5\""],
    );

    let data_m: Vec<String> = (0..3).map(|i| c.data_metrics_addr(i)).collect();
    let mut d0 = Vec::new();
    for a in &data_m {
        let s = scrape_until("data gauges refreshed", a, |s| {
            s.sum("cirrus_data_direct_io", &[]).is_some()
                && s.sum("cirrus_data_scrub_passes_total", &[]).unwrap_or(0.0) >= 1.0
        })
        .await?;
        for name in [
            "cirrus_data_write_bytes_total",
            "cirrus_data_read_bytes_total",
            "cirrus_data_rebuild_bytes_total",
            "cirrus_data_rebuilding_chains",
            "cirrus_data_scrub_bytes_total",
            "cirrus_data_scrub_errors_total",
            "cirrus_data_objects",
            "cirrus_data_stored_bytes",
            "cirrus_data_free_bytes",
        ] {
            s.get(name, &[]);
        }
        d0.push(s);
    }

    // A client writes 4 MiB and reads it back.
    let client = Client::connect(
        &c.meta_addrs(),
        ClientConfig {
            deadline: Duration::from_secs(20),
            ..ClientConfig::default()
        },
    )
    .await
    .map_err(|e| anyhow!("connect: {e}"))?;
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    let (fh, attr) = client
        .create(InodeId::ROOT, b"metrics-file", 0o644, 0, 0, true)
        .await
        .map_err(|e| anyhow!("create: {e}"))?;
    client
        .write(fh, 0, &data)
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    client.fsync(fh).await.map_err(|e| anyhow!("fsync: {e}"))?;
    client
        .release(fh)
        .await
        .map_err(|e| anyhow!("release: {e}"))?;
    let (fh, _) = client
        .open(attr.ino)
        .await
        .map_err(|e| anyhow!("open: {e}"))?;
    let back = client
        .read(fh, 0, data.len() as u32)
        .await
        .map_err(|e| anyhow!("read: {e}"))?;
    assert!(back == data, "read back differs");
    client
        .release(fh)
        .await
        .map_err(|e| anyhow!("release: {e}"))?;

    // Meta: the ops were counted, and the commit index moved with them.
    let m1 = scrape(&meta_m).await?;
    assert!(m1.get("cirrus_requests_total", &["op=\"Create\""]) >= 1.0);
    assert!(m1.get("cirrus_latency_seconds_count", &["op=\"Create\""]) >= 1.0);
    // A follower serves the leader's raft traffic: counted by op too.
    let follower = c.meta_metrics_addr((leader + 1) % 3);
    let f1 = scrape(&follower).await?;
    assert!(
        f1.get(
            "cirrus_requests_total",
            &["op=\"AppendEntries\"", "code=\"Ok\""]
        ) >= 1.0,
        "{f1:?}"
    );
    scrape_until("commit index moved", &meta_m, |s| {
        s.sum("cirrus_raft_commit_index", &[lnode]).unwrap_or(0.0)
            > m0.get("cirrus_raft_commit_index", &[lnode])
    })
    .await?;

    // Data: bytes, requests by op and latencies moved; replicas write 2 copies in total.
    let d1 = scrape_all(&data_m).await?;
    let written = total(&d1, "cirrus_data_write_bytes_total", &[])
        - total(&d0, "cirrus_data_write_bytes_total", &[]);
    assert!(
        written >= 2.0 * data.len() as f64,
        "write bytes moved by {written}, want >= 2 x {}",
        data.len()
    );
    let read = total(&d1, "cirrus_data_read_bytes_total", &[])
        - total(&d0, "cirrus_data_read_bytes_total", &[]);
    assert!(read >= data.len() as f64, "read bytes moved by {read}");
    assert!(
        total(
            &d1,
            "cirrus_requests_total",
            &["op=\"Write\"", "code=\"Ok\""]
        ) >= 1.0
    );
    assert!(total(&d1, "cirrus_requests_total", &["op=\"Read\""]) >= 1.0);
    assert!(total(&d1, "cirrus_latency_seconds_count", &["op=\"Write\""]) >= 1.0);

    // The objects gauge (refreshed every 2 s) shows the copies; scrub (a pass every
    // 500 ms) verifies bytes on every server that holds some.
    let d2 = wait_until(
        "the objects gauge to show the file's copies",
        MOVE,
        || async {
            let v = scrape_all(&data_m).await?;
            Ok(
                if total(&v, "cirrus_data_objects", &[]) >= 2.0
                    && total(&v, "cirrus_data_stored_bytes", &[]) >= 2.0 * data.len() as f64
                {
                    ControlFlow::Break(v)
                } else {
                    ControlFlow::Continue(format!("{v:?}"))
                },
            )
        },
    )
    .await?;
    for (a, s) in data_m.iter().zip(&d2) {
        if s.get("cirrus_data_objects", &[]) > 0.0 {
            scrape_until("scrub verified bytes", a, |s| {
                s.get("cirrus_data_scrub_bytes_total", &[]) > 0.0
            })
            .await?;
        }
    }

    // Chain health and rebuild: kill one data server; after --server-timeout its chains
    // are degraded, then rebuilt onto the spare (rebuild bytes move on a survivor).
    c.kill_data(2);
    // ServerDown takes the server out of its chains in the same apply, so the gauges
    // (one snapshot of the state) show the down server and the degraded chains together.
    scrape_until("a data server down and its chains degraded", &meta_m, |s| {
        s.get("cirrus_meta_data_servers_down", &[]) >= 1.0
            && s.get("cirrus_meta_chains_degraded", &[]) >= 1.0
    })
    .await?;
    let before = total(&d1[..2], "cirrus_data_rebuild_bytes_total", &[]);
    wait_until("rebuild bytes to move on the survivors", MOVE, || async {
        let v = scrape_all(&data_m[..2]).await?;
        Ok(
            if total(&v, "cirrus_data_rebuild_bytes_total", &[]) > before {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{v:?}"))
            },
        )
    })
    .await?;
    // The spare caught up: every chain has its R members again.
    scrape_until("chains healed onto the spare", &meta_m, |s| {
        s.get("cirrus_meta_chains_degraded", &[]) == 0.0
            && s.get("cirrus_meta_chains_rebuilding", &[]) == 0.0
    })
    .await?;
    Ok(())
}
