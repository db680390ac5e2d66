//! `meta-bench`: metadata service figures over gRPC against a real three-node `cirrus meta`
//! group on loopback (plus one data server, so files get layouts).
//!
//! - `ops`: create and stat (getattr, a linearizable read) ops/s with 1 and 16 concurrent
//!   clients, each client in its own directory, each a separate gRPC connection.
//! - `failover`: SIGKILL of the leader to the first acknowledged write, N runs, median.
//!
//! `cargo build --release -p cirrus -p cirrus-benches && target/release/meta-bench ops`

use anyhow::{anyhow, bail, Context, Result};
use cirrus_proto::{net, pb, CallPolicy, MetaConn};
use cirrus_raft_tests::cluster::{ClusterBuilder, TestCluster};
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "meta-bench",
    about = "Create/stat ops/s and leader failover time of a three-node meta group"
)]
struct Cli {
    /// The `cirrus` binary (default: beside this executable).
    #[arg(long, global = true)]
    cirrus_bin: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create and stat ops/s with each client count.
    Ops {
        /// Operations per phase, split across the clients.
        #[arg(long, default_value_t = 4000)]
        ops: usize,
        /// Concurrent client counts.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        clients: Vec<usize>,
    },
    /// SIGKILL the leader, time until a write is acknowledged again; repeated.
    Failover {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match &cli.cirrus_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("cirrus"),
    };
    if !bin.is_file() {
        bail!(
            "the cirrus binary is missing at {}: `cargo build --release -p cirrus` (or --cirrus-bin)",
            bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cluster = ClusterBuilder::new()
            .data_servers(1)
            .replicas(1)
            .bin(bin)
            .env("CIRRUS_LOG", "warn")
            .start()
            .await
            .context("start a 3-meta + 1-data cluster")?;
        match cli.cmd {
            Cmd::Ops { ops, clients } => {
                for c in clients {
                    ops_run(&cluster, ops, c).await?;
                }
                Ok(())
            }
            Cmd::Failover { runs } => failover(cluster, runs).await,
        }
    })
}

async fn conn(cluster: &TestCluster) -> Result<Arc<MetaConn>> {
    Ok(Arc::new(cluster.conn().await?))
}

async fn create(c: &MetaConn, parent: u64, name: &str) -> Result<u64> {
    let cid = c.cluster_id();
    let r = c
        .call("create", |mut m| {
            let req = pb::CreateRequest {
                cluster_id: cid.clone(),
                parent,
                name: name.as_bytes().to_vec(),
                mode: 0o644,
                ..Default::default()
            };
            async move { m.create(req).await }
        })
        .await?;
    r.attr.map(|a| a.ino).ok_or_else(|| anyhow!("no attr"))
}

async fn mkdir(c: &MetaConn, parent: u64, name: &str) -> Result<u64> {
    let cid = c.cluster_id();
    let r = c
        .call("mkdir", |mut m| {
            let req = pb::MkdirRequest {
                cluster_id: cid.clone(),
                parent,
                name: name.as_bytes().to_vec(),
                mode: 0o755,
                ..Default::default()
            };
            async move { m.mkdir(req).await }
        })
        .await?;
    r.attr.map(|a| a.ino).ok_or_else(|| anyhow!("no attr"))
}

async fn getattr(c: &MetaConn, ino: u64) -> Result<()> {
    let cid = c.cluster_id();
    c.call("getattr", |mut m| {
        let req = pb::GetattrRequest {
            cluster_id: cid.clone(),
            ino,
        };
        async move { m.getattr(req).await }
    })
    .await?;
    Ok(())
}

const ROOT: u64 = 1;

async fn ops_run(cluster: &TestCluster, ops: usize, clients: usize) -> Result<()> {
    let per = ops.div_ceil(clients);
    let mut conns = Vec::new();
    let run = rand::random::<u32>();
    let mut dirs = Vec::new();
    for i in 0..clients {
        let c = conn(cluster).await?;
        dirs.push(mkdir(&c, ROOT, &format!("b{run:x}-c{clients}-{i}")).await?);
        conns.push(c);
    }
    // Create phase.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (c, d) in conns.iter().zip(&dirs) {
        let (c, d) = (c.clone(), *d);
        tasks.push(tokio::spawn(async move {
            let mut inos = Vec::with_capacity(per);
            for j in 0..per {
                inos.push(create(&c, d, &format!("f{j}")).await?);
            }
            anyhow::Ok(inos)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await??);
    }
    let create_s = t.elapsed().as_secs_f64();
    // Stat phase: getattr of every created file (linearizable reads).
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (c, inos) in conns.iter().zip(all) {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for ino in inos {
                getattr(&c, ino).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let stat_s = t.elapsed().as_secs_f64();
    let n = (per * clients) as f64;
    println!(
        "clients={clients:>2} ops={} create={:.0} ops/s ({:.2} ms/op/client) stat={:.0} ops/s ({:.2} ms/op/client)",
        per * clients,
        n / create_s,
        create_s * 1e3 / per as f64,
        n / stat_s,
        stat_s * 1e3 / per as f64,
    );
    Ok(())
}

/// One create attempt against one node with a short deadline; Ok only if acknowledged.
async fn try_create(addr: &str, cid: &str, parent: u64, name: &str) -> Result<()> {
    let mut m = net::meta_client(net::channel(addr)?);
    let req = pb::CreateRequest {
        cluster_id: cid.to_string(),
        parent,
        name: name.as_bytes().to_vec(),
        mode: 0o644,
        ..Default::default()
    };
    tokio::time::timeout(Duration::from_millis(300), m.create(req))
        .await
        .map_err(|_| anyhow!("timeout"))??;
    Ok(())
}

async fn failover(mut cluster: TestCluster, runs: usize) -> Result<()> {
    let mut times = Vec::new();
    let c = cluster
        .conn_with(CallPolicy {
            per_try: Duration::from_secs(2),
            total: Duration::from_secs(60),
        })
        .await?;
    let cid = c.cluster_id();
    let dir = mkdir(&c, ROOT, &format!("failover-{:x}", rand::random::<u32>())).await?;
    for run in 0..runs {
        let leader = cluster.leader_index().await?;
        // Warm: the group is healthy and every node has applied the latest entries.
        create(&c, dir, &format!("warm-{run}")).await?;
        let others: Vec<String> = (0..cluster.meta_count())
            .filter(|&i| i != leader)
            .map(|i| cluster.meta_addr(i))
            .collect();
        let t0 = Instant::now();
        cluster.kill_meta(leader);
        let mut attempt = 0u64;
        let took = loop {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("run {run}: no write acknowledged within 60 s of killing the leader");
            }
            attempt += 1;
            let futs = others.iter().map(|a| {
                let name = format!("run{run}-a{attempt}-{a}");
                let (cid, a) = (cid.clone(), a.clone());
                async move { try_create(&a, &cid, dir, &name).await }
            });
            let res = futures::future::join_all(futs).await;
            if res.iter().any(|r| r.is_ok()) {
                break t0.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        println!(
            "run {run}: killed meta-{} (leader), first acknowledged write after {:.0} ms",
            leader + 1,
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        cluster.restart_meta(leader).await?;
        // Let the restarted node catch up before the next kill.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    times.sort();
    let ms: Vec<u128> = times.iter().map(|t| t.as_millis()).collect();
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2] as f64
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) as f64 / 2.0
    };
    println!(
        "failover over {} runs: median {median:.0} ms, min {} ms, max {} ms (sorted: {ms:?})",
        ms.len(),
        ms.first().copied().unwrap_or(0),
        ms.last().copied().unwrap_or(0)
    );
    Ok(())
}
