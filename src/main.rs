//! `cirrus`: one binary, one subcommand per role. This file only parses arguments and
//! dispatches; each role's logic lives in its crate (or a module beside this file for
//! the commands that orchestrate several roles: `up`, `doctor`, `upgrade`).

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod doctor;
mod up;
mod upgrade;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cirrus",
    version,
    about = "Cirrus: a userspace parallel filesystem for cloud VMs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a metadata server (one of the three raft voters).
    Meta(cirrus_meta::MetaArgs),
    /// Run a data server.
    Data(cirrus_data::DataArgs),
    /// Mount the filesystem: `cirrus mount H1:7001,H2:7001,H3:7001 MOUNTPOINT`.
    Mount(cirrus_client::cli::MountArgs),
    /// Start a whole local cluster (3 meta + N data on 127.0.0.1) and mount it.
    Up(up::UpArgs),
    /// Show the cluster: leader, term, nodes, chains.
    Status(cirrus_client::cli::StatusArgs),
    /// Check every endpoint and local prerequisite; name what is broken and the fix.
    Doctor(doctor::DoctorArgs),
    /// Rolling upgrade helpers: the restart order (`plan`) and the health gate to pass
    /// before and after each node's restart (`wait`).
    Upgrade(upgrade::UpgradeArgs),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CIRRUS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// What this invocation does: a subcommand, or the `mount.cirrus` helper when the binary
/// is called through a symlink of that name (`mount -t cirrus`, fstab), which mount(8)
/// runs as `mount.cirrus SPEC DIR [-o OPTIONS]`.
enum Job {
    Cmd(Cmd),
    MountHelper(Vec<String>),
}

fn job() -> Job {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "mount.cirrus" {
        return Job::MountHelper(args.collect());
    }
    Job::Cmd(Cli::parse().cmd)
}

fn main() -> std::process::ExitCode {
    let job = job();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cirrus: start tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let cmd = match job {
            Job::Cmd(c) => c,
            Job::MountHelper(argv) => return cirrus_client::cli::run_mount_helper(argv).await,
        };
        match cmd {
            Cmd::Meta(a) => cirrus_meta::run(a).await,
            Cmd::Data(a) => cirrus_data::run(a).await,
            Cmd::Mount(a) => cirrus_client::cli::run_mount(a).await,
            Cmd::Up(a) => up::run(a).await,
            Cmd::Status(a) => cirrus_client::cli::run_status(a).await,
            Cmd::Doctor(a) => doctor::run(a).await,
            Cmd::Upgrade(a) => upgrade::run(a).await,
        }
    });
    // A FUSE session thread may still sit in a blocking read after a lazy unmount: do not
    // let dropping the runtime wait for it.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cirrus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
