//! The README's Quick start, run as written: the ```sh block under "## Quick start" is
//! parsed from README.md (so this test breaks when the README changes), each line runs in
//! the repository root; the last one (`cirrus up`) must print where it mounted, the mount
//! must work, and SIGTERM must stop it and leave no mount behind. (The README's other
//! command, `bash scripts/test.sh`, is what CI runs; it is not run from here.)

use crate::fuse_common;

use fuse_common::{force_unmount, is_mounted, require_fuse, sh};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn quick_start() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Quick start")
        .nth(1)
        .expect("README has a \"## Quick start\" section");
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .expect("Quick start has a ```sh block")
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn quick_start_runs_as_written_and_mounts() {
    require_fuse();
    let lines = quick_start();
    assert!(
        lines.len() >= 2,
        "Quick start should build and run: {lines:?}"
    );
    let last = lines.last().unwrap().clone();
    assert!(
        last.contains("cirrus up"),
        "the last Quick start line should be `cirrus up`: {last}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its state goes to $TMPDIR/cirrus-up: point TMPDIR at a fresh directory.
    let tmp = tempfile::tempdir().unwrap();
    for l in &lines[..lines.len() - 1] {
        eprintln!("$ {l}");
        sh(root, l, Duration::from_secs(1500));
    }
    eprintln!("$ {last}");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&last)
        .current_dir(root)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("| {l}");
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(180);
    let mut mounted: Option<PathBuf> = None;
    let mut seen = Vec::new();
    while mounted.is_none() && Instant::now() < until {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) => {
                if let Some(p) = l.trim().strip_prefix("mounted:") {
                    mounted = Some(PathBuf::from(p.trim()));
                }
                seen.push(l);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("`{last}` exited ({st}) before mounting; it printed: {seen:?}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Its output closed: it is exiting, most likely with a reason on stderr
                // (above), such as a port already in use.
                let end = Instant::now() + Duration::from_secs(30);
                let st = loop {
                    match child.try_wait() {
                        Ok(Some(st)) => break Some(st),
                        _ if Instant::now() > end => break None,
                        _ => std::thread::sleep(Duration::from_millis(100)),
                    }
                };
                if let Some(st) = st {
                    panic!("`{last}` exited ({st}) before mounting; it printed: {seen:?}");
                }
                break;
            }
        }
    }
    let stop = |child: &mut std::process::Child| {
        // SAFETY: signals our own child's process group.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > until {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let Some(mp) = mounted else {
        stop(&mut child);
        panic!("`{last}` did not print `mounted: PATH` within 180 s; it printed: {seen:?}");
    };
    let check = (|| -> Result<(), String> {
        if !mp.starts_with(tmp.path()) {
            return Err(format!(
                "mounted at {} rather than under $TMPDIR",
                mp.display()
            ));
        }
        if !is_mounted(&mp) {
            return Err(format!("{} is not a mount point", mp.display()));
        }
        let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(mp.join("hello"), &data).map_err(|e| e.to_string())?;
        if std::fs::read(mp.join("hello")).map_err(|e| e.to_string())? != data {
            return Err("read back different bytes".into());
        }
        let rec = std::fs::read_to_string(tmp.path().join("cirrus-up/cluster.json"))
            .map_err(|e| format!("cluster.json: {e}"))?;
        let v: serde_json::Value = serde_json::from_str(&rec).map_err(|e| e.to_string())?;
        if v["nodes"].as_array().map(|a| a.len()) != Some(6) {
            return Err(format!("cluster.json should list 6 nodes: {rec}"));
        }
        Ok(())
    })();
    let st = stop(&mut child);
    let left = is_mounted(&mp);
    force_unmount(&mp);
    check.unwrap();
    assert!(
        st.is_some_and(|s| s.success()),
        "`{last}` after SIGTERM: {st:?}"
    );
    assert!(!left, "SIGTERM left {} mounted", mp.display());
}
