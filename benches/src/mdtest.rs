//! The metadata job, mdtest-like, written in Rust so every system runs exactly the same
//! syscalls: T threads, each in its own directory (mdtest `-u`), create, stat, readdir and
//! unlink N empty files in total; then 4 KiB small files written and read back (with the
//! contents checked). Caches are dropped before stat, readdir and the small-file reads so
//! those phases reach the filesystem rather than the kernel's dentry and page caches.

use crate::sys;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

/// Size of one small file.
pub const SMALL_FILE: usize = 4096;

/// Operations per second of each phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetaResult {
    pub create: f64,
    pub stat: f64,
    pub readdir: f64,
    pub unlink: f64,
    /// Small files written per second (create + 4 KiB write + close).
    pub small_write: f64,
    /// Small files read per second (open + read + check + close), caches dropped first.
    pub small_read: f64,
}

/// One metadata job.
#[derive(Clone, Debug)]
pub struct MetaJob {
    pub threads: usize,
    /// Empty files in total (split evenly across threads).
    pub files: usize,
    /// Small 4 KiB files in total.
    pub small_files: usize,
}

impl MetaJob {
    /// Runs every phase under `root` (created if needed, removed at the end).
    pub fn run(&self, root: &Path) -> Result<MetaResult> {
        if self.threads == 0 {
            bail!("metadata job needs at least one thread");
        }
        let base = root.join(format!("md-{}t", self.threads));
        fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
        let dirs: Vec<PathBuf> = (0..self.threads)
            .map(|t| base.join(format!("t{t}")))
            .collect();
        for d in &dirs {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let per = self.files.div_ceil(self.threads);
        let total = per * self.threads;
        let mut r = MetaResult {
            create: phase(&dirs, total, |d| {
                for i in 0..per {
                    create_empty(&d.join(format!("f{i}")))?;
                }
                Ok(())
            })?,
            ..MetaResult::default()
        };
        sys::drop_caches();
        r.stat = phase(&dirs, total, |d| {
            for i in 0..per {
                let p = d.join(format!("f{i}"));
                let m = fs::metadata(&p).with_context(|| format!("stat {}", p.display()))?;
                if m.len() != 0 {
                    bail!("{} has size {}, expected 0", p.display(), m.len());
                }
            }
            Ok(())
        })?;
        sys::drop_caches();
        r.readdir = phase(&dirs, total, |d| {
            let n = fs::read_dir(d)
                .with_context(|| format!("readdir {}", d.display()))?
                .filter(|e| e.is_ok())
                .count();
            if n != per {
                bail!("readdir {} saw {n} entries, expected {per}", d.display());
            }
            Ok(())
        })?;
        r.unlink = phase(&dirs, total, |d| {
            for i in 0..per {
                let p = d.join(format!("f{i}"));
                fs::remove_file(&p).with_context(|| format!("unlink {}", p.display()))?;
            }
            Ok(())
        })?;

        let sper = self.small_files.div_ceil(self.threads);
        let stotal = sper * self.threads;
        if stotal > 0 {
            r.small_write = phase(&dirs, stotal, |d| {
                for i in 0..sper {
                    let p = d.join(format!("s{i}"));
                    let mut f =
                        File::create(&p).with_context(|| format!("create {}", p.display()))?;
                    f.write_all(&small_content(d, i))
                        .with_context(|| format!("write {}", p.display()))?;
                }
                Ok(())
            })?;
            sys::drop_caches();
            r.small_read = phase(&dirs, stotal, |d| {
                let mut buf = Vec::with_capacity(SMALL_FILE);
                for i in 0..sper {
                    let p = d.join(format!("s{i}"));
                    buf.clear();
                    File::open(&p)
                        .and_then(|mut f| f.read_to_end(&mut buf))
                        .with_context(|| format!("read {}", p.display()))?;
                    if buf != small_content(d, i) {
                        bail!(
                            "{} read back different bytes ({} long)",
                            p.display(),
                            buf.len()
                        );
                    }
                }
                Ok(())
            })?;
        }
        fs::remove_dir_all(&base).with_context(|| format!("remove {}", base.display()))?;
        Ok(r)
    }
}

fn create_empty(p: &Path) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map(drop)
        .with_context(|| format!("create {}", p.display()))
}

/// Contents unique to each small file, so a read that returns a neighbour's bytes fails.
fn small_content(dir: &Path, i: usize) -> Vec<u8> {
    let seed = format!("{}:{i}:", dir.display());
    seed.bytes().cycle().take(SMALL_FILE).collect()
}

/// Runs `work` on one thread per directory, all starting together; returns `ops` divided
/// by the wall time from the start barrier to the last thread's end.
fn phase<F>(dirs: &[PathBuf], ops: usize, work: F) -> Result<f64>
where
    F: Fn(&Path) -> Result<()> + Sync,
{
    let barrier = Barrier::new(dirs.len() + 1);
    let (elapsed, results) = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|d| {
                let barrier = &barrier;
                let work = &work;
                s.spawn(move || {
                    barrier.wait();
                    work(d)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<Result<()>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("worker panicked"))))
            .collect();
        (start.elapsed(), results)
    });
    for r in results {
        r?;
    }
    Ok(ops as f64 / elapsed.as_secs_f64().max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_job_runs_every_phase_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = MetaJob {
            threads: 3,
            files: 100,
            small_files: 30,
        };
        let r = job.run(dir.path()).expect("run");
        for (name, v) in [
            ("create", r.create),
            ("stat", r.stat),
            ("readdir", r.readdir),
            ("unlink", r.unlink),
            ("small_write", r.small_write),
            ("small_read", r.small_read),
        ] {
            assert!(v.is_finite() && v > 0.0, "{name} = {v}");
        }
        let left: Vec<_> = fs::read_dir(dir.path()).expect("readdir").collect();
        assert!(left.is_empty(), "job left {left:?}");
    }

    #[test]
    fn small_file_contents_differ_between_files() {
        let d = Path::new("x");
        assert_ne!(small_content(d, 1), small_content(d, 2));
        assert_eq!(small_content(d, 1).len(), SMALL_FILE);
    }
}
