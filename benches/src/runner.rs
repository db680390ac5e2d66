//! The run plan: which system runs which job in which configuration, in what order, and
//! how a failure is recorded. Systems run one at a time (system-major order) so no idle
//! daemon of one system steals CPU from another's measurement on a 2-core machine.
//!
//! A system that cannot be brought up, or a job that fails, becomes a note in the report
//! and the run goes on: a partial comparison is still worth having, and it says what is
//! missing.

use crate::fio::{Mode, SeqJob};
use crate::library::LibraryJob;
use crate::mdtest::MetaJob;
use crate::nullfs::NullMount;
use crate::progress::Progress;
use crate::report::{Machine, Report};
use crate::sys;
use crate::systems::{Ceph, Cirrus, Gluster, Local, Mounted};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Parameters of one run (the `cirrus-bench` command line).
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Systems to measure, in order: local, fuse-null (a FUSE filesystem in this process
    /// that drops writes and reads zeros: the ceiling of FUSE itself, sequential jobs
    /// only), gluster, ceph, cirrus.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "local,fuse-null,gluster,ceph,cirrus"
    )]
    pub systems: Vec<String>,
    /// Replica counts for the founding setup (R=1: distribute, R=2: mirrored).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub replicas: Vec<u32>,
    /// Data servers of the founding setup.
    #[arg(long, default_value_t = 2)]
    pub data_servers: usize,
    /// Cirrus data-server counts for the scaling job (R=1, direct I/O); `--scaling`
    /// with no value skips it.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,2,3,4")]
    pub scaling: Vec<usize>,
    /// fio threads (one file each).
    #[arg(long, default_value_t = 4)]
    pub threads: u32,
    /// Fraction of the founding 1 GiB per thread to write and read (0.05 = 51 MiB).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Skip the buffered (end_fsync) fio variant.
    #[arg(long)]
    pub no_buffered: bool,
    /// Empty files in the metadata job (split across threads).
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// 4 KiB files written and read back in the metadata job.
    #[arg(long, default_value_t = 2_000)]
    pub small_files: usize,
    /// Thread counts of the metadata job.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub md_threads: Vec<usize>,
    /// Rounds of the sequential jobs: every system of one R is up at once and each
    /// round runs every job on every system in turn (rotating who goes first); the
    /// figure is the median. The disk of a cloud VM changes speed for minutes after a
    /// heavy writer, so systems measured one after the other were judged on different
    /// disks.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Scratch directory on the disk under test (every system's data goes under it).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Where results.json, results.md, results.svg and results.png are written.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// The `cirrus` binary (default: beside this executable, i.e. the same build profile).
    #[arg(long)]
    pub cirrus_bin: Option<PathBuf>,
}

impl Config {
    pub fn bytes_per_thread(&self) -> u64 {
        let b = (GIB as f64 * self.scale) as u64;
        (b / MIB).max(1) * MIB
    }

    fn modes(&self) -> Vec<Mode> {
        if self.no_buffered {
            vec![Mode::Direct]
        } else {
            vec![Mode::Direct, Mode::Buffered]
        }
    }

    fn has(&self, system: &str) -> bool {
        self.systems.iter().any(|s| s == system)
    }

    /// Steps of the whole run, for the progress bar: per R block, one per bring-up, one
    /// per (round, mode) and one per metadata job; then the scaling job.
    fn planned_steps(&self) -> usize {
        let systems = ["local", "fuse-null", "gluster", "ceph", "cirrus"];
        let present = systems.iter().filter(|s| self.has(s)).count();
        let with_meta = systems
            .iter()
            .filter(|s| **s != "fuse-null" && self.has(s))
            .count();
        let per_r =
            present + self.rounds.max(1) * self.modes().len() + with_meta * self.md_threads.len();
        let mut n = self.replicas.len() * per_r;
        if self.has("cirrus") {
            n += self.scaling.len() * 2;
        }
        n
    }

