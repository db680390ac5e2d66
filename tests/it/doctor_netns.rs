//! `cirrus doctor` against real daemons, each in its own network namespace on the default
//! ports (7001/7002 meta, 7101/7102 data), as on real machines:
//!
//! - nodes 0, 1, 2: meta group A; node 3: data server of A;
//! - node 4: a second cluster B (one meta node, one data server), and where doctor runs.
//!
//! Checked: all well gives exit 0; one port dropped by iptables between node 4 and node 3
//! is named (host, port, "timed out", firewall fix); the data server of cluster B given to
//! doctor of cluster A is named as mixed clusters; a stopped daemon is named as refused.
//! Every run is non-zero on failure and returns within a deadline (no hang on a dropped
//! port).

use anyhow::{anyhow, bail, Context, Result};
use cirrus_proto::{net, pb, CallPolicy, MetaConn};
use cirrus_raft_tests::cluster::cirrus_bin;
use cirrus_raft_tests::netns::NetLab;
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Deadline of the whole start (elections, registrations) on a loaded 2-core machine.
const START: Duration = Duration::from_secs(90);
/// Deadline of one doctor run: only there to catch a hang.
const DOCTOR_DEADLINE: Duration = Duration::from_secs(60);

/// A daemon inside a namespace; SIGKILLed on drop.
struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(ns: &str, name: &str, args: &[String], dir: &Path) -> Result<Daemon> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).context("create log")?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(cirrus_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        Ok(Daemon {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        format!(
            "--- {} ---\n{}",
            self.name,
            cirrus_raft_tests::cluster::log_tail(&self.log, 15)
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one doctor run gave.
struct Run {
    ok_exit: bool,
    report: Value,
    text: String,
}

impl Run {
    fn failures(&self) -> Vec<&Value> {
        self.report["findings"]
            .as_array()
            .map(|v| v.iter().filter(|f| f["status"] == "fail").collect())
            .unwrap_or_default()
    }
}

/// Runs `cirrus doctor ARGS` inside namespace `ns`, twice: `--json` (parsed) and text.
async fn doctor(ns: &str, args: &[&str]) -> Run {
    let run_once = |json: bool| {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(cirrus_bin())
            .arg("doctor")
            .args(args)
            .kill_on_drop(true)
            .stdin(Stdio::null());
        if json {
            cmd.arg("--json");
        }
        async move {
            let started = Instant::now();
            let out = tokio::time::timeout(DOCTOR_DEADLINE, cmd.output())
                .await
                .unwrap_or_else(|_| {
                    panic!("cirrus doctor {args:?} hung: no exit within {DOCTOR_DEADLINE:?}")
                })
                .expect("run cirrus doctor");
            eprintln!(
                "doctor {args:?}{} exited {} after {:.1?}",
                if json { " --json" } else { "" },
                out.status,
                started.elapsed()
            );
            out
        }
    };
    let j = run_once(true).await;
    let report: Value = serde_json::from_slice(&j.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&j.stdout),
            String::from_utf8_lossy(&j.stderr)
        )
    });
    let t = run_once(false).await;
    assert_eq!(
        j.status.success(),
        t.status.success(),
        "text and JSON runs disagree on the exit status"
    );
    assert_eq!(
        report["ok"].as_bool(),
        Some(j.status.success()),
        "the report's ok and the exit status disagree: {report:#}"
    );
    Run {
        ok_exit: j.status.success(),
        report,
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&t.stdout),
            String::from_utf8_lossy(&t.stderr)
        ),
    }
}

async fn cluster_info(addr: &str) -> Result<pb::ClusterInfoReply> {
    let mut c = net::meta_client(net::channel(addr)?);
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        c.cluster_info(pb::ClusterInfoRequest {}),
    )
    .await
    .map_err(|_| anyhow!("{addr}: no answer"))??;
    Ok(r.into_inner())
}

async fn data_info(addr: &str) -> Result<pb::DataInfoReply> {
    let mut c = net::data_client(net::channel(addr)?);
    let r = tokio::time::timeout(Duration::from_secs(2), c.info(pb::DataInfoRequest {}))
        .await
        .map_err(|_| anyhow!("{addr}: no answer"))??;
    Ok(r.into_inner())
}

