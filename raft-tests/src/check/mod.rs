//! Checkers, one property per file. Each takes what the run recorded (and, for
//! convergence, the cluster) and returns a [`CheckResult`].
//!
//! - `linearizable`: metadata histories are linearizable against the namespace model.
//! - `acked_writes_survive`: every write acknowledged by fsync reads back after heal.
//! - `no_phantom_bytes`: no read returns bytes never written to that range.
//! - `exclusive_locks`: no exclusive lock hold overlaps another hold of the same file.
//! - `bounded_ops`: no operation outlives its deadline.
//! - `bounded_memory`: no node's resident memory passes a ceiling during the run.
//! - `serves_after_heal`: after heal the cluster serves again within a bound.
//! - `converged`: after heal every chain is at full R and the three meta nodes hold
//!   identical state digests.

pub mod acked_writes_survive;
pub mod bounded_memory;
pub mod bounded_ops;
pub mod converged;
pub mod exclusive_locks;
pub mod linearizable;
pub mod no_phantom_bytes;
pub mod serves_after_heal;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// The checker could not decide (search budget exhausted, nothing to check).
    Unknown,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub status: Status,
    /// What was checked, in numbers ("412 ops in 12 groups").
    pub summary: String,
    pub violations: Vec<String>,
}

impl CheckResult {
    pub fn new(name: &'static str, summary: String, violations: Vec<String>) -> Self {
        let status = if violations.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        };
        CheckResult {
            name,
            status,
            summary,
            violations,
        }
    }
}