    fn cirrus_bin(&self) -> Result<PathBuf> {
        let p = match &self.cirrus_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locate this executable")?
                .with_file_name("cirrus"),
        };
        if !p.is_file() {
            bail!(
                "the cirrus binary is missing at {}: build it with `cargo build --release --bin cirrus` \
                 (or pass --cirrus-bin)",
                p.display()
            );
        }
        Ok(p)
    }
}

/// Section names shared by the runner, the README and the tests.
pub fn seq_section(r: u32) -> String {
    format!("seq 1 MiB R={r}")
}
pub fn meta_section(r: u32, threads: usize) -> String {
    format!(
        "metadata R={r}, {threads} thread{}",
        if threads == 1 { "" } else { "s" }
    )
}
pub const SCALING_SECTION: &str = "scaling R=1, direct";
/// The rows of the client-library job (write includes the fsync) in a seq section.
pub const LIBRARY_JOBS: (&str, &str) = ("write library (+fsync)", "read library");

struct Run<'a> {
    cfg: &'a Config,
    report: Report,
    progress: Progress,
}

impl Run<'_> {
    /// The metadata jobs of one configuration.
    fn meta_jobs(&mut self, system: &str, r_sections: &[u32], dir: &Path, label: &str) {
        for &t in &self.cfg.md_threads.clone() {
            self.progress
                .step(&format!("{label}: metadata, {t} threads"));
            let job = MetaJob {
                threads: t,
                files: self.cfg.files,
                small_files: self.cfg.small_files,
            };
            match job.run(dir) {
                Ok(m) => {
                    for &r in r_sections {
                        let s = meta_section(r, t);
                        for (name, v) in [
                            ("create", m.create),
                            ("stat", m.stat),
                            ("readdir (entries)", m.readdir),
                            ("unlink", m.unlink),
                            ("4 KiB file write", m.small_write),
                            ("4 KiB file read", m.small_read),
                        ] {
                            self.report.push(&s, name, system, "ops/s", v);
                        }
                    }
                }
                Err(e) => self.report.note(format!(
                    "{label}: metadata job with {t} threads failed: {e:#}"
                )),
            }
        }
    }

    fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.progress.step("(skipped)");
        }
    }

    /// Brings up `system` for replica count `r`.
    fn start(
        &self,
        system: &str,
        r: u32,
        work: &Path,
        rt: &tokio::runtime::Runtime,
        bin: Option<&Path>,
    ) -> Result<Box<dyn Mounted>> {
        Ok(match system {
            "local" => Box::new(Local::start(work)?),
            "fuse-null" => Box::new(NullMount::start(work)?),
            "gluster" => Box::new(Gluster::start(work, r)?),
            // A fresh cluster per R, with the pool size set while the pools are still
            // empty: raising the size of pools that already held data made ceph backfill
            // on the shared disk and never reach active+clean within the deadline.
            "ceph" => {
                let ceph = Ceph::start(work)?;
                ceph.set_replicas(r)
                    .with_context(|| format!("set both CephFS pools to size {r}"))?;
                Box::new(ceph)
            }
            "cirrus" => {
                let bin = bin.ok_or_else(|| anyhow::anyhow!("no cirrus binary"))?;
                Box::new(Cirrus::start(rt, bin, work, self.cfg.data_servers, r)?)
            }
            other => bail!("unknown system {other:?}"),
        })
    }

    /// One replica count: every system up at once, the sequential jobs in rounds that
    /// rotate the order, medians recorded; then each system's metadata jobs; teardown.
    fn block(&mut self, r: u32, work: &Path, rt: &tokio::runtime::Runtime, bin: Option<&Path>) {
        let mut up: Vec<(&'static str, String, Box<dyn Mounted>)> = Vec::new();
        for sys in ["local", "fuse-null", "gluster", "ceph", "cirrus"] {
            if !self.cfg.has(sys) {
                continue;
            }
            let label = match sys {
                "local" | "fuse-null" => format!("{sys} (R={r} block)"),
                "cirrus" => format!("cirrus R={r}, {} data", self.cfg.data_servers),
                _ => format!("{sys} R={r}"),
            };
            self.progress.step(&format!("{label}: bring up"));
            match self.start(sys, r, work, rt, bin) {
                Ok(m) => up.push((sys, label, m)),
                Err(e) => {
                    self.report
                        .note(format!("{label}: could not be brought up: {e:#}"));
                    if sys != "fuse-null" {
                        self.skip(self.cfg.md_threads.len());
                    }
                }
            }
        }
        let bytes = self.cfg.bytes_per_thread();
        let rounds = self.cfg.rounds.max(1);
        let mut samples: BTreeMap<(usize, &'static str), Vec<f64>> = BTreeMap::new();
        for round in 0..rounds {
            for mode in self.cfg.modes() {
                self.progress.step(&format!(
                    "R={r} round {}/{rounds}: fio {} write+read on every system",
                    round + 1,
                    mode.tag()
                ));
                let (w, rd) = match mode {
                    Mode::Direct => ("write direct", "read direct"),
                    Mode::Buffered => ("write buffered+fsync", "read buffered"),
                };
                let n = up.len();
                for k in 0..n {
                    let i = (k + round) % n;
                    let (_, label, m) = &up[i];
                    let job = SeqJob {
                        threads: self.cfg.threads,
                        bytes_per_thread: bytes,
                        block_size: MIB,
                        mode,
                    };
                    match job.run(m.dir()) {
                        Ok(res) => {
                            samples.entry((i, w)).or_default().push(res.write_bps / 1e6);
                            samples.entry((i, rd)).or_default().push(res.read_bps / 1e6);
                        }
                        Err(e) => {
                            let msg = format!("{label}: fio {} failed: {e:#}", mode.tag());
                            self.report.note(msg);
                        }
                    }
                    // The same job through the client library, in the same slot of the
                    // rotation as the mount it bypasses.
                    if let (Mode::Direct, Some(addrs)) = (mode, m.meta_addrs()) {
                        let job = LibraryJob {
                            threads: self.cfg.threads,
                            bytes_per_thread: bytes,
                        };
                        match job.run(rt, &addrs) {
                            Ok(res) => {
                                let (w, rd) = LIBRARY_JOBS;
                                samples.entry((i, w)).or_default().push(res.write_bps / 1e6);
                                samples.entry((i, rd)).or_default().push(res.read_bps / 1e6);
                            }
                            Err(e) => self
                                .report
                                .note(format!("{label}: library job failed: {e:#}")),
                        }
                    }
                }
            }
        }
        // Jobs in the report's order (write then read, direct then buffered, then the
        // library rows with the local direct figures beside them as the ceiling).
        let mut order = Vec::new();
        for mode in self.cfg.modes() {
            order.extend(match mode {
                Mode::Direct => ["write direct", "read direct"],
                Mode::Buffered => ["write buffered+fsync", "read buffered"],
            });
        }
        order.extend([LIBRARY_JOBS.0, LIBRARY_JOBS.1]);
        let mut medians: BTreeMap<(usize, &'static str), f64> = BTreeMap::new();
        for job in order {
            for (i, (sys, _, _)) in up.iter().enumerate() {
                if let Some(v) = samples.get_mut(&(i, job)) {
                    v.sort_by(f64::total_cmp);
                    let median = v[v.len() / 2];
                    medians.insert((i, job), median);
                    self.report.push(&seq_section(r), job, sys, "MB/s", median);
                }
            }
        }
        if let Some(local) = up.iter().position(|(sys, _, _)| *sys == "local") {
            let any_library = medians.keys().any(|(_, j)| *j == LIBRARY_JOBS.0);
            for (lib, direct) in [
                (LIBRARY_JOBS.0, "write direct"),
                (LIBRARY_JOBS.1, "read direct"),
            ] {
                if let (true, Some(v)) = (any_library, medians.get(&(local, direct))) {
                    self.report.push(&seq_section(r), lib, "local", "MB/s", *v);
                }
            }
        }
        for (sys, label, m) in &up {
            if *sys != "fuse-null" {
                let dir = m.dir().to_path_buf();
                self.meta_jobs(sys, &[r], &dir, label);
            }
        }
        while let Some((_, label, mut m)) = up.pop() {
            if let Err(e) = m.stop() {
                self.report.note(format!("{label}: tear-down: {e:#}"));
            }
        }
    }
}

/// Runs the whole plan and writes the outputs; returns the report.
pub fn run(cfg: &Config) -> Result<Report> {
    if !sys::have("fio") {
        sys::ensure_packages(&[("fio", "fio")]).context("install fio")?;
    }
    let work = cfg
        .workdir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("cirrus-bench"));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let mut run = Run {
        cfg,
        report: Report {
            machine: machine(&work),
            ..Report::default()
        },
        progress: Progress::new(cfg.planned_steps()),
    };
    run.report.params = params(cfg, &work);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    let bin = if cfg.has("cirrus") {
        match cfg.cirrus_bin() {
            Ok(b) => Some(b),
            Err(e) => {
                run.report.note(format!("cirrus: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    for &r in &cfg.replicas.clone() {
        run.block(r, &work, &rt, bin.as_deref());
    }
    if let Some(bin) = &bin {
        scaling(&mut run, &rt, bin, &work);
    } else if cfg.has("cirrus") {
        let n = cfg.scaling.len() * 2;
        run.skip(n);
    }
    let report = run.report;
    write_outputs(&report, &cfg.out)?;
    Ok(report)
}

/// Cirrus sequential direct I/O with 1..N data servers at R=1; the local figures of the
/// same run sit beside each row as the ceiling.
fn scaling(run: &mut Run<'_>, rt: &tokio::runtime::Runtime, bin: &Path, work: &Path) {
    let local = |run: &Run<'_>, job: &str| {
        run.report
            .records
            .iter()
            .find(|x| x.system == "local" && x.job == job && x.section == seq_section(1))
            .map(|x| x.value)
    };
    for n in run.cfg.scaling.clone() {
        let label = format!("scaling: cirrus R=1, {n} data");
        run.progress.step(&format!("{label}: bring up"));
        let c = Cirrus::start(rt, bin, work, n, 1);
        run.progress
            .step(&format!("{label}: fio direct write+read"));
        let mut c = match c {
            Ok(c) => c,
            Err(e) => {
                run.report
                    .note(format!("{label}: could not be brought up: {e:#}"));
                continue;
            }
        };
        let job = SeqJob {
            threads: run.cfg.threads,
            bytes_per_thread: run.cfg.bytes_per_thread(),
            block_size: MIB,
            mode: Mode::Direct,
        };
        match job.run(c.dir()) {
            Ok(res) => {
                let w = format!("write, {n} data");
                let rd = format!("read, {n} data");
                run.report
                    .push(SCALING_SECTION, &w, "cirrus", "MB/s", res.write_bps / 1e6);
                run.report
                    .push(SCALING_SECTION, &rd, "cirrus", "MB/s", res.read_bps / 1e6);
                if let Some(v) = local(run, "write direct") {
                    run.report.push(SCALING_SECTION, &w, "local", "MB/s", v);
                }
                if let Some(v) = local(run, "read direct") {
                    run.report.push(SCALING_SECTION, &rd, "local", "MB/s", v);
                }
            }
            Err(e) => run.report.note(format!("{label}: fio failed: {e:#}")),
        }
        if let Err(e) = c.stop() {
            run.report.note(format!("{label}: tear-down: {e:#}"));
        }
    }
}

fn params(cfg: &Config, work: &Path) -> std::collections::BTreeMap<String, String> {
    let mut p = std::collections::BTreeMap::new();
    p.insert("threads".into(), cfg.threads.to_string());
    p.insert(
        "bytes_per_thread".into(),
        cfg.bytes_per_thread().to_string(),
    );
    p.insert("block_size".into(), MIB.to_string());
    p.insert("data_servers".into(), cfg.data_servers.to_string());
    p.insert("replicas".into(), format!("{:?}", cfg.replicas));
    p.insert("scaling".into(), format!("{:?}", cfg.scaling));
    p.insert("files".into(), cfg.files.to_string());
    p.insert("small_files".into(), cfg.small_files.to_string());
    p.insert("md_threads".into(), format!("{:?}", cfg.md_threads));
    p.insert("rounds".into(), cfg.rounds.to_string());
    p.insert("workdir".into(), work.display().to_string());
    p
}

/// nproc, memory, kernel and the disk under the work dir.
pub fn machine(work: &Path) -> Machine {
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let w = work.to_string_lossy().into_owned();
    let disk = sys::run_ok("df", &["-hT", &w], Duration::from_secs(10))
        .ok()
        .and_then(|o| {
            o.lines()
                .last()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        mem_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        disk,
    }
}

/// results.json, results.md, results.svg and results.png under `out`.
pub fn write_outputs(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out.join("results.json"), json)?;
    let m = &report.machine;
    let md = format!(
        "Machine: {} CPUs, {} GiB RAM, kernel {}, disk `{}`.\n{}\n{}",
        m.nproc,
        m.mem_gib,
        m.kernel,
        m.disk,
        report.markdown(),
        if report.notes.is_empty() {
            String::new()
        } else {
            format!(
                "\nNotes:\n{}\n",
                report
                    .notes
                    .iter()
                    .map(|n| format!("- {n}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
    );
    std::fs::write(out.join("results.md"), md)?;
    std::fs::write(out.join("results.svg"), report.svg())?;
    if let Err(e) = svg_to_png(&out.join("results.svg"), &out.join("results.png")) {
        eprintln!("cirrus-bench: no PNG chart (the SVG is there): {e:#}");
    }
    Ok(())
}

/// Renders the SVG chart to PNG with `rsvg-convert` (Debian `librsvg2-bin`, installed
/// when missing): no image crates in the build, and the SVG stays the source of truth.
pub fn svg_to_png(svg: &Path, png: &Path) -> Result<()> {
    sys::ensure_packages(&[("rsvg-convert", "librsvg2-bin")]).context("install rsvg-convert")?;
    let (s, p) = (svg.to_string_lossy(), png.to_string_lossy());
    sys::run_ok(
        "rsvg-convert",
        &["--background-color", "white", "-o", &p, &s],
        Duration::from_secs(60),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: Config,
    }

    /// Fails (never skips) with the reason when the machine lacks fio.
    fn need_fio() {
        assert!(
            sys::have("fio"),
            "this test needs fio on PATH (Debian package `fio`; scripts/test.sh installs it)"
        );
    }

    /// fio, and /dev/fuse for a test that mounts a FUSE filesystem.
    fn need_fio_and_fuse() {
        need_fio();
        assert!(
            Path::new("/dev/fuse").exists(),
            "this test mounts a FUSE filesystem and needs /dev/fuse (modprobe fuse)"
        );
    }

    #[test]
    fn defaults_are_the_founding_setup() {
        let c = Cli::parse_from(["x"]).cfg;
        assert_eq!(c.rounds, 3);
        assert_eq!(c.threads, 4);
        assert_eq!(c.bytes_per_thread(), GIB);
        assert_eq!(c.replicas, vec![1, 2]);
        assert_eq!(c.data_servers, 2);
        assert_eq!(c.scaling, vec![1, 2, 3, 4]);
    }

    #[test]
    fn scaling_without_a_value_skips_the_scaling_job() {
        let c = Cli::parse_from(["x", "--scaling"]).cfg;
        assert!(c.scaling.is_empty(), "{:?}", c.scaling);
        let c = Cli::parse_from(["x", "--scaling", "2,4"]).cfg;
        assert_eq!(c.scaling, vec![2, 4]);
    }

    #[test]
    fn scale_shrinks_to_whole_mebibytes_and_never_to_zero() {
        let c = Cli::parse_from(["x", "--scale", "0.05"]).cfg;
        assert_eq!(c.bytes_per_thread(), 51 * MIB);
        let c = Cli::parse_from(["x", "--scale", "0"]).cfg;
        assert_eq!(c.bytes_per_thread(), MIB);
    }

    #[test]
    fn local_only_run_measures_every_job_and_writes_outputs() {
        need_fio();
        let work = tempfile::tempdir().expect("tempdir");
        let out = work.path().join("out");
        let c = Cli::parse_from([
            "x",
            "--systems",
            "local",
            "--scale",
            "0.004",
            "--threads",
            "2",
            "--files",
            "60",
            "--small-files",
            "20",
            "--md-threads",
            "1,3",
            "--workdir",
            &work.path().join("w").to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
        ])
        .cfg;
        let report = run(&c).expect("run");
        assert!(report.notes.is_empty(), "{:?}", report.notes);
        // 2 R sections x 4 seq jobs + 2 R x 2 thread counts x 6 metadata jobs.
        assert_eq!(
            report.records.len(),
            2 * 4 + 2 * 2 * 6,
            "{:#?}",
            report.records
        );
        assert!(report
            .records
            .iter()
            .all(|r| r.value > 0.0 && r.system == "local"));
        for f in ["results.json", "results.md", "results.svg"] {
            let text = std::fs::read_to_string(out.join(f)).expect(f);
            assert!(text.contains("create"), "{f} lacks the metadata rows");
        }
        let png = std::fs::read(out.join("results.png"))
            .expect("results.png (rendered with rsvg-convert, Debian librsvg2-bin)");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "results.png is not a PNG"
        );
    }

    #[test]
    fn the_fuse_ceiling_is_measured_through_a_real_mount_and_unmounted() {
        need_fio_and_fuse();
        let work = tempfile::tempdir().expect("tempdir");
        let w = work.path().join("w");
        let c = Cli::parse_from([
            "x",
            "--systems",
            "fuse-null",
            "--replicas",
            "1",
            "--scale",
            "0.02",
            "--threads",
            "2",
            "--workdir",
            &w.to_string_lossy(),
            "--out",
            &work.path().join("out").to_string_lossy(),
        ])
        .cfg;
        let report = run(&c).expect("run");
        assert!(report.notes.is_empty(), "{:?}", report.notes);
        // 4 seq jobs, no metadata rows.
        assert_eq!(report.records.len(), 4, "{:#?}", report.records);
        assert!(report
            .records
            .iter()
            .all(|r| r.value > 0.0 && r.system == "fuse-null" && r.unit == "MB/s"));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            !mounts.contains(&*w.join("fuse-null").to_string_lossy()),
            "the null filesystem is still mounted"
        );
    }

    #[test]
    fn the_library_rows_come_from_a_real_cluster_beside_the_local_ceiling() {
        need_fio_and_fuse();
        let bin = cirrus_raft_tests::cluster::cirrus_bin();
        let work = tempfile::tempdir().expect("tempdir");
        let c = Cli::parse_from([
            "x",
            "--systems",
            "local,cirrus",
            "--replicas",
            "1",
            "--scaling",
            "--no-buffered",
            "--rounds",
            "1",
            "--scale",
            "0.004",
            "--threads",
            "2",
            "--files",
            "20",
            "--small-files",
            "5",
            "--md-threads",
            "1",
            "--cirrus-bin",
            &bin.to_string_lossy(),
            "--workdir",
            &work.path().join("w").to_string_lossy(),
            "--out",
            &work.path().join("out").to_string_lossy(),
        ])
        .cfg;
        let report = run(&c).expect("run");
        assert!(report.notes.is_empty(), "{:?}", report.notes);
        let value = |job: &str, system: &str| {
            report
                .records
                .iter()
                .find(|r| r.section == seq_section(1) && r.job == job && r.system == system)
                .map(|r| r.value)
        };
        for job in [LIBRARY_JOBS.0, LIBRARY_JOBS.1] {
            let lib = value(job, "cirrus").unwrap_or_else(|| panic!("no cirrus {job} row"));
            assert!(lib > 0.0, "{job}: {lib}");
        }
        // The local direct figures sit beside the library rows as their ceiling.
        assert_eq!(
            value(LIBRARY_JOBS.0, "local"),
            value("write direct", "local")
        );
        assert_eq!(
            value(LIBRARY_JOBS.1, "local"),
            value("read direct", "local")
        );
        assert!(value("write direct", "cirrus").is_some_and(|v| v > 0.0));
        assert!(report
            .records
            .iter()
            .any(|r| r.system == "cirrus" && r.job == "create" && r.value > 0.0));
    }
}
