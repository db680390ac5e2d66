//! `cirrus mount`, the `mount.cirrus` helper (`mount -t cirrus`, fstab) and `cirrus status`.

use crate::mount::{mount, MountOptions};
use cirrus_proto::{net, pb, CallPolicy, MetaConn};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `cirrus mount`.
#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    /// Meta group addresses, H1:7001,H2:7001,H3:7001.
    pub meta: String,
    /// Where to mount; must be an existing, empty, unmounted directory.
    pub mountpoint: PathBuf,
    /// Stay in the foreground until unmounted (default: return once the mount is ready
    /// and keep serving it from a background process).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Mount options, comma separated (see README: allow_other, ro, nonempty,
    /// deadline=30s, connect_timeout=10s, log=FILE).
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// Longest any filesystem call may take through a failover before it fails.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// Longest the first contact with the meta group may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Log file of the background process (default: in the temp dir, named after the mount point).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
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
    let mut o = MountOptions::new(args.meta, args.mountpoint);
    o.foreground = args.foreground;
    o.deadline = args.deadline;
    o.connect_timeout = args.connect_timeout;
    o.log_file = args.log_file;
    for list in &args.options {
        o.apply_options(list)?;
    }
    mount(o).await?;
    Ok(())
}

/// `mount.cirrus SPEC DIR [-sfnv] [-o OPTIONS] [-t TYPE]`, as mount(8) calls helpers.
/// `argv` excludes argv[0].
pub async fn run_mount_helper(argv: Vec<String>) -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(
                it.next()
                    .ok_or_else(|| anyhow::anyhow!("mount.cirrus: -o needs a value"))?,
            ),
            "-t" | "-N" => {
                it.next();
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" => {}
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s if s.starts_with('-') => anyhow::bail!("mount.cirrus: unknown flag {s}"),
            _ => positional.push(a),
        }
    }
    let [meta, dir]: [String; 2] = positional.try_into().map_err(|p: Vec<String>| {
        anyhow::anyhow!(
            "usage: mount.cirrus H1:7001,H2:7001,H3:7001 MOUNTPOINT [-o options] (got {} arguments)",
            p.len()
        )
    })?;
    let mut o = MountOptions::new(meta, PathBuf::from(dir));
    for list in &options {
        o.apply_options(list)?;
    }
    if fake {
        return Ok(());
    }
    mount(o).await?;
    Ok(())
}

