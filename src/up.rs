//! `cirrus up`: a whole local cluster plus a mount, in one command.

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Directory holding every node's state, logs and cluster.json.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("cirrus up is not built yet (args: {args:?})")
}
