//! The filesystems under comparison, each brought up into a mounted directory and torn
//! down again: a local directory (the physical limit), GlusterFS (glusterd + 2 bricks on
//! the same disk, FUSE client), CephFS (one mon, one mgr, two file-backed bluestore OSDs,
//! one MDS, ceph-fuse) and Cirrus (the shared test-cluster builder + `cirrus mount`).
//!
//! Every bring-up step has a deadline, and every `stop` unmounts and ends only the
//! processes this runner started, by pid, so a failed run leaves nothing behind.

use crate::sys::{self, run_ok};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CMD_TIMEOUT: Duration = Duration::from_secs(60);
const UP_TIMEOUT: Duration = Duration::from_secs(180);

/// A mounted filesystem ready for jobs.
pub trait Mounted {
    /// Where the jobs run.
    fn dir(&self) -> &Path;
    /// Unmounts and stops everything this bring-up started. Idempotent.
    fn stop(&mut self) -> Result<()>;
    /// The meta group of a system the client library can reach (Cirrus only).
    fn meta_addrs(&self) -> Option<String> {
        None
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn fresh_dir(p: &Path) -> Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).with_context(|| format!("remove old {}", p.display()))?;
    }
    std::fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))
}

/// Stops a child we spawned: SIGTERM, a grace period, SIGKILL, then reap it.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    sys::terminate_pid(child.id() as i32, grace);
    let _ = child.wait();
}

/// Spawns a long-running daemon in the foreground with its output in `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Waits until `mnt` is mounted, failing early (with its log) if `child` exits non-zero.
fn wait_mounted(mnt: &Path, child: &mut Child, log: &Path, what: &str) -> Result<()> {
    sys::wait_until(
        &format!("{what} to mount {}", mnt.display()),
        UP_TIMEOUT,
        || {
            if sys::is_mounted(mnt) {
                return Ok(true);
            }
            if let Some(st) = child.try_wait()? {
                if !st.success() {
                    bail!("{what} exited with {st}: {}", tail(log));
                }
            }
            Ok(false)
        },
    )
}

// ---------------------------------------------------------------- local

/// A plain directory on the same disk: the physical limit the others are judged by.
pub struct Local {
    dir: PathBuf,
}

impl Local {
    pub fn start(work: &Path) -> Result<Self> {
        let dir = work.join("local");
        fresh_dir(&dir)?;
        Ok(Local { dir })
    }
}

impl Mounted for Local {
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn stop(&mut self) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

// ---------------------------------------------------------------- GlusterFS

/// glusterd (started by us unless one already runs), one volume of two bricks on the
/// same disk, mounted with the GlusterFS FUSE client.
pub struct Gluster {
    volume: String,
    mnt: PathBuf,
    bricks: PathBuf,
    glusterd: Option<Child>,
    created: bool,
}

pub const GLUSTER_PACKAGES: [(&str, &str); 3] = [
    ("glusterd", "glusterfs-server"),
    ("gluster", "glusterfs-cli"),
    ("mount.glusterfs", "glusterfs-client"),
];

impl Gluster {
    /// `replicas` 1 is a distribute volume over both bricks, 2 a replica-2 volume.
    pub fn start(work: &Path, replicas: u32) -> Result<Self> {
        sys::ensure_packages(&GLUSTER_PACKAGES).context("install GlusterFS")?;
        let base = work.join(format!("gluster-r{replicas}"));
        fresh_dir(&base)?;
        let mnt = base.join("mnt");
        let bricks = base.join("bricks");
        std::fs::create_dir_all(&mnt)?;
        std::fs::create_dir_all(&bricks)?;
        let mut g = Gluster {
            volume: format!("cbench_r{replicas}"),
            mnt,
            bricks,
            glusterd: None,
            created: false,
        };
        if let Err(e) = g.bring_up(&base, replicas) {
            let _ = g.stop();
            return Err(e);
        }
        Ok(g)
    }

    fn gluster(args: &[&str]) -> Result<String> {
        let mut full = vec!["--mode=script"];
        full.extend_from_slice(args);
        run_ok("gluster", &full, CMD_TIMEOUT)
    }

