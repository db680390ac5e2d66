//! `cirrus up`: a whole local cluster plus a mount, in one command. Starts 3 meta and N
//! data servers as child processes of this same binary on 127.0.0.1, waits until the
//! cluster is healthy, mounts it (a `cirrus mount --foreground` child), writes
//! `DIR/cluster.json`, and on Ctrl-C/SIGTERM unmounts first, then stops data servers,
//! then meta servers. Children run in their own process group so the terminal's Ctrl-C
//! reaches only this process, which then stops them in that order.
//!
//! Ports (defaults, `--port-base 7000`): meta node i (1..3) serves gRPC on
//! base + 1 + 10 (i - 1) and metrics on the next port (7001/7002, 7011/7012, 7021/7022);
//! data server j (1..N) on base + 101 + 10 (j - 1) and the next (7101/7102, 7111/7112, ...).

use anyhow::{bail, Context};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Directory holding every node's state, logs and cluster.json
    /// (default: cirrus-up in the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of data servers.
    #[arg(long, default_value_t = 3)]
    pub data_servers: u32,
    /// Replicas per chain (1..3, at most the number of data servers).
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Where to mount (default: DIR/mnt).
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// Start the cluster without mounting it.
    #[arg(long)]
    pub no_mount: bool,
    /// Ports are derived from this base (see the README's port table).
    #[arg(long, default_value_t = 7000)]
    pub port_base: u16,
    /// How long to wait for the cluster to become healthy.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Serialize, Clone, Debug)]
struct NodeRecord {
    role: &'static str,
    id: u64,
    address: String,
    metrics: String,
    pid: u32,
    dir: PathBuf,
    log: PathBuf,
}

#[derive(Serialize, Debug)]
struct ClusterRecord {
    meta_addrs: String,
    nodes: Vec<NodeRecord>,
    mount: Option<PathBuf>,
    mount_pid: Option<u32>,
    up_pid: u32,
    running: bool,
}