/// Waits until the meta group at `metas` has a leader and one cluster id, and the data
/// server at `data` is registered with that cluster and alive in its table.
async fn wait_ready(metas: &[String], data: &str, logs: &[&Daemon]) -> Result<String> {
    let deadline = Instant::now() + START;
    let mut last = String::new();
    while Instant::now() < deadline {
        match try_ready(metas, data).await {
            Ok(id) => return Ok(id),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let tails: Vec<String> = logs.iter().map(|d| d.log_tail()).collect();
    bail!(
        "cluster {metas:?} + {data} not ready within {START:?}: {last}\n{}",
        tails.join("\n")
    )
}

async fn try_ready(metas: &[String], data: &str) -> Result<String> {
    let mut id = None;
    let mut leader = false;
    for m in metas {
        let i = cluster_info(m).await?;
        if i.cluster_id.is_empty() {
            bail!("{m}: no cluster id yet");
        }
        if id.get_or_insert(i.cluster_id.clone()) != &i.cluster_id {
            bail!("meta nodes disagree on the cluster id");
        }
        leader |= i.role == "leader";
    }
    if !leader {
        bail!("no leader yet");
    }
    let id = id.ok_or_else(|| anyhow!("no meta"))?;
    let d = data_info(data).await?;
    if d.cluster_id != id {
        bail!("{data}: cluster {:?}, want {id}", d.cluster_id);
    }
    let conn = MetaConn::new(
        metas.to_vec(),
        CallPolicy {
            per_try: Duration::from_secs(2),
            total: Duration::from_secs(4),
        },
    )?;
    conn.set_cluster_id(id.parse()?);
    let cid = id.clone();
    let t = conn
        .call("get chains", |mut c| {
            let req = pb::GetChainsRequest {
                cluster_id: cid.clone(),
            };
            async move { c.get_chains(req).await }
        })
        .await?;
    if !t.servers.iter().any(|s| s.address == data && s.alive) {
        bail!("{data} not alive in the chain table yet");
    }
    Ok(id)
}

fn netns_exec(ns: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("run {args:?} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The failures of `run` that name `host:port`.
fn failures_at<'a>(run: &'a Run, host: &str, port: u16) -> Vec<&'a Value> {
    run.failures()
        .into_iter()
        .filter(|f| f["host"] == host && f["port"] == port)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_the_dropped_port_the_refused_daemon_and_the_other_cluster() -> Result<()> {
    if let Err(why) = NetLab::available() {
        panic!("this test needs network namespaces (root, ip, iptables): {why}");
    }
    let lab = NetLab::create(5).context("create the network lab")?;
    let tmp = tempfile::Builder::new()
        .prefix("cirrus-doctor-")
        .tempdir()?;
    let ip = |j: usize| lab.nodes[j].ip.clone();
    let ns = |j: usize| lab.nodes[j].ns.clone();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();

    // Cluster A: three meta nodes and one data server, each on its own "machine".
    let metas_a: Vec<String> = (0..3).map(|j| format!("{}:7001", ip(j))).collect();
    let peers_a = metas_a
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut metas = Vec::new();
    for (j, listen) in metas_a.iter().enumerate() {
        let dir = tmp.path().join(format!("meta-a{j}"));
        let args = s(&[
            "meta",
            "--id",
            &(j + 1).to_string(),
            "--listen",
            listen,
            "--peers",
            &peers_a,
            "--dir",
            &dir.display().to_string(),
        ]);
        metas.push(Daemon::spawn(
            &ns(j),
            &format!("meta-a{j}"),
            &args,
            tmp.path(),
        )?);
    }
    let data_a_addr = format!("{}:7101", ip(3));
    let mut data_a = Daemon::spawn(
        &ns(3),
        "data-a",
        &s(&[
            "data",
            "--meta",
            &metas_a.join(","),
            "--listen",
            &data_a_addr,
            "--dir",
            &tmp.path().join("data-a").display().to_string(),
        ]),
        tmp.path(),
    )?;

    // Cluster B on node 4: one meta node (a group of one) and its own data server.
    let meta_b_addr = format!("{}:7001", ip(4));
    let meta_b = Daemon::spawn(
        &ns(4),
        "meta-b",
        &s(&[
            "meta",
            "--id",
            "1",
            "--listen",
            &meta_b_addr,
            "--peers",
            &format!("1={meta_b_addr}"),
            "--dir",
            &tmp.path().join("meta-b").display().to_string(),
            "--replicas",
            "1",
        ]),
        tmp.path(),
    )?;
    let data_b_addr = format!("{}:7101", ip(4));
    let data_b = Daemon::spawn(
        &ns(4),
        "data-b",
        &s(&[
            "data",
            "--meta",
            &meta_b_addr,
            "--listen",
            &data_b_addr,
            "--dir",
            &tmp.path().join("data-b").display().to_string(),
        ]),
        tmp.path(),
    )?;

    let logs_a: Vec<&Daemon> = metas.iter().chain([&data_a]).collect();
    let id_a = wait_ready(&metas_a, &data_a_addr, &logs_a).await?;
    let id_b = wait_ready(
        std::slice::from_ref(&meta_b_addr),
        &data_b_addr,
        &[&meta_b, &data_b],
    )
    .await?;
    assert_ne!(id_a, id_b, "two bootstraps gave the same cluster id");

    let client = ns(4);
    let meta_arg = metas_a.join(",");

    // 1. All well: exit 0, and doctor found the data server through the registry.
    let r = doctor(&client, &["--meta", &meta_arg, "--timeout", "3s"]).await;
    assert!(r.ok_exit, "doctor failed on a healthy cluster:\n{}", r.text);
    assert_eq!(r.report["cluster_id"], id_a.as_str(), "{:#}", r.report);
    assert!(
        r.report["data_endpoints"]
            .as_array()
            .is_some_and(|v| v.iter().any(|a| a == data_a_addr.as_str())),
        "doctor did not learn the data server from the registry: {:#}",
        r.report
    );

    // 2. One port dropped between node 4 and node 3 (7101/tcp only): a timeout naming
    //    that host and port; the metrics port of the same host stays fine.
    let (h3, rule) = (ip(3), ["-p", "tcp", "--dport", "7101", "-j", "DROP"]);
    let mut add = vec!["iptables", "-A", "OUTPUT", "-d", &h3];
    add.extend(rule);
    netns_exec(&client, &add)?;
    let r = doctor(&client, &["--meta", &meta_arg, "--timeout", "2s"]).await;
    let mut del = vec!["iptables", "-D", "OUTPUT", "-d", &h3];
    del.extend(rule);
    netns_exec(&client, &del)?;
    assert!(
        !r.ok_exit,
        "doctor passed with 7101/tcp dropped:\n{}",
        r.text
    );
    let at = failures_at(&r, &h3, 7101);
    assert!(
        at.iter().any(|f| f["check"] == "tcp"
            && f["message"].as_str().unwrap_or("").contains("timed out")
            && f["fix"].as_str().unwrap_or("").contains("firewall")),
        "no timeout naming {h3}:7101: {:#}",
        r.report
    );
    assert!(
        r.failures()
            .iter()
            .all(|f| f["host"] == h3.as_str() && f["port"] == 7101),
        "failures beyond the dropped port: {:#}",
        r.report
    );
    assert!(
        r.text.contains(&format!("7101/tcp on {h3} timed out")),
        "the text report does not say it:\n{}",
        r.text
    );

    // 3. A data server of another cluster (B) given to doctor of cluster A.
    let r = doctor(
        &client,
        &[
            "--meta",
            &meta_arg,
            "--data",
            &data_b_addr,
            "--timeout",
            "3s",
        ],
    )
    .await;
    assert!(
        !r.ok_exit,
        "doctor passed with a data server of cluster B:\n{}",
        r.text
    );
    let at = failures_at(&r, &ip(4), 7101);
    assert!(
        at.iter().any(|f| {
            let m = f["message"].as_str().unwrap_or("");
            f["check"] == "cluster-id"
                && m.contains("mixed clusters")
                && m.contains(&id_a)
                && m.contains(&id_b)
        }),
        "no mixed-cluster failure naming {data_b_addr} and both ids: {:#}",
        r.report
    );
    assert!(r.text.contains("mixed clusters"), "{}", r.text);

    // 4. A stopped daemon: the data server of A is killed, the registry still lists it.
    data_a.kill();
    let r = doctor(&client, &["--meta", &meta_arg, "--timeout", "3s"]).await;
    assert!(
        !r.ok_exit,
        "doctor passed with the data server down:\n{}",
        r.text
    );
    let at = failures_at(&r, &h3, 7101);
    assert!(
        at.iter().any(|f| f["check"] == "tcp"
            && f["message"].as_str().unwrap_or("").contains("refused")
            && f["fix"]
                .as_str()
                .unwrap_or("")
                .contains("is the data server running")),
        "no refusal naming {h3}:7101: {:#}",
        r.report
    );
    assert!(
        r.text.contains(&format!("7101/tcp on {h3} refused")),
        "{}",
        r.text
    );

    // ... and a stopped meta node: refused on its gRPC port, the group still answers.
    metas[2].kill();
    let r = doctor(&client, &["--meta", &meta_arg, "--timeout", "3s"]).await;
    assert!(!r.ok_exit, "{}", r.text);
    let h2 = ip(2);
    assert!(
        failures_at(&r, &h2, 7001)
            .iter()
            .any(|f| f["check"] == "tcp"
                && f["message"].as_str().unwrap_or("").contains("refused")
                && f["fix"]
                    .as_str()
                    .unwrap_or("")
                    .contains("is the meta node running")),
        "no refusal naming {h2}:7001: {:#}",
        r.report
    );
    assert_eq!(r.report["cluster_id"], id_a.as_str(), "{:#}", r.report);
    drop(metas);
    drop(lab);
    Ok(())
}
