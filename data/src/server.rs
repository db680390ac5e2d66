//! `cirrus data` as a process: the persisted identity (server uuid, cluster id, server
//! id), registration with the meta group (refusing a group of another cluster), the
//! heartbeat loop (chain table cache, garbage, rebuild start/stop, caught-up reports),
//! scrub, /metrics + /healthz, and the gRPC server until SIGINT/SIGTERM.

use crate::node::{Node, NodeConfig};
use crate::rebuild::{RebuildConfig, Rebuilds};
use crate::scrub::{self, ScrubConfig};
use crate::service::DataService;
use crate::store::file::FileStore;
use crate::store::ChunkStore;
use crate::DataArgs;
use anyhow::{bail, Context};
use cirrus_proto::leader::parse_addrs;
use cirrus_proto::metrics::{self, Registry};
use cirrus_proto::{net, pb, CallPolicy, MetaConn};
use cirrus_types::ChainTable;
use cirrus_types::{ClusterId, FsError, ServerId};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const IDENTITY_FORMAT: &str = "cirrus-data-identity";

/// What a data dir remembers about itself (`<dir>/identity.json`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Identity {
    pub format: String,
    pub version: u32,
    pub server_uuid: String,
    pub cluster_id: Option<String>,
    pub server_id: Option<u64>,
}