    fn bring_up(&mut self, base: &Path, replicas: u32) -> Result<()> {
        if Self::gluster(&["pool", "list"]).is_err() {
            let log = base.join("glusterd.log");
            let child = spawn_logged(
                Command::new("glusterd").args(["-N", "-l"]).arg(&log),
                &base.join("glusterd.out"),
            )?;
            self.glusterd = Some(child);
            sys::wait_until("glusterd to answer", UP_TIMEOUT, || {
                Ok(Self::gluster(&["pool", "list"]).is_ok())
            })?;
        }
        // A volume left by an interrupted run would make create fail: remove it first.
        if Self::gluster(&["volume", "info", &self.volume]).is_ok() {
            let _ = Self::gluster(&["volume", "stop", &self.volume, "force"]);
            Self::gluster(&["volume", "delete", &self.volume])?;
        }
        // GlusterFS refuses loopback addresses for bricks.
        let ip = sys::host_ip()?;
        let b1 = format!("{ip}:{}", self.bricks.join("b1").display());
        let b2 = format!("{ip}:{}", self.bricks.join("b2").display());
        let mut args = vec!["volume", "create", self.volume.as_str()];
        if replicas >= 2 {
            args.extend(["replica", "2"]);
        }
        // `force`: both bricks live on the root filesystem, which gluster refuses by default.
        args.extend([b1.as_str(), b2.as_str(), "force"]);
        Self::gluster(&args)?;
        self.created = true;
        Self::gluster(&["volume", "start", &self.volume])?;
        let src = format!("127.0.0.1:/{}", self.volume);
        let mnt = self.mnt.to_string_lossy().into_owned();
        sys::wait_until("the GlusterFS mount", UP_TIMEOUT, || {
            run_ok("mount", &["-t", "glusterfs", &src, &mnt], CMD_TIMEOUT)?;
            Ok(sys::is_mounted(&self.mnt))
        })?;
        Ok(())
    }
}

impl Mounted for Gluster {
    fn dir(&self) -> &Path {
        &self.mnt
    }
    fn stop(&mut self) -> Result<()> {
        sys::umount(&self.mnt);
        if self.created {
            let _ = Self::gluster(&["volume", "stop", &self.volume, "force"]);
            let _ = Self::gluster(&["volume", "delete", &self.volume]);
            self.created = false;
        }
        if let Some(mut c) = self.glusterd.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.bricks);
        Ok(())
    }
}

impl Drop for Gluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

// ---------------------------------------------------------------- CephFS

/// One mon, one mgr, two bluestore OSDs backed by sparse files on the same disk, one MDS,
/// mounted with ceph-fuse. Authentication is off (a benchmark on loopback). The pools'
/// replica count is changed in place with [`Ceph::set_replicas`].
pub struct Ceph {
    base: PathBuf,
    conf: PathBuf,
    mnt: PathBuf,
    mon_addr: String,
    daemons: Vec<Child>,
    fuse: Option<Child>,
}

pub const CEPH_PACKAGES: [(&str, &str); 6] = [
    ("ceph-mon", "ceph-mon"),
    ("ceph-mgr", "ceph-mgr"),
    ("ceph-osd", "ceph-osd"),
    ("ceph-mds", "ceph-mds"),
    ("ceph", "ceph-common"),
    ("ceph-fuse", "ceph-fuse"),
];

const CEPH_OSDS: usize = 2;

impl Ceph {
    pub fn start(work: &Path) -> Result<Self> {
        sys::ensure_packages(&CEPH_PACKAGES).context("install Ceph")?;
        let base = work.join("ceph");
        fresh_dir(&base)?;
        let port = free_port()?;
        let mut c = Ceph {
            conf: base.join("ceph.conf"),
            mnt: base.join("mnt"),
            base,
            mon_addr: format!("127.0.0.1:{port}"),
            daemons: Vec::new(),
            fuse: None,
        };
        if let Err(e) = c.bring_up() {
            let _ = c.stop();
            return Err(e);
        }
        Ok(c)
    }

    fn ceph(&self, args: &[&str]) -> Result<String> {
        let conf = self.conf.to_string_lossy();
        let mut full = vec!["-c", conf.as_ref(), "--connect-timeout", "20"];
        full.extend_from_slice(args);
        run_ok("ceph", &full, CMD_TIMEOUT)
    }

    fn daemon(&mut self, program: &str, id: &str) -> Result<()> {
        let log = self.base.join(format!("log/{program}.{id}.out"));
        let child = spawn_logged(
            Command::new(program)
                .args(["-f", "-i", id, "-c"])
                .arg(&self.conf),
            &log,
        )?;
        self.daemons.push(child);
        Ok(())
    }

