//! Checks of this machine: O_DIRECT support and free space of data directories, the FUSE
//! device, `fusermount3`, and the state of a mount point. Anything that could block on a
//! dead FUSE mount (stat, statfs) runs on a blocking thread under a deadline, so doctor
//! itself never hangs on the problem it is diagnosing.

use super::report::Finding;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs `f` on a blocking thread; `None` if it did not finish within `deadline`.
async fn bounded<T: Send + 'static>(
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let h = tokio::task::spawn_blocking(f);
    match tokio::time::timeout(deadline, h).await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    }
}

/// Free and total bytes of the file system holding `path` (statvfs).
fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the kernel writes only into `st`.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// What one O_DIRECT probe saw.
#[derive(Debug)]
enum ODirect {
    /// The aligned write went through.
    Works,
    /// The file system refused O_DIRECT itself (EINVAL on open or on the aligned write).
    Refused,
    /// Anything else (permissions, read-only, disk errors).
    Error(std::io::Error),
}

/// Sorts an error of the O_DIRECT open or write: EINVAL is the file system saying it does
/// not support direct IO (tmpfs before Linux 6.6, some FUSE and network file systems);
/// every other error is a real problem of the directory.
fn classify_o_direct_error(e: std::io::Error) -> ODirect {
    if e.raw_os_error() == Some(libc::EINVAL) {
        ODirect::Refused
    } else {
        ODirect::Error(e)
    }
}

/// Writes one aligned 4 KiB block with O_DIRECT in `dir` and removes the file.
fn probe_o_direct(dir: &Path) -> ODirect {
    let path = dir.join(format!(".cirrus-doctor-odirect-{}", std::process::id()));
    let res = (|| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let layout = std::alloc::Layout::from_size_align(4096, 4096)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // SAFETY: layout has a non-zero size; the buffer is freed below on every path.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        if buf.is_null() {
            return Err(std::io::Error::other("allocate an aligned buffer"));
        }
        use std::os::fd::AsRawFd;
        // SAFETY: `buf` points to 4096 initialised bytes owned here; `f` is open.
        let n = unsafe { libc::pwrite(f.as_raw_fd(), buf as *const libc::c_void, 4096, 0) };
        let err = std::io::Error::last_os_error();
        // SAFETY: allocated above with the same layout, not freed before.
        unsafe { std::alloc::dealloc(buf, layout) };
        match n {
            4096 => Ok(()),
            n if n >= 0 => Err(std::io::Error::other(format!(
                "short O_DIRECT write: {n} of 4096 bytes"
            ))),
            _ => Err(err),
        }
    })();
    let _ = std::fs::remove_file(&path);
    match res {
        Ok(()) => ODirect::Works,
        Err(e) => classify_o_direct_error(e),
    }
}

/// The finding for one O_DIRECT probe of `probe_dir`.
fn o_direct_finding(target: &str, probe_dir: &Path, seen: ODirect) -> Finding {
    let tried = format!(
        "O_DIRECT write of one 4 KiB block in {}",
        probe_dir.display()
    );
    match seen {
        ODirect::Works => Finding::ok("o_direct", target, "O_DIRECT writes work"),
        ODirect::Refused => Finding::warn(
            "o_direct",
            target,
            format!("the file system of {} refuses O_DIRECT", probe_dir.display()),
            "the data server falls back to buffered IO (slower, page-cache bound): put the data dir on XFS or ext4",
        )
        .tried(tried),
        ODirect::Error(e) => Finding::fail(
            "o_direct",
            target,
            format!("cannot write in {}: {e}", probe_dir.display()),
            "the data server must be able to write there: check permissions, read-only mounts and disk errors",
        )
        .tried(tried),
    }
}

