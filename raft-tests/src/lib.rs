//! `cirrus-raft-tests`: everything that tests Cirrus as a distributed system from the
//! outside, with real processes on real sockets.
//!
//! - `cluster`: the shared test-cluster builder (3 meta + N data on 127.0.0.1 ephemeral
//!   ports, temp dirs, kill/restart/pause, condition waits) used by every multi-process test.
//!
//! Must not depend on: cirrus-meta, cirrus-data, cirrus-client internals. It drives the
//! `cirrus` binary and speaks the wire protocol (`cirrus-proto`) only, so it tests what
//! operators run.

pub mod cluster;

pub use cluster::{cirrus_bin, ClusterBuilder, TestCluster};
pub mod history;
pub mod model;
pub mod wgl;
