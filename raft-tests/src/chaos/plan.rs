//! The fault schedule: derived from the seed alone, before the cluster starts, so that
//! `--seed S` replays the same sequence of fault kinds, hold times and target picks.
//! Targets that depend on the run ("the current leader", "the server being rebuilt")
//! are resolved when the fault fires, from the planned `pick`.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Every fault the harness can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a node (sometimes the meta leader), restart it after the hold.
    Kill,
    /// SIGSTOP a node (sometimes the leader), SIGCONT after the hold.
    Pause,
    /// Cut one node from every other node and client.
    Isolate,
    /// Majority/minority split: one meta node plus some data servers and clients on the
    /// minority side.
    Split,
    /// One direction of one link only (often leader -> follower).
    OneWay,
    /// SIGKILL the current meta leader.
    LeaderKill,
    /// SIGKILL a data server, wait for a chain rebuild to start, SIGKILL the server
    /// being rebuilt onto.
    RebuildKill,
    /// Fill a data server's (loop-mounted) filesystem.
    DiskFull,
    /// Flip bytes in one block of an object file on a data server's disk.
    Corrupt,
    /// Throttle a data server's disk to a trickle (blkio cgroup on its loop device).
    SlowDisk,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Isolate,
        FaultKind::Split,
        FaultKind::OneWay,
        FaultKind::LeaderKill,
        FaultKind::RebuildKill,
        FaultKind::DiskFull,
        FaultKind::Corrupt,
        FaultKind::SlowDisk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Isolate => "isolate",
            FaultKind::Split => "split",
            FaultKind::OneWay => "one-way",
            FaultKind::LeaderKill => "leader-kill",
            FaultKind::RebuildKill => "rebuild-kill",
            FaultKind::DiskFull => "disk-full",
            FaultKind::Corrupt => "corrupt",
            FaultKind::SlowDisk => "slow-disk",
        }
    }

    /// Needs network namespaces (iptables cuts).
    pub fn needs_netns(self) -> bool {
        matches!(
            self,
            FaultKind::Isolate | FaultKind::Split | FaultKind::OneWay
        )
    }

    /// Needs the data servers on loop-mounted filesystems.
    pub fn needs_loop_disk(self) -> bool {
        matches!(self, FaultKind::DiskFull | FaultKind::SlowDisk)
    }

    /// Parses a comma-separated list; `all` is every kind.
    pub fn parse_list(s: &str) -> Result<Vec<FaultKind>, String> {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                v.extend(FaultKind::ALL);
                continue;
            }
            if part == "none" {
                continue;
            }
            let k = FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == part)
                .ok_or_else(|| {
                    format!(
                        "unknown fault kind {part:?}; known: all, none, {}",
                        FaultKind::ALL.map(|k| k.name()).join(", ")
                    )
                })?;
            v.push(k);
        }
        v.sort();
        v.dedup();
        Ok(v)
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Planned {
    pub kind: FaultKind,
    /// How long the fault stays in place (0 for instantaneous ones).
    pub hold_ms: u64,
    /// Random bits that choose the target when the fault fires.
    pub pick: u64,
}

/// Faults that start together (two at once make a composed fault) and heal together.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// Offset from the start of the safety phase.
    pub at_ms: u64,
    pub faults: Vec<Planned>,
}

fn hold_for(rng: &mut SmallRng, k: FaultKind) -> u64 {
    match k {
        // Long enough for a scrub pass (the harness runs scrub every 5 s) to find and
        // repair the block from the other replica before the next fault can take that
        // replica away: corruption plus the loss of the only good copy is two faults on
        // one block, beyond what R = 2 promises.
        FaultKind::Corrupt => 8_000,
        // Long enough for the server timeout to drop a server and a rebuild to start.
        FaultKind::RebuildKill => rng.gen_range(5_000..10_000),
        FaultKind::Kill | FaultKind::LeaderKill => rng.gen_range(1_000..8_000),
        FaultKind::DiskFull | FaultKind::SlowDisk => rng.gen_range(2_000..8_000),
        _ => rng.gen_range(1_000..6_000),
    }
}

