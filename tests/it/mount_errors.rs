//! `cirrus mount` refuses what it cannot do with a one-line reason and a non-zero exit,
//! within a deadline (never a hang): missing mount point, busy mount point, no permission,
//! unreachable meta group, no /dev/fuse. SIGTERM unmounts cleanly (foreground and daemon),
//! and `mount.cirrus` (the `mount -t cirrus` helper) mounts where it is told.

use crate::fuse_common;

use fuse_common::{
    cluster, first_line, force_unmount, is_mounted, require_fuse, runtime, which, Mount, BIN,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// Runs a command to completion within DEADLINE; returns (status, stderr).
fn run(mut cmd: Command) -> (std::process::ExitStatus, String) {
    cmd.env("CIRRUS_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(o)) => (o.status, String::from_utf8_lossy(&o.stderr).into_owned()),
        _ => {
            // SAFETY: kill on our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("{cmd:?} did not finish within {DEADLINE:?} (a hang)")
        }
    }
}

/// Non-zero exit, exactly one line on stderr, containing `want`.
fn refused(cmd: Command, want: &str) -> String {
    let (st, err) = run(cmd);
    assert!(!st.success(), "expected a failure, got {st}; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line reason, got:\n{err}");
    assert!(
        lines[0].contains(want),
        "reason {:?} does not say {want:?}",
        lines[0]
    );
    lines[0].to_string()
}

fn mount_cmd(meta: &str, mp: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("mount")
        .arg(meta)
        .arg(mp)
        .arg("--connect-timeout")
        .arg("5s");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn missing_mount_point_is_named() {
    let d = tempfile::tempdir().unwrap();
    let mp = d.path().join("nope");
    let meta = format!("127.0.0.1:{}", free_port());
    let l = refused(mount_cmd(&meta, &mp), "does not exist");
    assert!(l.contains("nope"), "{l}");
    assert!(
        !mp.exists(),
        "a refused mount must not create the mount point"
    );
}

#[test]
fn unreachable_meta_group_fails_fast_with_its_address() {
    require_fuse();
    let d = tempfile::tempdir().unwrap();
    let meta = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let t = Instant::now();
    let l = refused(mount_cmd(&meta, d.path()), "unreachable");
    assert!(l.contains(&meta), "{l}");
    assert!(!is_mounted(d.path()));
    eprintln!("refused after {:?}: {l}", t.elapsed());
}

#[test]
fn no_dev_fuse_is_named() {
    // Simulated without touching the host: a private mount namespace with an empty /dev.
    assert!(
        which("unshare").is_some(),
        "unshare (util-linux) is needed to hide /dev/fuse in a private mount namespace"
    );
    let d = tempfile::tempdir().unwrap();
    let meta = format!("127.0.0.1:{}", free_port());
    let mut c = Command::new("unshare");
    c.arg("--mount")
        .arg("--propagation")
        .arg("private")
        .arg("sh")
        .arg("-c")
        .arg("mount -t tmpfs none /dev && exec \"$0\" mount \"$1\" \"$2\"")
        .arg(BIN)
        .arg(&meta)
        .arg(d.path());
    refused(c, "/dev/fuse is missing");
}

#[test]
fn busy_and_nonempty_mount_points_are_refused_and_sigterm_unmounts() {
    let rt = runtime();
    let cl = cluster(&rt, 2, 1);
    let meta = cl.meta_addrs();
    let mut m = Mount::new(&meta);
    std::fs::write(m.path.join("x"), b"x").unwrap();
    refused(mount_cmd(&meta, &m.path), "already a mount point");
    let full = tempfile::tempdir().unwrap();
    std::fs::write(full.path().join("f"), b"x").unwrap();
    refused(mount_cmd(&meta, full.path()), "not empty");
    // The busy mount still works.
    assert_eq!(std::fs::read(m.path.join("x")).unwrap(), b"x");
    let (st, released) = m.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "SIGTERM exit: {st:?}\n{}",
        m.log_text()
    );
    assert!(released, "SIGTERM left {} mounted", m.path.display());
}

#[test]
fn daemon_mode_returns_when_ready_and_sigterm_unmounts() {
    let rt = runtime();
    let cl = cluster(&rt, 2, 1);
    let d = tempfile::tempdir().unwrap();
    let mp = d.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    // As mount(8) runs it for `mount -t cirrus META DIR` or an fstab line.
    let helper = d.path().join("mount.cirrus");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let mut c = Command::new(&helper);
    c.arg(cl.meta_addrs())
        .arg(&mp)
        .arg("-o")
        .arg(format!(
            "rw,_netdev,deadline=30s,log={}",
            d.path().join("m.log").display()
        ))
        .env("CIRRUS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let out =
        first_line(child.stdout.take().unwrap(), DEADLINE).expect("mount.cirrus said nothing");
    let st = child.wait().unwrap();
    let guard = Unmount(mp.clone());
    assert!(st.success(), "mount.cirrus: {st}; {out}");
    assert!(
        is_mounted(&mp),
        "mount.cirrus returned but {} is not mounted: {out}",
        mp.display()
    );
    let pid: i32 = out
        .split("daemon pid ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {out:?}"));
    std::fs::write(mp.join("hello"), b"world").unwrap();
    assert_eq!(std::fs::read(mp.join("hello")).unwrap(), b"world");
    // SAFETY: the daemon this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let until = Instant::now() + DEADLINE;
    while is_mounted(&mp) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !is_mounted(&mp),
        "SIGTERM to the daemon left {} mounted",
        mp.display()
    );
    drop(guard);
}

#[test]
fn no_permission_is_named() {
    let rt = runtime();
    let cl = cluster(&rt, 2, 1);
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Owned by root, not writable by the unprivileged user.
    let mp = d.path().join("rootonly");
    std::fs::create_dir(&mp).unwrap();
    std::fs::set_permissions(&mp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let guard = Unmount(mp.clone());
    let line = if let Some(setpriv) = which("setpriv") {
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(BIN)
            .arg("mount")
            .arg(cl.meta_addrs())
            .arg(&mp)
            .arg("--foreground");
        // Whichever the unprivileged user hits first (opening /dev/fuse, or fusermount3
        // refusing a mount point it cannot write), the line says it is a permission problem.
        refused(c, "ermission")
    } else {
        // No way to drop privileges: a mount point that cannot be searched.
        let deny = d.path().join("deny");
        std::fs::create_dir(&deny).unwrap();
        std::fs::set_permissions(&deny, std::fs::Permissions::from_mode(0o000)).unwrap();
        refused(mount_cmd(&cl.meta_addrs(), &deny.join("x")), "ermission")
    };
    assert!(!is_mounted(&mp));
    eprintln!("refused: {line}");
    drop(guard);
}

/// Unmounts on drop whatever a failed assertion left behind.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}