    fn write_conf(&self, fsid: &str) -> Result<()> {
        let b = self.base.display();
        let text = format!(
            "[global]
fsid = {fsid}
mon host = v1:{mon}
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 1
run dir = {b}/run
admin socket = {b}/run/$name.asok
log file = {b}/log/$name.log
pid file = {b}/run/$name.pid
keyring = {b}/keyring
[mon]
mon data = {b}/mon/$cluster-$id
[mgr]
mgr data = {b}/mgr/$cluster-$id
[mds]
mds data = {b}/mds/$cluster-$id
[osd]
osd data = {b}/osd/$id
osd objectstore = bluestore
bluestore block path = {b}/osd/$id.block
bluestore block create = true
bluestore block size = 42949672960
bluestore fsck on mkfs = false
osd memory target = 2147483648
",
            mon = self.mon_addr
        );
        std::fs::write(&self.conf, text).context("write ceph.conf")
    }

    fn bring_up(&mut self) -> Result<()> {
        for d in [
            "run",
            "log",
            "mon/ceph-a",
            "mgr/ceph-x",
            "mds/ceph-a",
            "osd",
            "mnt",
        ] {
            std::fs::create_dir_all(self.base.join(d))?;
        }
        let fsid = uuid()?;
        self.write_conf(&fsid)?;
        let keyring = self.base.join("keyring").to_string_lossy().into_owned();
        run_ok(
            "ceph-authtool",
            &[
                "--create-keyring",
                &keyring,
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            ],
            CMD_TIMEOUT,
        )?;
        let monmap = self.base.join("monmap").to_string_lossy().into_owned();
        let mon_v1 = format!("v1:{}", self.mon_addr);
        run_ok(
            "monmaptool",
            &["--create", "--addv", "a", &mon_v1, "--fsid", &fsid, &monmap],
            CMD_TIMEOUT,
        )?;
        let conf = self.conf.to_string_lossy().into_owned();
        run_ok(
            "ceph-mon",
            &[
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                &monmap,
                "-c",
                &conf,
                "--keyring",
                &keyring,
            ],
            CMD_TIMEOUT,
        )?;
        self.daemon("ceph-mon", "a")?;
        sys::wait_until("the ceph mon to answer", UP_TIMEOUT, || {
            Ok(self.ceph(&["mon", "stat"]).is_ok())
        })?;
        self.daemon("ceph-mgr", "x")?;
        for _ in 0..CEPH_OSDS {
            let osd_uuid = uuid()?;
            let id = self.ceph(&["osd", "new", &osd_uuid])?.trim().to_string();
            id.parse::<u32>()
                .map_err(|_| anyhow!("ceph osd new returned {id:?}, not an id"))?;
            std::fs::create_dir_all(self.base.join(format!("osd/{id}")))?;
            run_ok(
                "ceph-osd",
                &["-i", &id, "-c", &conf, "--mkfs", "--osd-uuid", &osd_uuid],
                Duration::from_secs(300),
            )
            .with_context(|| format!("mkfs osd.{id}"))?;
            self.daemon("ceph-osd", &id)?;
        }
        self.daemon("ceph-mds", "a")?;
        self.ceph(&["osd", "pool", "create", "cephfs_data", "32"])?;
        self.ceph(&["osd", "pool", "create", "cephfs_metadata", "16"])?;
        // No autoscaler surprises (pg merges) in the middle of a measurement.
        for p in ["cephfs_data", "cephfs_metadata"] {
            let _ = self.ceph(&["osd", "pool", "set", p, "pg_autoscale_mode", "off"]);
        }
        self.ceph(&["fs", "new", "cephfs", "cephfs_metadata", "cephfs_data"])?;
        sys::wait_until("both ceph OSDs up", UP_TIMEOUT, || {
            let v: Value = serde_json::from_str(&self.ceph(&["osd", "stat", "-f", "json"])?)?;
            Ok(v.get("num_up_osds").and_then(Value::as_u64) == Some(CEPH_OSDS as u64))
        })?;
        self.wait_clean()?;
        sys::wait_until("an active ceph MDS", UP_TIMEOUT, || {
            Ok(self.ceph(&["fs", "status", "cephfs"])?.contains("active"))
        })?;
        let log = self.base.join("log/ceph-fuse.out");
        let mut fuse = spawn_logged(
            Command::new("ceph-fuse")
                .arg("-f")
                .arg("-c")
                .arg(&self.conf)
                .arg(&self.mnt),
            &log,
        )?;
        let r = wait_mounted(&self.mnt, &mut fuse, &log, "ceph-fuse");
        self.fuse = Some(fuse);
        r
    }