impl Identity {
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Identity> {
        let p = dir.join("identity.json");
        match std::fs::read(&p) {
            Ok(b) => {
                let id: Identity =
                    serde_json::from_slice(&b).with_context(|| format!("parse {}", p.display()))?;
                if id.format != IDENTITY_FORMAT || id.version != 1 {
                    bail!(
                        "{} is not a version-1 data server identity ({:?} v{})",
                        p.display(),
                        id.format,
                        id.version
                    );
                }
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity {
                    format: IDENTITY_FORMAT.into(),
                    version: 1,
                    server_uuid: format!("{:032x}", rand::random::<u128>()),
                    cluster_id: None,
                    server_id: None,
                };
                id.save(dir)?;
                Ok(id)
            }
            Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
        }
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let p = dir.join("identity.json");
        let tmp = dir.join("identity.json.tmp");
        let mut f = std::fs::File::create(&tmp).context("create identity file")?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all().context("fsync identity file")?;
        std::fs::rename(&tmp, &p).context("install identity file")?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Raises RLIMIT_NOFILE to its hard limit: every open object holds two descriptors.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The address to advertise: `--advertise`, else `--listen` unless it is a wildcard,
/// else the local address the kernel would use to reach the first meta node.
fn advertise_addr(args: &DataArgs, bound_port: u16, meta: &[String]) -> anyhow::Result<String> {
    if let Some(a) = &args.advertise {
        return Ok(a.clone());
    }
    let (host, _) = args
        .listen
        .rsplit_once(':')
        .with_context(|| format!("--listen {:?} is not host:port", args.listen))?;
    if host != "0.0.0.0" && host != "[::]" && host != "::" {
        return Ok(format!("{host}:{bound_port}"));
    }
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").context("probe local address")?;
    let first = meta.first().context("no meta address")?;
    probe.connect(first).with_context(|| {
        format!("find the local address that reaches {first}; pass --advertise")
    })?;
    let ip = probe.local_addr()?.ip();
    Ok(format!("{ip}:{bound_port}"))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs a data server until SIGINT/SIGTERM.
pub async fn run(args: DataArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("create data dir {}", args.dir.display()))?;
    raise_nofile();
    let store = Arc::new(
        FileStore::open(&args.dir)
            .with_context(|| format!("open object store in {}", args.dir.display()))?,
    );
    let mut ident = Identity::load_or_create(&args.dir)?;
    let meta_addrs = parse_addrs(&args.meta)?;
    let meta = Arc::new(MetaConn::new(
        meta_addrs.clone(),
        CallPolicy {
            per_try: Duration::from_secs(3),
            total: Duration::from_secs(10),
        },
    )?);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| {
            format!(
                "bind the data service on {} (another process on that port? a wrong address?)",
                args.listen
            )
        })?;
    let port = listener.local_addr()?.port();
    let advertise = advertise_addr(&args, port, &meta_addrs)?;

    let cluster = loop {
        match meta.connect().await {
            Ok(c) => break c,
            Err(e) => tracing::warn!(
                meta = ?meta_addrs, err = %e,
                "cannot reach an initialised meta group yet; retrying"
            ),
        }
    };
    if let Some(mine) = &ident.cluster_id {
        if *mine != cluster.to_string() {
            bail!(
                "data dir {} belongs to cluster {mine}, but the meta group at {} is cluster {cluster}: \
                 refusing to join another cluster (use an empty --dir for a new server)",
                args.dir.display(),
                args.meta
            );
        }
    }
    let (capacity, free) = store.space();
    let reg = pb::RegisterServerRequest {
        cluster_id: ident.cluster_id.clone().unwrap_or_default(),
        server_uuid: ident.server_uuid.clone(),
        address: advertise.clone(),
        capacity_bytes: capacity,
        free_bytes: free,
    };
    let reply = loop {
        let r = meta
            .call("register server", |mut c| {
                let req = reg.clone();
                async move { c.register_server(req).await }
            })
            .await;
        match r {
            Ok(r) => break r,
            Err(e @ FsError::WrongCluster { .. }) => {
                bail!("the meta group refused this data server: {e}")
            }
            Err(e) => tracing::warn!(err = %e, "register with the meta group; retrying"),
        }
    };
    if reply.cluster_id != cluster.to_string() {
        bail!(
            "registration answered for cluster {}, expected {cluster}",
            reply.cluster_id
        );
    }
    // Written only when it changed: a restart on a full disk must not fail here (a chaos
    // run had three servers exit with ENOSPC at this step after their disks filled).
    let known = (Some(cluster.to_string()), Some(reply.server_id));
    if (ident.cluster_id.clone(), ident.server_id) != known {
        ident.cluster_id = known.0;
        ident.server_id = known.1;
        ident
            .save(&args.dir)
            .context("save the data server identity after registration")?;
    }
    let me = ServerId(reply.server_id);
    tracing::info!(server_id = %me, %cluster, address = %advertise, direct_io = store.direct_io(), "registered");

    let registry = Registry::new();
    let node = Arc::new(Node::new(
        store.clone() as Arc<dyn ChunkStore>,
        cluster,
        me,
        advertise.clone(),
        ChainTable::default(),
        Some(meta.clone()),
        registry.clone(),
        NodeConfig {
            forward_timeout: args.forward_timeout,
        },
    ));
    if let Err(e) = node.refresh().await {
        tracing::warn!(err = %e, "first chain table fetch (the heartbeat will bring it)");
    }

    let metrics_addr = args
        .metrics_listen
        .clone()
        .unwrap_or_else(|| metrics::default_metrics_addr(&args.listen));
    let last_hb = Arc::new(AtomicI64::new(now_ms()));
    {
        let last = last_hb.clone();
        registry.set_health(move || {
            let age = now_ms() - last.load(Ordering::Relaxed);
            if age > 10_000 {
                Err(format!(
                    "no heartbeat accepted by the meta group for {age} ms"
                ))
            } else {
                Ok(())
            }
        });
    }
    let metrics_task = metrics::serve(&metrics_addr, registry.clone())
        .await
        .with_context(|| format!("bind the metrics endpoint on {metrics_addr}"))?;

    let hb_meta = Arc::new(MetaConn::new(
        meta_addrs.clone(),
        CallPolicy {
            per_try: Duration::from_millis(1500),
            total: Duration::from_secs(3),
        },
    )?);
    hb_meta.set_cluster_id(cluster);
    let hb = tokio::spawn(heartbeat_loop(
        node.clone(),
        hb_meta,
        last_hb,
        RebuildConfig {
            dir: args.dir.clone(),
            rate: args.rebuild_rate_mib.saturating_mul(1 << 20),
        },
        args.heartbeat_interval,
    ));
    let scrubber = tokio::spawn(scrub::run(
        node.clone(),
        ScrubConfig {
            rate: args.scrub_rate_mib.saturating_mul(1 << 20),
            interval: args.scrub_interval,
        },
    ));

    tracing::info!(listen = %args.listen, metrics = %metrics_addr, "data server serving");
    let gauges = tokio::spawn(crate::ops_metrics::run(
        node.clone(),
        registry.clone(),
        Duration::from_secs(2),
    ));
    // One port, two protocols: bulk Write/Read frames and gRPC for everything else.
    let (grpc_incoming, acceptor) = cirrus_proto::bulk::split_port(
        listener,
        net::ConnLimit::new("data", net::MAX_CONNECTIONS).counted(&registry),
        Arc::new(DataService::new(node.clone())),
        Some(registry.clone()),
        cirrus_proto::bulk::ProcessBudget::default(),
    );
    let r = net::server()
        .add_service(metrics::Metered::new(
            DataService::new(node.clone()).into_server(),
            registry.clone(),
        ))
        .serve_with_incoming_shutdown(grpc_incoming, shutdown_signal())
        .await;
    acceptor.abort();
    hb.abort();
    scrubber.abort();
    gauges.abort();
    metrics_task.abort();
    r.context("data gRPC server")?;
    Ok(())
}

async fn heartbeat_loop(
    node: Arc<Node>,
    meta: Arc<MetaConn>,
    last_ok: Arc<AtomicI64>,
    rcfg: RebuildConfig,
    every: Duration,
) {
    let mut rebuilds = Rebuilds::new(rcfg);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    let sweeping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        tick.tick().await;
        rebuilds.reconcile(&node);
        let (capacity, free) = node.store.space();
        let req = pb::HeartbeatRequest {
            cluster_id: node.cluster.to_string(),
            server_id: node.me.0,
            capacity_bytes: capacity,
            free_bytes: free,
            caught_up_chains: Vec::new(),
            caught_up: rebuilds
                .caught_up()
                .into_iter()
                .map(|(c, v)| pb::ChainRef {
                    id: c.0,
                    version: v.0,
                })
                .collect(),
            scrub_done_bytes: node.stats.scrub_done_bytes.get(),
            scrub_errors: node.stats.scrub_errors.get(),
        };
        let r = meta
            .call("heartbeat", |mut c| {
                let req = req.clone();
                async move { c.heartbeat(req).await }
            })
            .await;
        match r {
            Ok(reply) => {
                failures = 0;
                last_ok.store(now_ms(), Ordering::Relaxed);
                if let Some(t) = &reply.table {
                    node.set_table(ChainTable::from(t));
                }
                // Copies of chains this server has left, once those chains are at full R
                // elsewhere; one sweep at a time, off the heartbeat's path.
                if !sweeping.swap(true, Ordering::AcqRel) {
                    let (node, sweeping) = (node.clone(), sweeping.clone());
                    tokio::spawn(async move {
                        crate::leftover::drop_left_chains(&node).await;
                        sweeping.store(false, Ordering::Release);
                    });
                }
                let garbage: Vec<_> = reply
                    .garbage
                    .iter()
                    .filter_map(|o| cirrus_proto::convert::object_key(Some(o)).ok())
                    .collect();
                if !garbage.is_empty() {
                    if let Err(e) = node.delete(&garbage).await {
                        tracing::warn!(err = %e, "delete garbage objects");
                    }
                }
            }
            Err(e) => {
                failures += 1;
                // Once per ~10 failures: a meta failover produces a burst.
                if failures % 10 == 1 {
                    tracing::warn!(meta = ?meta.addrs(), err = %e, "heartbeat to the meta group failed");
                }
            }
        }
        rebuilds.reconcile(&node);
        if let Ok(mut v) = node.rebuild_view.lock() {
            let caught_up = rebuilds.caught_up().iter().map(|(c, _)| c.0).collect();
            *v = (rebuilds.rebuilding(), caught_up);
        }
        node.gc_locks();
    }
}

/// Parses a cluster id (for tests and tools).
pub fn parse_cluster(s: &str) -> Result<ClusterId, FsError> {
    s.parse()
}
