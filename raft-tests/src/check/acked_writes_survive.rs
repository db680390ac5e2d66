//! Property: a write acknowledged by fsync is never lost. After heal, every slot with an
//! acknowledged write reads back, whole, from that write or a later one; and no read
//! (during the run either) returns an older version than was acknowledged before the
//! read began (the writer reads its own files).

use super::CheckResult;
use crate::workload::data::{FileLedger, ReadObs};
use std::collections::BTreeMap;

pub fn check(ledgers: &BTreeMap<u32, FileLedger>, reads: &[ReadObs]) -> CheckResult {
    let mut v = Vec::new();
    let mut acked_slots = 0usize;
    for (file, l) in ledgers {
        for (slot, &acked) in &l.acked {
            acked_slots += 1;
            let finals: Vec<&ReadObs> = reads
                .iter()
                .filter(|r| r.after_heal && r.file == *file && r.slot == *slot)
                .collect();
            if finals.is_empty() {
                v.push(format!(
                    "file {file} slot {slot}: write seq {acked} was acknowledged but the slot could not be read after heal"
                ));
            }
            for r in finals {
                check_not_older(&mut v, r, acked, "after heal");
            }
        }
    }
    for r in reads.iter().filter(|r| !r.after_heal) {
        if let Some(a) = r.acked_at_invoke {
            check_not_older(&mut v, r, a, "during the run");
        }
    }
    CheckResult::new(
        "acked_writes_survive",
        format!(
            "{acked_slots} acknowledged slots in {} files, {} reads",
            ledgers.len(),
            reads.len()
        ),
        v,
    )
}

fn check_not_older(v: &mut Vec<String>, r: &ReadObs, acked: u64, when: &str) {
    for (i, (kind, seq)) in r.seqs.iter().enumerate() {
        let bad = match kind {
            0 => Some("zeros".to_string()),
            1 if *seq < acked => Some(format!("seq {seq}")),
            _ => None,
        };
        if let Some(what) = bad {
            v.push(format!(
                "file {} slot {} block {i} {when} (read at {:.3}s): {what}, but seq {acked} was acknowledged before",
                r.file,
                r.slot,
                r.at_ns as f64 / 1e9
            ));
            // One line per slot read is enough to locate it.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::data::{observe, slot_bytes, SLOT};

    fn ledger(slot: u32, issued: Vec<u64>, acked: u64) -> BTreeMap<u32, FileLedger> {
        let mut l = FileLedger {
            ino: 9,
            ..Default::default()
        };
        l.issued.insert(slot, issued);
        l.acked.insert(slot, acked);
        BTreeMap::from([(1, l)])
    }

    #[test]
    fn acknowledged_write_read_back_passes_and_a_later_unacked_one_too() {
        let l = ledger(0, vec![1, 2], 1);
        let ok = observe(1, 0, &slot_bytes(1, 0, 1), None, 0, true);
        assert!(check(&l, &[ok]).violations.is_empty());
        let later = observe(1, 0, &slot_bytes(1, 0, 2), None, 0, true);
        assert!(check(&l, &[later]).violations.is_empty());
    }

    #[test]
    fn lost_or_rolled_back_write_fails() {
        let l = ledger(0, vec![1, 2], 2);
        let old = observe(1, 0, &slot_bytes(1, 0, 1), None, 0, true);
        assert_eq!(check(&l, &[old]).violations.len(), 1);
        let zeros = observe(1, 0, &vec![0u8; SLOT], None, 0, true);
        assert_eq!(check(&l, &[zeros]).violations.len(), 1);
        // Never read back at all.
        assert_eq!(check(&l, &[]).violations.len(), 1);
    }
}