    /// Waits until every placement group is active+clean.
    fn wait_clean(&self) -> Result<()> {
        sys::wait_until("every ceph PG active+clean", UP_TIMEOUT, || {
            let v: Value = serde_json::from_str(&self.ceph(&["pg", "stat", "-f", "json"])?)?;
            let summary = v.get("pg_summary").unwrap_or(&v);
            let total = summary.get("num_pgs").and_then(Value::as_u64).unwrap_or(0);
            let clean: u64 = summary
                .get("num_pg_by_state")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter(|s| s.get("name").and_then(Value::as_str) == Some("active+clean"))
                        .filter_map(|s| s.get("num").and_then(Value::as_u64))
                        .sum()
                })
                .unwrap_or(0);
            Ok(total > 0 && clean == total)
        })
    }

    /// Sets the replica count of both CephFS pools (1 or 2 here) and waits for clean PGs.
    pub fn set_replicas(&self, r: u32) -> Result<()> {
        let r = r.to_string();
        for p in ["cephfs_data", "cephfs_metadata"] {
            self.ceph(&[
                "osd",
                "pool",
                "set",
                p,
                "size",
                &r,
                "--yes-i-really-mean-it",
            ])?;
            self.ceph(&["osd", "pool", "set", p, "min_size", "1"])?;
        }
        self.wait_clean()
    }
}

impl Mounted for Ceph {
    fn dir(&self) -> &Path {
        &self.mnt
    }
    fn stop(&mut self) -> Result<()> {
        sys::umount(&self.mnt);
        if let Some(mut f) = self.fuse.take() {
            stop_child(&mut f, Duration::from_secs(10));
        }
        // Reverse start order: MDS and OSDs before the mon they report to.
        while let Some(mut d) = self.daemons.pop() {
            stop_child(&mut d, Duration::from_secs(10));
        }
        // The sparse OSD block files are 40 GiB each on paper: remove them.
        let _ = std::fs::remove_dir_all(&self.base);
        Ok(())
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn uuid() -> Result<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/uuid").context("read a uuid")?;
    Ok(text.trim().to_string())
}

// ---------------------------------------------------------------- Cirrus

/// A local Cirrus cluster (3 meta + N data, from the shared test-cluster builder) and a
/// `cirrus mount` of it.
pub struct Cirrus {
    cluster: Option<cirrus_raft_tests::cluster::TestCluster>,
    mnt: PathBuf,
    mount: Option<Child>,
}

impl Cirrus {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        bin: &Path,
        work: &Path,
        data_servers: usize,
        replicas: u32,
    ) -> Result<Self> {
        let base = work.join(format!("cirrus-d{data_servers}-r{replicas}"));
        fresh_dir(&base)?;
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let cluster = rt
            .block_on(
                cirrus_raft_tests::cluster::ClusterBuilder::new()
                    .bin(bin)
                    .data_servers(data_servers)
                    .replicas(replicas)
                    .env("CIRRUS_LOG", "warn")
                    .start(),
            )
            .context("start the cirrus cluster")?;
        let mut c = Cirrus {
            mnt,
            mount: None,
            cluster: Some(cluster),
        };
        let log = base.join("mount.log");
        let meta = c
            .cluster
            .as_ref()
            .map(|cl| cl.meta_addrs())
            .unwrap_or_default();
        let mut child = spawn_logged(
            Command::new(bin)
                .env("CIRRUS_LOG", "warn")
                .arg("mount")
                .arg(&meta)
                .arg(&c.mnt),
            &log,
        )?;
        let r = wait_mounted(&c.mnt, &mut child, &log, "cirrus mount");
        c.mount = Some(child);
        if let Err(e) = r {
            let _ = c.stop();
            return Err(e);
        }
        Ok(c)
    }
}

impl Mounted for Cirrus {
    fn dir(&self) -> &Path {
        &self.mnt
    }
    fn meta_addrs(&self) -> Option<String> {
        self.cluster.as_ref().map(|c| c.meta_addrs())
    }
    fn stop(&mut self) -> Result<()> {
        sys::umount(&self.mnt);
        if let Some(mut m) = self.mount.take() {
            stop_child(&mut m, Duration::from_secs(10));
        }
        // Dropping the cluster SIGKILLs its nodes and removes its temp dir.
        self.cluster.take();
        Ok(())
    }
}

impl Drop for Cirrus {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
