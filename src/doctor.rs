//! `cirrus doctor`: checks every endpoint and local prerequisite.

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Meta group addresses.
    #[arg(long)]
    pub meta: Option<String>,
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    anyhow::bail!("cirrus doctor is not built yet (args: {args:?})")
}
