//! The mount lifecycle: checks that name what is wrong before anything is started
//! (mount point, /dev/fuse, privileges, meta group), the FUSE session on a blocking
//! thread, signal handling that unmounts, and the daemon mode in which the parent process
//! returns only once the mount is ready (or with the child's one-line reason).

use crate::client::{Client, ClientConfig};
use crate::fuse::CirrusFs;
use fuser::{Config, MountOption, SessionACL};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Everything a mount needs, from `cirrus mount` flags or `mount.cirrus -o` options.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub meta: String,
    pub mountpoint: PathBuf,
    /// Stay in the foreground (default: daemonize once the mount is ready).
    pub foreground: bool,
    /// Let other users in (default: yes when mounting as root).
    pub allow_other: Option<bool>,
    pub read_only: bool,
    /// Allow mounting over a non-empty directory.
    pub nonempty: bool,
    /// Longest any filesystem call may take.
    pub deadline: Duration,
    /// Longest the initial contact with the meta group may take.
    pub connect_timeout: Duration,
    /// Where the daemon writes its log.
    pub log_file: Option<PathBuf>,
}

impl MountOptions {
    pub fn new(meta: String, mountpoint: PathBuf) -> Self {
        MountOptions {
            meta,
            mountpoint,
            foreground: false,
            allow_other: None,
            read_only: false,
            nonempty: false,
            deadline: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            log_file: None,
        }
    }

    /// Applies a comma-separated `-o` list. Options `mount(8)` and fstab use for their own
    /// purposes are accepted and ignored; anything else unknown is an error, never
    /// silently dropped.
    pub fn apply_options(&mut self, list: &str) -> Result<(), MountError> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (k, v) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let dur = |v: Option<&str>| -> Result<Duration, MountError> {
                let v = v.ok_or_else(|| {
                    MountError::Option(format!("{k} needs a value, e.g. {k}=30s"))
                })?;
                humantime::parse_duration(v)
                    .map_err(|e| MountError::Option(format!("{k}={v}: {e}")))
            };
            match (k, v) {
                ("foreground", None) => self.foreground = true,
                ("allow_other", None) => self.allow_other = Some(true),
                ("noallow_other", None) => self.allow_other = Some(false),
                ("ro", None) => self.read_only = true,
                ("rw", None) => self.read_only = false,
                ("nonempty", None) => self.nonempty = true,
                ("deadline", v) => self.deadline = dur(v)?,
                ("connect_timeout", v) => self.connect_timeout = dur(v)?,
                ("log", Some(p)) => self.log_file = Some(PathBuf::from(p)),
                // Interpreted by mount(8), systemd or the kernel's generic layer.
                (
                    "defaults"
                    | "auto"
                    | "noauto"
                    | "user"
                    | "nouser"
                    | "users"
                    | "_netdev"
                    | "nofail"
                    | "dev"
                    | "nodev"
                    | "suid"
                    | "nosuid"
                    | "exec"
                    | "noexec"
                    | "atime"
                    | "noatime"
                    | "relatime"
                    | "default_permissions",
                    None,
                ) => {}
                (k, _) if k.starts_with("x-") || k.starts_with("comment=") => {}
                _ => return Err(MountError::Option(format!("unknown mount option {opt:?}"))),
            }
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.log_file.clone().unwrap_or_else(|| {
            let tag: String = self
                .mountpoint
                .to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            std::env::temp_dir().join(format!("cirrus-mount{tag}.log"))
        })
    }
}

