//! One data server's sequential throughput through its own gRPC API against fio on the
//! same disk, in the same run (the figure issue 3 asks for; a benchmark, not a test).
//!
//! Starts 3 meta + 1 data (R=1) with the `cirrus` binary next to this one, writes
//! `--size` bytes as 1 MiB `Write` RPCs to one object (`--inflight` in flight), fsyncs it,
//! reads it back as 1 MiB `Read` RPCs, then runs
//! `fio --direct=1 --ioengine=io_uring --bs=1M --iodepth=<inflight> --rw=write|read` on a
//! file in the same directory, and prints MB/s and the ratios.
//!
//! ```text
//! cargo build --release -p cirrus -p cirrus-benches
//! target/release/data_bench --size-mib 2048 --inflight 8
//! ```

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use cirrus_proto::{from_status, net, pb};
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::checksum::{piece_crcs, verify_pieces};
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const MIB: u64 = 1 << 20;

#[derive(Parser, Debug)]
struct Args {
    /// Bytes to write then read, MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// RPCs (and fio iodepth) in flight.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Parent of the cluster's temp dir (the disk measured); default: $TMPDIR.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// fio on `file`: (MB/s) of one sequential phase.
fn fio(file: &Path, rw: &str, size_mib: u64, depth: usize) -> Result<f64> {
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
    let object = pb::ObjectRef {
        ino: 1 << 40,
        index: 0,
    };
    let client = net::data_client(net::channel(&c.data_addr(0))?);
    let n = args.size_mib;

    // Every chunk carries the same bytes (aligned offsets, so the same crcs): the client
    // side costs nothing and the figure is the server's.
    let data: Bytes = (0..MIB)
        .map(|i| (i % 251) as u8 + 1)
        .collect::<Vec<u8>>()
        .into();
    let crcs = piece_crcs(0, &data);
    let t = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let mut cl = client.clone();
            let req = pb::WriteRequest {
                cluster_id: cluster_id.clone(),
                chain: Some(cref),
                object: Some(object),
                offset: i * MIB,
                data: data.clone(),
                crcs: crcs.clone(),
                sync: false,
                hop: 0,
            };
            async move { cl.write(req).await.map_err(|s| from_status(&s)) }
        })
        .buffer_unordered(args.inflight)
        .try_for_each(|_| async { Ok(()) })
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    let mut cl = client.clone();
    cl.sync(pb::SyncRequest {
        cluster_id: cluster_id.clone(),
        chain: Some(cref),
        objects: vec![object],
        hop: 0,
    })
    .await
    .map_err(|s| anyhow!("sync: {}", from_status(&s)))?;
    let write_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let mut cl = client.clone();
            let req = pb::ReadRequest {
                cluster_id: cluster_id.clone(),
                chain: Some(cref),
                object: Some(object),
                offset: i * MIB,
                len: MIB as u32,
            };
            async move {
                let r = cl
                    .read(req)
                    .await
                    .map_err(|s| anyhow!("read: {}", from_status(&s)))?
                    .into_inner();
                if r.data.len() as u64 != MIB {
                    bail!("short read at MiB {i}: {} bytes", r.data.len());
                }
                verify_pieces(i * MIB, &r.data, &r.crcs).map_err(|e| anyhow!("read: {e}"))?;
                Ok(())
            }
        })
        .buffer_unordered(args.inflight)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let read_s = t.elapsed().as_secs_f64();

    let file = c.data_dir(0).join("fio-seq.dat");
    let fio_w = fio(&file, "write", n, args.inflight)?;
    let fio_r = fio(&file, "read", n, args.inflight)?;
    let _ = std::fs::remove_file(&file);

    let (cw, cr) = (mbps(n * MIB, write_s), mbps(n * MIB, read_s));
    println!(
        "data server, R=1, 1 MiB sequential, {n} MiB, {} in flight (fio iodepth {})",
        args.inflight, args.inflight
    );
    println!(
        "{:<8} {:>12} {:>12} {:>8}",
        "", "cirrus MB/s", "fio MB/s", "ratio"
    );
    println!(
        "{:<8} {:>12.0} {:>12.0} {:>8.2}",
        "write",
        cw,
        fio_w,
        cw / fio_w
    );
    println!(
        "{:<8} {:>12.0} {:>12.0} {:>8.2}",
        "read",
        cr,
        fio_r,
        cr / fio_r
    );
    Ok(())
}
