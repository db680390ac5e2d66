//! The sequential-throughput job: fio with 1 MiB blocks, N threads each writing then
//! reading its own file, with `direct=1` or buffered with one fsync at the end of the
//! write phase. The same job runs on every system so only the directory differs.

use crate::sys;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How the job touches the page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `direct=1`: O_DIRECT, every request reaches the filesystem.
    Direct,
    /// Buffered writes with `end_fsync=1`; caches dropped before reading back.
    Buffered,
}

impl Mode {
    pub fn tag(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Buffered => "buffered",
        }
    }
}

/// One fio job description.
#[derive(Clone, Debug)]
pub struct SeqJob {
    pub threads: u32,
    /// Bytes each thread writes then reads.
    pub bytes_per_thread: u64,
    pub block_size: u64,
    pub mode: Mode,
}

/// Throughputs of one write-then-read run, in bytes per second.
#[derive(Clone, Copy, Debug)]
pub struct SeqResult {
    pub write_bps: f64,
    pub read_bps: f64,
}

impl SeqJob {
    /// Writes then reads back through `dir`, deleting the files afterwards.
    pub fn run(&self, dir: &Path) -> Result<SeqResult> {
        // A generous deadline: 2 MB/s would already be a broken system.
        let total = self.bytes_per_thread * self.threads as u64;
        let timeout = Duration::from_secs(300 + total / 2_000_000);
        let write = self.phase(dir, "write", timeout)?;
        let cached = sys::drop_caches();
        if !cached {
            eprintln!(
                "warning: could not drop caches (not root?); reads may be served from memory"
            );
        }
        let read = self.phase(dir, "read", timeout)?;
        for t in 0..self.threads {
            let _ = std::fs::remove_file(dir.join(format!("seq.{t}.0")));
        }
        Ok(SeqResult {
            write_bps: write,
            read_bps: read,
        })
    }

    fn phase(&self, dir: &Path, rw: &str, timeout: Duration) -> Result<f64> {
        let mut cmd = Command::new("fio");
        cmd.arg("--name=seq")
            .arg(format!("--directory={}", dir.display()))
            .arg(format!("--rw={rw}"))
            .arg(format!("--bs={}", self.block_size))
            .arg(format!("--size={}", self.bytes_per_thread))
            .arg(format!("--numjobs={}", self.threads))
            .arg("--ioengine=psync")
            .arg("--thread")
            .arg("--group_reporting")
            .arg("--output-format=json");
        match self.mode {
            Mode::Direct => {
                cmd.arg("--direct=1");
            }
            Mode::Buffered => {
                cmd.arg("--direct=0");
                if rw == "write" {
                    // One fsync per file at the end: the write phase's time includes
                    // making the data durable, as a checkpoint writer would see it.
                    cmd.arg("--end_fsync=1");
                }
            }
        }
        let out = sys::run_with_timeout(&mut cmd, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "fio {rw} in {} failed ({}): {} {}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            );
        }
        parse_bw(&stdout, rw).with_context(|| format!("parse fio {rw} output"))
    }
}

/// Bytes per second of the `rw` side ("read"/"write") from fio's JSON output. fio may
/// print warnings before the JSON document, so parsing starts at the first `{`.
pub fn parse_bw(stdout: &str, rw: &str) -> Result<f64> {
    let start = stdout
        .find('{')
        .ok_or_else(|| anyhow!("no JSON in fio output: {stdout:?}"))?;
    let v: Value = serde_json::from_str(&stdout[start..])?;
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or_else(|| anyhow!("fio JSON has no jobs"))?;
    if let Some(err) = job.get("error").and_then(Value::as_i64) {
        if err != 0 {
            bail!("fio job error {err}");
        }
    }
    let side = job
        .get(rw)
        .ok_or_else(|| anyhow!("fio JSON job has no {rw} section"))?;
    let io_bytes = side.get("io_bytes").and_then(Value::as_f64).unwrap_or(0.0);
    let runtime_ms = side.get("runtime").and_then(Value::as_f64).unwrap_or(0.0);
    if io_bytes <= 0.0 || runtime_ms <= 0.0 {
        bail!("fio moved no data ({rw}: io_bytes {io_bytes}, runtime {runtime_ms} ms)");
    }
    Ok(io_bytes / (runtime_ms / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_bw_reads_group_reported_bandwidth_after_warnings() {
        let out = "fio: some warning\n{\"jobs\":[{\"error\":0,\"write\":{\"io_bytes\":1048576000,\"runtime\":2000}}]}";
        let bw = parse_bw(out, "write").expect("parse");
        assert!((bw - 524_288_000.0).abs() < 1.0, "{bw}");
    }

    #[test]
    fn parse_bw_rejects_a_job_that_moved_nothing() {
        let out = "{\"jobs\":[{\"error\":0,\"read\":{\"io_bytes\":0,\"runtime\":0}}]}";
        assert!(parse_bw(out, "read").is_err());
    }
}
