//! Process and system helpers for the runner: commands with deadlines, Debian package
//! installs, mounts and cache drops. Everything here waits on a condition with a deadline;
//! nothing may hang the runner.

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion, killing it after `timeout`. Captures stdout and stderr.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {desc}"))?;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe while we poll.
    let out = child.stdout.take();
    let err = child.stderr.take();
    let out_t = std::thread::spawn(move || read_all(out));
    let err_t = std::thread::spawn(move || read_all(err));
    let status = wait_child(&mut child, timeout).with_context(|| format!("run {desc}"))?;
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn read_all<R: std::io::Read>(r: Option<R>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut v);
    }
    v
}

/// Waits for `child` with a deadline; kills it (and reaps it) when the deadline passes.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a shell-free command and fails with its stderr when it exits non-zero.
pub fn run_ok(program: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let out = run_with_timeout(Command::new(program).args(args), timeout)?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is on PATH (or an existing path).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Makes sure every `(binary, debian package)` is present, installing the missing packages
/// with apt-get. Returns an error naming what could not be installed.
pub fn ensure_packages(needs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    let install = |args: &[&str]| {
        run_with_timeout(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(900),
        )
    };
    let out = install(&args)?;
    if !out.status.success() {
        // A fresh machine has no package lists yet: update once and retry.
        run_with_timeout(
            Command::new("apt-get").arg("update"),
            Duration::from_secs(600),
        )?;
        let out = install(&args)?;
        if !out.status.success() {
            bail!(
                "apt-get install {} failed: {}",
                missing.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let still: Vec<&str> = needs
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(bin, _)| *bin)
        .collect();
    if !still.is_empty() {
        bail!("installed packages but still missing: {}", still.join(" "));
    }
    Ok(())
}

/// Whether `dir` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else {
        // A dead FUSE mount fails stat with ENOTCONN; treat that as mounted.
        return std::fs::metadata(dir)
            .err()
            .and_then(|e| e.raw_os_error())
            .is_some_and(|e| e == libc::ENOTCONN);
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == want)
}

/// Unmounts `dir` if mounted: a normal unmount first, then a lazy one so a busy or dead
/// FUSE mount never blocks the runner.
pub fn umount(dir: &Path) {
    if !is_mounted(dir) {
        return;
    }
    let d = dir.to_string_lossy().into_owned();
    if run_ok("umount", &[&d], Duration::from_secs(30)).is_err() {
        let _ = run_ok("umount", &["-l", &d], Duration::from_secs(30));
    }
}

/// Flushes dirty pages and drops the page cache, so read phases measure the filesystem and
/// not memory. Needs root; without it reads may come from cache and the report says so.
pub fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Polls `f` until it returns `Ok(true)` or the deadline passes; the error names `desc`
/// and the last error `f` returned.
pub fn wait_until(
    desc: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => anyhow!("timed out after {timeout:?} waiting for {desc}: {e:#}"),
                None => anyhow!("timed out after {timeout:?} waiting for {desc}"),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGTERM to `pid`, waits up to `grace` for it to exit, then SIGKILL.
pub fn terminate_pid(pid: i32, grace: Duration) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a positive pid we started; signal 0 only probes existence.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        // SAFETY: as above.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Reads a pid file; `None` when absent or malformed.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// First non-loopback IPv4 address of this host (GlusterFS refuses loopback bricks).
pub fn host_ip() -> Result<String> {
    let out = run_ok("hostname", &["-I"], Duration::from_secs(10))?;
    out.split_whitespace()
        .find(|a| a.contains('.') && !a.starts_with("127."))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no non-loopback IPv4 address in `hostname -I`: {out:?}"))
}
