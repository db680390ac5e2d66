//! Property: the metadata history of every group is linearizable against the namespace
//! model (`model::NsModel`). Groups are independent by construction, so they are
//! checked separately, each within a search budget.

use super::{CheckResult, Status};
use crate::history::{OpRecord, Outcome};
use crate::model::NsModel;
use crate::wgl::{self, Operation, Verdict};
use std::collections::BTreeMap;
use std::time::Duration;

/// Checks `history` (op, group) with `budget` of search time per group.
pub fn check(history: &[(usize, OpRecord)], budget: Duration) -> CheckResult {
    let mut groups: BTreeMap<usize, Vec<&OpRecord>> = BTreeMap::new();
    for (g, r) in history {
        groups.entry(*g).or_default().push(r);
    }
    let mut violations = Vec::new();
    let mut gave_up = Vec::new();
    let mut checked = 0usize;
    for (g, recs) in &groups {
        let ops: Vec<Operation<_, _>> = recs
            .iter()
            .filter_map(|r| match &r.outcome {
                // Certainly without effect: not part of the history.
                Outcome::Fail { .. } => None,
                Outcome::Ok { ret } => Some(Operation {
                    id: r.id,
                    call: r.invoke_ns,
                    ret: Some(r.complete_ns),
                    op: r.op.clone(),
                    out: Some(ret.clone()),
                }),
                Outcome::Info { .. } => Some(Operation {
                    id: r.id,
                    call: r.invoke_ns,
                    ret: None,
                    op: r.op.clone(),
                    out: None,
                }),
            })
            .collect();
        checked += ops.len();
        match wgl::check(&NsModel, &ops, budget) {
            Verdict::Linearizable => {}
            Verdict::GaveUp { explored } => gave_up.push(format!("group {g} ({explored} states)")),
            Verdict::Violation {
                stuck_at,
                prefix,
                state,
            } => {
                let op = recs.iter().find(|r| r.id == stuck_at);
                let tail: Vec<String> = prefix
                    .iter()
                    .rev()
                    .take(6)
                    .filter_map(|id| recs.iter().find(|r| r.id == *id))
                    .map(|r| format!("#{} {:?} -> {:?}", r.id, r.op, r.outcome))
                    .collect();
                violations.push(format!(
                    "group {g}: op #{stuck_at} {:?} cannot be linearized; model state there: {state}; \
                     last linearized before it: [{}]",
                    op.map(|r| (&r.op, &r.outcome, r.invoke_ns, r.complete_ns)),
                    tail.join("; ")
                ));
            }
        }
    }
    let mut res = CheckResult::new(
        "linearizable",
        format!("{checked} ops in {} groups", groups.len()),
        violations,
    );
    if res.status == Status::Pass && (!gave_up.is_empty() || checked == 0) {
        res.status = Status::Unknown;
        if checked == 0 {
            res.summary.push_str("; nothing to check");
        } else {
            res.summary.push_str(&format!(
                "; search budget exhausted in {}",
                gave_up.join(", ")
            ));
        }
    }
    res
}