/// O_DIRECT and free space of one data directory.
pub async fn data_dir(dir: PathBuf, min_free: u64, deadline: Duration) -> Vec<Finding> {
    let target = format!("local {}", dir.display());
    let d = dir.clone();
    let Some(result) = bounded(deadline, move || {
        let exists = d.is_dir();
        // A data dir that does not exist yet is created by the data server: check the
        // nearest existing ancestor, which is where it will live.
        let mut probe_dir = d.clone();
        while !probe_dir.is_dir() {
            if !probe_dir.pop() {
                break;
            }
        }
        let odirect = probe_o_direct(&probe_dir);
        let space = statvfs(&probe_dir);
        (exists, probe_dir, odirect, space)
    })
    .await
    else {
        return vec![Finding::fail(
            "data-dir",
            target,
            format!("checking {} did not finish within {}", dir.display(), humantime::format_duration(deadline)),
            "the file system under it hangs (a dead network or FUSE mount?): check `mount` and dmesg",
        )];
    };
    let (exists, probe_dir, odirect, space) = result;
    let mut out = Vec::new();
    if !exists {
        out.push(Finding::warn(
            "data-dir",
            target.clone(),
            format!(
                "{} does not exist yet (checked {} instead)",
                dir.display(),
                probe_dir.display()
            ),
            "the data server creates it; if it should be a mounted disk, mount it first",
        ));
    }
    out.push(o_direct_finding(&target, &probe_dir, odirect));
    match space {
        Ok((free, total)) if free >= min_free => out.push(Finding::ok(
            "free-space",
            target,
            format!("{} free of {}", gib(free), gib(total)),
        )),
        Ok((free, total)) => out.push(
            Finding::fail(
                "free-space",
                target,
                format!(
                    "only {} free of {} (want at least {})",
                    gib(free),
                    gib(total),
                    gib(min_free)
                ),
                "free space or give the data server a bigger disk (or lower --min-free)",
            )
            .tried("statvfs"),
        ),
        Err(e) => out.push(
            Finding::fail(
                "free-space",
                target,
                format!("statvfs failed: {e}"),
                "check the path",
            )
            .tried("statvfs"),
        ),
    }
    out
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// `/dev/fuse` present and openable, `fusermount3` on the PATH.
pub async fn fuse(deadline: Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    let dev = bounded(deadline, || {
        let meta = std::fs::metadata("/dev/fuse");
        let open = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse");
        (
            meta.map(|m| m.file_type().is_char_device()),
            open.map(|_| ()),
        )
    })
    .await;
    let target = "local /dev/fuse";
    match dev {
        None => out.push(Finding::fail(
            "fuse",
            target,
            "opening /dev/fuse hung",
            "check dmesg",
        )),
        Some((Err(e), _)) => out.push(
            Finding::fail(
                "fuse",
                target,
                format!("/dev/fuse is missing: {e}"),
                "load the module (`modprobe fuse`); in a container pass --device /dev/fuse",
            )
            .tried("stat /dev/fuse"),
        ),
        Some((Ok(false), _)) => out.push(Finding::fail(
            "fuse",
            target,
            "/dev/fuse is not a character device",
            "recreate it: `mknod /dev/fuse c 10 229`",
        )),
        Some((Ok(true), Err(e))) => out.push(
            Finding::fail(
                "fuse",
                target,
                format!("cannot open /dev/fuse: {e}"),
                "run the mount as root, or give this user access to /dev/fuse",
            )
            .tried("open /dev/fuse read-write"),
        ),
        Some((Ok(true), Ok(()))) => {
            out.push(Finding::ok("fuse", target, "/dev/fuse opens read-write"))
        }
    }
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("fusermount3"))
                .find(|p| p.is_file())
        })
        .unwrap_or(None);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match found {
        Some(p) => out.push(Finding::ok(
            "fusermount3",
            "local fusermount3",
            format!("found at {}", p.display()),
        )),
        None if root => out.push(Finding::warn(
            "fusermount3",
            "local fusermount3",
            "fusermount3 is not on the PATH (not needed as root: the mount uses mount(2))",
            "install it for unprivileged mounts and clean unmounts: `apt-get install fuse3`",
        )),
        None => out.push(Finding::fail(
            "fusermount3",
            "local fusermount3",
            "fusermount3 is not on the PATH and this is not root: the mount cannot work",
            "`apt-get install fuse3` (Debian/Ubuntu) or `dnf install fuse3`, or mount as root",
        )),
    }
    out
}

/// How a path is mounted, from /proc/self/mountinfo (the topmost mount at exactly it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str, path: &Path) -> Option<MountEntry> {
    let want = path.to_string_lossy();
    let mut found = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < sep + 3 || fields.len() < 5 {
            continue;
        }
        if unescape(fields[4]) == want {
            found = Some(MountEntry {
                fstype: fields[sep + 1].to_string(),
                source: unescape(fields[sep + 2]),
            });
        }
    }
    found
}

