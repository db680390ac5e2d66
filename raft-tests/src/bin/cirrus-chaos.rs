//! `cirrus-chaos`: runs a Cirrus cluster of real processes under a seeded fault schedule
//! and checks what the clients saw. See `cirrus_raft_tests::chaos` and the README's
//! Chaos section.
//!
//! Exit status: 0 no violation, 1 a checker found a violation, 2 the harness itself
//! failed (bad flags, the cluster did not start).

use cirrus_raft_tests::chaos::{self, plan::FaultKind, NetMode, Options, Workload};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "cirrus-chaos",
    about = "Fault-inject a real Cirrus cluster from a seed and check linearizability, durability and liveness",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Seed of the fault schedule and the workloads (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Length of the safety phase (faults on), e.g. 120s, 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds, comma separated: all, none, kill, pause, isolate, split, one-way,
    /// leader-kill, rebuild-kill, disk-full, corrupt, slow-disk.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Workloads, comma separated: meta, data, posix, locks, all.
    #[arg(long, default_value = "meta,data,locks")]
    workloads: String,
    /// Number of data servers.
    #[arg(long, default_value_t = 4)]
    data_servers: usize,
    /// Replication factor R.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// Client processes.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// auto (namespaces when possible), netns, or loopback.
    #[arg(long, default_value = "auto", value_parser = parse_net)]
    net: NetMode,
    /// Output directory (default target/chaos/seed-S).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The cirrus binary (default: next to this one, or $CIRRUS_BIN).
    #[arg(long)]
    cirrus: Option<PathBuf>,
    /// Bound for serving again and for converging after heal.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    heal_bound: Duration,
    /// Resident memory (MiB) no node may pass at any sample; past it the run fails
    /// (`bounded_memory`).
    #[arg(long, default_value_t = 1024)]
    rss_ceiling_mib: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Internal: a client process (started by the harness in a client namespace).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        config: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 2m, 500ms)"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("{s:?}: a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn parse_net(s: &str) -> Result<NetMode, String> {
    match s {
        "auto" => Ok(NetMode::Auto),
        "netns" => Ok(NetMode::Netns),
        "loopback" => Ok(NetMode::Loopback),
        o => Err(format!("unknown --net {o:?}; use auto, netns or loopback")),
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(Cmd::Worker { config }) = &cli.cmd {
        if let Err(e) = chaos::worker::run(config) {
            eprintln!("cirrus-chaos worker: {e:#}");
            std::process::exit(2);
        }
        return;
    }
    let seed = cli.seed.unwrap_or_else(rand::random::<u64>);
    let faults = FaultKind::parse_list(&cli.faults).unwrap_or_else(|e| {
        eprintln!("cirrus-chaos: --faults: {e}");
        std::process::exit(2);
    });
    let workloads = Workload::parse_list(&cli.workloads).unwrap_or_else(|e| {
        eprintln!("cirrus-chaos: --workloads: {e}");
        std::process::exit(2);
    });
    if workloads.is_empty() {
        eprintln!("cirrus-chaos: --workloads names no workload");
        std::process::exit(2);
    }
    if cli.data_servers < cli.replicas as usize || !(1..=3).contains(&cli.replicas) {
        eprintln!(
            "cirrus-chaos: --replicas {} needs 1..=3 and at least as many data servers (got {})",
            cli.replicas, cli.data_servers
        );
        std::process::exit(2);
    }
    if cli.clients == 0 {
        eprintln!("cirrus-chaos: --clients must be at least 1");
        std::process::exit(2);
    }
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/chaos/seed-{seed}")));
    println!("cirrus-chaos: seed {seed}");
    let opts = Options {
        seed,
        duration: cli.duration,
        faults,
        workloads,
        data_servers: cli.data_servers,
        replicas: cli.replicas,
        clients: cli.clients,
        net: cli.net,
        out: out.clone(),
        cirrus: cli.cirrus.clone(),
        heal_bound: cli.heal_bound,
        rss_ceiling: cli.rss_ceiling_mib.saturating_mul(1 << 20),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cirrus-chaos: tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    let res = rt.block_on(chaos::run(opts));
    let (record, failed) = match res {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cirrus-chaos: seed {seed}: the harness failed: {e:#}");
            std::process::exit(2);
        }
    };
    match chaos::report::write_all(&record, &out) {
        Ok((table, violations)) => {
            println!("{table}");
            println!(
                "cirrus-chaos: wrote {}/history.json, summary.json, timeline.html",
                out.display()
            );
            if failed || violations > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("cirrus-chaos: writing the report: {e:#}");
            std::process::exit(2);
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}
