//! A rolling upgrade under a client workload (issue 24): every meta node and data server
//! is stopped the way a service manager stops it (SIGTERM), started again from a new
//! binary file, in the order `cirrus upgrade plan` gives (meta followers, the meta leader,
//! then the data servers one at a time), with `cirrus upgrade wait` passing before and
//! after each restart, exactly as docs/design/0012-rolling-upgrade.md describes. Meanwhile
//! the exerciser runs on the mount: every result must agree with a local directory (an
//! error the local directory does not give, a wrong byte or a lost write fails it), and
//! it must make progress between the restarts. After the upgrade every node runs the new
//! file.
//!
//! The new binary is a copy of this build at another path: what is proven is the
//! procedure and that the cluster serves through it; compatibility between two different
//! versions is the encodings' contract (docs/design/0008-encodings.md, golden tests).

use crate::fixtures::HANG;
use crate::fuse_common::{cluster, runtime, Mount, MountSpec, BIN};

use cirrus_raft_tests::posix::{self, ExerciseConfig, Progress};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CALL_DEADLINE: Duration = Duration::from_secs(30);

fn wait_ops(p: &Progress, n: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(240);
    while p.done.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < until, "exerciser stuck before {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cirrus upgrade ARGS` as an operator would; its stdout, or the failure.
fn upgrade(meta: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("upgrade")
        .args(args)
        .args(["--meta", meta])
        .output()
        .expect("run cirrus upgrade");
    assert!(
        out.status.success(),
        "cirrus upgrade {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exe_of(pid: i32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe")
}

#[test]
fn rolling_upgrade_in_plan_order_under_the_exerciser() {
    let rt = runtime();
    let mut c = cluster(&rt, 3, 2);
    let meta = c.meta_addrs();
    let m = Mount::with(
        &meta,
        MountSpec {
            deadline: CALL_DEADLINE,
            extra: vec![],
        },
    );
    let local = tempfile::tempdir().unwrap();
    let seed = 24;
    let mut cfg = ExerciseConfig::new(seed);
    cfg.ops = 1_000_000; // ended by `stop` once the upgrade is over
    cfg.deadline = CALL_DEADLINE + Duration::from_secs(10);
    cfg.xattrs = posix::supports_user_xattrs(local.path());
    let progress = Arc::new(Progress::default());
    let (mp, lp, p2) = (m.path.clone(), local.path().to_path_buf(), progress.clone());
    eprintln!("exerciser seed {seed}");
    let worker = std::thread::spawn(move || posix::run(&mp, &lp, &cfg, Some(p2)));
    wait_ops(&progress, 40, "the upgrade");

    // The "new release": another file, so /proc/PID/exe shows which build a node runs.
    let next = c.dir().join("cirrus-next");
    std::fs::copy(BIN, &next).expect("copy the binary");
    c.set_bin(&next);

    let plan = upgrade(&meta, &["plan"]);
    eprintln!("plan:\n{plan}");
    let steps: Vec<(String, String)> = plan
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[2].to_string())
        })
        .collect();
    assert_eq!(steps.len(), 6, "3 meta + 3 data steps: {plan}");
    let leader = rt.block_on(c.leader_index()).expect("leader");
    assert_eq!(
        steps[2],
        ("meta".to_string(), c.meta_addr(leader)),
        "the leader goes last among the meta nodes"
    );

    for (role, addr) in &steps {
        upgrade(&meta, &["wait", "--timeout", "120s", "--settle", "0s"]);
        let at = progress.done.load(Ordering::SeqCst);
        let t = Instant::now();
        if role == "meta" {
            let i = (0..3)
                .find(|&i| &c.meta_addr(i) == addr)
                .expect("meta address");
            let st = rt.block_on(c.terminate_meta(i, HANG)).expect("stop meta");
            assert!(
                st.contains("exit status: 0"),
                "meta-{} on SIGTERM: {st}",
                i + 1
            );
            rt.block_on(c.restart_meta(i))
                .expect("start meta from the new binary");
            assert_eq!(exe_of(c.meta_pid(i).unwrap()), next);
        } else {
            let i = (0..3)
                .find(|&i| &c.data_addr(i) == addr)
                .expect("data address");
            let st = rt.block_on(c.terminate_data(i, HANG)).expect("stop data");
            assert!(
                st.contains("exit status: 0"),
                "data-{} on SIGTERM: {st}",
                i + 1
            );
            rt.block_on(c.restart_data(i))
                .expect("start data from the new binary");
            assert_eq!(exe_of(c.data_pid(i).unwrap()), next);
        }
        upgrade(&meta, &["wait", "--timeout", "120s", "--settle", "3s"]);
        eprintln!(
            "{role} {addr}: restarted from the new binary and healthy again after {:.1} s",
            t.elapsed().as_secs_f64()
        );
        // The workload goes on between two restarts, not only after the last.
        wait_ops(&progress, at + 30, "the next restart");
    }
    progress.stop.store(true, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(300);
    while !worker.is_finished() {
        assert!(Instant::now() < until, "exerciser did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = worker.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{} ops agree ({} succeeded); slowest call {:?} ({})",
        r.ops, r.ok_ops, r.slowest, r.slowest_op
    );
    for i in 0..3 {
        assert_eq!(exe_of(c.meta_pid(i).unwrap()), next, "meta-{}", i + 1);
        assert_eq!(exe_of(c.data_pid(i).unwrap()), next, "data-{}", i + 1);
    }
    assert!(Path::new(&m.path).join(".").exists());
}
