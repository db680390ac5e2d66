//! Cirrus metadata service (`cirrus meta`): the pure state machine (`state`), the
//! durable raft log (`log_store`) and state machine store (`sm_store`), the raft
//! transport (`network`), group bootstrap (`bootstrap`), the node's request paths and
//! leader duties (`node`) and the gRPC service (`service`). `run` wires them together.
//!
//! Must not depend on: cirrus-data, cirrus-client.

pub mod bootstrap;
pub mod door;
mod frame;
pub mod heartbeat;
pub mod identity;
pub mod locks;
pub mod log_store;
pub mod network;
pub mod node;
pub mod ops_metrics;
pub mod placement;
pub mod raft_types;
pub mod service;
pub mod sm_store;
pub mod state;

/// Largest request a client or data server may send to the meta API (raft messages
/// between meta nodes keep the general 80 MiB). The largest legitimate ones are a
/// 64 KiB xattr value and a release batch of 4096 handles (about 40 KiB), so with this
/// a gRPC connection's 256 streams hold at most 256 MiB of requests at meta, not 20 GiB.
pub const META_REQUEST_MAX: usize = 1 << 20;

use anyhow::Context;
use std::sync::Arc;

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
    /// Handles of a client that has not renewed its lease for this long are released.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_lease: Duration,
    /// Take a snapshot (and purge the log behind it) every this many applied entries.
    #[arg(long, default_value_t = 2000)]
    pub snapshot_every: u64,
}

/// Takes an exclusive lock on the directory so two processes never share one raft log.
fn lock_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a valid, owned file descriptor; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "{} is locked by another process: is another `cirrus meta` using --dir {}?",
            path.display(),
            dir.display()
        );
    }
    Ok(f)
}

/// The raft timing and log policy of the meta group.
pub fn raft_config(snapshot_every: u64) -> anyhow::Result<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "cirrus-meta".into(),
        // Elections only after 0.75-1.5 s of silence: a loaded 2-core VM still delivers
        // 100 ms heartbeats well inside that, so failover is about a second.
        heartbeat_interval: 100,
        election_timeout_min: 750,
        election_timeout_max: 1500,
        // Snapshot chunks are written to memory; the last one installs with an fsync.
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every.max(10)),
        // Keep a tail behind the snapshot so a briefly lagging follower still catches up
        // from the log; a wiped or long-gone one gets the snapshot.
        max_in_snapshot_log_to_keep: (snapshot_every / 4).max(10),
        ..Default::default()
    };
    Ok(c.validate()?)
}

