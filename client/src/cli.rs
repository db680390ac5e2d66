//! `cirrus mount` and `cirrus status`.

/// Arguments of `cirrus mount`.
#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    /// Meta group addresses, H1:7001,H2:7001,H3:7001.
    pub meta: String,
    /// Where to mount; must be an existing, empty, unmounted directory.
    pub mountpoint: std::path::PathBuf,
}

/// Arguments of `cirrus status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Meta group addresses.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub meta: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run_mount(args: MountArgs) -> anyhow::Result<()> {
    anyhow::bail!("cirrus mount is not built yet (args: {args:?})")
}

pub async fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("cirrus status is not built yet (args: {args:?})")
}
