//! The placement simulator (issue 23): `cirrus_meta::placement` over clusters far larger
//! than this machine, no processes. For each size it builds a balanced cluster (chains
//! striped over equal servers as the chain table places them, chain sizes drawn evenly
//! from 0.5-1.5 GiB with a fixed seed, then rebalanced to the tolerance), and reports:
//!
//! - **add**: one more server of the same weight; bytes moved against the optimum (its
//!   fair share, total replica bytes / (N+1)), the number of moves, and the spread after
//!   (the largest distance of a server's load from its target, as a fraction);
//! - **drain**: one server drained; bytes moved against the optimum (what it held: a
//!   drain moves exactly that), the spread right after, and what a follow-up rebalance to
//!   the tolerance moves on top (as a fraction of the drained bytes).
//!
//! `cargo build --release -p cirrus-benches && target/release/placement-sim` prints the
//! markdown table kept in docs/design/0014-placement-planner.md.

use anyhow::{bail, Result};
use cirrus_meta::placement::{self, ChainLoad};
use cirrus_types::{ChainId, ServerId};
use clap::Parser;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Bytes moved and balance when data servers are added or drained, simulated")]
struct Args {
    /// Cluster sizes (servers before the add or drain).
    #[arg(long, value_delimiter = ',', default_value = "10,30,100,300,1000")]
    servers: Vec<u64>,
    /// Chains per server.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    chains_per_server: Vec<u64>,
    /// Replicas per chain.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    replicas: Vec<usize>,
    /// Balanced means every server within this fraction of its target.
    #[arg(long, default_value_t = 0.1)]
    tolerance: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const GIB: f64 = (1u64 << 30) as f64;

fn main() -> Result<()> {
    let a = Args::parse();
    if !(0.0..1.0).contains(&a.tolerance) {
        bail!("--tolerance {} is outside 0..1", a.tolerance);
    }
    println!(
        "| servers | R | chains/server | add: moved / optimum | add: moves | add: spread after \
         | drain: moved / optimum | drain: spread after | drain + rebalance: extra moved | plan ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in &a.servers {
        for &r in &a.replicas {
            if r as u64 > n {
                continue;
            }
            for &k in &a.chains_per_server {
                row(n, r, k, a.tolerance, a.seed)?;
            }
        }
    }
    Ok(())
}

fn row(n: u64, r: usize, k: u64, tol: f64, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ (n << 32) ^ ((r as u64) << 16) ^ k);
    let mut chains: Vec<ChainLoad> = (0..n * k)
        .map(|j| ChainLoad {
            id: ChainId(j as u32 + 1),
            members: (0..r as u64).map(|i| ServerId(1 + (j + i) % n)).collect(),
            bytes: (rng.gen_range(0.5..1.5) * GIB) as u64,
        })
        .collect();
    let mut w: BTreeMap<ServerId, u64> = (1..=n).map(|i| (ServerId(i), 1)).collect();
    let settle = placement::plan_rebalance(&chains, &w, tol, usize::MAX)?;
    placement::apply(&mut chains, &settle);
    let total: u64 = chains
        .iter()
        .map(|c| c.bytes * c.members.len() as u64)
        .sum();

    let t = Instant::now();
    let mut added = chains.clone();
    let mut wa = w.clone();
    wa.insert(ServerId(n + 1), 1);
    let add = placement::plan_rebalance(&added, &wa, tol, usize::MAX)?;
    placement::apply(&mut added, &add);
    let add_moved: u64 = add.iter().map(|m| m.bytes).sum();
    let add_opt = total as f64 / (n + 1) as f64;

    let victim = ServerId(1 + n / 2);
    let held = placement::loads(&chains, &w)[&victim];
    let drain = match placement::plan_drain(&chains, &w, victim) {
        Ok(d) => Some(d),
        Err(placement::PlanError::NowhereToGo { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let drain_cols = match drain {
        Some(d) => {
            placement::apply(&mut chains, &d);
            w.remove(&victim);
            let moved: u64 = d.iter().map(|m| m.bytes).sum();
            let after = placement::spread(&chains, &w);
            let extra = placement::plan_rebalance(&chains, &w, tol, usize::MAX)?;
            let extra_b: u64 = extra.iter().map(|m| m.bytes).sum();
            format!(
                "{:.2}x | {:.1} % | {:.2}",
                moved as f64 / held.max(1) as f64,
                after * 100.0,
                extra_b as f64 / held.max(1) as f64
            )
        }
        None => "refused (R = servers) | - | -".into(),
    };
    println!(
        "| {n} | {r} | {k} | {:.2}x | {} | {:.1} % | {drain_cols} | {ms:.0} |",
        add_moved as f64 / add_opt,
        add.len(),
        placement::spread(&added, &wa) * 100.0,
    );
    Ok(())
}