/// The schedule for `seed` over a safety phase of `duration`, using only `kinds`.
pub fn plan(seed: u64, kinds: &[FaultKind], duration: Duration) -> Vec<Step> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xC1_44_05_FA_17);
    let mut steps = Vec::new();
    if kinds.is_empty() {
        return steps;
    }
    let end = (duration.as_millis() as u64).saturating_sub(2_000);
    // Let the workloads get going before the first fault.
    let mut t = 2_000u64.min(end / 4);
    while t < end {
        let k = kinds[rng.gen_range(0..kinds.len())];
        let mut faults = vec![Planned {
            kind: k,
            hold_ms: hold_for(&mut rng, k),
            pick: rng.gen(),
        }];
        // One step in four composes a second, different fault with the first.
        // Corruption is never composed (see `hold_for`).
        if kinds.len() > 1 && rng.gen_range(0..4) == 0 && k != FaultKind::Corrupt {
            let mut k2 = kinds[rng.gen_range(0..kinds.len())];
            if k2 == k {
                k2 = kinds[(kinds.iter().position(|x| *x == k).unwrap_or(0) + 1) % kinds.len()];
            }
            if k2 == FaultKind::Corrupt || k2 == k {
                k2 = k;
            }
            if k2 != k {
                faults.push(Planned {
                    kind: k2,
                    hold_ms: hold_for(&mut rng, k2),
                    pick: rng.gen(),
                });
            }
        }
        let hold = faults.iter().map(|f| f.hold_ms).max().unwrap_or(0);
        steps.push(Step { at_ms: t, faults });
        t += hold + rng.gen_range(500..3_000);
    }
    steps
}

/// One line per step, for the start of the run.
pub fn describe(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| {
            let f: Vec<String> = s
                .faults
                .iter()
                .map(|p| format!("{} for {:.1}s", p.kind.name(), p.hold_ms as f64 / 1e3))
                .collect();
            format!("  t={:>6.1}s  {}", s.at_ms as f64 / 1e3, f.join(" + "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_other_seed_differs() {
        let a = plan(7, &FaultKind::ALL, Duration::from_secs(120));
        let b = plan(7, &FaultKind::ALL, Duration::from_secs(120));
        let c = plan(8, &FaultKind::ALL, Duration::from_secs(120));
        assert_eq!(describe(&a), describe(&b));
        assert_eq!(
            a.iter()
                .flat_map(|s| s.faults.iter().map(|f| f.pick))
                .collect::<Vec<_>>(),
            b.iter()
                .flat_map(|s| s.faults.iter().map(|f| f.pick))
                .collect::<Vec<_>>()
        );
        assert_ne!(describe(&a), describe(&c));
        assert!(
            a.len() >= 5,
            "a 2-minute run has several steps: {}",
            a.len()
        );
        let last = a.last().expect("steps");
        assert!(last.at_ms < 120_000);
    }

    /// Found by the soak (seed 1002): a corrupted block whose other replica was then
    /// killed left a chain whose only member had a bad block, so its rebuild could never
    /// finish. Corruption now stands alone and holds long enough for scrub to repair it.
    #[test]
    fn corruption_is_never_composed_and_holds_for_a_scrub_pass() {
        for seed in 0..50 {
            for s in plan(seed, &FaultKind::ALL, Duration::from_secs(120)) {
                if s.faults.iter().any(|f| f.kind == FaultKind::Corrupt) {
                    assert_eq!(s.faults.len(), 1, "seed {seed}: {s:?}");
                    assert!(s.faults[0].hold_ms >= 5_000);
                }
            }
        }
    }

    #[test]
    fn only_the_requested_kinds_are_planned() {
        let p = plan(
            1,
            &[FaultKind::Pause, FaultKind::Corrupt],
            Duration::from_secs(60),
        );
        assert!(p
            .iter()
            .flat_map(|s| &s.faults)
            .all(|f| matches!(f.kind, FaultKind::Pause | FaultKind::Corrupt)));
        assert!(plan(1, &[], Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn fault_lists_parse_and_bad_names_are_refused() {
        assert_eq!(FaultKind::parse_list("all").expect("all").len(), 10);
        assert_eq!(
            FaultKind::parse_list("kill, pause,kill").expect("list"),
            vec![FaultKind::Kill, FaultKind::Pause]
        );
        assert!(FaultKind::parse_list("none").expect("none").is_empty());
        let e = FaultKind::parse_list("kill,meteor").expect_err("bad name");
        assert!(e.contains("meteor") && e.contains("leader-kill"), "{e}");
    }
}
