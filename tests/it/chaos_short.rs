//! The short chaos run CI does: the real `cirrus-chaos` harness, a few seeds of about 30 s
//! of faults each (every fault kind, metadata and data workloads, one seed with the POSIX
//! exerciser through a FUSE mount), failing on any violation the checkers report. The
//! long soak is the same binary with more seeds and longer runs (README, Chaos).
//!
//! Needs root, `ip`/`iptables` (namespaces; the harness says so and falls back to
//! 127.0.0.x without them), loop devices, and /dev/fuse for the POSIX seed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The harness binary, built (or found up to date) next to the `cirrus` under test.
fn chaos_bin() -> PathBuf {
    let cirrus = Path::new(env!("CARGO_BIN_EXE_cirrus"));
    let bin = cirrus.with_file_name("cirrus-chaos");
    // Build it so a stale harness is never what runs; a no-op when it is fresh.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "build",
            "-q",
            "-p",
            "cirrus-raft-tests",
            "--bin",
            "cirrus-chaos",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "building cirrus-chaos failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => assert!(
            bin.is_file(),
            "cannot run {cargo} to build cirrus-chaos ({e}) and {} is missing",
            bin.display()
        ),
    }
    assert!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    bin
}

fn need_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the chaos harness needs root (network namespaces, iptables, loop mounts, FUSE)"
    );
}

/// Runs one seed and fails with the harness's own summary on any violation.
fn run_seed(seed: u64, extra: &[&str]) {
    need_root();
    let out = tempfile::tempdir().expect("tempdir");
    let o = Command::new(chaos_bin())
        .args(["--seed", &seed.to_string(), "--duration", "30s"])
        .args(["--cirrus", env!("CARGO_BIN_EXE_cirrus")])
        .arg("--out")
        .arg(out.path())
        .args(extra)
        .output()
        .expect("run cirrus-chaos");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "cirrus-chaos --seed {seed} {extra:?} exited with {}:\n{stdout}\n{stderr}",
        o.status
    );
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("summary.json")).expect("summary.json written"),
    )
    .expect("summary.json parses");
    assert_eq!(summary["violations"], 0, "{stdout}");
    assert!(
        summary["faults_injected"].as_u64().unwrap_or(0) > 0,
        "a 30 s run injects faults:\n{stdout}"
    );
    assert!(
        summary["ops"].as_u64().unwrap_or(0) > 50,
        "the workloads ran:\n{stdout}"
    );
    // Every node was followed for memory (the check fails a run past the ceiling; this
    // makes sure the sampler saw them all rather than nothing).
    let peaks = summary["peak_rss_mib"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !peaks.is_empty() && peaks.iter().all(|p| p[1].as_f64().unwrap_or(0.0) > 0.0),
        "every node's resident memory sampled: {peaks:?}\n{stdout}"
    );
    for f in ["history.json", "timeline.html"] {
        assert!(out.path().join(f).is_file(), "{f} written");
    }
}

#[test]
fn chaos_seed_1_every_fault_kind_meta_and_data() {
    run_seed(1, &[]);
}

#[test]
fn chaos_seed_2_with_posix_exerciser_through_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "the POSIX workload mounts through FUSE: /dev/fuse is missing (modprobe fuse)"
    );
    run_seed(2, &["--workloads", "all"]);
}

#[test]
fn chaos_seed_3_partitions_and_leader_faults() {
    run_seed(
        3,
        &["--faults", "isolate,split,one-way,leader-kill,pause,kill"],
    );
}
