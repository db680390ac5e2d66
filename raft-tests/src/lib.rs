//! `cirrus-raft-tests`: everything that tests Cirrus as a distributed system from the
//! outside, with real processes on real sockets.
//!
//! - `cluster`: the shared test-cluster builder (3 meta + N data on 127.0.0.1 ephemeral
//!   ports, temp dirs, kill/restart/pause, condition waits) used by every multi-process test.
//!
//! - `history`, `model`, `wgl`: recorded operations, the namespace model, and a
//!   Wing-Gong-Lowe linearizability checker.
//! - `workload`: metadata clients over the wire, data writers through the client library.
//! - `check`: one checker per property; `chaos`: the `cirrus-chaos` harness (faults from a
//!   seeded schedule, network namespaces, reports).
//!
//! Must not depend on: cirrus-meta, cirrus-data (servers are tested from the outside, as
//! processes). It uses the public API of `cirrus-client` for the data workload, because
//! that is what applications and the FUSE mount run.

pub mod chaos;
pub mod check;
pub mod cluster;

pub use cluster::{cirrus_bin, ClusterBuilder, TestCluster};
pub mod history;
pub mod model;
pub mod netns;
pub mod posix;
pub mod wgl;
pub mod workload;
