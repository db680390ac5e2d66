//! One data server's sequential throughput through its own gRPC API against fio on the
//! same disk, in the same run (the figure issue 3 asks for; a benchmark, not a test).
//!
//! Starts 3 meta + 1 data (R=1) with the `cirrus` binary next to this one. Each round
//! writes `--size-mib` MiB as 1 MiB `Write` calls to a new object (`--inflight` in
//! flight; over the bulk protocol that clients use, or gRPC with `--grpc`) and then a
//! `Sync` of it; runs `fio --direct=1 --ioengine=io_uring --bs=1M
//! --iodepth=<inflight> --rw=write` on a file in the same directory, once as it is and
//! once with `--end_fsync=1`; reads the object back as 1 MiB `Read` RPCs; and runs fio
//! `--rw=read`. Two write figures: until the last write is acknowledged against plain
//! fio, and including the closing sync against fio's closing fsync (this VM's disk
//! acknowledges O_DIRECT writes before they are durable, so only the second is
//! durable bytes on both sides). It prints every phase and the median ratios over the
//! rounds: on a shared disk fio alone moves by 2x between runs, so only phases measured
//! side by side compare.
//!
//! ```text
//! cargo build --release -p cirrus -p cirrus-benches
//! target/release/data_bench --size-mib 1024 --inflight 8 --rounds 3
//! ```

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use cirrus_proto::bulk::BulkClient;
use cirrus_proto::{from_status, net, pb};
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::checksum::{piece_crcs, verify_pieces};
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const MIB: u64 = 1 << 20;
/// A generous per-call deadline: only a hang reaches it.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Parser, Debug)]
struct Args {
    /// Bytes to write then read per phase, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// RPCs (and fio iodepth) in flight.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Rounds of (cirrus write, fio write, cirrus read, fio read); the median ratio is
    /// the figure.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// TCP connections to the data server, used round-robin.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Parent of the cluster's temp dir (the disk measured); default: $TMPDIR.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Write and read through the gRPC `Write`/`Read` RPCs instead of the bulk protocol.
    #[arg(long)]
    grpc: bool,
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// fio on `file`: (MB/s) of one sequential phase.
/// `end_fsync`: the write phase ends with an fsync (compared with Cirrus's writes plus
/// its closing `Sync` RPC).
fn fio(file: &Path, rw: &str, size_mib: u64, depth: usize, end_fsync: bool) -> Result<f64> {
    let out = Command::new("fio")
        .args([
            "--name=seq",
            &format!("--filename={}", file.display()),
            "--direct=1",
            "--ioengine=io_uring",
            &format!("--rw={rw}"),
            "--bs=1M",
            &format!("--size={size_mib}M"),
            &format!("--iodepth={depth}"),
            &format!("--end_fsync={}", u8::from(end_fsync)),
            "--output-format=json",
        ])
        .output()
        .context("run fio (Debian package `fio`)")?;
    if !out.status.success() {
        bail!(
            "fio {rw} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse fio json")?;
    let side = if rw == "write" { "write" } else { "read" };
    let bw = v["jobs"][0][side]["bw_bytes"]
        .as_f64()
        .ok_or_else(|| anyhow!("no {side}.bw_bytes in fio output"))?;
    Ok(bw / 1e6)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(d) = &args.dir {
        // The test-cluster builder makes its temp dir under $TMPDIR.
        std::env::set_var("TMPDIR", d);
    }
    let c = ClusterBuilder::new()
        .data_servers(1)
        .replicas(1)
        .env("CIRRUS_LOG", "warn")
        .start()
        .await?;
    let table = c.chain_table().await?;
    let chain = table
        .chains
        .iter()
        .find(|ch| !ch.members.is_empty())
        .ok_or_else(|| anyhow!("no chain with a member: {table:?}"))?
        .clone();
    let info = c.data_info(0).await?;
    let cluster_id = info.cluster_id.clone();
    eprintln!(
        "data server {} direct_io={} chain {} v{}; dir {}",
        info.server_id,
        info.direct_io,
        chain.id,
        chain.version,
        c.data_dir(0).display()
    );
    let cref = pb::ChainRef {
        id: chain.id,
        version: chain.version,
    };
    let clients = (0..args.connections.max(1))
        .map(|_| Ok(net::data_client(net::channel(&c.data_addr(0))?)))
        .collect::<Result<Vec<_>>>()?;
    let bulk = (0..args.connections.max(1))
        .map(|_| Arc::new(BulkClient::new(&c.data_addr(0))))
        .collect();
    let bench = Bench {
        clients,
        bulk,
        grpc: args.grpc,
        cluster_id: cluster_id.clone(),
        chain: cref,
        inflight: args.inflight,
        mib: args.size_mib,
    };
    let n = args.size_mib;
    let file = c.data_dir(0).join("fio-seq.dat");

    println!(
        "data server, R=1, 1 MiB sequential over {}, {n} MiB per phase, {} in flight (fio iodepth {}), \
         {} connection(s), {} rounds",
        if args.grpc { "gRPC" } else { "the bulk protocol" },
        args.inflight,
        args.inflight,
        bench.clients.len(),
        args.rounds
    );
    println!(
        "{:<6} {:<12} {:>12} {:>12} {:>8}",
        "round", "", "cirrus MB/s", "fio MB/s", "ratio"
    );
    let (mut wr, mut ws, mut rr) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        // Each round alternates Cirrus and fio phase by phase, so a change in what the
        // shared disk gives (other tenants, burst credit) lands on both sides of a ratio.
        let object = pb::ObjectRef {
            ino: 1 << 40,
            index: round as u32,
        };
        let _ = std::fs::remove_file(&file);
        let (acked, synced) = bench.write(object).await?;
        let (cw, cws) = (mbps(n * MIB, acked), mbps(n * MIB, synced));
        let fw = fio(&file, "write", n, args.inflight, false)?;
        let _ = std::fs::remove_file(&file);
        let fws = fio(&file, "write", n, args.inflight, true)?;
        let cr = mbps(n * MIB, bench.read(object).await?);
        let fr = fio(&file, "read", n, args.inflight, false)?;
        for (what, ours, theirs, all) in [
            ("write", cw, fw, &mut wr),
            ("write+fsync", cws, fws, &mut ws),
            ("read", cr, fr, &mut rr),
        ] {
            println!(
                "{:<6} {:<12} {:>12.0} {:>12.0} {:>8.2}",
                round + 1,
                what,
                ours,
                theirs,
                ours / theirs
            );
            all.push(ours / theirs);
        }
    }
    let _ = std::fs::remove_file(&file);
    println!(
        "median ratio: write {:.2}, write+fsync {:.2}, read {:.2}",
        median(&mut wr),
        median(&mut ws),
        median(&mut rr)
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The Cirrus side: 1 MiB `Write` and `Read` RPCs on one object of one chain.
struct Bench {
    clients: Vec<net::DataClient>,
    bulk: Vec<Arc<BulkClient>>,
    grpc: bool,
    cluster_id: String,
    chain: pb::ChainRef,
    inflight: usize,
    mib: u64,
}

impl Bench {
    /// Writes `mib` MiB to `object` then fsyncs it; returns the seconds until the last
    /// write was acknowledged and until the fsync was.
    async fn write(&self, object: pb::ObjectRef) -> Result<(f64, f64)> {
        // Every chunk carries the same bytes (aligned offsets, so the same crcs): the
        // client side costs nothing and the figure is the server's.
        let data: Bytes = (0..MIB)
            .map(|i| (i % 251) as u8 + 1)
            .collect::<Vec<u8>>()
            .into();
        let crcs = piece_crcs(0, &data);
        let t = Instant::now();
        stream::iter(0..self.mib)
            .map(|i| {
                let mut cl = self.clients[i as usize % self.clients.len()].clone();
                let bulk = self.bulk[i as usize % self.bulk.len()].clone();
                let grpc = self.grpc;
                let req = pb::WriteRequest {
                    cluster_id: self.cluster_id.clone(),
                    chain: Some(self.chain),
                    object: Some(object),
                    offset: i * MIB,
                    data: data.clone(),
                    crcs: crcs.clone(),
                    sync: false,
                    hop: 0,
                };
                async move {
                    if grpc {
                        cl.write(req).await.map(|_| ()).map_err(|s| from_status(&s))
                    } else {
                        bulk.write(req, CALL_TIMEOUT).await.map(|_| ())
                    }
                }
            })
            .buffer_unordered(self.inflight)
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(|e| anyhow!("write: {e}"))?;
        let acked = t.elapsed().as_secs_f64();
        let mut cl = self.clients[0].clone();
        cl.sync(pb::SyncRequest {
            cluster_id: self.cluster_id.clone(),
            chain: Some(self.chain),
            objects: vec![object],
            hop: 0,
        })
        .await
        .map_err(|s| anyhow!("sync: {}", from_status(&s)))?;
        Ok((acked, t.elapsed().as_secs_f64()))
    }

    /// Reads `object` back, verifying every piece crc; returns the seconds taken.
    async fn read(&self, object: pb::ObjectRef) -> Result<f64> {
        let t = Instant::now();
        stream::iter(0..self.mib)
            .map(|i| {
                let mut cl = self.clients[i as usize % self.clients.len()].clone();
                let bulk = self.bulk[i as usize % self.bulk.len()].clone();
                let grpc = self.grpc;
                let req = pb::ReadRequest {
                    cluster_id: self.cluster_id.clone(),
                    chain: Some(self.chain),
                    object: Some(object),
                    offset: i * MIB,
                    len: MIB as u32,
                };
                async move {
                    let r = if grpc {
                        cl.read(req)
                            .await
                            .map_err(|s| anyhow!("read: {}", from_status(&s)))?
                            .into_inner()
                    } else {
                        bulk.read(req, CALL_TIMEOUT)
                            .await
                            .map_err(|e| anyhow!("read: {e}"))?
                    };
                    if r.data.len() as u64 != MIB {
                        bail!("short read at MiB {i}: {} bytes", r.data.len());
                    }
                    verify_pieces(i * MIB, &r.data, &r.crcs).map_err(|e| anyhow!("read: {e}"))?;
                    Ok(())
                }
            })
            .buffer_unordered(self.inflight)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        Ok(t.elapsed().as_secs_f64())
    }
}
