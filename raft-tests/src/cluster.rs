//! The shared test-cluster builder: starts REAL `cirrus meta` and `cirrus data` processes
//! on 127.0.0.1 ephemeral ports with temp dirs, waits on observable conditions (a leader,
//! a cluster id, every data server in the chain table) instead of sleeping, and lets tests
//! kill, restart, pause and resume any node.
//!
//! Indices are 0-based everywhere: meta node `i` has raft id `i + 1`.
//!
//! Children are spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`, so
//! a test process that dies without running `Drop` (nextest timeout, abort) does not leave
//! daemons behind eating the two cores. (PDEATHSIG fires when the *spawning thread* exits;
//! a dedicated thread that lives as long as the process makes that the process's death.)
//!
//! On drop every child gets SIGKILL; the temp dir is removed unless the thread is
//! panicking (or `CIRRUS_KEEP_TEST_DIR` is set), in which case its path is printed so the
//! node logs can be read.

use anyhow::{anyhow, bail, Context, Result};
use cirrus_proto::{net, pb, CallPolicy, MetaConn};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Deadline for the whole `start()` (leader election, registration) on a loaded 2-core box.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Deadline for one restarted node to answer its info RPC.
const RESTART_TIMEOUT: Duration = Duration::from_secs(45);
/// Deadline of a single probe RPC to one node.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times `start()` picks fresh ports when a node could not bind its port.
const PORT_RETRIES: usize = 3;

/// The `cirrus` binary under test: `$CIRRUS_BIN`, else `cirrus` in the target dir of the
/// running executable (`target/debug/deps/x-hash` or `target/debug/x` -> `target/debug/cirrus`).
pub fn cirrus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CIRRUS_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CIRRUS_BIN={} does not name a file; build it with `cargo build --bin cirrus`",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe: cannot locate the test binary");
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("cirrus");
    assert!(
        bin.is_file(),
        "the cirrus binary is missing at {}: run `cargo build --bin cirrus` first \
         (or set CIRRUS_BIN to its path); root-package tests build it automatically",
        bin.display()
    );
    bin
}

/// Picks `n` distinct free TCP ports on 127.0.0.1 by binding port 0 and releasing.
/// A port can be taken by someone else before the node binds it; `start()` retries.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0 to pick a port")?;
        held.push(l);
    }
    held.iter()
        .map(|l| Ok(l.local_addr().context("local_addr of picked port")?.port()))
        .collect()
}

// ------------------------------------------------------------------ spawner thread

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from the process-lifetime spawner thread (see the module doc), so the
/// child gets SIGKILL when this process dies.
pub fn spawn_child(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("cirrus-test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the child spawner thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::channel();
    let mut cmd = cmd;
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
        // and exec here.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    tx.lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send((cmd, rtx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rrx.recv()
        .map_err(|_| std::io::Error::other("spawner thread dropped the reply"))?
}

// ------------------------------------------------------------------ nodes

/// Which role a node plays (for logs and messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Meta,
    Data,
}

/// One daemon: how to start it again and the running child, if any.
struct Node {
    role: Role,
    /// 0-based index within its role.
    index: usize,
    addr: String,
    metrics_addr: String,
    dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    /// Network namespace to run in (`ip netns exec NS cirrus ...`), if any.
    netns: Option<String>,
    child: Option<Child>,
}

impl Node {
    fn name(&self) -> String {
        match self.role {
            Role::Meta => format!("meta-{}", self.index + 1),
            Role::Data => format!("data-{}", self.index + 1),
        }
    }

