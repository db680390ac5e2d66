//! `cirrus doctor`: checks every meta and data endpoint it is told of or learns of, port by
//! port, and this machine's prerequisites, and names for each failure the host, the port,
//! what was tried and the likely fix. Exits non-zero on any failure.
//!
//! Order: the `--meta` endpoints (DNS, TCP to the gRPC and metrics ports, `/healthz`, gRPC
//! `ClusterInfo`), then the members they report, then the group as a whole (one cluster
//! id, a leader, addresses as the peers know them, clock skew), then the data servers from
//! the meta group's registry plus any `--data` (TCP, `/healthz`, `Data.Info`, cluster id,
//! advertised address, heartbeat), then the local checks of the role (data dirs, FUSE,
//! the mount point). Every probe has its own deadline (`--timeout`), so a dropped port
//! costs one deadline, not a hang.
//!
//! Metrics endpoints are found by the daemons' default convention, gRPC port + 1
//! (`--metrics-offset`, 0 skips them): the wire protocol does not report them.

mod local;
mod probe;
mod report;

use cirrus_proto::{net, pb, CallPolicy, MetaConn};
use cirrus_types::{ChainTable, DataInfo, MetaInfo, ServerEntry, ServerId};
use probe::{ConnectError, Health};
use report::{Finding, Report};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where `cirrus doctor` looks for the meta addresses when neither `--meta` nor
/// `CIRRUS_META` gives them (the Terraform module writes it on every node).
const META_ADDRS_FILE: &str = "/etc/cirrus/meta-addrs";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A meta node: every meta and data port, gRPC and metrics.
    Meta,
    /// A data server: every meta and data port, plus the data dirs (`--data-dir`).
    Data,
    /// A client: the gRPC ports only (clients need 7001 and 7101), /dev/fuse, fusermount3
    /// and the mount point (`--mountpoint`).
    Client,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Meta group addresses, H1:7001,H2:7001,H3:7001 (default: $CIRRUS_META, then the
    /// file /etc/cirrus/meta-addrs).
    #[arg(long, env = "CIRRUS_META")]
    pub meta: Option<String>,
    /// The role of this machine: selects the ports it must reach and the local checks.
    /// Without it: every port, and only the local checks asked for by other flags.
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// More data servers to check (host:port, repeatable or comma separated), besides the
    /// ones the meta group knows: e.g. one that cannot register.
    #[arg(long = "data", value_delimiter = ',')]
    pub data: Vec<String>,
    /// A data directory of this machine to check for O_DIRECT and free space (repeatable).
    #[arg(long = "data-dir")]
    pub data_dirs: Vec<PathBuf>,
    /// The client mount point to check.
    #[arg(long)]
    pub mountpoint: Option<PathBuf>,
    /// Deadline of each single check (DNS, connect, handshake, stat).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Largest clock difference to a node that passes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub max_clock_skew: Duration,
    /// Metrics port = gRPC port + this (the daemons' default); 0 skips the metrics ports.
    #[arg(long, default_value_t = 1)]
    pub metrics_offset: u16,
    /// Least free space in each data dir, in MiB.
    #[arg(long, default_value_t = local::DEFAULT_MIN_FREE >> 20)]
    pub min_free_mib: u64,
    /// Readiness: also fail on "not yet" (no cluster id or leader, a data server not yet
    /// registered, the mount point not mounted). The boot's final step uses this.
    #[arg(long)]
    pub ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Meta,
    Data,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Meta => "meta",
            Kind::Data => "data",
        }
    }
    fn daemon(self) -> &'static str {
        match self {
            Kind::Meta => "meta node",
            Kind::Data => "data server",
        }
    }
}

/// One endpoint to check and how doctor knows of it.
#[derive(Clone, Debug)]
struct Endpoint {
    kind: Kind,
    addr: String,
    /// "--meta", "member list of the meta group", "--data", "meta group's registry".
    source: &'static str,
    /// The registry's entry, for data servers learned from it.
    server: Option<(ServerId, ServerEntry)>,
}

/// What one endpoint answered.
#[derive(Default)]
struct Answer {
    findings: Vec<Finding>,
    meta: Option<MetaInfo>,
    data: Option<DataInfo>,
}