/// Why a mount did not happen. Each message is one line that names the fix.
#[derive(Debug, Error)]
pub enum MountError {
    #[error("mount point {0} does not exist (create it with mkdir -p)")]
    NoMountpoint(PathBuf),
    #[error("mount point {0} is not a directory")]
    NotDir(PathBuf),
    #[error("mount point {0} is already a mount point (unmount it first: umount {0})")]
    Busy(PathBuf),
    #[error("mount point {0} is a dead FUSE mount (transport endpoint is not connected); clear it with: umount -l {0}")]
    Stale(PathBuf),
    #[error("mount point {0} is not empty (use -o nonempty to mount over it anyway)")]
    NotEmpty(PathBuf),
    #[error("cannot use mount point {0}: {1}")]
    MountpointIo(PathBuf, String),
    #[error("/dev/fuse is missing: load the module (modprobe fuse) or give the container --device /dev/fuse")]
    NoFuseDevice,
    #[error("cannot open /dev/fuse: {0} (run as root, or check the device's permissions)")]
    FuseDevice(String),
    #[error("not running as root and no fusermount3 found: mount as root or install fusermount3 (Debian package fuse3)")]
    NoPrivilege,
    #[error("meta group {0} unreachable: {1}")]
    Meta(String, String),
    #[error("mount {0}: {1}")]
    Mount(PathBuf, String),
    #[error("{0}")]
    Option(String),
    #[error("mount daemon: {0}")]
    Daemon(String),
    /// The daemon's own one-line reason, passed through.
    #[error("{0}")]
    Child(String),
}

/// Decodes the octal escapes of /proc/self/mountinfo (`\040` is a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True if `path` (canonical) is a mount point in this mount namespace.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// Checks the mount point; returns its canonical path.
pub fn check_mountpoint(p: &Path, nonempty: bool) -> Result<PathBuf, MountError> {
    let md = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError::NoMountpoint(p.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError::Stale(p.to_path_buf()))
        }
        Err(e) => return Err(MountError::MountpointIo(p.to_path_buf(), e.to_string())),
    };
    if !md.is_dir() {
        return Err(MountError::NotDir(p.to_path_buf()));
    }
    let canon = std::fs::canonicalize(p)
        .map_err(|e| MountError::MountpointIo(p.to_path_buf(), e.to_string()))?;
    let parent_dev = canon
        .parent()
        .and_then(|pp| std::fs::metadata(pp).ok())
        .map(|m| m.dev());
    if is_mountpoint(&canon) || parent_dev.is_some_and(|d| d != md.dev()) {
        return Err(MountError::Busy(canon));
    }
    if !nonempty {
        let mut rd = std::fs::read_dir(&canon)
            .map_err(|e| MountError::MountpointIo(canon.clone(), e.to_string()))?;
        if rd.next().is_some() {
            return Err(MountError::NotEmpty(canon));
        }
    }
    Ok(canon)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// /dev/fuse present and openable, and the privilege to mount.
pub fn check_fuse() -> Result<(), MountError> {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        return Err(MountError::NoFuseDevice);
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Err(MountError::FuseDevice(e.to_string()));
    }
    if euid() != 0 && !on_path("fusermount3") && !on_path("fusermount") {
        return Err(MountError::NoPrivilege);
    }
    Ok(())
}

/// Unmounts `mp`; lazily (detached) if it is busy, so no mount is left behind.
pub fn unmount(mp: &Path) -> Result<(), String> {
    let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: c is a valid NUL-terminated path that outlives both calls.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    let second = std::io::Error::last_os_error();
    // Non-root mounts go through fusermount.
    for bin in ["fusermount3", "fusermount"] {
        if let Ok(s) = std::process::Command::new(bin).arg("-uz").arg(mp).status() {
            if s.success() {
                return Ok(());
            }
        }
    }
    Err(format!("umount {}: {first}; lazy: {second}", mp.display()))
}

/// The environment variable through which the daemon child learns it must report
/// readiness on stdout.
pub const NOTIFY_ENV: &str = "CIRRUS_MOUNT_NOTIFY";

/// Mounts as `opts` says: in the foreground, or as a daemon that is ready when this returns.
pub async fn mount(opts: MountOptions) -> Result<(), MountError> {
    let canon = check_mountpoint(&opts.mountpoint, opts.nonempty)?;
    check_fuse()?;
    if opts.foreground || std::env::var_os(NOTIFY_ENV).is_some() {
        return run_foreground(opts, canon).await;
    }
    daemonize(&opts, &canon).await
}

