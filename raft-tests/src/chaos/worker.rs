//! Client processes: the harness re-executes itself as `cirrus-chaos worker --config F`
//! inside a client network namespace, so clients are real processes whose links can be
//! cut like any node's. A worker runs metadata client loops and data writers until its
//! stdin closes, then writes what it recorded as JSON and exits.
//!
//! Times stay on the harness's clock: the config carries the harness's CLOCK_MONOTONIC
//! reading at t0 (the clock is machine-wide, namespaces do not change it), and the worker
//! rebuilds the same t0 as an `Instant`.

use crate::history::OpRecord;
use crate::workload::data::{DataEvent, DataWorkload, FileLedger, ReadObs};
use crate::workload::locks::{LockHold, LockWorkload};
use crate::workload::meta::{Group, MetaWorkload};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub index: usize,
    pub seed: u64,
    /// CLOCK_MONOTONIC of the harness's t0, in ns.
    pub t0_mono_ns: u64,
    pub meta_addrs: String,
    pub cluster_id: String,
    pub meta_clients: usize,
    pub groups: Vec<Group>,
    pub window_ms: u64,
    pub pace_ms: u64,
    pub writers: usize,
    /// Directory inode the data files are created in.
    pub data_dir: u64,
    /// File numbers of this worker's writers start here (distinct across workers).
    pub file_base: u32,
    /// Lockers (lock workload) and the files they lock.
    #[serde(default)]
    pub lockers: usize,
    #[serde(default)]
    pub lock_files: Vec<u64>,
    pub out: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerOutput {
    pub meta: Vec<(usize, OpRecord)>,
    pub ledgers: BTreeMap<u32, FileLedger>,
    pub events: Vec<DataEvent>,
    pub reads: Vec<ReadObs>,
    #[serde(default)]
    pub locks: Vec<LockHold>,
    #[serde(default)]
    pub lock_unknown: u64,
}

/// CLOCK_MONOTONIC now, in ns (the clock `Instant` uses on Linux).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `Instant` that was CLOCK_MONOTONIC `t0_mono_ns`.
pub fn instant_at(t0_mono_ns: u64) -> Instant {
    let now = Instant::now();
    let ago = mono_ns().saturating_sub(t0_mono_ns);
    now.checked_sub(Duration::from_nanos(ago)).unwrap_or(now)
}

/// Runs a worker from its config file; returns when stdin closes and every client loop
/// has stopped.
pub fn run(config: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("read worker config {}", config.display()))?;
    let cfg: WorkerConfig = serde_json::from_str(&text).context("parse worker config")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let out = rt.block_on(work(&cfg))?;
    let json = serde_json::to_vec(&out).context("encode worker output")?;
    std::fs::write(&cfg.out, json).with_context(|| format!("write {}", cfg.out.display()))?;
    // Do not wait for stragglers (a release stuck behind a partition): the output is out.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn work(cfg: &WorkerConfig) -> Result<WorkerOutput> {
    let t0 = instant_at(cfg.t0_mono_ns);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        // Stop when the harness closes our stdin (or dies).
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = stop_tx.send(true);
    });
    let meta = MetaWorkload::new(t0);
    let data = DataWorkload::new(t0);
    let addrs: Vec<String> = cfg.meta_addrs.split(',').map(String::from).collect();
    let mut tasks = Vec::new();
    for k in 0..cfg.meta_clients {
        tasks.push(tokio::spawn(meta.clone().client(
            cfg.seed ^ ((cfg.index as u64) << 32) ^ (k as u64 + 1),
            addrs.clone(),
            cfg.cluster_id.clone(),
            cfg.groups.clone(),
            Duration::from_millis(cfg.window_ms),
            Duration::from_millis(cfg.pace_ms),
            stop_rx.clone(),
        )));
    }
    for w in 0..cfg.writers {
        tasks.push(tokio::spawn(data.clone().writer(
            cfg.seed ^ ((cfg.index as u64) << 40) ^ (w as u64 + 1) << 8,
            cfg.meta_addrs.clone(),
            cfg.data_dir,
            cfg.file_base + w as u32,
            stop_rx.clone(),
        )));
    }
    let locks = LockWorkload::new(t0);
    for l in 0..cfg.lockers {
        tasks.push(tokio::spawn(locks.clone().locker(
            cfg.seed ^ ((cfg.index as u64) << 48) ^ (l as u64 + 1) << 16,
            cfg.meta_addrs.clone(),
            cfg.lock_files.clone(),
            stop_rx.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let ledgers = data.ledgers.lock().map(|l| l.clone()).unwrap_or_default();
    let events = data.events.lock().map(|e| e.clone()).unwrap_or_default();
    let reads = data.reads.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(WorkerOutput {
        meta: meta.take(),
        ledgers,
        events,
        reads,
        locks: locks.holds.lock().map(|h| h.clone()).unwrap_or_default(),
        lock_unknown: locks.unknown.lock().map(|u| *u).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilt_t0_matches_the_monotonic_clock() {
        let t0 = Instant::now();
        let t0_mono = mono_ns();
        std::thread::sleep(Duration::from_millis(20));
        let again = instant_at(t0_mono);
        let skew = if again > t0 { again - t0 } else { t0 - again };
        assert!(skew < Duration::from_millis(5), "skew {skew:?}");
    }
}
