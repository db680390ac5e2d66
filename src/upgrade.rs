//! `cirrus upgrade`: the two questions a rolling replacement of the binary asks the
//! cluster (docs/design/0012-rolling-upgrade.md). It restarts nothing itself: the host's
//! service manager does (`cirrus-upgrade` of the Terraform module, or an operator).
//!
//! * `cirrus upgrade plan`: the order, meta followers first (by id), the meta leader
//!   last, then the data servers one at a time (by id). Refused unless the cluster is
//!   healthy now: an upgrade starts from full health or not at all.
//! * `cirrus upgrade wait`: blocks until the cluster is healthy and has stayed so for
//!   `--settle`: a leader; every meta voter answering as leader or follower and applied
//!   at least as far as the leader had committed when the wait began (so a restarted
//!   node has caught up with what happened while it was down); every registered data
//!   server alive and answering; every chain with its full replica count and nothing
//!   syncing. On `--timeout` it exits non-zero naming what is still missing.
//!
//! The settle time covers the one thing a single look cannot see: a data server that
//! restarted faster than the meta leader's server timeout looks healthy before and after
//! its re-registration is handled; holding health over a few heartbeats sees through it.

use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct UpgradeArgs {
    #[command(subcommand)]
    pub cmd: UpgradeCmd,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum UpgradeCmd {
    /// Print the restart order: `meta ID ADDRESS ROLE` lines (followers, then the
    /// leader), then `data ID ADDRESS` lines. Fails if the cluster is not healthy now.
    Plan {
        /// Meta group addresses, H1:7001,H2:7001,H3:7001.
        #[arg(long, env = "CIRRUS_META")]
        meta: String,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the cluster is healthy (see `cirrus upgrade --help`): run before and
    /// after each node's restart.
    Wait {
        /// Meta group addresses, H1:7001,H2:7001,H3:7001.
        #[arg(long, env = "CIRRUS_META")]
        meta: String,
        /// Give up (exit 1, naming what is missing) after this long.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Health must hold this long, over several looks, before the wait passes.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
}

/// How long one look at the cluster may take (`status_json`'s own per-call deadline).
const LOOK: Duration = Duration::from_secs(5);
/// Time between looks.
const POLL: Duration = Duration::from_millis(500);

pub async fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    match args.cmd {
        UpgradeCmd::Plan { meta, json } => {
            let v = cirrus_client::cli::status_json(&meta, LOOK).await?;
            let target = v["leader"]["commit_index"].as_u64().unwrap_or(0);
            let problems = problems(&v, target);
            if !problems.is_empty() {
                anyhow::bail!(
                    "the cluster is not healthy, so no upgrade should start:\n  {}",
                    problems.join("\n  ")
                );
            }
            let steps = plan(&v)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&steps)?);
            } else {
                for s in &steps {
                    let role = s["role"].as_str().unwrap_or("");
                    let state = if role == "meta" {
                        format!(" {}", s["state"].as_str().unwrap_or(""))
                    } else {
                        String::new()
                    };
                    println!(
                        "{role} {} {}{state}",
                        s["id"],
                        s["address"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        UpgradeCmd::Wait {
            meta,
            timeout,
            settle,
        } => wait(&meta, timeout, settle).await,
    }
}

async fn wait(meta: &str, timeout: Duration, settle: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut target = None;
    let mut healthy_since: Option<Instant> = None;
    let mut last: Vec<String> = vec!["no look yet".into()];
    loop {
        let found = match cirrus_client::cli::status_json(meta, LOOK).await {
            Ok(v) => {
                // The first leader commit index seen is the mark every voter must reach.
                let t = *target.get_or_insert(v["leader"]["commit_index"].as_u64().unwrap_or(0));
                problems(&v, t)
            }
            Err(e) => vec![format!("meta group: {e:#}")],
        };
        if found.is_empty() {
            let since = *healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= settle {
                println!(
                    "cirrus upgrade: cluster healthy (held {:.1} s; waited {:.1} s)",
                    since.elapsed().as_secs_f64(),
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        } else {
            if healthy_since.is_some() || found != last {
                eprintln!("cirrus upgrade: waiting: {}", found.join("; "));
            }
            healthy_since = None;
            last = found;
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "the cluster is not healthy after {timeout:?}:\n  {}",
                last.join("\n  ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What keeps the cluster (as `status_json` describes it) from being healthy; empty when
/// it is. `applied_target`: the log index every meta voter must have applied.
pub fn problems(v: &Value, applied_target: u64) -> Vec<String> {
    let mut out = Vec::new();
    let leader = v["leader"]["id"].as_u64().unwrap_or(0);
    if leader == 0 {
        out.push("meta: no leader".to_string());
    }
    for m in v["meta"].as_array().into_iter().flatten() {
        let id = &m["id"];
        let state = m["state"].as_str().unwrap_or("");
        if !matches!(state, "leader" | "follower") {
            let why = m["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            out.push(format!(
                "meta {id} at {}: {state}{why}",
                m["address"].as_str().unwrap_or("?")
            ));
            continue;
        }
        if m["leader_id"].as_u64() != Some(leader) {
            out.push(format!(
                "meta {id}: follows leader {}, not {leader}",
                m["leader_id"]
            ));
        }
        let applied = m["last_applied"].as_u64().unwrap_or(0);
        if applied < applied_target {
            out.push(format!(
                "meta {id}: applied {applied} of {applied_target} (catching up)"
            ));
        }
    }
    let datas = v["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    if datas.is_empty() {
        out.push("data: no data server registered".to_string());
    }
    for d in datas {
        let id = &d["id"];
        if d["state"] != "alive" {
            out.push(format!(
                "data {id} at {}: marked dead by meta",
                d["address"].as_str().unwrap_or("?")
            ));
        } else if d["reachable"] != true {
            out.push(format!(
                "data {id} at {}: does not answer ({})",
                d["address"].as_str().unwrap_or("?"),
                d["error"].as_str().unwrap_or("?")
            ));
        }
    }
    let replicas = v["replicas"].as_u64().unwrap_or(0);
    for c in v["chains"].as_array().into_iter().flatten() {
        if c["state"] != "healthy" {
            let n = c["members"].as_array().map_or(0, Vec::len);
            let syncing = c["syncing"].as_array().map_or(0, Vec::len);
            out.push(format!(
                "chain {}: {} ({n} of {replicas} members, {syncing} syncing)",
                c["id"],
                c["state"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

/// The restart order: meta followers by id, the meta leader, then data servers by id.
pub fn plan(v: &Value) -> anyhow::Result<Vec<Value>> {
    let leader = v["leader"]["id"].as_u64().unwrap_or(0);
    let mut metas: Vec<&Value> = v["meta"].as_array().into_iter().flatten().collect();
    metas.sort_by_key(|m| (m["id"].as_u64() == Some(leader), m["id"].as_u64()));
    if metas.last().and_then(|m| m["id"].as_u64()) != Some(leader) {
        anyhow::bail!("the meta leader {leader} is not among the members the leader reports");
    }
    let mut datas: Vec<&Value> = v["data"].as_array().into_iter().flatten().collect();
    datas.sort_by_key(|d| d["id"].as_u64());
    let mut steps = Vec::new();
    for m in metas {
        steps.push(json!({
            "role": "meta", "id": m["id"], "address": m["address"],
            "state": if m["id"].as_u64() == Some(leader) { "leader" } else { "follower" },
        }));
    }
    for d in datas {
        steps.push(json!({ "role": "data", "id": d["id"], "address": d["address"] }));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Value {
        json!({
            "leader": { "id": 2, "commit_index": 40 },
            "meta": [
                { "id": 1, "address": "a:7001", "state": "follower", "leader_id": 2, "last_applied": 40 },
                { "id": 2, "address": "b:7001", "state": "leader", "leader_id": 2, "last_applied": 41 },
                { "id": 3, "address": "c:7001", "state": "follower", "leader_id": 2, "last_applied": 40 },
            ],
            "data": [
                { "id": 5, "address": "e:7101", "state": "alive", "reachable": true },
                { "id": 4, "address": "d:7101", "state": "alive", "reachable": true },
            ],
            "replicas": 2,
            "chains": [ { "id": 1, "members": [4, 5], "syncing": [], "state": "healthy" } ],
        })
    }

    #[test]
    fn a_healthy_cluster_has_no_problem_and_its_leader_goes_last() {
        let v = healthy();
        assert_eq!(problems(&v, 40), Vec::<String>::new());
        let order: Vec<(String, u64)> = plan(&v)
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["role"].as_str().unwrap().to_string(),
                    s["id"].as_u64().unwrap(),
                )
            })
            .collect();
        let want = [
            ("meta", 1),
            ("meta", 3),
            ("meta", 2),
            ("data", 4),
            ("data", 5),
        ];
        assert_eq!(order, want.map(|(r, i)| (r.to_string(), i)));
    }

    #[test]
    fn each_missing_piece_of_health_is_named() {
        let mut v = healthy();
        v["meta"][0]["last_applied"] = json!(39);
        assert_eq!(problems(&v, 40), ["meta 1: applied 39 of 40 (catching up)"]);
        let mut v = healthy();
        v["meta"][2] =
            json!({ "id": 3, "address": "c:7001", "state": "unreachable", "error": "refused" });
        assert_eq!(problems(&v, 40), ["meta 3 at c:7001: unreachable: refused"]);
        let mut v = healthy();
        v["leader"]["id"] = json!(0);
        assert!(problems(&v, 40).contains(&"meta: no leader".to_string()));
        let mut v = healthy();
        v["data"][1]["reachable"] = json!(false);
        v["data"][1]["error"] = json!("timed out");
        assert_eq!(
            problems(&v, 40),
            ["data 4 at d:7101: does not answer (timed out)"]
        );
        let mut v = healthy();
        v["data"][0]["state"] = json!("dead");
        assert_eq!(problems(&v, 40), ["data 5 at e:7101: marked dead by meta"]);
        let mut v = healthy();
        v["chains"][0] = json!({ "id": 1, "members": [4, 5], "syncing": [5], "state": "degraded" });
        assert_eq!(
            problems(&v, 40),
            ["chain 1: degraded (2 of 2 members, 1 syncing)"]
        );
        let mut v = healthy();
        v["data"] = json!([]);
        v["chains"] = json!([]);
        assert_eq!(problems(&v, 40), ["data: no data server registered"]);
    }
}