/// Starts `cirrus mount --foreground` as a detached child and waits for its first line.
async fn daemonize(opts: &MountOptions, canon: &Path) -> Result<(), MountError> {
    use std::os::unix::process::CommandExt;
    let exe =
        std::env::current_exe().map_err(|e| MountError::Daemon(format!("find own binary: {e}")))?;
    let log = opts.log_path();
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| MountError::Daemon(format!("open log {}: {e}", log.display())))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount")
        .arg(&opts.meta)
        .arg(canon)
        .arg("--foreground")
        .arg("--deadline")
        .arg(humantime::format_duration(opts.deadline).to_string())
        .arg("--connect-timeout")
        .arg(humantime::format_duration(opts.connect_timeout).to_string());
    if opts.nonempty {
        cmd.arg("-o").arg("nonempty");
    }
    if opts.read_only {
        cmd.arg("-o").arg("ro");
    }
    match opts.allow_other {
        Some(true) => {
            cmd.arg("-o").arg("allow_other");
        }
        Some(false) => {
            cmd.arg("-o").arg("noallow_other");
        }
        None => {}
    }
    cmd.env(NOTIFY_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(logf);
    // SAFETY: setsid is async-signal-safe; the child gets its own session so the
    // terminal's Ctrl-C does not reach the daemon.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| MountError::Daemon(format!("start mount daemon: {e}")))?;
    let Some(out) = child.stdout.take() else {
        return Err(MountError::Daemon("no pipe to the mount daemon".into()));
    };
    let wait = opts.connect_timeout + Duration::from_secs(20);
    let line = tokio::time::timeout(
        wait,
        tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            let _ = BufReader::new(out).read_line(&mut l);
            l
        }),
    )
    .await;
    let line = match line {
        Ok(Ok(l)) => l,
        _ => {
            let _ = child.kill();
            return Err(MountError::Daemon(format!(
                "mount daemon not ready after {wait:?}; see {}",
                log.display()
            )));
        }
    };
    let line = line.trim();
    if line == "ready" {
        println!(
            "cirrus: mounted {} at {} (daemon pid {}, log {}); unmount with: umount {}",
            opts.meta,
            canon.display(),
            child.id(),
            log.display(),
            canon.display()
        );
        return Ok(());
    }
    let _ = child.wait();
    match line.strip_prefix("error: ") {
        Some(msg) => Err(MountError::Child(msg.to_string())),
        None => Err(MountError::Daemon(format!(
            "mount daemon exited before the mount was ready; see {}",
            log.display()
        ))),
    }
}