/// Lexically absolute, without `.`/`..` or trailing slashes (no stat: the path may be a
/// dead mount).
fn normalize(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The state of the mount point: before a mount it must be an existing directory with
/// nothing (or only an earlier cirrus mount) on it; with `must_be_mounted` (`--ready`) it
/// must be a cirrus mount that answers.
pub async fn mountpoint(path: &Path, must_be_mounted: bool, deadline: Duration) -> Finding {
    let path = normalize(path);
    let target = format!("local {}", path.display());
    let entry = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| parse_mountinfo(&t, &path));
    let p = path.clone();
    let stat = bounded(deadline, move || {
        let md = std::fs::metadata(&p);
        let nonempty = std::fs::read_dir(&p).map(|mut d| d.next().is_some());
        (md.map(|m| m.is_dir()), nonempty)
    })
    .await;
    let is_cirrus =
        |e: &MountEntry| e.fstype == "fuse.cirrus" || e.fstype == "fuse" && e.source.contains(':');
    let shown = path.display().to_string();
    match (entry, stat) {
        (Some(e), None) => Finding::fail(
            "mountpoint",
            target,
            format!("{shown} is a {} mount that does not answer within {}", e.fstype, humantime::format_duration(deadline)),
            format!("the FUSE daemon behind it hangs or died: `umount -l {shown}` and restart the mount"),
        )
        .tried("stat the mount point"),
        (None, None) => Finding::fail(
            "mountpoint",
            target,
            format!("stat of {shown} did not finish within {}", humantime::format_duration(deadline)),
            "a file system under it hangs: check `mount` and dmesg",
        ),
        (Some(e), Some((Err(err), _))) if err.raw_os_error() == Some(libc::ENOTCONN) => Finding::fail(
            "mountpoint",
            target,
            format!("{shown} is a dead {} mount (Transport endpoint is not connected)", e.fstype),
            format!("the client that served it died: `umount -l {shown}`, then mount again"),
        )
        .tried("stat the mount point"),
        (_, Some((Err(err), _))) if err.kind() == std::io::ErrorKind::NotFound => Finding::fail(
            "mountpoint",
            target,
            format!("{shown} does not exist"),
            format!("create it: `mkdir -p {shown}`"),
        ),
        (_, Some((Err(err), _))) => Finding::fail(
            "mountpoint",
            target,
            format!("cannot stat {shown}: {err}"),
            "check the path and its permissions",
        ),
        (_, Some((Ok(false), _))) => Finding::fail(
            "mountpoint",
            target,
            format!("{shown} is not a directory"),
            "mount on a directory",
        ),
        (Some(e), Some((Ok(true), _))) if is_cirrus(&e) => Finding::ok(
            "mountpoint",
            target,
            format!("{shown} is mounted ({}, {}) and answers", e.fstype, e.source),
        ),
        (Some(e), Some((Ok(true), _))) => Finding::fail(
            "mountpoint",
            target,
            format!("{shown} already has a {} mount of {} on it", e.fstype, e.source),
            format!("unmount it (`umount {shown}`) or pick another mount point"),
        ),
        (None, Some((Ok(true), nonempty))) => {
            if must_be_mounted {
                Finding::fail(
                    "mountpoint",
                    target,
                    format!("{shown} is not mounted"),
                    "start the mount (`systemctl start cirrus-mount` or `cirrus mount META_ADDRS DIR`) and read its log",
                )
            } else if matches!(nonempty, Ok(true)) {
                Finding::warn(
                    "mountpoint",
                    target,
                    format!("{shown} is not empty: the mount will hide its files"),
                    "mount on an empty directory",
                )
            } else {
                Finding::ok("mountpoint", target, format!("{shown} is an empty directory, ready to mount"))
            }
        }
    }
}