#[derive(Clone, Copy)]
struct Opts {
    timeout: Duration,
    max_skew: Duration,
    metrics_offset: u16,
    check_metrics: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn meta_addrs(args: &DoctorArgs) -> Option<String> {
    if let Some(m) = &args.meta {
        return Some(m.clone());
    }
    std::fs::read_to_string(META_ADDRS_FILE)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let report = diagnose(&args).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        Ok(())
    } else {
        anyhow::bail!("doctor found {} failure(s)", report.failures())
    }
}

async fn diagnose(args: &DoctorArgs) -> Report {
    let mut rep = Report::default();
    let opts = Opts {
        timeout: args.timeout,
        max_skew: args.max_clock_skew,
        metrics_offset: args.metrics_offset,
        // Clients are only allowed the gRPC ports (README, security groups).
        check_metrics: args.metrics_offset != 0 && args.role != Some(Role::Client),
    };

    match meta_addrs(args) {
        None => rep.findings.push(Finding::fail(
            "meta",
            "meta group",
            "no meta addresses given",
            "pass --meta H1:7001,H2:7001,H3:7001 (or set CIRRUS_META)",
        )),
        Some(list) => match cirrus_proto::leader::parse_addrs(&list) {
            Err(e) => rep.findings.push(Finding::fail(
                "meta",
                "meta group",
                format!("bad --meta {list:?}: {e}"),
                "give host:port pairs separated by commas",
            )),
            Ok(told) => remote(args, opts, told, &mut rep).await,
        },
    }

    local_checks(args, &mut rep).await;
    rep.finish();
    rep
}

async fn remote(args: &DoctorArgs, opts: Opts, told: Vec<String>, rep: &mut Report) {
    // 1. The meta endpoints we were told of, then the members they report.
    let eps: Vec<Endpoint> = told
        .iter()
        .map(|a| Endpoint {
            kind: Kind::Meta,
            addr: a.clone(),
            source: "--meta",
            server: None,
        })
        .collect();
    let mut meta_answers = check_all(eps, opts).await;
    let known: BTreeSet<String> = told.iter().cloned().collect();
    let learned: BTreeSet<String> = meta_answers
        .iter()
        .filter_map(|(_, a)| a.meta.as_ref())
        .flat_map(|i| i.members.iter().map(|m| m.address.clone()))
        .filter(|a| !a.is_empty() && !known.contains(a))
        .collect();
    if !learned.is_empty() {
        let eps = learned
            .into_iter()
            .map(|a| Endpoint {
                kind: Kind::Meta,
                addr: a,
                source: "member list of the meta group",
                server: None,
            })
            .collect();
        meta_answers.extend(check_all(eps, opts).await);
    }
    rep.meta_endpoints = meta_answers.iter().map(|(e, _)| e.addr.clone()).collect();

    // 2. The group as a whole.
    let infos: Vec<(&Endpoint, &MetaInfo)> = meta_answers
        .iter()
        .filter_map(|(e, a)| a.meta.as_ref().map(|i| (e, i)))
        .collect();
    let (cluster_id, group) = analyse_meta(&infos, args.ready);
    let leader = infos
        .iter()
        .filter(|(_, i)| i.leader_id != 0)
        .max_by_key(|(_, i)| i.term)
        .map(|(_, i)| {
            format!(
                "meta {} at {} (term {})",
                i.leader_id, i.leader_address, i.term
            )
        });
    rep.cluster_id = cluster_id.clone();
    rep.leader = leader;
    for (_, a) in &mut meta_answers {
        rep.findings.append(&mut a.findings);
    }
    rep.findings.extend(group);

    // 3. The data servers: the registry's, plus any we were told of.
    let mut data_eps: Vec<Endpoint> = Vec::new();
    if let Some(id) = &cluster_id {
        match registry(&told, id, opts.timeout).await {
            Ok(table) => {
                if table.servers.is_empty() {
                    rep.findings.push(
                        Finding::warn(
                            "server",
                            "meta group",
                            "no data server has registered",
                            "start `cirrus data --meta ...` on the data machines; each must reach the meta nodes' gRPC port",
                        )
                        .strict(args.ready),
                    );
                }
                for (id, s) in table.servers {
                    data_eps.push(Endpoint {
                        kind: Kind::Data,
                        addr: s.address.clone(),
                        source: "meta group's registry",
                        server: Some((id, s)),
                    });
                }
            }
            Err(e) => rep.findings.push(
                Finding::warn(
                    "server",
                    "meta group",
                    format!("could not read the data server registry: {e}"),
                    "the meta group needs a leader to answer GetChains; see the leader check",
                )
                .tried("GetChains via the leader")
                .strict(args.ready),
            ),
        }
    }
    for a in &args.data {
        let a = a.trim();
        if a.is_empty() || data_eps.iter().any(|e| e.addr == a) {
            continue;
        }
        data_eps.push(Endpoint {
            kind: Kind::Data,
            addr: a.to_string(),
            source: "--data",
            server: None,
        });
    }
    rep.data_endpoints = data_eps.iter().map(|e| e.addr.clone()).collect();
    let meta_hosts_local = told
        .iter()
        .all(|a| probe::split_host_port(a).is_some_and(|(h, _)| probe::is_local_only(&h)));
    let data_answers = check_all(data_eps, opts).await;
    for (ep, mut a) in data_answers {
        rep.findings.append(&mut a.findings);
        rep.findings.extend(analyse_data(
            &ep,
            a.data.as_ref(),
            cluster_id.as_deref(),
            meta_hosts_local,
            args.ready,
        ));
    }
}

