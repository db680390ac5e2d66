//! Cirrus data server (`cirrus data`).
//!
//! Must not depend on: cirrus-meta, cirrus-client.

#[cfg(test)]
mod fuzz_tests;
pub mod leftover;
pub mod node;
pub mod ops_metrics;
pub mod peer;
pub mod rangelock;
pub mod rebuild;
pub mod scrub;
pub mod server;
pub mod service;
pub mod store;
#[cfg(test)]
pub mod testing;
pub mod transport;
pub mod uring;

use std::path::PathBuf;

/// Arguments of `cirrus data`.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Meta group addresses, H1:7001,H2:7001,H3:7001.
    #[arg(long)]
    pub meta: String,
    /// Address to bind the data gRPC service.
    #[arg(long, default_value = "0.0.0.0:7101")]
    pub listen: String,
    /// Address other nodes and clients reach this server at, when it differs from --listen.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory holding the object files and this server's identity.
    #[arg(long)]
    pub dir: PathBuf,
    /// Address of the HTTP /metrics and /healthz endpoint (default: listen host, port 7102).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Rebuild copy rate limit, MiB/s.
    #[arg(long = "rebuild-rate", default_value_t = 200)]
    pub rebuild_rate_mib: u64,
    /// Scrub read rate limit, MiB/s.
    #[arg(long = "scrub-rate", default_value_t = 50)]
    pub scrub_rate_mib: u64,
    /// Pause between scrub passes.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub scrub_interval: std::time::Duration,
    /// Deadline of one forward to the next chain member.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub forward_timeout: std::time::Duration,
    /// Heartbeat period.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: std::time::Duration,
}

/// Runs a data server until SIGINT/SIGTERM.
pub async fn run(args: DataArgs) -> anyhow::Result<()> {
    server::run(args).await
}
