//! Lock safety: in the recorded history, no exclusive hold of a file overlaps any other
//! hold of the same file (and shared holds overlap only each other). A hold runs from
//! the moment its lock call returned granted to the moment its unlock was sent, a
//! sub-interval of the time meta held it, so any overlap is two owners holding at once.

use super::CheckResult;
use crate::workload::locks::LockHold;
use std::collections::BTreeMap;

pub fn check(holds: &[LockHold], unknown: u64) -> CheckResult {
    let mut by_file: BTreeMap<u64, Vec<&LockHold>> = BTreeMap::new();
    for h in holds {
        by_file.entry(h.ino).or_default().push(h);
    }
    let mut violations = Vec::new();
    for (ino, mut hs) in by_file {
        hs.sort_by_key(|h| h.acquired_ns);
        // Sweep: the holds still running when each one starts.
        let mut open: Vec<&LockHold> = Vec::new();
        for h in hs {
            open.retain(|o| o.released_ns > h.acquired_ns);
            for o in &open {
                if (o.exclusive || h.exclusive) && (o.client, o.owner) != (h.client, h.owner) {
                    violations.push(format!(
                        "file {ino}: {} hold of owner {}/{} over {:.3}..{:.3}s overlaps {} hold of owner {}/{} from {:.3}s",
                        if o.exclusive { "an exclusive" } else { "a shared" },
                        o.client,
                        o.owner,
                        o.acquired_ns as f64 / 1e9,
                        o.released_ns as f64 / 1e9,
                        if h.exclusive { "an exclusive" } else { "a shared" },
                        h.client,
                        h.owner,
                        h.acquired_ns as f64 / 1e9,
                    ));
                }
            }
            open.push(h);
        }
    }
    let exclusive = holds.iter().filter(|h| h.exclusive).count();
    CheckResult::new(
        "exclusive_locks",
        format!(
            "{} holds ({exclusive} exclusive), {unknown} lock calls with unknown outcome",
            holds.len()
        ),
        violations,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    fn hold(client: u64, exclusive: bool, a: u64, r: u64) -> LockHold {
        LockHold {
            client,
            owner: 1,
            ino: 7,
            exclusive,
            acquired_ns: a,
            released_ns: r,
        }
    }

    #[test]
    fn overlapping_exclusive_holds_fail_and_shared_or_disjoint_ones_pass() {
        let ok = [
            hold(1, true, 0, 10),
            hold(2, true, 10, 20),
            hold(3, false, 20, 40),
            hold(4, false, 25, 30),
            hold(5, true, 41, 50),
        ];
        assert_eq!(check(&ok, 0).status, Status::Pass);
        let bad = [hold(1, true, 0, 10), hold(2, false, 5, 8)];
        let r = check(&bad, 0);
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        // Another file is independent.
        let mut other = hold(2, true, 5, 8);
        other.ino = 8;
        assert_eq!(
            check(&[hold(1, true, 0, 10), other], 0).status,
            Status::Pass
        );
    }
}