/// Reads the chain table (with the server registry) from the leader.
async fn registry(
    told: &[String],
    cluster_id: &str,
    timeout: Duration,
) -> Result<ChainTable, String> {
    let conn = MetaConn::new(
        told.to_vec(),
        CallPolicy {
            per_try: timeout,
            total: timeout * 2,
        },
    )
    .map_err(|e| e.to_string())?;
    let id: cirrus_types::ClusterId = cluster_id
        .parse()
        .map_err(|e: cirrus_types::FsError| e.to_string())?;
    conn.set_cluster_id(id);
    let cid = cluster_id.to_string();
    conn.call("get chains", |mut c| {
        let req = pb::GetChainsRequest {
            cluster_id: cid.clone(),
        };
        async move { c.get_chains(req).await }
    })
    .await
    .map(|t| ChainTable::from(&t))
    .map_err(|e| e.to_string())
}

/// Checks every endpoint concurrently; keeps their order.
async fn check_all(eps: Vec<Endpoint>, opts: Opts) -> Vec<(Endpoint, Answer)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, ep) in eps.into_iter().enumerate() {
        set.spawn(async move {
            let a = check_endpoint(&ep, opts).await;
            (i, ep, a)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            out.push(v);
        }
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, e, a)| (e, a)).collect()
}

