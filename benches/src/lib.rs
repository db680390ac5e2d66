//! Benchmark support for Cirrus: the jobs (fio sequential throughput, an mdtest-like
//! metadata job), the systems they run on (local disk, the FUSE ceiling, GlusterFS,
//! CephFS, Cirrus), the run plan with its progress bar, and the report (table, JSON,
//! SVG).
//!
//! The `cirrus-bench` binary is a thin CLI over [`runner`]. The criterion micro-benches
//! live in `benches/micro.rs`. Every baseline is measured in the same run as Cirrus,
//! because the machines are shared and noisy and only ratios hold.
//!
//! Must not depend on: cirrus-meta or cirrus-data internals (Cirrus is driven as the
//! `cirrus` binary, the way an operator runs it, and through the public client library
//! for the library rows).

pub mod fio;
pub mod library;
pub mod mdtest;
pub mod nullfs;
pub mod progress;
pub mod report;
pub mod runner;
pub mod sys;
pub mod systems;