/// Runs a meta node until SIGINT/SIGTERM.
pub async fn run(args: MetaArgs) -> anyhow::Result<()> {
    let peers = bootstrap::parse_peers(&args.peers, args.id).context("parse --peers")?;
    if !(1..=3).contains(&args.replicas) {
        anyhow::bail!("--replicas {} is outside 1..=3", args.replicas);
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("create meta dir {}", args.dir.display()))?;
    let _lock = lock_dir(&args.dir)?;
    let has_state = args.dir.join("raft-vote").exists() || args.dir.join("snapshot").exists();
    let identity =
        Arc::new(identity::Identity::open(&args.dir).context("read the persisted cluster id")?);
    let log = log_store::LogStore::<raft_types::TypeConfig>::open(&args.dir)
        .with_context(|| format!("open the raft log in {}", args.dir.display()))?;
    let sm = sm_store::SmStore::open(&args.dir, identity.clone())
        .with_context(|| format!("open the state machine snapshot in {}", args.dir.display()))?;
    let shared = sm.shared();
    let network = network::Network::new(args.id, identity.clone());
    let config = Arc::new(raft_config(args.snapshot_every)?);
    let read_lease = node::read_lease(&config);
    let raft = raft_types::Raft::new(args.id, config, network, log, sm)
        .await
        .context("start raft")?;

    let registry = cirrus_proto::metrics::Registry::new();
    let labels = [("node", args.id.to_string())];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gauges = node::Gauges {
        term: registry.gauge("cirrus_meta_term", "current raft term", &labels),
        is_leader: registry.gauge("cirrus_meta_is_leader", "1 if this node leads", &labels),
        last_applied: registry.gauge(
            "cirrus_meta_last_applied",
            "index of the last applied raft entry",
            &labels,
        ),
        inodes: registry.gauge("cirrus_meta_inodes", "inodes in the namespace", &labels),
    };
    let node = Arc::new(node::MetaNode {
        id: args.id,
        raft: raft.clone(),
        shared,
        identity: identity.clone(),
        peers: peers.clone(),
        replicas: args.replicas,
        server_timeout: args.server_timeout,
        client_lease: args.client_lease,
        heartbeat_policy: heartbeat::HeartbeatPolicy::default(),
        leader: Default::default(),
        registry: registry.clone(),
        gauges,
        read_barrier: node::ReadBarrier::new(read_lease),
        lock_waits: locks::LockWaits::default(),
    });
    {
        let raft = raft.clone();
        registry.set_health(move || {
            let m = raft.metrics().borrow().clone();
            match m.current_leader {
                Some(_) => Ok(()),
                None => Err(format!("no raft leader known (term {})", m.current_term)),
            }
        });
    }
    let metrics_addr = args
        .metrics_listen
        .clone()
        .unwrap_or_else(|| cirrus_proto::metrics::default_metrics_addr(&args.listen));
    let metrics_task = cirrus_proto::metrics::serve(&metrics_addr, registry.clone())
        .await
        .with_context(|| format!("bind the metrics endpoint {metrics_addr}"))?;

    let addr: std::net::SocketAddr = tokio::net::lookup_host(&args.listen)
        .await
        .with_context(|| format!("resolve --listen {}", args.listen))?
        .next()
        .with_context(|| format!("--listen {} resolves to nothing", args.listen))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr} (is another process using the port?)"))?;
    let incoming = cirrus_proto::net::h2_only(
        cirrus_proto::net::incoming(
            listener,
            cirrus_proto::net::ConnLimit::new("meta", cirrus_proto::net::MAX_CONNECTIONS)
                .counted(&registry),
        ),
        cirrus_proto::net::OPENING_DEADLINE,
    );
    let meta_svc =
        cirrus_proto::pb::meta_server::MetaServer::new(service::MetaService { node: node.clone() })
            .max_decoding_message_size(META_REQUEST_MAX)
            .max_encoding_message_size(cirrus_proto::net::MAX_MESSAGE_BYTES);
    let raft_svc = cirrus_proto::pb::raft_server::RaftServer::new(network::RaftService {
        raft: raft.clone(),
        identity: identity.clone(),
    })
    .max_decoding_message_size(cirrus_proto::net::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(cirrus_proto::net::MAX_MESSAGE_BYTES);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        cirrus_proto::net::server()
            .add_service(cirrus_proto::metrics::Metered::new(
                meta_svc,
                registry.clone(),
            ))
            .add_service(cirrus_proto::metrics::Metered::new(
                raft_svc,
                registry.clone(),
            ))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    tracing::info!(id = args.id, %addr, metrics = %metrics_addr, dir = %args.dir.display(), "meta node serving");

    let boot = tokio::spawn(bootstrap::bootstrap(
        raft.clone(),
        args.id,
        peers,
        has_state,
    ));
    let duties = tokio::spawn(node::duties(node.clone()));
    let gauges = tokio::spawn(ops_metrics::run(
        node.clone(),
        registry.clone(),
        Duration::from_secs(1),
    ));

    wait_for_signal().await?;
    tracing::info!("shutting down");
    duties.abort();
    gauges.abort();
    boot.abort();
    let _ = stop_tx.send(());
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(?e, "raft shutdown");
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    metrics_task.abort();
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod store_tests;

#[cfg(test)]
mod golden_tests;

#[cfg(test)]
mod fuzz_tests;