    fn spawn(&mut self, bin: &Path, env: &BTreeMap<String, String>) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open log {}", self.log.display()))?;
        // A marker makes restarts visible when reading the log after a failure.
        let _ = writeln!(
            log,
            "=== cirrus-raft-tests: start {} at {:?}: {} {}",
            self.name(),
            std::time::SystemTime::now(),
            bin.display(),
            self.args.join(" ")
        );
        let err = log.try_clone().context("clone log handle")?;
        // `ip netns exec` execs in place, so the child's pid is cirrus itself and the
        // signals below reach it.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        cmd.env("CIRRUS_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = spawn_child(cmd).with_context(|| format!("spawn {}", self.name()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child's pid, which we have not reaped.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGTERM, then polls for the exit until `within` passes (then SIGKILL and an error).
    async fn terminate(&mut self, within: Duration) -> Result<String> {
        if self.child.is_none() {
            bail!("{} is not running", self.name());
        }
        self.signal(libc::SIGTERM);
        let until = Instant::now() + within;
        loop {
            if let Some(st) = self.exited() {
                return Ok(st);
            }
            if Instant::now() > until {
                self.kill();
                bail!(
                    "{} did not exit within {within:?} of SIGTERM (killed); log tail:\n{}",
                    self.name(),
                    log_tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `Some(status)` if the child has exited (and is reaped), `None` if running or absent.
    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                self.child = None;
                Some(st.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }
}

/// The last `lines` lines of a log file (best effort; for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(cannot open {}: {e})", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

// ------------------------------------------------------------------ builder

/// Builds a [`TestCluster`]: 3 meta nodes and `data_servers` data servers.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    data_servers: usize,
    replicas: u32,
    server_timeout: Duration,
    meta_args: Vec<String>,
    data_args: Vec<String>,
    env: BTreeMap<String, String>,
    bin: Option<PathBuf>,
    start_timeout: Duration,
    places: Vec<Place>,
    data_dirs: Vec<PathBuf>,
    allowed_errors: Vec<String>,
}

/// Where one node runs: the IP it binds and, optionally, a network namespace to run in.
/// A node in its own namespace owns its port space and binds the default ports (meta
/// 7001/7002, data 7101/7102); otherwise ports are picked free.
#[derive(Clone, Debug)]
pub struct Place {
    pub ip: String,
    pub netns: Option<String>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterBuilder {
    pub fn new() -> Self {
        ClusterBuilder {
            data_servers: 0,
            replicas: 2,
            // Short so tests see chain repair quickly; production default is 10 s.
            server_timeout: Duration::from_secs(3),
            meta_args: Vec::new(),
            data_args: Vec::new(),
            env: BTreeMap::new(),
            bin: None,
            start_timeout: START_TIMEOUT,
            places: Vec::new(),
            data_dirs: Vec::new(),
            allowed_errors: Vec::new(),
        }
    }

    /// ERROR lines the test provokes on purpose (a corrupted block, an injected disk
    /// fault): a node log's ERROR line containing one of these does not fail the test.
    /// Every other ERROR line does, when the cluster is dropped (docs/design/0011).
    pub fn allow_errors(mut self, patterns: &[&str]) -> Self {
        self.allowed_errors
            .extend(patterns.iter().map(|p| p.to_string()));
        self
    }

    /// Number of data servers (default 0).
    pub fn data_servers(mut self, n: usize) -> Self {
        self.data_servers = n;
        self
    }

    /// Replication factor R passed to meta (default 2).
    pub fn replicas(mut self, r: u32) -> Self {
        self.replicas = r;
        self
    }

    /// `--server-timeout` of meta (default 3 s).
    pub fn server_timeout(mut self, t: Duration) -> Self {
        self.server_timeout = t;
        self
    }

    /// Extra arguments for every meta node.
    pub fn meta_args(mut self, args: Vec<String>) -> Self {
        self.meta_args = args;
        self
    }

    /// Extra arguments for every data server.
    pub fn data_args(mut self, args: Vec<String>) -> Self {
        self.data_args = args;
        self
    }

    /// An environment variable for every node (e.g. `CIRRUS_LOG`, which defaults to `info`).
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// The `cirrus` binary to run (default: [`cirrus_bin`]).
    pub fn bin(mut self, p: impl Into<PathBuf>) -> Self {
        self.bin = Some(p.into());
        self
    }

    /// Deadline of `start()` (default 90 s; it only catches hangs).
    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.start_timeout = t;
        self
    }

    /// Where each node runs: meta 0..3 first, then the data servers in order. Nodes
    /// without an entry run on 127.0.0.1 in the caller's namespace.
    pub fn places(mut self, p: Vec<Place>) -> Self {
        self.places = p;
        self
    }

    /// Existing `--dir`s for the data servers (e.g. small loop-mounted filesystems), in
    /// order; servers without an entry get a fresh dir in the cluster's temp dir.
    pub fn data_dirs(mut self, d: Vec<PathBuf>) -> Self {
        self.data_dirs = d;
        self
    }

    /// Address and optional namespace of node `k` (meta 0..3, then data).
    fn place(&self, k: usize) -> (String, Option<String>) {
        match self.places.get(k) {
            Some(p) => (p.ip.clone(), p.netns.clone()),
            None => ("127.0.0.1".into(), None),
        }
    }

    /// Starts the meta group, waits for a leader and a cluster id, then starts the data
    /// servers and waits until each is alive in the chain table.
    pub async fn start(self) -> Result<TestCluster> {
        let mut last = None;
        for attempt in 0..PORT_RETRIES {
            match self.try_start().await {
                Ok(c) => return Ok(c),
                Err(StartError::PortTaken(e)) => {
                    eprintln!(
                        "cirrus-raft-tests: port collision on attempt {attempt}, retrying: {e:#}"
                    );
                    last = Some(e);
                }
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("start failed")))
    }

    async fn try_start(&self) -> std::result::Result<TestCluster, StartError> {
        let bin = self.bin.clone().unwrap_or_else(cirrus_bin);
        let tmp = tempfile::Builder::new()
            .prefix("cirrus-cluster-")
            .tempdir()
            .context("create the cluster temp dir")?;
        let ports = free_ports(2 * (3 + self.data_servers))?;
        let mut ports = ports.into_iter();
        let mut next_port = || {
            ports
                .next()
                .ok_or_else(|| anyhow!("ran out of picked ports"))
        };

        let mut metas = Vec::new();
        let mut meta_addrs = Vec::new();
        for i in 0..3 {
            let (ip, ns) = self.place(i);
            let (p, m) = (next_port()?, next_port()?);
            let (p, m) = if ns.is_some() { (7001, 7002) } else { (p, m) };
            let addr = format!("{ip}:{p}");
            let metrics = format!("{ip}:{m}");
            meta_addrs.push(addr.clone());
            metas.push((addr, metrics, i, ns));
        }
        let peers = meta_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let server_timeout = format!("{}ms", self.server_timeout.as_millis());
        let mut meta = Vec::new();
        for (addr, metrics, i, netns) in metas {
            let dir = tmp.path().join(format!("meta-{}", i + 1));
            std::fs::create_dir_all(&dir).context("create meta dir")?;
            let mut args: Vec<String> = vec![
                "meta".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--listen".into(),
                addr.clone(),
                "--peers".into(),
                peers.clone(),
                "--dir".into(),
                dir.display().to_string(),
                "--metrics-listen".into(),
                metrics.clone(),
                "--replicas".into(),
                self.replicas.to_string(),
                "--server-timeout".into(),
                server_timeout.clone(),
            ];
            args.extend(self.meta_args.iter().cloned());
            meta.push(Node {
                role: Role::Meta,
                index: i,
                addr,
                metrics_addr: metrics,
                log: tmp.path().join(format!("meta-{}.log", i + 1)),
                dir,
                args,
                netns,
                child: None,
            });
        }
        let meta_list = meta_addrs.join(",");
        let mut data = Vec::new();
        for i in 0..self.data_servers {
            let (ip, netns) = self.place(3 + i);
            let (p, m) = (next_port()?, next_port()?);
            let (p, m) = if netns.is_some() {
                (7101, 7102)
            } else {
                (p, m)
            };
            let addr = format!("{ip}:{p}");
            let metrics = format!("{ip}:{m}");
            let dir = match self.data_dirs.get(i) {
                Some(d) => d.clone(),
                None => tmp.path().join(format!("data-{}", i + 1)),
            };
            std::fs::create_dir_all(&dir).context("create data dir")?;
            let mut args: Vec<String> = vec![
                "data".into(),
                "--meta".into(),
                meta_list.clone(),
                "--listen".into(),
                addr.clone(),
                "--dir".into(),
                dir.display().to_string(),
                "--metrics-listen".into(),
                metrics.clone(),
            ];
            args.extend(self.data_args.iter().cloned());
            data.push(Node {
                role: Role::Data,
                index: i,
                addr,
                metrics_addr: metrics,
                log: tmp.path().join(format!("data-{}.log", i + 1)),
                dir,
                args,
                netns,
                child: None,
            });
        }
        let mut c = TestCluster {
            tmp: Some(tmp),
            bin,
            env: self.env.clone(),
            meta,
            data,
            allowed_errors: self.allowed_errors.clone(),
        };
        for i in 0..3 {
            let env = c.env.clone();
            let bin = c.bin.clone();
            c.meta[i].spawn(&bin, &env)?;
        }
        let deadline = Instant::now() + self.start_timeout;
        c.wait_started(
            "a meta leader and a cluster id",
            deadline,
            Role::Meta,
            |c| {
                Box::pin(async move {
                    let Ok(i) = c.leader_index().await else {
                        return false;
                    };
                    c.info(i).await.is_ok_and(|r| !r.cluster_id.is_empty())
                })
            },
        )
        .await?;
        for i in 0..c.data.len() {
            let env = c.env.clone();
            let bin = c.bin.clone();
            c.data[i].spawn(&bin, &env)?;
        }
        if !c.data.is_empty() {
            c.wait_started(
                "every data server alive in the chain table",
                deadline,
                Role::Data,
                |c| {
                    Box::pin(async move {
                        let Ok(t) = c.chain_table().await else {
                            return false;
                        };
                        c.data
                            .iter()
                            .all(|d| t.servers.iter().any(|s| s.address == d.addr && s.alive))
                    })
                },
            )
            .await?;
        }
        Ok(c)
    }
}

enum StartError {
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

type BoxFut<'a> = std::pin::Pin<Box<dyn Future<Output = bool> + 'a>>;

// ------------------------------------------------------------------ cluster

/// A running cluster of real `cirrus` processes. See the module doc.
pub struct TestCluster {
    tmp: Option<tempfile::TempDir>,
    bin: PathBuf,
    env: BTreeMap<String, String>,
    meta: Vec<Node>,
    data: Vec<Node>,
    allowed_errors: Vec<String>,
}

/// What a data server logs at ERROR when it finds a block failing its crc, as a test that
/// corrupts blocks on purpose (or a chaos run with disk faults) provokes.
pub const CORRUPTION_ERRORS: &[&str] = &[
    "checksum mismatch",
    "no member has a good copy",
    "unreadable object, set aside",
    "scrub: repair failed",
];

/// The ERROR lines of Cirrus's own events in a node log (the level is the second word of
/// a line, after the timestamp; colour codes are stripped first). openraft's are left
/// out: it reports an unreachable or slow peer at ERROR, a fault the group handles and
/// that Cirrus's policy would log as a warning (docs/design/0011).
pub fn error_lines(log: &str) -> Vec<String> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| {
            let mut w = l.split_whitespace().skip(1);
            w.next() == Some("ERROR") && !w.next().is_some_and(|t| t.starts_with("openraft"))
        })
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl TestCluster {
    /// ERROR lines in the node logs that `ClusterBuilder::allow_errors` did not allow.
    pub fn unexpected_errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.meta.iter().chain(self.data.iter()) {
            let Ok(text) = std::fs::read_to_string(&n.log) else {
                continue;
            };
            for l in error_lines(&text) {
                if !self.allowed_errors.iter().any(|a| l.contains(a.as_str())) {
                    out.push(format!("{}: {l}", n.log.display()));
                }
            }
        }
        out
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, the form `cirrus data --meta` takes.
    pub fn meta_addrs(&self) -> String {
        self.meta
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn meta_addr(&self, i: usize) -> String {
        self.meta[i].addr.clone()
    }

    pub fn data_addr(&self, i: usize) -> String {
        self.data[i].addr.clone()
    }

    pub fn meta_metrics_addr(&self, i: usize) -> String {
        self.meta[i].metrics_addr.clone()
    }

    pub fn data_metrics_addr(&self, i: usize) -> String {
        self.data[i].metrics_addr.clone()
    }

    /// Number of meta nodes (always 3) and data servers.
    pub fn meta_count(&self) -> usize {
        self.meta.len()
    }

    pub fn data_count(&self) -> usize {
        self.data.len()
    }

    /// The root temp dir holding every node's dir and log.
    pub fn dir(&self) -> &Path {
        match &self.tmp {
            Some(t) => t.path(),
            None => Path::new("."),
        }
    }

    /// The `--dir` of meta node `i`.
    pub fn meta_dir(&self, i: usize) -> PathBuf {
        self.meta[i].dir.clone()
    }

    /// The `--dir` of data server `i` (object files live under it).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.data[i].dir.clone()
    }

    /// The stdout+stderr log of meta node `i` (appended across restarts).
    pub fn meta_log(&self, i: usize) -> PathBuf {
        self.meta[i].log.clone()
    }

    pub fn data_log(&self, i: usize) -> PathBuf {
        self.data[i].log.clone()
    }

    pub fn meta_pid(&self, i: usize) -> Option<i32> {
        self.meta[i].pid()
    }

    pub fn data_pid(&self, i: usize) -> Option<i32> {
        self.data[i].pid()
    }

    /// A connected `MetaConn` (cluster id known) over all three meta addresses.
    pub async fn conn(&self) -> Result<MetaConn> {
        self.conn_with(CallPolicy {
            per_try: Duration::from_secs(3),
            total: Duration::from_secs(30),
        })
        .await
    }

    /// Like [`conn`](Self::conn) with explicit deadlines.
    pub async fn conn_with(&self, policy: CallPolicy) -> Result<MetaConn> {
        let addrs = self.meta.iter().map(|n| n.addr.clone()).collect();
        let conn = MetaConn::new(addrs, policy).context("create meta conn")?;
        conn.connect()
            .await
            .with_context(|| format!("connect to the meta group {}", self.meta_addrs()))?;
        Ok(conn)
    }

    /// `ClusterInfo` as answered by meta node `i` itself (never forwarded).
    pub async fn info(&self, i: usize) -> Result<cirrus_types::MetaInfo> {
        let addr = &self.meta[i].addr;
        let ch = net::channel(addr).context("channel")?;
        let mut c = net::meta_client(ch);
        let r = tokio::time::timeout(PROBE_TIMEOUT, c.cluster_info(pb::ClusterInfoRequest {}))
            .await
            .map_err(|_| anyhow!("cluster info from meta-{} ({addr}) timed out", i + 1))?
            .with_context(|| format!("cluster info from meta-{} ({addr})", i + 1))?;
        Ok((&r.into_inner()).into())
    }

    /// `DataInfo` as answered by data server `i`.
    pub async fn data_info(&self, i: usize) -> Result<cirrus_types::DataInfo> {
        let addr = &self.data[i].addr;
        let ch = net::channel(addr).context("channel")?;
        let mut c = net::data_client(ch);
        let r = tokio::time::timeout(PROBE_TIMEOUT, c.info(pb::DataInfoRequest {}))
            .await
            .map_err(|_| anyhow!("data info from data-{} ({addr}) timed out", i + 1))?
            .with_context(|| format!("data info from data-{} ({addr})", i + 1))?;
        Ok((&r.into_inner()).into())
    }

    /// Index of the node that says it is the leader (highest term wins if a deposed
    /// leader has not noticed yet). Asks every running node, each with a deadline.
    pub async fn leader_index(&self) -> Result<usize> {
        let mut best: Option<(u64, usize)> = None;
        let mut errors = Vec::new();
        let probes = (0..self.meta.len()).map(|i| async move { (i, self.info(i).await) });
        for (i, r) in futures_join_all(probes).await {
            match r {
                Ok(r) if r.role == "leader" => {
                    if best.is_none_or(|(t, _)| r.term > t) {
                        best = Some((r.term, i));
                    }
                }
                Ok(r) => errors.push(format!("meta-{}: role {:?}", i + 1, r.role)),
                Err(e) => errors.push(format!("meta-{}: {e:#}", i + 1)),
            }
        }
        best.map(|(_, i)| i)
            .ok_or_else(|| anyhow!("no meta node is leader: {}", errors.join("; ")))
    }

    /// The chain table, from the leader.
    pub async fn chain_table(&self) -> Result<pb::ChainTable> {
        let conn = self
            .conn_with(CallPolicy {
                per_try: PROBE_TIMEOUT,
                total: Duration::from_secs(5),
            })
            .await?;
        let cid = conn.cluster_id();
        conn.call("get chains", |mut c| {
            let req = pb::GetChainsRequest {
                cluster_id: cid.clone(),
            };
            async move { c.get_chains(req).await }
        })
        .await
        .context("get chains")
    }

    /// Open handles the meta group holds (all clients), from the leader.
    pub async fn open_handles(&self) -> Result<u64> {
        let conn = self
            .conn_with(CallPolicy {
                per_try: PROBE_TIMEOUT,
                total: Duration::from_secs(5),
            })
            .await?;
        let r = conn
            .call("status", |mut c| async move {
                c.status(pb::ClusterInfoRequest {}).await
            })
            .await
            .context("status")?;
        Ok(r.open_handles)
    }

    /// SIGKILL meta node `i` (and reap it).
    pub fn kill_meta(&mut self, i: usize) {
        self.meta[i].kill();
    }

    /// SIGKILL data server `i` (and reap it).
    pub fn kill_data(&mut self, i: usize) {
        self.data[i].kill();
    }

    /// Starts meta node `i` again with the same arguments (killing it first if running),
    /// and waits until it answers `ClusterInfo`.
    pub async fn restart_meta(&mut self, i: usize) -> Result<()> {
        self.meta[i].kill();
        let (bin, env) = (self.bin.clone(), self.env.clone());
        self.meta[i].spawn(&bin, &env)?;
        let deadline = Instant::now() + RESTART_TIMEOUT;
        loop {
            if self.info(i).await.is_ok() {
                return Ok(());
            }
            self.fail_if_exited(Role::Meta, i, "restart")?;
            if Instant::now() > deadline {
                bail!(
                    "meta-{} did not answer within {RESTART_TIMEOUT:?} after restart; log tail:\n{}",
                    i + 1,
                    log_tail(&self.meta[i].log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts data server `i` again with the same arguments (killing it first if
    /// running), and waits until it answers `Info` (which needs a reachable meta group if
    /// the server registers before it serves).
    pub async fn restart_data(&mut self, i: usize) -> Result<()> {
        self.data[i].kill();
        let (bin, env) = (self.bin.clone(), self.env.clone());
        self.data[i].spawn(&bin, &env)?;
        let deadline = Instant::now() + RESTART_TIMEOUT;
        loop {
            if self.data_info(i).await.is_ok() {
                return Ok(());
            }
            self.fail_if_exited(Role::Data, i, "restart")?;
            if Instant::now() > deadline {
                bail!(
                    "data-{} did not answer within {RESTART_TIMEOUT:?} after restart; log tail:\n{}",
                    i + 1,
                    log_tail(&self.data[i].log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The binary every later (re)start runs: a rolling upgrade's new build.
    pub fn set_bin(&mut self, bin: impl Into<PathBuf>) {
        self.bin = bin.into();
    }

    /// SIGTERM to meta node `i`, as a service manager stops it, and waits up to `within`
    /// for it to exit; returns its exit status. The node stays down until `restart_meta`.
    pub async fn terminate_meta(&mut self, i: usize, within: Duration) -> Result<String> {
        self.meta[i].terminate(within).await
    }

    /// SIGTERM to data server `i` and waits up to `within` for it to exit.
    pub async fn terminate_data(&mut self, i: usize, within: Duration) -> Result<String> {
        self.data[i].terminate(within).await
    }

    /// Whether meta node `i` has a live (not exited, not killed) process.
    pub fn meta_running(&mut self, i: usize) -> bool {
        self.meta[i].exited().is_none() && self.meta[i].child.is_some()
    }

    pub fn data_running(&mut self, i: usize) -> bool {
        self.data[i].exited().is_none() && self.data[i].child.is_some()
    }

    /// SIGSTOP meta node `i` (it stays in memory, holds its sockets, answers nothing).
    pub fn stop_meta(&self, i: usize) {
        self.meta[i].signal(libc::SIGSTOP);
    }

    /// SIGCONT meta node `i`.
    pub fn cont_meta(&self, i: usize) {
        self.meta[i].signal(libc::SIGCONT);
    }

    pub fn stop_data(&self, i: usize) {
        self.data[i].signal(libc::SIGSTOP);
    }

    pub fn cont_data(&self, i: usize) {
        self.data[i].signal(libc::SIGCONT);
    }

    /// Polls `f` until it returns true; errors after `timeout` naming `what`. The
    /// timeout only catches hangs: pick it generously.
    pub async fn wait_until<F, Fut>(&self, what: &str, timeout: Duration, mut f: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            if f().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Like `wait_until`, but fails fast (with the log tail) if a node of `role` exits,
    /// and reports the tails of that role's logs on timeout.
    async fn wait_started<F>(
        &mut self,
        what: &str,
        deadline: Instant,
        role: Role,
        f: F,
    ) -> std::result::Result<(), StartError>
    where
        F: for<'a> Fn(&'a TestCluster) -> BoxFut<'a>,
    {
        let mut pause = Duration::from_millis(20);
        loop {
            if f(self).await {
                return Ok(());
            }
            for r in [Role::Meta, role] {
                let n = if r == Role::Meta {
                    self.meta.len()
                } else {
                    self.data.len()
                };
                for i in 0..n {
                    if let Err(e) = self.fail_if_exited(r, i, "start") {
                        let node = if r == Role::Meta {
                            &self.meta[i]
                        } else {
                            &self.data[i]
                        };
                        let tail = log_tail(&node.log, 40).to_lowercase();
                        if tail.contains("address already in use") || tail.contains("addrinuse") {
                            return Err(StartError::PortTaken(e));
                        }
                        return Err(StartError::Other(e));
                    }
                }
            }
            if Instant::now() >= deadline {
                let nodes = if role == Role::Meta {
                    &self.meta
                } else {
                    &self.data
                };
                let tails = nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "--- {} ({}):\n{}",
                            n.name(),
                            n.log.display(),
                            log_tail(&n.log, 15)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(StartError::Other(anyhow!(
                    "cluster start: timed out waiting for {what}; log tails:\n{tails}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    fn fail_if_exited(&mut self, role: Role, i: usize, during: &str) -> Result<()> {
        let node = match role {
            Role::Meta => &mut self.meta[i],
            Role::Data => &mut self.data[i],
        };
        if let Some(status) = node.exited() {
            bail!(
                "{} exited during {during} ({status}); log {}:\n{}",
                node.name(),
                node.log.display(),
                log_tail(&node.log, 40)
            );
        }
        Ok(())
    }

    /// Keeps the temp dir after drop (for post-mortems) and returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        match self.tmp.take() {
            Some(t) => t.keep(),
            None => PathBuf::from("."),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in self.meta.iter_mut().chain(self.data.iter_mut()) {
            n.kill();
        }
        // A node that logged an ERROR nobody expected fails the test (log-level policy,
        // docs/design/0011), unless the test is failing already.
        let unexpected = if std::thread::panicking() {
            Vec::new()
        } else {
            self.unexpected_errors()
        };
        let keep = std::thread::panicking()
            || !unexpected.is_empty()
            || std::env::var_os("CIRRUS_KEEP_TEST_DIR").is_some();
        if keep {
            if let Some(t) = self.tmp.take() {
                let p = t.keep();
                eprintln!(
                    "cirrus-raft-tests: kept cluster dir with node logs: {}",
                    p.display()
                );
            }
        }
        if !unexpected.is_empty() {
            panic!(
                "{} unexpected ERROR line(s) in the node logs (allow a provoked one with \
                 ClusterBuilder::allow_errors):\n{}",
                unexpected.len(),
                unexpected.join("\n")
            );
        }
    }
}

/// Runs futures concurrently and collects their outputs in order (a tiny join_all, so
/// this crate does not need the `futures` crate).
async fn futures_join_all<I, F, T>(futs: I) -> Vec<T>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = T>,
{
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_nonzero() {
        let p = free_ports(8).expect("pick ports");
        let mut s = p.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 8);
        assert!(p.iter().all(|&x| x != 0));
    }

    #[test]
    fn log_tail_returns_the_last_lines() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x.log");
        std::fs::write(&p, "a\nb\nc\nd\n").expect("write");
        assert_eq!(log_tail(&p, 2), "c\nd");
        assert!(log_tail(&d.path().join("missing"), 2).contains("cannot open"));
    }

    #[tokio::test]
    async fn spawned_children_run_and_can_be_killed() {
        // Uses /bin/sh rather than cirrus: this checks the spawner and signal plumbing.
        let d = tempfile::tempdir().expect("tempdir");
        let mut n = Node {
            role: Role::Data,
            index: 0,
            addr: String::new(),
            metrics_addr: String::new(),
            dir: d.path().to_path_buf(),
            log: d.path().join("n.log"),
            args: vec!["-c".into(), "echo hello; exec sleep 1000".into()],
            netns: None,
            child: None,
        };
        n.spawn(Path::new("/bin/sh"), &BTreeMap::new())
            .expect("spawn");
        let pid = n.pid().expect("pid");
        assert!(pid > 0);
        assert!(n.exited().is_none());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !log_tail(&n.log, 5).contains("hello") {
            assert!(Instant::now() < deadline, "child never wrote its log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n.kill();
        assert!(n.child.is_none());
        // SAFETY: probing a reaped pid with signal 0; ESRCH expected.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} still alive after kill");
    }
}

#[cfg(test)]
mod log_tests {
    use super::error_lines;

    #[test]
    fn error_lines_are_found_by_level_with_or_without_colour() {
        let log = "2026-12-07T12:00:00.1Z  INFO cirrus_meta: leading\n\
                   \u{1b}[2m2026-12-07T12:00:01.2Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m \u{1b}[2mcirrus_data::scrub\u{1b}[0m: scrub: checksum mismatch\n\
                   2026-12-07T12:00:02.3Z  WARN cirrus_data: an ERROR word in a warning\n\
                   2026-12-07T12:00:03.4Z ERROR cirrus_meta: raft core stopped\n\
                   2026-12-07T12:00:04.5Z ERROR openraft::replication: RPCError err=timeout\n";
        let e = error_lines(log);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("scrub: checksum mismatch") && !e[0].contains('\u{1b}'));
        assert!(e[1].contains("raft core stopped"));
    }
}