/// DNS, TCP to the gRPC port, the gRPC handshake, and the metrics port with `/healthz`.
async fn check_endpoint(ep: &Endpoint, opts: Opts) -> Answer {
    let mut ans = Answer::default();
    let kind = ep.kind.name();
    let Some((host, port)) = probe::split_host_port(&ep.addr) else {
        ans.findings.push(Finding::fail(
            "address",
            format!("{kind} {}", ep.addr),
            format!("{:?} (from {}) is not host:port", ep.addr, ep.source),
            "fix the address where it was configured",
        ));
        return ans;
    };
    let target = format!("{kind} {} (gRPC)", ep.addr);

    let addrs = match probe::resolve(&host, port, opts.timeout).await {
        Ok(a) => a,
        Err(e) => {
            ans.findings.push(
                Finding::fail(
                    "dns",
                    target,
                    e.describe(&host, port),
                    e.fix(&host, port, ep.kind.daemon(), "--listen"),
                )
                .at(&host, Some(port))
                .tried(format!("resolve {host} (from {})", ep.source)),
            );
            return ans;
        }
    };
    if host.parse::<std::net::IpAddr>().is_err() {
        let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        ans.findings.push(
            Finding::ok(
                "dns",
                target.clone(),
                format!("{host} resolves to {}", shown.join(", ")),
            )
            .at(&host, Some(port)),
        );
    }
    let sock = addrs[0];

    // gRPC port: TCP, then the handshake.
    match probe::connect(sock, opts.timeout).await {
        Err(e) => ans
            .findings
            .push(tcp_failure(&target, &host, port, &e, ep, "--listen")),
        Ok((_s, took)) => {
            ans.findings.push(
                Finding::ok(
                    "tcp",
                    target.clone(),
                    format!("{port}/tcp on {host} connected in {}", fmt_ms(took)),
                )
                .at(&host, Some(port)),
            );
            handshake(ep, &host, port, &target, opts, &mut ans).await;
        }
    }

    // Metrics port: TCP, then GET /healthz.
    if opts.check_metrics {
        let mport = port.wrapping_add(opts.metrics_offset);
        let mtarget = format!("{kind} {host}:{mport} (metrics)");
        let msock = std::net::SocketAddr::new(sock.ip(), mport);
        match probe::connect(msock, opts.timeout).await {
            Err(e) => ans
                .findings
                .push(tcp_failure(&mtarget, &host, mport, &e, ep, "--metrics-listen")),
            Ok((s, _)) => match probe::healthz(s, &host, opts.timeout).await {
                Ok(Health::Healthy) => ans.findings.push(
                    Finding::ok("metrics", mtarget, format!("{mport}/tcp on {host}: /healthz ok")).at(&host, Some(mport)),
                ),
                Ok(Health::Unhealthy(why)) => ans.findings.push(
                    Finding::warn(
                        "metrics",
                        mtarget,
                        format!("{mport}/tcp on {host}: /healthz says {why}"),
                        format!("the {} reports itself unhealthy: read its log", ep.kind.daemon()),
                    )
                    .at(&host, Some(mport))
                    .tried("HTTP GET /healthz"),
                ),
                Ok(Health::NotHttp(got)) => ans.findings.push(
                    Finding::fail(
                        "metrics",
                        mtarget,
                        format!("{mport}/tcp on {host} is not the metrics endpoint (answered {got:?})"),
                        format!("another service holds {mport}/tcp: move it, or start the {} with --metrics-listen on a free port", ep.kind.daemon()),
                    )
                    .at(&host, Some(mport))
                    .tried("HTTP GET /healthz"),
                ),
                Err(e) => ans.findings.push(
                    Finding::fail(
                        "metrics",
                        mtarget,
                        format!("{mport}/tcp on {host} accepted but /healthz failed: {}", e.describe(&host, mport)),
                        "the daemon is stuck or something else listens there",
                    )
                    .at(&host, Some(mport))
                    .tried("HTTP GET /healthz"),
                ),
            },
        }
    }
    ans
}

