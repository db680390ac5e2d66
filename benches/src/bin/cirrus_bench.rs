//! `cirrus-bench`: Cirrus against the local disk, GlusterFS and CephFS, side by side in
//! one run. See benches/README.md for the jobs and how to read the output.
//!
//! `cargo build --release --bin cirrus && cargo run --release -p cirrus-benches --bin cirrus-bench -- --scale 0.1`

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cirrus-bench",
    about = "Benchmark Cirrus against local disk, GlusterFS and CephFS in one run"
)]
struct Cli {
    #[command(flatten)]
    cfg: cirrus_benches::runner::Config,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "cirrus-bench: warning: not root; GlusterFS, CephFS, FUSE mounts and cache drops need root"
        );
    }
    match cirrus_benches::runner::run(&cli.cfg) {
        Ok(report) => {
            println!("{}", report.table());
            println!(
                "results: {}/results.{{json,md,svg,png}}",
                cli.cfg.out.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cirrus-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
