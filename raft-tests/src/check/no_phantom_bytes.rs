//! Property: no read ever returns bytes that were never written to that range. Every
//! block read is zeros (a hole) or the stamp of a write issued to exactly that file,
//! slot and block (acknowledged or not); anything else (garbage, another range's data,
//! a sequence number never issued) is a violation.

use super::CheckResult;
use crate::workload::data::{FileLedger, ReadObs};
use std::collections::BTreeMap;

pub fn check(ledgers: &BTreeMap<u32, FileLedger>, reads: &[ReadObs]) -> CheckResult {
    let mut v = Vec::new();
    let mut blocks = 0usize;
    for r in reads {
        let issued = ledgers
            .get(&r.file)
            .and_then(|l| l.issued.get(&r.slot))
            .cloned()
            .unwrap_or_default();
        blocks += r.seqs.len();
        for (i, (kind, seq)) in r.seqs.iter().enumerate() {
            let bad = match kind {
                2 => Some(
                    r.blocks
                        .iter()
                        .find(|(b, _)| *b == i as u32)
                        .map(|(_, d)| d.clone())
                        .unwrap_or_else(|| "garbage".into()),
                ),
                1 if !issued.contains(seq) => Some(format!("seq {seq}, never issued to this slot")),
                _ => None,
            };
            if let Some(what) = bad {
                v.push(format!(
                    "file {} slot {} block {i} (read at {:.3}s{}): {what}",
                    r.file,
                    r.slot,
                    r.at_ns as f64 / 1e9,
                    if r.after_heal { ", after heal" } else { "" }
                ));
                break;
            }
        }
    }
    CheckResult::new(
        "no_phantom_bytes",
        format!("{} reads, {blocks} blocks", reads.len()),
        v,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::data::{block_bytes, observe, slot_bytes, BLOCK};

    fn ledger() -> BTreeMap<u32, FileLedger> {
        let mut l = FileLedger {
            ino: 9,
            ..Default::default()
        };
        l.issued.insert(0, vec![1, 2]);
        BTreeMap::from([(1, l)])
    }

    #[test]
    fn written_blocks_and_holes_pass() {
        let mut d = slot_bytes(1, 0, 2);
        d[0..BLOCK].fill(0);
        assert!(check(&ledger(), &[observe(1, 0, &d, None, 0, false)])
            .violations
            .is_empty());
    }

    #[test]
    fn corrupt_misplaced_or_invented_blocks_fail() {
        let mut corrupt = slot_bytes(1, 0, 1);
        corrupt[5000] ^= 0xff;
        let mut misplaced = slot_bytes(1, 0, 1);
        misplaced[0..BLOCK].copy_from_slice(&block_bytes(1, 0, 1, 5));
        let invented = slot_bytes(1, 0, 7);
        for d in [corrupt, misplaced, invented] {
            assert_eq!(
                check(&ledger(), &[observe(1, 0, &d, None, 0, false)])
                    .violations
                    .len(),
                1
            );
        }
    }
}