fn tcp_failure(
    target: &str,
    host: &str,
    port: u16,
    e: &ConnectError,
    ep: &Endpoint,
    flag: &str,
) -> Finding {
    let what = if flag == "--metrics-listen" {
        format!("{} (its metrics endpoint)", ep.kind.daemon())
    } else {
        ep.kind.daemon().to_string()
    };
    Finding::fail(
        "tcp",
        target,
        e.describe(host, port),
        e.fix(host, port, &what, flag),
    )
    .at(host, Some(port))
    .tried(format!(
        "TCP connect to {host}:{port} from this machine (address from {})",
        ep.source
    ))
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// What a handshake returned: the node's clock and its info reply.
type Handshake = (i64, Option<MetaInfo>, Option<DataInfo>);

/// The gRPC handshake (ClusterInfo or Data.Info) and the clock check.
async fn handshake(
    ep: &Endpoint,
    host: &str,
    port: u16,
    target: &str,
    opts: Opts,
    ans: &mut Answer,
) {
    let ch = match net::channel(&ep.addr) {
        Ok(c) => c,
        Err(e) => {
            ans.findings.push(Finding::fail(
                "grpc",
                target,
                e.to_string(),
                "fix the address",
            ));
            return;
        }
    };
    let sent = now_ms();
    let (rpc, result): (&str, Result<Handshake, String>) = match ep.kind {
        Kind::Meta => {
            let mut c = net::meta_client(ch);
            let r =
                tokio::time::timeout(opts.timeout, c.cluster_info(pb::ClusterInfoRequest {})).await;
            (
                "Meta.ClusterInfo",
                match r {
                    Err(_) => Err(format!(
                        "no answer within {}",
                        humantime::format_duration(opts.timeout)
                    )),
                    Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                    Ok(Ok(r)) => {
                        let i = MetaInfo::from(&r.into_inner());
                        Ok((i.now_ms, Some(i), None))
                    }
                },
            )
        }
        Kind::Data => {
            let mut c = net::data_client(ch);
            let r = tokio::time::timeout(opts.timeout, c.info(pb::DataInfoRequest {})).await;
            (
                "Data.Info",
                match r {
                    Err(_) => Err(format!(
                        "no answer within {}",
                        humantime::format_duration(opts.timeout)
                    )),
                    Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                    Ok(Ok(r)) => {
                        let i = DataInfo::from(&r.into_inner());
                        Ok((i.now_ms, None, Some(i)))
                    }
                },
            )
        }
    };
    let received = now_ms();
    match result {
        Err(e) => ans.findings.push(
            Finding::fail(
                "grpc",
                target,
                format!("{port}/tcp on {host} accepted the connection but the {rpc} handshake failed: {e}"),
                format!(
                    "is this port the {}? Something else may listen there, or the daemon is stuck (stopped, overloaded): check `ss -ltnp` and its log on {host}",
                    ep.kind.daemon()
                ),
            )
            .at(host, Some(port))
            .tried(format!("gRPC {rpc}")),
        ),
        Ok((remote_now, meta, data)) => {
            let what = match (&meta, &data) {
                (Some(i), _) => format!(
                    "{rpc}: node {} ({}), term {}, cluster {}",
                    i.node_id,
                    if i.role.is_empty() { "?" } else { &i.role },
                    i.term,
                    if i.cluster_id.is_empty() { "(not initialised)" } else { &i.cluster_id }
                ),
                (_, Some(i)) => format!(
                    "{rpc}: server {}, cluster {}, {} objects",
                    i.server_id,
                    if i.cluster_id.is_empty() { "(not registered)" } else { &i.cluster_id },
                    i.objects
                ),
                _ => rpc.to_string(),
            };
            ans.findings.push(Finding::ok("grpc", target, what).at(host, Some(port)));
            if remote_now != 0 {
                ans.findings.push(clock(target, host, sent, received, remote_now, opts.max_skew));
            }
            ans.meta = meta;
            ans.data = data;
        }
    }
}

/// Skew = the node's clock minus ours at the middle of the round trip; the round trip's
/// half is the uncertainty, which is not held against the node.
fn clock(
    target: &str,
    host: &str,
    sent: i64,
    received: i64,
    remote_now: i64,
    max: Duration,
) -> Finding {
    let mid = sent + (received - sent) / 2;
    let skew = remote_now - mid;
    let slack = (received - sent) / 2;
    let beyond = skew.abs() - slack;
    if beyond > max.as_millis() as i64 {
        Finding::fail(
            "clock",
            target,
            format!("the clock of {host} differs from this machine's by {skew} ms (allowed {} ms)", max.as_millis()),
            "sync every node's clock (chrony or systemd-timesyncd against one source, e.g. the Amazon Time Sync Service 169.254.169.123)",
        )
        .at(host, None)
        .tried("compare now_ms of the handshake with the local clock")
    } else {
        Finding::ok(
            "clock",
            target,
            format!("clock within {} ms of this machine's", skew.abs()),
        )
    }
}

/// Cluster id agreement, the leader, and the addresses as the group knows them. Returns
/// the group's cluster id (the majority's, if they disagree).
fn analyse_meta(infos: &[(&Endpoint, &MetaInfo)], ready: bool) -> (Option<String>, Vec<Finding>) {
    let mut out = Vec::new();
    if infos.is_empty() {
        out.push(Finding::fail(
            "meta",
            "meta group",
            "no meta node answered",
            "see the failures above: start the meta nodes or open 7001/tcp to them",
        ));
        return (None, out);
    }
    let mut by_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (e, i) in infos {
        if !i.cluster_id.is_empty() {
            by_id
                .entry(i.cluster_id.as_str())
                .or_default()
                .push(e.addr.as_str());
        }
    }
    let majority = by_id
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map(|(k, _)| k.to_string());
    match by_id.len() {
        0 => out.push(
            Finding::warn(
                "cluster-id",
                "meta group",
                "the meta group is not initialised yet (no cluster id)",
                "the lowest id initialises the group once every peer answers: start all three meta nodes with the same --peers and open 7001/tcp between them",
            )
            .strict(ready),
        ),
        1 => out.push(Finding::ok(
            "cluster-id",
            "meta group",
            format!(
                "{} answering meta node(s) agree on cluster {}",
                by_id.values().map(Vec::len).sum::<usize>(),
                majority.as_deref().unwrap_or("")
            ),
        )),
        _ => {
            let desc: Vec<String> = by_id
                .iter()
                .map(|(id, addrs)| format!("{} say {id}", addrs.join(", ")))
                .collect();
            for (id, addrs) in &by_id {
                if Some(id.to_string()) == majority {
                    continue;
                }
                for a in addrs {
                    let (host, port) = probe::split_host_port(a).unwrap_or((a.to_string(), 0));
                    out.push(
                        Finding::fail(
                            "cluster-id",
                            format!("meta {a}"),
                            format!("mixed clusters: {}", desc.join("; ")),
                            format!(
                                "{a} belongs to another cluster: give --meta/--peers of one cluster only; a node from an old cluster needs its --dir wiped before it can join"
                            ),
                        )
                        .at(&host, Some(port))
                        .tried("compare the cluster id of every meta node's ClusterInfo"),
                    );
                }
            }
        }
    }

    let has_leader = infos.iter().any(|(_, i)| i.leader_id != 0);
    if has_leader {
        if let Some((_, i)) = infos
            .iter()
            .filter(|(_, i)| i.leader_id != 0)
            .max_by_key(|(_, i)| i.term)
        {
            out.push(Finding::ok(
                "leader",
                "meta group",
                format!(
                    "leader is meta {} at {} (term {})",
                    i.leader_id, i.leader_address, i.term
                ),
            ));
        }
    } else {
        out.push(
            Finding::warn(
                "leader",
                "meta group",
                format!("no leader known to the {} answering meta node(s)", infos.len()),
                "a majority (2 of 3) of the meta nodes must reach each other on 7001/tcp; see the failures above",
            )
            .strict(ready),
        );
    }

    // Advertised (the group's member list) versus where the node was reached.
    for (e, i) in infos {
        let Some(m) = i.members.iter().find(|m| m.id == i.node_id) else {
            continue;
        };
        if m.address == e.addr {
            continue;
        }
        let (host, port) = probe::split_host_port(&e.addr).unwrap_or((e.addr.clone(), 0));
        let adv_host = probe::split_host_port(&m.address)
            .map(|(h, _)| h)
            .unwrap_or_default();
        if probe::is_local_only(&adv_host) && !probe::is_local_only(&host) {
            out.push(
                Finding::fail(
                    "address",
                    format!("meta {}", e.addr),
                    format!("meta {} is reached at {} but its peers know it as {}, which other machines cannot reach", i.node_id, e.addr, m.address),
                    "use the machines' reachable addresses in every node's --peers (not 127.0.0.1 or 0.0.0.0)",
                )
                .at(&host, Some(port)),
            );
        } else {
            out.push(
                Finding::warn(
                    "address",
                    format!("meta {}", e.addr),
                    format!("meta {} is reached at {} but the group knows it as {}", i.node_id, e.addr, m.address),
                    "use the --peers addresses in --meta too, or check that both name the same machine",
                )
                .at(&host, Some(port)),
            );
        }
    }
    (majority, out)
}

/// Cluster id, registration, heartbeat, advertised address and O_DIRECT of one data server.
fn analyse_data(
    ep: &Endpoint,
    info: Option<&DataInfo>,
    meta_cluster: Option<&str>,
    meta_hosts_local: bool,
    ready: bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let target = format!("data {}", ep.addr);
    let (host, port) = probe::split_host_port(&ep.addr).unwrap_or((ep.addr.clone(), 0));
    if let Some((id, s)) = &ep.server {
        if !s.alive {
            out.push(
                Finding::fail(
                    "server",
                    target.clone(),
                    format!("the meta group has no recent heartbeat from data server {} ({})", id, s.address),
                    format!("is it running on {host}? It must reach the meta nodes' gRPC port (7001/tcp) to heartbeat"),
                )
                .at(&host, Some(port))
                .tried("server registry from GetChains"),
            );
        }
        if probe::is_local_only(&host) && !meta_hosts_local {
            out.push(
                Finding::fail(
                    "address",
                    target.clone(),
                    format!("data server {} registered the address {}, which other machines cannot reach", id, s.address),
                    "start it with --advertise HOST:PORT (its reachable address) or --listen on that address",
                )
                .at(&host, Some(port)),
            );
        }
    }
    let Some(i) = info else {
        return out;
    };
    match meta_cluster {
        _ if i.cluster_id.is_empty() => out.push(
            Finding::warn(
                "cluster-id",
                target.clone(),
                format!("data server at {} has not registered with any meta group yet", ep.addr),
                format!("it must reach the meta nodes on 7001/tcp; read its log on {host}"),
            )
            .at(&host, Some(port))
            .strict(ready),
        ),
        Some(mc) if mc != i.cluster_id => out.push(
            Finding::fail(
                "cluster-id",
                target.clone(),
                format!(
                    "mixed clusters: data server at {} belongs to cluster {}, but the meta group is cluster {mc}",
                    ep.addr, i.cluster_id
                ),
                format!(
                    "the data server on {host} was set up for another cluster: point its --meta at that cluster's meta nodes, or give it an empty --dir to join this one"
                ),
            )
            .at(&host, Some(port))
            .tried("compare Data.Info's cluster id with the meta group's"),
        ),
        Some(_) => out.push(Finding::ok("cluster-id", target.clone(), "same cluster as the meta group")),
        None => {}
    }
    if ep.server.is_none() && meta_cluster == Some(i.cluster_id.as_str()) {
        out.push(
            Finding::warn(
                "server",
                target.clone(),
                format!(
                    "data server {} at {} is not in the meta group's registry",
                    i.server_id, ep.addr
                ),
                "it may be registered under another address: check its --advertise",
            )
            .at(&host, Some(port)),
        );
    }
    if !i.address.is_empty() && i.address != ep.addr {
        let adv_host = probe::split_host_port(&i.address)
            .map(|(h, _)| h)
            .unwrap_or_default();
        let f = if probe::is_local_only(&adv_host) && !probe::is_local_only(&host) {
            Finding::fail(
                "address",
                target.clone(),
                format!(
                    "reached at {} but it advertises {}, which other machines cannot reach",
                    ep.addr, i.address
                ),
                "start it with --advertise HOST:PORT, its reachable address",
            )
        } else {
            Finding::warn(
                "address",
                target.clone(),
                format!("reached at {} but it advertises {}", ep.addr, i.address),
                "clients and other data servers use the advertised address: make --advertise the reachable one",
            )
        };
        out.push(f.at(&host, Some(port)));
    }
    if !i.direct_io {
        out.push(Finding::warn(
            "o_direct",
            target,
            "the data server runs with buffered IO: its file system refused O_DIRECT",
            "put its --dir on XFS or ext4 (not tmpfs or overlay)",
        ));
    }
    out
}

async fn local_checks(args: &DoctorArgs, rep: &mut Report) {
    let min_free = args.min_free_mib.saturating_mul(1 << 20);
    let deadline = args.timeout;
    for d in &args.data_dirs {
        rep.findings
            .extend(local::data_dir(d.clone(), min_free, deadline).await);
    }
    if args.role == Some(Role::Data) && args.data_dirs.is_empty() {
        rep.findings.push(Finding::warn(
            "data-dir",
            "local",
            "no --data-dir given: O_DIRECT and free space not checked",
            "pass the data server's --dir as --data-dir",
        ));
    }
    if args.role == Some(Role::Client) || args.mountpoint.is_some() {
        rep.findings.extend(local::fuse(deadline).await);
    }
    if let Some(mp) = &args.mountpoint {
        rep.findings
            .push(local::mountpoint(mp, args.ready, deadline).await);
    }
}

#[cfg(test)]
mod tests {
    use super::report::Status;
    use super::*;
    use cirrus_types::MetaMember;

    fn ep(addr: &str) -> Endpoint {
        Endpoint {
            kind: Kind::Meta,
            addr: addr.into(),
            source: "--meta",
            server: None,
        }
    }

    fn info(node: u64, cluster: &str, leader: u64, members: &[(u64, &str)]) -> MetaInfo {
        MetaInfo {
            cluster_id: cluster.into(),
            node_id: node,
            leader_id: leader,
            leader_address: if leader == 0 {
                String::new()
            } else {
                format!("10.0.0.{leader}:7001")
            },
            term: 3,
            members: members
                .iter()
                .map(|(id, a)| MetaMember {
                    id: *id,
                    address: a.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    const A: &str = "0000000000000000000000000000000a";
    const B: &str = "0000000000000000000000000000000b";

    #[test]
    fn one_cluster_id_and_a_leader_pass() {
        let (e1, e2) = (ep("10.0.0.1:7001"), ep("10.0.0.2:7001"));
        let m = [(1, "10.0.0.1:7001"), (2, "10.0.0.2:7001")];
        let (i1, i2) = (info(1, A, 2, &m), info(2, A, 2, &m));
        let (id, f) = analyse_meta(&[(&e1, &i1), (&e2, &i2)], true);
        assert_eq!(id.as_deref(), Some(A));
        assert!(f.iter().all(|f| f.status == Status::Ok), "{f:?}");
    }

    #[test]
    fn a_meta_node_of_another_cluster_is_named_as_mixed_clusters() {
        let (e1, e2, e3) = (
            ep("10.0.0.1:7001"),
            ep("10.0.0.2:7001"),
            ep("10.0.0.3:7001"),
        );
        let (i1, i2, i3) = (info(1, A, 1, &[]), info(2, A, 1, &[]), info(1, B, 1, &[]));
        let (id, f) = analyse_meta(&[(&e1, &i1), (&e2, &i2), (&e3, &i3)], false);
        assert_eq!(id.as_deref(), Some(A));
        let bad: Vec<_> = f.iter().filter(|f| f.status == Status::Fail).collect();
        assert_eq!(bad.len(), 1, "{f:?}");
        assert_eq!(bad[0].host.as_deref(), Some("10.0.0.3"));
        assert_eq!(bad[0].port, Some(7001));
        assert!(bad[0].message.contains("mixed clusters"), "{:?}", bad[0]);
    }

    #[test]
    fn an_uninitialised_group_warns_and_fails_only_when_ready_is_asked() {
        let e1 = ep("10.0.0.1:7001");
        let i1 = info(1, "", 0, &[]);
        let (_, f) = analyse_meta(&[(&e1, &i1)], false);
        assert!(f.iter().all(|f| f.status != Status::Fail), "{f:?}");
        let (_, f) = analyse_meta(&[(&e1, &i1)], true);
        assert_eq!(
            f.iter().filter(|f| f.status == Status::Fail).count(),
            2,
            "{f:?}"
        );
    }

    #[test]
    fn peers_on_loopback_reached_from_outside_are_a_failure() {
        let e1 = ep("10.0.0.1:7001");
        let i1 = info(1, A, 1, &[(1, "127.0.0.1:7001")]);
        let (_, f) = analyse_meta(&[(&e1, &i1)], false);
        let bad = f.iter().find(|f| f.check == "address").unwrap();
        assert_eq!(bad.status, Status::Fail, "{bad:?}");
    }

    #[test]
    fn data_server_of_another_cluster_is_named_with_both_ids() {
        let e = Endpoint {
            kind: Kind::Data,
            addr: "10.0.1.12:7101".into(),
            source: "--data",
            server: None,
        };
        let i = DataInfo {
            cluster_id: B.into(),
            server_id: 4,
            address: "10.0.1.12:7101".into(),
            direct_io: true,
            ..Default::default()
        };
        let f = analyse_data(&e, Some(&i), Some(A), false, false);
        let bad = f.iter().find(|f| f.check == "cluster-id").unwrap();
        assert_eq!(bad.status, Status::Fail);
        assert!(
            bad.message.contains(A) && bad.message.contains(B),
            "{bad:?}"
        );
        assert!(bad.message.contains("mixed clusters"), "{bad:?}");
    }

    #[test]
    fn a_dead_registered_server_and_a_loopback_advertisement_fail() {
        let e = Endpoint {
            kind: Kind::Data,
            addr: "127.0.0.1:7101".into(),
            source: "meta group's registry",
            server: Some((
                ServerId(2),
                ServerEntry {
                    address: "127.0.0.1:7101".into(),
                    alive: false,
                    capacity_bytes: 0,
                    free_bytes: 0,
                    last_heartbeat_ms: 0,
                },
            )),
        };
        let f = analyse_data(&e, None, Some(A), false, false);
        assert!(
            f.iter()
                .any(|f| f.check == "server" && f.status == Status::Fail),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|f| f.check == "address" && f.status == Status::Fail),
            "{f:?}"
        );
        // On a one-machine cluster (meta on loopback too) loopback is fine.
        let f = analyse_data(&e, None, Some(A), true, false);
        assert!(!f.iter().any(|f| f.check == "address"), "{f:?}");
    }

    #[test]
    fn clock_skew_beyond_the_round_trip_fails() {
        let ok = clock("t", "h", 1_000, 1_010, 1_300, Duration::from_secs(1));
        assert_eq!(ok.status, Status::Ok);
        let bad = clock("t", "h", 1_000, 1_010, 5_000, Duration::from_secs(1));
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.message.contains("3995 ms"), "{bad:?}");
    }
}