fn notify_parent(msg: &str) {
    if std::env::var_os(NOTIFY_ENV).is_none() {
        return;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
    // The parent exits after this line: point stdout at /dev/null so later writes do not
    // fail with EPIPE.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both fds are open; dup2 atomically replaces fd 1.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

async fn run_foreground(opts: MountOptions, canon: PathBuf) -> Result<(), MountError> {
    let r = serve(opts, canon).await;
    if let Err(e) = &r {
        notify_parent(&format!("error: {e}"));
    }
    r
}

async fn serve(opts: MountOptions, canon: PathBuf) -> Result<(), MountError> {
    let cfg = ClientConfig {
        deadline: opts.deadline,
        ..ClientConfig::default()
    };
    let connect_cfg = ClientConfig {
        deadline: opts.connect_timeout,
        meta_per_try: opts.connect_timeout.min(cfg.meta_per_try),
        ..cfg.clone()
    };
    // Connect with the short timeout, then use the full deadline for filesystem calls.
    let probe = Client::connect(&opts.meta, connect_cfg).await;
    if let Err(e) = probe {
        return Err(MountError::Meta(opts.meta.clone(), e.to_string()));
    }
    let client = Client::connect(&opts.meta, cfg)
        .await
        .map_err(|e| MountError::Meta(opts.meta.clone(), e.to_string()))?;
    let lease = client.spawn_lease_renewal();
    let notifier = Arc::new(std::sync::OnceLock::new());
    let fs = CirrusFs::new(
        client.clone(),
        tokio::runtime::Handle::current(),
        notifier.clone(),
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.meta.clone()),
        MountOption::Subtype("cirrus".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        config.mount_options.push(MountOption::RO);
    }
    config.acl = if opts.allow_other.unwrap_or(euid() == 0) {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(4);
    config.clone_fd = true;
    let mp = canon.clone();
    let session = tokio::task::spawn_blocking(move || fuser::Session::new(fs, &mp, &config))
        .await
        .map_err(|e| MountError::Mount(canon.clone(), e.to_string()))?
        .map_err(|e| MountError::Mount(canon.clone(), e.to_string()))?;
    let _ = notifier.set(session.notifier());
    tracing::info!(meta = %opts.meta, mountpoint = %canon.display(), "mounted");
    notify_parent("ready");
    let mut session = session;
    let mut unmounter = session.unmount_callable();
    let run = tokio::task::spawn_blocking(move || session.run());
    let mp = canon.clone();
    let signals = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut t), Ok(mut i), Ok(mut h)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return std::future::pending::<&'static str>().await;
        };
        tokio::select! {
            _ = t.recv() => "SIGTERM",
            _ = i.recv() => "SIGINT",
            _ = h.recv() => "SIGHUP",
        }
    };
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => {
            // Unmounted from outside (umount): the session ended by itself.
            lease.abort();
            tracing::info!(mountpoint = %mp.display(), "unmounted");
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(MountError::Mount(mp, format!("fuse session: {e}"))),
                Err(e) => Err(MountError::Mount(mp, format!("fuse session: {e}"))),
            };
        }
        sig = signals => {
            tracing::info!(mountpoint = %mp.display(), signal = %sig, "unmounting");
        }
    }
    if let Err(e) = unmounter.unmount() {
        tracing::warn!(err = %e, "unmount; trying a lazy unmount");
        if let Err(e) = unmount(&mp) {
            tracing::error!(err = %e, "unmount");
        }
    }
    // A lazily detached mount ends its session only when its last user goes away: do
    // not wait for that forever.
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(_) => {}
        Err(_) => tracing::warn!("fuse session still busy after unmount; exiting anyway"),
    }
    lease.abort();
    client.release_all().await;
    tracing::info!(mountpoint = %mp.display(), "unmounted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_point_problems_are_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert!(matches!(
            check_mountpoint(&missing, false),
            Err(MountError::NoMountpoint(_))
        ));
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            check_mountpoint(&f, false),
            Err(MountError::NotDir(_))
        ));
        let full = d.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("a"), b"x").unwrap();
        assert!(matches!(
            check_mountpoint(&full, false),
            Err(MountError::NotEmpty(_))
        ));
        assert!(check_mountpoint(&full, true).is_ok());
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(check_mountpoint(&empty, false).is_ok());
        // "/" and /proc are mount points everywhere.
        assert!(matches!(
            check_mountpoint(Path::new("/proc"), true),
            Err(MountError::Busy(_))
        ));
    }

    #[test]
    fn mount_options_parse_and_unknown_ones_fail() {
        let mut o = MountOptions::new("a:1".into(), PathBuf::from("/x"));
        o.apply_options("rw,_netdev,nofail,deadline=12s,allow_other,x-systemd.automount")
            .unwrap();
        assert_eq!(o.deadline, Duration::from_secs(12));
        assert_eq!(o.allow_other, Some(true));
        assert!(matches!(
            o.apply_options("bogus"),
            Err(MountError::Option(_))
        ));
        assert!(o.apply_options("deadline").is_err());
        assert!(o.apply_options("deadline=soon").is_err());
    }

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
