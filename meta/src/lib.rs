//! Cirrus metadata service (`cirrus meta`).
//!
//! Must not depend on: cirrus-data, cirrus-client.

mod frame;
pub mod identity;
pub mod log_store;
pub mod network;
pub mod raft_types;
pub mod sm_store;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `cirrus meta`.
#[derive(clap::Args, Debug, Clone)]
pub struct MetaArgs {
    /// This node's raft id (1, 2 or 3); must appear in --peers.
    #[arg(long)]
    pub id: u64,
    /// Address to bind the gRPC service (client API and raft traffic), e.g. 0.0.0.0:7001.
    #[arg(long, default_value = "0.0.0.0:7001")]
    pub listen: String,
    /// Every voter as ID=HOST:PORT, comma separated, this node included.
    #[arg(long)]
    pub peers: String,
    /// Directory for the raft log, state machine snapshots and the node's identity.
    #[arg(long)]
    pub dir: PathBuf,
    /// Address of the HTTP /metrics and /healthz endpoint (default: listen host, port 7002).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Replication factor R of data chains (1..=3); fewer live servers give shorter chains.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// A data server that has not heartbeated for this long is dropped from its chains.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub server_timeout: Duration,
}

/// Runs a meta node until SIGINT/SIGTERM.
pub async fn run(args: MetaArgs) -> anyhow::Result<()> {
    anyhow::bail!("cirrus meta is not built yet (args: {args:?})")
}

#[cfg(test)]
mod store_tests;
