//! Property: no node's resident memory passes a ceiling at any point of the run. A
//! server whose memory grows with a number a caller named (a size, an offset, a count)
//! shows up here as a node past the ceiling, before the kernel's OOM killer would end it.
//!
//! The sampler finds each node's processes by its `--dir` argument rather than by the pid
//! the harness spawned, so a node restarted by a fault is still followed, and a node
//! started through `ip netns exec` (which execs in place) is measured as cirrus itself.

use super::CheckResult;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The default ceiling per node: far above what a node of the chaos cluster needs
/// (tens of MiB idle, a few hundred under the data workload's buffers) and far below
/// what a node holding a structure sized by a caller's number reaches within seconds.
pub const DEFAULT_CEILING: u64 = 1 << 30;

/// What was seen of one node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeMemory {
    pub node: String,
    pub samples: u64,
    pub peak_rss_bytes: u64,
    /// Seconds since the start of the run at the peak.
    pub peak_at_s: f64,
    pub last_rss_bytes: u64,
}

/// Resident memory of a process (VmRSS of `/proc/PID/status`), in bytes.
pub fn rss_of(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&s)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Processes whose command line has `--dir DIR` (or `--dir=DIR`).
pub fn pids_with_dir(dir: &Path) -> Vec<i32> {
    let want = dir.display().to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if has_dir_arg(&cmd, &want) {
            out.push(pid);
        }
    }
    out
}

fn has_dir_arg(cmdline: &[u8], want: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let eq = format!("--dir={want}");
    args.windows(2)
        .any(|w| w[0] == b"--dir" && w[1] == want.as_bytes())
        || args.contains(&eq.as_bytes())
}

/// Samples every node's resident memory every `every` until `stop` turns true.
pub async fn sample(
    nodes: Vec<(String, PathBuf)>,
    t0: std::time::Instant,
    every: Duration,
    out: Arc<Mutex<Vec<NodeMemory>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Ok(mut o) = out.lock() {
        *o = nodes
            .iter()
            .map(|(n, _)| NodeMemory {
                node: n.clone(),
                ..NodeMemory::default()
            })
            .collect();
    }
    while !*stop.borrow() {
        let t = t0.elapsed().as_secs_f64();
        // /proc reads are cheap but blocking; a few dozen files per tick.
        let nodes2 = nodes.clone();
        let seen = tokio::task::spawn_blocking(move || {
            nodes2
                .iter()
                .map(|(_, d)| pids_with_dir(d).into_iter().filter_map(rss_of).sum::<u64>())
                .collect::<Vec<u64>>()
        })
        .await
        .unwrap_or_default();
        if let Ok(mut o) = out.lock() {
            for (m, rss) in o.iter_mut().zip(seen) {
                if rss == 0 {
                    continue; // not running now (killed by a fault)
                }
                m.samples += 1;
                m.last_rss_bytes = rss;
                if rss > m.peak_rss_bytes {
                    m.peak_rss_bytes = rss;
                    m.peak_at_s = t;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Fails for every node whose peak passed `ceiling`, and for a node never sampled (the
/// property could not be checked for it).
pub fn check(nodes: &[NodeMemory], ceiling: u64) -> CheckResult {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut violations = Vec::new();
    for n in nodes {
        if n.samples == 0 {
            violations.push(format!(
                "{}: never sampled (no process with its --dir)",
                n.node
            ));
        } else if n.peak_rss_bytes > ceiling {
            violations.push(format!(
                "{}: resident memory {:.0} MiB at {:.1}s, past the ceiling of {:.0} MiB",
                n.node,
                mib(n.peak_rss_bytes),
                n.peak_at_s,
                mib(ceiling)
            ));
        }
    }
    let peaks: Vec<String> = nodes
        .iter()
        .map(|n| format!("{} {:.0}", n.node, mib(n.peak_rss_bytes)))
        .collect();
    CheckResult::new(
        "bounded_memory",
        format!(
            "peak resident MiB per node (ceiling {:.0}): {}",
            mib(ceiling),
            peaks.join(", ")
        ),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let s = "Name:\tcirrus\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(s), Some(2 << 20));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn dir_argument_matches_exactly() {
        let cmd = b"cirrus\0meta\0--dir\0/t/meta-1\0--listen\0a\0";
        assert!(has_dir_arg(cmd, "/t/meta-1"));
        assert!(!has_dir_arg(cmd, "/t/meta-10"));
        assert!(!has_dir_arg(cmd, "/t/meta"));
        assert!(has_dir_arg(b"cirrus\0data\0--dir=/t/d\0", "/t/d"));
    }

    #[test]
    fn this_process_is_found_and_measured() {
        let me = std::process::id() as i32;
        assert!(rss_of(me).is_some_and(|b| b > 0));
    }

    #[test]
    fn a_node_past_the_ceiling_or_never_seen_fails_the_run() {
        let ok = NodeMemory {
            node: "meta-1".into(),
            samples: 3,
            peak_rss_bytes: 50 << 20,
            peak_at_s: 1.0,
            last_rss_bytes: 40 << 20,
        };
        let big = NodeMemory {
            node: "data-2".into(),
            peak_rss_bytes: 3 << 30,
            ..ok.clone()
        };
        let unseen = NodeMemory {
            node: "data-3".into(),
            ..NodeMemory::default()
        };
        assert_eq!(
            check(std::slice::from_ref(&ok), 1 << 30).status,
            Status::Pass
        );
        let r = check(&[ok.clone(), big], 1 << 30);
        assert_eq!(r.status, Status::Fail);
        assert!(r.violations[0].contains("data-2"), "{:?}", r.violations);
        assert_eq!(check(&[ok, unseen], 1 << 30).status, Status::Fail);
    }
}