/// Free bytes required by default in each data directory.
pub const DEFAULT_MIN_FREE: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    #[test]
    fn mountinfo_finds_the_topmost_mount_and_unescapes() {
        let text = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:50 / /mnt/my\\040dir rw - tmpfs tmpfs rw
41 22 0:51 / /mnt/c rw,nosuid,nodev - ext4 /dev/sdb1 rw
42 41 0:52 / /mnt/c rw,nosuid,nodev,relatime shared:9 - fuse.cirrus 10.0.0.1:7001,10.0.0.2:7001 rw,user_id=0
";
        assert_eq!(
            parse_mountinfo(text, Path::new("/mnt/c")),
            Some(MountEntry {
                fstype: "fuse.cirrus".into(),
                source: "10.0.0.1:7001,10.0.0.2:7001".into()
            })
        );
        assert_eq!(
            parse_mountinfo(text, Path::new("/mnt/my dir")).map(|e| e.fstype),
            Some("tmpfs".into())
        );
        assert_eq!(parse_mountinfo(text, Path::new("/mnt/none")), None);
    }

    #[test]
    fn paths_normalize_without_touching_the_file_system() {
        assert_eq!(
            normalize(Path::new("/mnt/./a/../cirrus/")),
            PathBuf::from("/mnt/cirrus")
        );
    }

    #[tokio::test]
    async fn mount_point_states_are_named() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let f = mountpoint(&empty, false, Duration::from_secs(10)).await;
        assert_eq!(f.status, Status::Ok, "{f:?}");
        let f = mountpoint(&empty, true, Duration::from_secs(10)).await;
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(f.message.contains("is not mounted"), "{f:?}");

        let missing = d.path().join("missing");
        let f = mountpoint(&missing, false, Duration::from_secs(10)).await;
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.as_deref().unwrap_or("").contains("mkdir -p"), "{f:?}");

        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let f = mountpoint(&file, false, Duration::from_secs(10)).await;
        assert!(f.message.contains("not a directory"), "{f:?}");

        std::fs::write(empty.join("x"), b"x").unwrap();
        let f = mountpoint(&empty, false, Duration::from_secs(10)).await;
        assert_eq!(f.status, Status::Warn, "{f:?}");
    }

    #[tokio::test]
    async fn data_dir_reports_o_direct_and_refuses_too_little_space() {
        let d = tempfile::tempdir().unwrap();
        let fs = data_dir(d.path().to_path_buf(), 0, Duration::from_secs(20)).await;
        let od = fs.iter().find(|f| f.check == "o_direct").unwrap();
        // tmp may be tmpfs (no O_DIRECT: a warning) or a disk (ok); never a failure.
        assert_ne!(od.status, Status::Fail, "{od:?}");
        let sp = fs.iter().find(|f| f.check == "free-space").unwrap();
        assert_eq!(sp.status, Status::Ok, "{sp:?}");

        let fs = data_dir(d.path().join("not-yet"), u64::MAX, Duration::from_secs(20)).await;
        assert!(fs
            .iter()
            .any(|f| f.check == "data-dir" && f.status == Status::Warn));
        let sp = fs.iter().find(|f| f.check == "free-space").unwrap();
        assert_eq!(sp.status, Status::Fail, "{sp:?}");
        // The probe file is cleaned up.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn o_direct_refusal_is_a_warning_naming_the_fallback_and_other_errors_fail() {
        // EINVAL from open(O_DIRECT) or from the aligned write is how a file system says
        // it has no direct IO (tmpfs before Linux 6.6, some FUSE and network file systems):
        // the data server then falls back to buffered IO, so it is a warning.
        let dir = Path::new("/srv/cirrus/data");
        let refused = classify_o_direct_error(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(refused, ODirect::Refused), "{refused:?}");
        let f = o_direct_finding("local d", dir, refused);
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(f.message.contains("refuses O_DIRECT"), "{f:?}");
        assert!(f.fix.as_deref().unwrap_or("").contains("buffered"), "{f:?}");
        assert!(f.tried.contains("/srv/cirrus/data"), "{f:?}");

        // Anything else is a directory the data server cannot use: a failure.
        for errno in [libc::EACCES, libc::EROFS, libc::EIO, libc::ENOSPC] {
            let seen = classify_o_direct_error(std::io::Error::from_raw_os_error(errno));
            assert!(matches!(seen, ODirect::Error(_)), "errno {errno}: {seen:?}");
            let f = o_direct_finding("local d", dir, seen);
            assert_eq!(f.status, Status::Fail, "errno {errno}: {f:?}");
            assert!(f.message.contains("cannot write"), "{f:?}");
        }

        let f = o_direct_finding("local d", dir, ODirect::Works);
        assert_eq!(f.status, Status::Ok, "{f:?}");
    }

    #[test]
    fn o_direct_probe_of_a_non_directory_is_an_error_not_a_refusal() {
        // A real error that is not EINVAL (ENOTDIR here; as root, permissions would not
        // stop the write) must come back as an error, never as "no O_DIRECT".
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let seen = probe_o_direct(&file);
        assert!(matches!(seen, ODirect::Error(_)), "{seen:?}");
    }
}
