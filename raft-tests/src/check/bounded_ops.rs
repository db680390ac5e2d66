//! Property: no operation outlives its deadline. Every recorded call (metadata op, data
//! write+fsync, read) has an end, and the time from invocation to end stays within the
//! client's configured deadline plus a slack for scheduling on a loaded machine.

use super::CheckResult;
use crate::history::OpRecord;
use crate::workload::data::DataEvent;
use std::time::Duration;

pub struct Bounds {
    /// Longest a metadata op may take (executor total plus one attempt).
    pub meta: Duration,
    /// Longest a data event may take (write + fsync each have their own deadline).
    pub data: Duration,
}

/// Returns the result and the longest call seen (kind, seconds).
pub fn check(
    meta: &[(usize, OpRecord)],
    data: &[DataEvent],
    b: &Bounds,
) -> (CheckResult, (String, f64)) {
    let mut v = Vec::new();
    let mut longest = (String::from("none"), 0.0f64);
    for (_, r) in meta {
        let d = r.complete_ns.saturating_sub(r.invoke_ns);
        let s = d as f64 / 1e9;
        if s > longest.1 {
            longest = (format!("meta {} #{}", r.op.kind(), r.id), s);
        }
        if Duration::from_nanos(d) > b.meta {
            v.push(format!(
                "meta op #{} {:?} took {s:.2}s > {:?}",
                r.id, r.op, b.meta
            ));
        }
    }
    for e in data {
        let d = e.complete_ns.saturating_sub(e.invoke_ns);
        let s = d as f64 / 1e9;
        if s > longest.1 {
            longest = (
                format!("data {} file {} slot {}", e.kind, e.file, e.slot),
                s,
            );
        }
        if Duration::from_nanos(d) > b.data {
            v.push(format!(
                "data {} file {} slot {} took {s:.2}s > {:?}",
                e.kind, e.file, e.slot, b.data
            ));
        }
    }
    (
        CheckResult::new(
            "bounded_ops",
            format!(
                "{} meta ops, {} data calls; longest {} {:.2}s",
                meta.len(),
                data.len(),
                longest.0,
                longest.1
            ),
            v,
        ),
        longest,
    )
}
