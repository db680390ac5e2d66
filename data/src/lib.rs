//! Cirrus data server (`cirrus data`).
//!
//! Must not depend on: cirrus-meta, cirrus-client.

pub mod rangelock;
pub mod store;
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
}

/// Runs a data server until SIGINT/SIGTERM.
pub async fn run(args: DataArgs) -> anyhow::Result<()> {
    anyhow::bail!("cirrus data is not built yet (args: {args:?})")
}