async fn cluster_info(addr: &str, wait: Duration) -> Result<pb::ClusterInfoReply, String> {
    let ch = net::channel(addr).map_err(|e| e.to_string())?;
    let mut c = net::meta_client(ch);
    match tokio::time::timeout(wait, c.cluster_info(pb::ClusterInfoRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(cirrus_proto::from_status(&s).to_string()),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}

async fn data_info(addr: &str, wait: Duration) -> Result<pb::DataInfoReply, String> {
    let ch = net::channel(addr).map_err(|e| e.to_string())?;
    let mut c = net::data_client(ch);
    match tokio::time::timeout(wait, c.info(pb::DataInfoRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(cirrus_proto::from_status(&s).to_string()),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Collects the cluster's state as JSON (also what the table is printed from).
pub async fn status_json(meta: &str, wait: Duration) -> anyhow::Result<serde_json::Value> {
    use serde_json::json;
    let addrs = cirrus_proto::leader::parse_addrs(meta)?;
    let conn = MetaConn::new(
        addrs.clone(),
        CallPolicy {
            per_try: wait.min(Duration::from_secs(3)),
            total: wait,
        },
    )?;
    conn.connect()
        .await
        .map_err(|e| anyhow::anyhow!("meta group {meta} unreachable: {e}"))?;
    let cid = conn.cluster_id();
    let st = conn
        .call("status", |mut c| async move {
            c.status(pb::ClusterInfoRequest {}).await
        })
        .await
        .map_err(|e| anyhow::anyhow!("status from the meta leader: {e}"))?;
    let leader = st.leader.clone().unwrap_or_default();
    // Every member the leader knows, plus the addresses given.
    let mut members: Vec<(u64, String)> = leader
        .members
        .iter()
        .map(|m| (m.id, m.address.clone()))
        .collect();
    for a in &addrs {
        if !members.iter().any(|(_, x)| x == a) {
            members.push((0, a.clone()));
        }
    }
    let mut metas = Vec::new();
    for (id, addr) in members {
        match cluster_info(&addr, Duration::from_secs(2)).await {
            Ok(i) => metas.push(json!({
                "id": if id == 0 { i.node_id } else { id }, "address": addr, "state": i.role,
                "term": i.term, "last_applied": i.last_applied, "commit_index": i.commit_index,
                "leader_id": i.leader_id,
            })),
            Err(e) => metas.push(json!({
                "id": id, "address": addr, "state": "unreachable", "error": e,
            })),
        }
    }
    let table = st.table.clone().unwrap_or_default();
    let mut datas = Vec::new();
    for s in &table.servers {
        let info = data_info(&s.address, Duration::from_secs(2)).await;
        datas.push(json!({
            "id": s.id, "address": s.address,
            "state": if s.alive { "alive" } else { "dead" },
            "capacity_bytes": s.capacity_bytes, "free_bytes": s.free_bytes,
            "last_heartbeat_ms": s.last_heartbeat_ms,
            "reachable": info.is_ok(),
            "direct_io": info.as_ref().map(|i| i.direct_io).unwrap_or(false),
            "objects": info.as_ref().map(|i| i.objects).unwrap_or(0),
            "error": info.err(),
        }));
    }
    let chains: Vec<_> = table
        .chains
        .iter()
        .map(|c| {
            let healthy = c.members.len() as u32 >= table.replicas && c.syncing.is_empty();
            json!({
                "id": c.id, "version": c.version, "members": c.members, "syncing": c.syncing,
                "state": if c.members.is_empty() { "down" } else if healthy { "healthy" } else { "degraded" },
            })
        })
        .collect();
    Ok(json!({
        "cluster_id": cid,
        "leader": { "id": leader.leader_id, "address": leader.leader_address, "term": leader.term,
                    "last_applied": leader.last_applied, "commit_index": leader.commit_index },
        "meta": metas,
        "data": datas,
        "replicas": table.replicas,
        "chains": chains,
        "inodes": st.inodes,
        "open_handles": st.open_handles,
    }))
}

pub async fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let v = status_json(&args.meta, Duration::from_secs(10)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!("cluster {}", s(&v["cluster_id"]));
    println!(
        "leader  meta {} at {} (term {}, applied {})",
        s(&v["leader"]["id"]),
        s(&v["leader"]["address"]),
        s(&v["leader"]["term"]),
        s(&v["leader"]["last_applied"])
    );
    println!("\nmeta nodes");
    for m in v["meta"].as_array().into_iter().flatten() {
        println!(
            "  {:>3}  {:<22} {:<12} term {:<4} applied {}{}",
            s(&m["id"]),
            s(&m["address"]),
            s(&m["state"]),
            s(&m["term"]),
            s(&m["last_applied"]),
            m["error"]
                .as_str()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
    println!("\ndata servers");
    for d in v["data"].as_array().into_iter().flatten() {
        println!(
            "  {:>3}  {:<22} {:<6} free {} of {}{}",
            s(&d["id"]),
            s(&d["address"]),
            s(&d["state"]),
            gib(d["free_bytes"].as_u64().unwrap_or(0)),
            gib(d["capacity_bytes"].as_u64().unwrap_or(0)),
            d["error"]
                .as_str()
                .map(|e| format!("  (unreachable: {e})"))
                .unwrap_or_default()
        );
    }
    println!("\nchains (replicas {})", s(&v["replicas"]));
    for c in v["chains"].as_array().into_iter().flatten() {
        println!(
            "  {:>3}  v{:<4} {:<9} members {}{}",
            s(&c["id"]),
            s(&c["version"]),
            s(&c["state"]),
            s(&c["members"]),
            if c["syncing"].as_array().is_some_and(|a| !a.is_empty()) {
                format!(" syncing {}", s(&c["syncing"]))
            } else {
                String::new()
            }
        );
    }
    println!(
        "\n{} inodes, {} open handles",
        s(&v["inodes"]),
        s(&v["open_handles"])
    );
    Ok(())
}
