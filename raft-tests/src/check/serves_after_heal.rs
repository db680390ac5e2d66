//! Property: after the faults are healed, the cluster serves again within a bound: a
//! metadata mutation (create + unlink of a probe file) and, with data servers, a data
//! write + fsync + read through a fresh client succeed.

use super::CheckResult;
use crate::history::{MetaOp, MetaRet, Outcome};
use crate::workload::data::{slot_bytes, SLOT};
use crate::workload::meta::Executor;
use std::time::{Duration, Instant};

/// Returns the result and the seconds from heal until both probes succeeded.
pub async fn check(
    meta_addrs: &str,
    cluster_id: &str,
    probe_dir: u64,
    with_data: bool,
    bound: Duration,
) -> (CheckResult, Option<f64>) {
    let start = Instant::now();
    let addrs: Vec<String> = meta_addrs.split(',').map(String::from).collect();
    let mut ex = Executor::new(addrs, cluster_id.to_string());
    let dirs = [probe_dir, probe_dir];
    let mut n = 0u32;
    let mut last_err = String::new();
    let mut meta_ok = false;
    while start.elapsed() < bound {
        n += 1;
        let name = format!("probe-{n}");
        let (o, _) = ex
            .run(
                &MetaOp::Create {
                    dir: 0,
                    name: name.clone(),
                    mode: 0o644,
                },
                &dirs,
            )
            .await;
        if let Outcome::Ok {
            ret: MetaRet::Attr { .. },
        } = o
        {
            let (u, _) = ex.run(&MetaOp::Unlink { dir: 0, name }, &dirs).await;
            if matches!(u, Outcome::Ok { ret: MetaRet::Done }) {
                meta_ok = true;
                break;
            }
            last_err = format!("unlink: {u:?}");
        } else {
            last_err = format!("create: {o:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut data_ok = !with_data;
    while meta_ok && !data_ok && start.elapsed() < bound {
        match data_probe(meta_addrs, probe_dir, n).await {
            Ok(()) => data_ok = true,
            Err(e) => last_err = format!("data probe: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = start.elapsed().as_secs_f64();
    if meta_ok && data_ok {
        (
            CheckResult::new(
                "serves_after_heal",
                format!("served again {took:.2}s after heal (bound {bound:?})"),
                vec![],
            ),
            Some(took),
        )
    } else {
        (
            CheckResult::new(
                "serves_after_heal",
                format!("bound {bound:?}"),
                vec![format!(
                    "not serving {took:.1}s after heal; last error: {last_err}"
                )],
            ),
            None,
        )
    }
}

async fn data_probe(meta_addrs: &str, dir: u64, n: u32) -> anyhow::Result<()> {
    let cfg = cirrus_client::ClientConfig {
        deadline: Duration::from_secs(10),
        ..Default::default()
    };
    let c = cirrus_client::Client::connect(meta_addrs, cfg).await?;
    let name = format!("data-probe-{n}");
    let (fh, _) = c
        .create(
            cirrus_types::InodeId(dir),
            name.as_bytes(),
            0o644,
            0,
            0,
            false,
        )
        .await?;
    let buf = slot_bytes(u32::MAX, 0, u64::from(n));
    c.write(fh, 0, &buf).await?;
    c.fsync(fh).await?;
    let got = c.read(fh, 0, SLOT as u32).await?;
    let _ = c.release(fh).await;
    anyhow::ensure!(got == buf, "data probe read back different bytes");
    Ok(())
}
