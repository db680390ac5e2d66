//! Helpers shared by the FUSE tests: a real cluster (ClusterBuilder, real processes), a
//! real `cirrus mount --foreground` process per mount that reports readiness on stdout,
//! and a Drop that always unmounts (SIGTERM, then fusermount3 -u, then umount -l) so no
//! stale mount outlives a test, even a failing one.

#![allow(dead_code)]

use cirrus_raft_tests::{ClusterBuilder, TestCluster};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cirrus");

/// Fails (never skips) with the reason when this machine cannot run FUSE tests.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE tests need it (modprobe fuse, or --device /dev/fuse)"
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root || which("fusermount3").is_some(),
        "not root and no fusermount3: FUSE tests need one of them (Debian package fuse3)"
    );
}

pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// 3 meta + `data` data servers with `replicas` copies.
pub fn cluster(rt: &tokio::runtime::Runtime, data: usize, replicas: u32) -> TestCluster {
    rt.block_on(
        ClusterBuilder::new()
            .bin(BIN)
            .data_servers(data)
            .replicas(replicas)
            .env("CIRRUS_LOG", "info,openraft=warn")
            .start(),
    )
    .expect("start the test cluster")
}

/// True if `p` is a mount point now.
pub fn is_mounted(p: &Path) -> bool {
    let want = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp.replace("\\040", " ") == want.to_string_lossy())
}

/// Best-effort unmount of whatever is at `p`.
pub fn force_unmount(p: &Path) {
    for _ in 0..3 {
        if !is_mounted(p) {
            return;
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(p)
            .stderr(Stdio::null())
            .status();
        if !is_mounted(p) {
            return;
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(p)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `cirrus mount --foreground` process and its mount point.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// How to start a mount.
#[derive(Clone, Debug)]
pub struct MountSpec {
    pub deadline: Duration,
    pub extra: Vec<String>,
}

impl Default for MountSpec {
    fn default() -> Self {
        MountSpec {
            deadline: Duration::from_secs(30),
            extra: Vec::new(),
        }
    }
}

/// Reads the first line of `out` within `wait`.
pub fn first_line(out: impl std::io::Read + Send + 'static, wait: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut l = String::new();
        let _ = BufReader::new(out).read_line(&mut l);
        let _ = tx.send(l);
    });
    rx.recv_timeout(wait).ok()
}

impl Mount {
    pub fn new(meta: &str) -> Mount {
        Self::with(meta, MountSpec::default())
    }

    pub fn with(meta: &str, spec: MountSpec) -> Mount {
        require_fuse();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let log = dir.path().join("mount.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .arg("mount")
            .arg(meta)
            .arg(&path)
            .arg("--foreground")
            .arg("--deadline")
            .arg(format!("{}s", spec.deadline.as_secs()))
            .args(&spec.extra)
            .env("CIRRUS_MOUNT_NOTIFY", "1")
            .env("CIRRUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf)
            .spawn()
            .expect("start cirrus mount");
        let out = child.stdout.take().unwrap();
        let line = first_line(out, Duration::from_secs(60));
        let mut m = Mount {
            dir,
            path,
            log,
            child: Some(child),
        };
        match line.as_deref().map(str::trim) {
            Some("ready") => {}
            other => panic!(
                "mount did not become ready: {other:?}; log:\n{}",
                std::fs::read_to_string(&m.log).unwrap_or_default()
            ),
        }
        assert!(
            is_mounted(&m.path),
            "reported ready but {} is not a mount point",
            m.path.display()
        );
        m.path = std::fs::canonicalize(&m.path).unwrap();
        m
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM; returns the exit status and whether the mount point was released.
    pub fn stop(&mut self) -> (Option<std::process::ExitStatus>, bool) {
        let Some(mut c) = self.child.take() else {
            return (None, !is_mounted(&self.path));
        };
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(30);
        let mut st = None;
        while Instant::now() < until {
            if let Ok(Some(s)) = c.try_wait() {
                st = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if st.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let released = !is_mounted(&self.path);
        (st, released)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.stop();
        force_unmount(&self.path);
        if std::thread::panicking() {
            eprintln!("mount log {}:\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Runs `cmd` in `dir` with a deadline; panics with its output on failure or hang.
pub fn sh(dir: &Path, script: &str, deadline: Duration) -> String {
    let child = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(Ok(o)) => {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(
                o.status.success(),
                "`{script}` in {} failed ({}):\nstdout:\n{out}\nstderr:\n{}",
                dir.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            out
        }
        Ok(Err(e)) => panic!("`{script}`: {e}"),
        Err(_) => {
            // SAFETY: kill on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!(
                "`{script}` in {} did not finish within {deadline:?}",
                dir.display()
            )
        }
    }
}

/// Runs `f` on a thread; panics if it does not return within `deadline` (a hang).
pub fn within<T: Send + 'static>(
    what: &str,
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(deadline) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("{what} did not return within {deadline:?} (a hang)"),
    }
}

/// setxattr(2) itself (setfattr is in another Debian package than getfacl).
pub fn setxattr(path: &std::path::Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: both strings are NUL-terminated and live across the call; the value
    // pointer and length describe one readable slice.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
