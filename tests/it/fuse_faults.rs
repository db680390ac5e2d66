//! SIGKILL of the meta leader and of a data server while the exerciser runs on the mount:
//! every result still agrees with the local directory (no wrong byte, no lost write),
//! every call returns within the deadline, and the mount works afterwards.

use crate::fuse_common;

use cirrus_raft_tests::posix::{self, ExerciseConfig, Progress};
use fuse_common::{cluster, runtime, Mount, MountSpec};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The mount's per-call deadline; the exerciser allows this plus slack per call.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

fn wait_ops(p: &Progress, n: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(240);
    while p.done.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < until, "exerciser stuck before {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn meta_leader_and_data_server_kills_under_the_exerciser() {
    let rt = runtime();
    let mut c = cluster(&rt, 3, 2);
    let m = Mount::with(
        &c.meta_addrs(),
        MountSpec {
            deadline: CALL_DEADLINE,
            extra: vec![],
        },
    );
    let local = tempfile::tempdir().unwrap();
    let seed = 11;
    let mut cfg = ExerciseConfig::new(seed);
    cfg.ops = 100_000; // ended by `stop` once the faults are over
    cfg.deadline = CALL_DEADLINE + Duration::from_secs(10);
    cfg.xattrs = posix::supports_user_xattrs(local.path());
    let progress = Arc::new(Progress::default());
    let (mp, lp, p2) = (m.path.clone(), local.path().to_path_buf(), progress.clone());
    eprintln!("exerciser seed {seed}");
    let worker = std::thread::spawn(move || posix::run(&mp, &lp, &cfg, Some(p2)));

    wait_ops(&progress, 40, "the leader kill");
    let leader = rt.block_on(c.leader_index()).expect("leader");
    eprintln!(
        "killing meta leader {leader} at op {}",
        progress.done.load(Ordering::SeqCst)
    );
    c.kill_meta(leader);
    let at = progress.done.load(Ordering::SeqCst);
    wait_ops(&progress, at + 100, "the data server kill");
    rt.block_on(c.restart_meta(leader))
        .expect("restart the old leader");

    eprintln!(
        "killing data server 0 at op {}",
        progress.done.load(Ordering::SeqCst)
    );
    c.kill_data(0);
    let at = progress.done.load(Ordering::SeqCst);
    wait_ops(&progress, at + 150, "the end");
    progress.stop.store(true, Ordering::SeqCst);

    // The worker must finish; a call stuck past its deadline is reported by the watchdog.
    let until = Instant::now() + Duration::from_secs(300);
    while !worker.is_finished() {
        let since = progress.in_flight_since_ms.load(Ordering::SeqCst);
        assert!(
            Instant::now() < until,
            "exerciser did not finish (in-flight call since {since} ms)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    match worker.join().unwrap() {
        Ok(r) => eprintln!(
            "{} ops agree ({} succeeded); slowest call {:?} ({})",
            r.ops, r.ok_ops, r.slowest, r.slowest_op
        ),
        Err(e) => panic!("{e}"),
    }

    // The mount keeps working after the cluster recovered.
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(m.path.join("after"), &data).unwrap();
    assert!(std::fs::read(m.path.join("after")).unwrap() == data);
}
