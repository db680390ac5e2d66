//! Property: after heal the cluster converges: the three meta nodes report the same
//! applied index and identical state digests, and every chain is back at full
//! replication (R members, or every live server when fewer exist) with nobody syncing.

use super::CheckResult;
use crate::cluster::TestCluster;
use std::time::{Duration, Instant};

/// Returns the result and the seconds it took to converge.
pub async fn check(c: &TestCluster, replicas: u32, bound: Duration) -> (CheckResult, Option<f64>) {
    let start = Instant::now();
    let mut last = String::from("not probed");
    while start.elapsed() < bound {
        match probe(c, replicas).await {
            Ok(summary) => {
                let t = start.elapsed().as_secs_f64();
                return (
                    CheckResult::new(
                        "converged",
                        format!("{summary}; converged {t:.2}s after heal"),
                        vec![],
                    ),
                    Some(t),
                );
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (
        CheckResult::new(
            "converged",
            format!("bound {bound:?}"),
            vec![format!(
                "not converged {:.1}s after heal: {last}",
                start.elapsed().as_secs_f64()
            )],
        ),
        None,
    )
}

async fn probe(c: &TestCluster, replicas: u32) -> Result<String, String> {
    let mut infos = Vec::new();
    for i in 0..c.meta_count() {
        infos.push(c.info(i).await.map_err(|e| format!("{e:#}"))?);
    }
    let first = &infos[0];
    if first.state_digest.is_empty() {
        return Err("meta-1 reports no state digest".into());
    }
    for (i, r) in infos.iter().enumerate() {
        if r.last_applied != first.last_applied || r.state_digest != first.state_digest {
            return Err(format!(
                "meta-{} at applied {} digest {} vs meta-1 at applied {} digest {}",
                i + 1,
                r.last_applied,
                r.state_digest,
                first.last_applied,
                first.state_digest
            ));
        }
    }
    if c.data_count() == 0 {
        return Ok(format!(
            "3 meta nodes at applied {} with equal digests",
            first.last_applied
        ));
    }
    let t = c.chain_table().await.map_err(|e| format!("{e:#}"))?;
    let alive = t.servers.iter().filter(|s| s.alive).count();
    if alive < c.data_count() {
        return Err(format!("{alive} of {} data servers alive", c.data_count()));
    }
    let want = (replicas as usize).min(alive);
    for ch in &t.chains {
        if ch.members.len() != want || !ch.syncing.is_empty() {
            return Err(format!(
                "chain {} v{} has members {:?} syncing {:?} (want {want})",
                ch.id, ch.version, ch.members, ch.syncing
            ));
        }
    }
    if t.chains.is_empty() {
        return Err("no chains in the table".into());
    }
    Ok(format!(
        "3 meta nodes at applied {} with equal digests; {} chains at R={want}",
        first.last_applied,
        t.chains.len()
    ))
}