struct Node {
    rec: NodeRecord,
    child: Child,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn tail(log: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn spawn(exe: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    // SAFETY: setpgid is async-signal-safe. Own process group: the terminal's Ctrl-C goes
    // to `up` only, which stops the children in order (unmount before data servers).
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("start {} {}", exe.display(), args.join(" ")))
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; pid is our own child.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns whether it exited by itself.
fn stop(child: &mut Child, grace: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    signal(child.id(), libc::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn write_record(dir: &Path, rec: &ClusterRecord) -> anyhow::Result<()> {
    let path = dir.join("cluster.json");
    let tmp = dir.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Healthy: a meta leader, `want` data servers alive, and chains placed.
async fn healthy(meta: &str, want: usize) -> Result<(), String> {
    let v = cirrus_client::cli::status_json(meta, Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())?;
    if v["leader"]["id"].as_u64().unwrap_or(0) == 0 {
        return Err("no meta leader yet".into());
    }
    let alive = v["data"]
        .as_array()
        .map(|a| a.iter().filter(|d| d["state"] == "alive").count())
        .unwrap_or(0);
    let chains = v["chains"].as_array().map(|a| a.len()).unwrap_or(0);
    if alive < want || chains == 0 {
        return Err(format!(
            "{alive} of {want} data servers alive, {chains} chains"
        ));
    }
    Ok(())
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.replicas == 0 || args.replicas > 3 || args.replicas > args.data_servers {
        bail!(
            "--replicas {} must be 1..=3 and at most --data-servers {}",
            args.replicas,
            args.data_servers
        );
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("cirrus-up"));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let exe = std::env::current_exe().context("find own binary")?;
    let base = args.port_base as u32;
    let port = |p: u32| -> anyhow::Result<u16> {
        u16::try_from(p).map_err(|_| anyhow::anyhow!("port {p} out of range; lower --port-base"))
    };

    // Every port first, so a busy one is named before anything starts.
    let mut plan = Vec::new();
    for i in 1..=3u32 {
        plan.push((
            "meta",
            i,
            port(base + 1 + 10 * (i - 1))?,
            port(base + 2 + 10 * (i - 1))?,
        ));
    }
    for j in 1..=args.data_servers {
        plan.push((
            "data",
            j,
            port(base + 101 + 10 * (j - 1))?,
            port(base + 102 + 10 * (j - 1))?,
        ));
    }
    for (role, id, p, m) in &plan {
        for q in [p, m] {
            if !port_free(*q) {
                bail!("port {q} on 127.0.0.1 (for {role} {id}) is in use: is another `cirrus up` running? Stop it, or pick other ports with --port-base");
            }
        }
    }
    let meta_addrs: Vec<String> = plan
        .iter()
        .filter(|n| n.0 == "meta")
        .map(|n| format!("127.0.0.1:{}", n.2))
        .collect();
    let meta_list = meta_addrs.join(",");
    let peers: Vec<String> = plan
        .iter()
        .filter(|n| n.0 == "meta")
        .map(|n| format!("{}=127.0.0.1:{}", n.1, n.2))
        .collect();
    let peers = peers.join(",");

    let mut nodes: Vec<Node> = Vec::new();
    let start = async {
        for (role, id, p, m) in &plan {
            let ndir = dir.join(format!("{role}{id}"));
            std::fs::create_dir_all(&ndir)?;
            let log = dir.join(format!("{role}{id}.log"));
            let addr = format!("127.0.0.1:{p}");
            let metrics = format!("127.0.0.1:{m}");
            let a: Vec<String> = if *role == "meta" {
                vec![
                    "meta".into(),
                    "--id".into(),
                    id.to_string(),
                    "--listen".into(),
                    addr.clone(),
                    "--peers".into(),
                    peers.clone(),
                    "--dir".into(),
                    ndir.display().to_string(),
                    "--metrics-listen".into(),
                    metrics.clone(),
                    "--replicas".into(),
                    args.replicas.to_string(),
                ]
            } else {
                vec![
                    "data".into(),
                    "--meta".into(),
                    meta_list.clone(),
                    "--listen".into(),
                    addr.clone(),
                    "--dir".into(),
                    ndir.display().to_string(),
                    "--metrics-listen".into(),
                    metrics.clone(),
                ]
            };
            let child = spawn(&exe, &a, &log)?;
            nodes.push(Node {
                rec: NodeRecord {
                    role,
                    id: *id as u64,
                    address: addr,
                    metrics,
                    pid: child.id(),
                    dir: ndir,
                    log,
                },
                child,
            });
        }
        anyhow::Ok(())
    };
    let started = start.await;
    let mut rec = ClusterRecord {
        meta_addrs: meta_list.clone(),
        nodes: nodes.iter().map(|n| n.rec.clone()).collect(),
        mount: None,
        mount_pid: None,
        up_pid: std::process::id(),
        running: true,
    };
    let result = match started {
        Ok(()) => {
            write_record(&dir, &rec)?;
            bring_up(&args, &dir, &exe, &meta_list, &mut nodes, &mut rec).await
        }
        Err(e) => Err(e),
    };
    let mut mount_child = match result {
        Ok(m) => m,
        Err(e) => {
            shutdown(None, &mut nodes, rec.mount.as_deref());
            rec.running = false;
            let _ = write_record(&dir, &rec);
            return Err(e);
        }
    };

    println!(
        "cirrus up: 3 meta + {} data servers on 127.0.0.1, state in {}",
        args.data_servers,
        dir.display()
    );
    println!("  meta:    {meta_list}");
    if let Some(m) = &rec.mount {
        println!("  mounted: {}", m.display());
    }
    println!("  nodes:   {}", dir.join("cluster.json").display());
    println!("  status:  cirrus status --meta {meta_list}");
    println!(
        "  stop:    Ctrl-C here, or kill -TERM {}",
        std::process::id()
    );

    use tokio::signal::unix::{signal as sig, SignalKind};
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => break,
            _ = tick.tick() => {
                // Nodes may be killed on purpose (failover tests): report, keep running.
                for n in nodes.iter_mut() {
                    if let Ok(Some(st)) = n.child.try_wait() {
                        if reported.insert(n.rec.pid) {
                            eprintln!("cirrus up: {} {} (pid {}) exited: {st}; log {}", n.rec.role, n.rec.id, n.rec.pid, n.rec.log.display());
                        }
                    }
                }
            }
        }
    }
    println!("cirrus up: stopping (unmount, then data servers, then meta servers)");
    let clean = shutdown(mount_child.as_mut(), &mut nodes, rec.mount.as_deref());
    rec.running = false;
    write_record(&dir, &rec)?;
    if !clean {
        bail!(
            "some processes had to be killed; see the logs in {}",
            dir.display()
        );
    }
    println!("cirrus up: stopped");
    Ok(())
}

/// Waits for health and mounts; returns the mount child.
async fn bring_up(
    args: &UpArgs,
    dir: &Path,
    exe: &Path,
    meta_list: &str,
    nodes: &mut [Node],
    rec: &mut ClusterRecord,
) -> anyhow::Result<Option<Child>> {
    let deadline = Instant::now() + args.timeout;
    let mut last;
    loop {
        for n in nodes.iter_mut() {
            if let Ok(Some(st)) = n.child.try_wait() {
                bail!(
                    "{} {} exited during start ({st}); last lines of {}:\n{}",
                    n.rec.role,
                    n.rec.id,
                    n.rec.log.display(),
                    tail(&n.rec.log, 10)
                );
            }
        }
        match healthy(meta_list, args.data_servers as usize).await {
            Ok(()) => break,
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            bail!(
                "cluster not healthy after {:?}: {last}; logs in {}",
                args.timeout,
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if args.no_mount {
        return Ok(None);
    }
    let mp = args.mount.clone().unwrap_or_else(|| dir.join("mnt"));
    std::fs::create_dir_all(&mp).ok();
    if let Err(cirrus_client::mount::MountError::Stale(_)) =
        cirrus_client::mount::check_mountpoint(&mp, true)
    {
        // Left over by a killed earlier run: clear it, it serves nothing.
        let _ = cirrus_client::mount::unmount(&mp);
    }
    let log = dir.join("mount.log");
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg(meta_list)
        .arg(&mp)
        .arg("--foreground")
        .env(cirrus_client::mount::NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logf);
    // SAFETY: as in `spawn`.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the mount")?;
    let out = child.stdout.take().context("mount stdout")?;
    let line = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            let _ = BufReader::new(out).read_line(&mut l);
            l
        }),
    )
    .await;
    let line = match line {
        Ok(Ok(l)) => l.trim().to_string(),
        _ => String::new(),
    };
    if line != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        let why = line
            .strip_prefix("error: ")
            .unwrap_or("no readiness report")
            .to_string();
        bail!(
            "mount at {} failed: {why}; log {}",
            mp.display(),
            log.display()
        );
    }
    let mp = std::fs::canonicalize(&mp).unwrap_or(mp);
    rec.mount = Some(mp);
    rec.mount_pid = Some(child.id());
    write_record(dir, rec)?;
    Ok(Some(child))
}

/// Unmount first (flushes open files to live data servers), then data, then meta.
fn shutdown(mount: Option<&mut Child>, nodes: &mut [Node], mp: Option<&Path>) -> bool {
    let mut clean = true;
    if let Some(m) = mount {
        if !stop(m, Duration::from_secs(20)) {
            clean = false;
        }
    }
    if let Some(mp) = mp {
        if cirrus_client::mount::is_mountpoint(mp) {
            let _ = cirrus_client::mount::unmount(mp);
        }
    }
    for role in ["data", "meta"] {
        for n in nodes.iter_mut().filter(|n| n.rec.role == role) {
            if let Ok(Some(_)) = n.child.try_wait() {
                continue;
            }
            signal(n.rec.pid, libc::SIGTERM);
        }
        for n in nodes.iter_mut().filter(|n| n.rec.role == role) {
            if !stop(&mut n.child, Duration::from_secs(10)) {
                clean = false;
            }
        }
    }
    clean
}
