//! `cirrus-exercise --mount M --local L [--seed N] [--ops N] [--deadline 45s]`: the seeded
//! random POSIX exerciser (see `cirrus_raft_tests::posix`). Runs the same random calls in
//! a fresh subdirectory of M and of L, compares every result, prints its seed; exits
//! non-zero on the first difference or on a call over the deadline.

use cirrus_raft_tests::posix::{self, ExerciseConfig};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cirrus-exercise",
    about = "seeded random POSIX calls on a mount vs a local directory"
)]
struct Args {
    /// The filesystem under test (e.g. a Cirrus mount).
    #[arg(long)]
    mount: PathBuf,
    /// A local directory to compare against.
    #[arg(long)]
    local: PathBuf,
    /// Seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of operations.
    #[arg(long, default_value_t = 300)]
    ops: usize,
    /// Any call on the mount slower than this fails the run (e.g. 45s, 500ms).
    #[arg(long, default_value = "45s", value_parser = posix::parse_duration)]
    deadline: std::time::Duration,
    /// Skip the xattr calls.
    #[arg(long)]
    no_xattrs: bool,
    /// Print every operation.
    #[arg(long, short)]
    verbose: bool,
    /// Spawn child processes from a second thread all through the run: each one's exec
    /// closes the open files, a FUSE FLUSH racing the calls.
    #[arg(long)]
    spawn_children: bool,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let seed = a.seed.unwrap_or_else(rand::random);
    println!("cirrus-exercise: seed {seed} (replay with --seed {seed})");
    let mut cfg = ExerciseConfig::new(seed);
    cfg.ops = a.ops;
    cfg.deadline = a.deadline;
    cfg.verbose = a.verbose;
    cfg.spawn_children = a.spawn_children;
    let sub = format!("exercise-{seed}-{}", std::process::id());
    let (m, l) = (a.mount.join(&sub), a.local.join(&sub));
    for d in [&m, &l] {
        if let Err(e) = std::fs::create_dir(d) {
            eprintln!("cirrus-exercise: mkdir {}: {e}", d.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    cfg.xattrs = !a.no_xattrs && posix::supports_user_xattrs(&l);
    if !cfg.xattrs && !a.no_xattrs {
        println!(
            "cirrus-exercise: {} has no user xattrs; skipping the xattr calls",
            l.display()
        );
    }
    match posix::run(&m, &l, &cfg, None) {
        Ok(r) => {
            println!(
                "cirrus-exercise: seed {seed}: {} ops agree ({} succeeded; {} B written, {} B read; {} children spawned; slowest call {:?}: {})",
                r.ops, r.ok_ops, r.bytes_written, r.bytes_read, r.children, r.slowest, r.slowest_op
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cirrus-exercise: FAILED: {e}");
            eprintln!(
                "cirrus-exercise: trees kept in {} and {}",
                m.display(),
                l.display()
            );
            std::process::ExitCode::FAILURE
        }
    }
}
