//! File locks between mounts (issue 21): `flock(1)`, python's `fcntl` and SQLite on two
//! mounts of one real cluster. Locks are held by the meta group, so a lock taken on one
//! mount stops the other; a blocked wait is woken when the holder unlocks, ends with
//! `EINTR` and nothing held when its caller gets a signal, and a lock dies with its
//! holder's lease when the holder's whole mount is killed.

use crate::fuse_common;

use crate::fixtures::wait_until_blocking;
use cirrus_raft_tests::{ClusterBuilder, TestCluster};
use fuse_common::{runtime, sh, which, within, Mount, BIN};
use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A lease short enough that the killed-holder test does not wait a minute.
const LEASE: Duration = Duration::from_secs(6);

/// The mount's lease renewal interval (`ClientConfig::lease_interval`): a lease runs from
/// the last renewal, which can be this much before the holder died.
const RENEW_EVERY: Duration = Duration::from_secs(5);

fn lock_cluster(rt: &tokio::runtime::Runtime) -> TestCluster {
    rt.block_on(
        ClusterBuilder::new()
            .bin(BIN)
            .data_servers(2)
            .replicas(2)
            .meta_args(vec![
                "--client-lease".into(),
                format!("{}s", LEASE.as_secs()),
            ])
            .env("CIRRUS_LOG", "info,openraft=warn")
            .start(),
    )
    .expect("start the test cluster")
}

/// A python process holding one file open, running lock commands read from stdin and
/// answering one line each: `ok`, `err ERRNO`, `eintr`, or `lk TYPE PID` for `getlk`.
const LOCK_SHELL: &str = r#"
import fcntl, os, signal, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
def alarm(*_):
    raise InterruptedError("alarm")
signal.signal(signal.SIGALRM, alarm)
print("pid", os.getpid(), flush=True)
for line in sys.stdin:
    w = line.split()
    try:
        if w[0] == "lock":  # lock ex|sh START LEN wait|nowait [ALARM_S]
            op = fcntl.LOCK_EX if w[1] == "ex" else fcntl.LOCK_SH
            if w[4] == "nowait":
                op |= fcntl.LOCK_NB
            if len(w) > 5:
                signal.alarm(int(w[5]))
            try:
                fcntl.lockf(fd, op, int(w[3]), int(w[2]))
            finally:
                signal.alarm(0)
        elif w[0] == "unlock":  # unlock START LEN
            fcntl.lockf(fd, fcntl.LOCK_UN, int(w[2]), int(w[1]))
        elif w[0] == "flock":  # flock ex|sh|un wait|nowait
            op = {"ex": fcntl.LOCK_EX, "sh": fcntl.LOCK_SH, "un": fcntl.LOCK_UN}[w[1]]
            if w[2] == "nowait":
                op |= fcntl.LOCK_NB
            fcntl.flock(fd, op)
        elif w[0] == "getlk":  # getlk START LEN
            q = struct.pack("hhqqixxxx", fcntl.F_WRLCK, 0, int(w[1]), int(w[2]), 0)
            t, _, _, _, pid = struct.unpack("hhqqixxxx", fcntl.fcntl(fd, fcntl.F_GETLK, q))
            print("lk", t, pid, flush=True)
            continue
        print("ok", flush=True)
    except InterruptedError:
        print("eintr", flush=True)
    except OSError as e:
        print("err", e.errno, flush=True)
"#;

struct LockShell {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pid: u32,
}

impl LockShell {
    fn open(file: &Path) -> LockShell {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(LOCK_SHELL)
            .arg(file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (the lock tests drive fcntl from python)");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut s = LockShell {
            child,
            stdin,
            lines,
            pid: 0,
        };
        let first = s.answer(Duration::from_secs(30));
        s.pid = first
            .strip_prefix("pid ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("lock shell said {first:?}"));
        s
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("lock shell stdin");
    }

    fn answer(&mut self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no answer from the lock shell within {within:?} (a hang)"))
    }

    /// Sends `cmd` and waits for its answer (bounded only to catch hangs).
    fn run(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.answer(Duration::from_secs(90))
    }

    /// True while an answer has not come within `d`.
    fn still_waiting(&mut self, d: Duration) -> bool {
        match self.lines.recv_timeout(d) {
            Err(mpsc::RecvTimeoutError::Timeout) => true,
            Ok(l) => panic!("expected the call to block, it answered {l:?}"),
            Err(e) => panic!("lock shell gone: {e}"),
        }
    }
}

impl Drop for LockShell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require_lock_tools() {
    assert!(
        which("python3").is_some(),
        "python3 is missing: the lock tests drive fcntl and flock through it"
    );
}

#[test]
fn a_lock_on_one_mount_stops_the_other_and_a_blocked_wait_is_woken_at_unlock() {
    require_lock_tools();
    let rt = runtime();
    let c = lock_cluster(&rt);
    let a = Mount::new(&c.meta_addrs());
    let b = Mount::new(&c.meta_addrs());
    let (fa, fb) = (a.path.join("f"), b.path.join("f"));
    std::fs::write(&fa, b"0123456789").unwrap();
    within("lock checks", Duration::from_secs(300), move || {
        let mut x = LockShell::open(&fa);
        let mut y = LockShell::open(&fb);

        // Exclusive on bytes 0..10 at A: B can neither share nor take them, but can take
        // bytes past them; F_GETLK at B names A's holder and its pid.
        assert_eq!(x.run("lock ex 0 10 nowait"), "ok");
        assert_eq!(y.run("lock sh 0 1 nowait"), "err 11");
        assert_eq!(y.run("lock ex 9 5 nowait"), "err 11");
        assert_eq!(y.run("lock ex 10 5 nowait"), "ok");
        assert_eq!(
            y.run("getlk 5 1"),
            format!("lk {} {}", libc::F_WRLCK, x.pid)
        );
        assert_eq!(
            x.run("getlk 10 1"),
            format!("lk {} {}", libc::F_WRLCK, y.pid)
        );
        assert_eq!(x.run("getlk 20 1"), format!("lk {} 0", libc::F_UNLCK));

        // Splitting: A unlocks the middle, B takes it, the ends stay A's.
        assert_eq!(x.run("unlock 3 4"), "ok");
        assert_eq!(y.run("lock ex 3 4 nowait"), "ok");
        assert_eq!(y.run("lock ex 2 1 nowait"), "err 11");
        assert_eq!(y.run("lock ex 7 1 nowait"), "err 11");
        assert_eq!(y.run("unlock 0 0"), "ok");

        // Shared locks share; a writer waits for both readers.
        assert_eq!(x.run("unlock 0 0"), "ok");
        assert_eq!(x.run("lock sh 0 10 nowait"), "ok");
        assert_eq!(y.run("lock sh 0 10 nowait"), "ok");
        assert_eq!(x.run("lock ex 0 10 nowait"), "err 11");
        assert_eq!(y.run("unlock 0 0"), "ok");

        // A blocked F_SETLKW at B is woken when A unlocks, not before.
        assert_eq!(x.run("lock ex 0 10 nowait"), "ok");
        y.send("lock ex 0 10 wait");
        assert!(y.still_waiting(Duration::from_secs(2)));
        assert_eq!(x.run("unlock 0 0"), "ok");
        assert_eq!(y.answer(Duration::from_secs(60)), "ok", "woken at unlock");
        assert_eq!(x.run("lock sh 0 1 nowait"), "err 11");

        // A close drops the closing process's POSIX locks: B's shell exits, A gets them.
        drop(y);
        wait_until_blocking(
            "A's lock after B closed",
            Duration::from_secs(30),
            || match x.run("lock ex 0 10 nowait").as_str() {
                "ok" => Ok(ControlFlow::Break(())),
                "err 11" => Ok(ControlFlow::Continue("err 11".into())),
                other => anyhow::bail!("A after B closed: {other}"),
            },
        )
        .unwrap();
        assert_eq!(x.run("unlock 0 0"), "ok");

        // flock between mounts: whole file, owned by the open file.
        let mut y = LockShell::open(&fb);
        assert_eq!(x.run("flock ex nowait"), "ok");
        assert_eq!(y.run("flock sh nowait"), "err 11");
        y.send("flock ex wait");
        assert!(y.still_waiting(Duration::from_secs(2)));
        assert_eq!(x.run("flock un nowait"), "ok");
        assert_eq!(y.answer(Duration::from_secs(60)), "ok");
        assert_eq!(x.run("flock ex nowait"), "err 11");
    });
}

#[test]
fn a_signalled_wait_returns_eintr_and_holds_nothing_and_a_cycle_of_waiters_is_edeadlk() {
    require_lock_tools();
    let rt = runtime();
    let c = lock_cluster(&rt);
    let a = Mount::new(&c.meta_addrs());
    let b = Mount::new(&c.meta_addrs());
    let (fa, fb) = (a.path.join("f"), b.path.join("f"));
    std::fs::write(&fa, b"x").unwrap();
    within("interrupt checks", Duration::from_secs(300), move || {
        let mut x = LockShell::open(&fa);
        let mut y = LockShell::open(&fb);
        assert_eq!(x.run("lock ex 0 100 nowait"), "ok");
        // B waits; SIGALRM after 2 s interrupts the wait.
        let t = Instant::now();
        assert_eq!(y.run("lock ex 0 100 wait 2"), "eintr");
        assert!(
            t.elapsed() >= Duration::from_secs(2),
            "answered before the signal"
        );
        // B's process is still alive and holds nothing: once A unlocks, a third process
        // on A takes the range without waiting.
        assert_eq!(x.run("unlock 0 0"), "ok");
        let mut z = LockShell::open(&fa);
        assert_eq!(
            z.run("lock ex 0 100 nowait"),
            "ok",
            "the interrupted wait left a lock"
        );
        assert_eq!(z.run("unlock 0 0"), "ok");
        drop(z);

        // A holds byte 0 and waits for byte 1; B holds byte 1 and waits for byte 0: one
        // of the two waits closes the cycle and is EDEADLK (B's, unless it arrived while
        // A's wait was between two slices), and the other is granted once the refused
        // side unlocks.
        assert_eq!(x.run("lock ex 0 1 nowait"), "ok");
        assert_eq!(y.run("lock ex 1 1 nowait"), "ok");
        x.send("lock ex 1 1 wait");
        assert!(x.still_waiting(Duration::from_secs(2)));
        y.send("lock ex 0 1 wait");
        let edeadlk = format!("err {}", libc::EDEADLK);
        let until = Instant::now() + Duration::from_secs(60);
        let (refused, granted, byte) = loop {
            assert!(
                Instant::now() < until,
                "neither wait of the cycle was refused"
            );
            if let Ok(l) = y.lines.try_recv() {
                assert_eq!(l, edeadlk, "B's wait in the cycle");
                break (&mut y, &mut x, 1);
            }
            if let Ok(l) = x.lines.try_recv() {
                assert_eq!(l, edeadlk, "A's wait in the cycle");
                break (&mut x, &mut y, 0);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(refused.run(&format!("unlock {byte} 1")), "ok");
        assert_eq!(granted.answer(Duration::from_secs(60)), "ok");
    });
}

#[test]
fn a_killed_mount_keeps_its_locks_until_its_lease_lapses_then_a_waiter_gets_them() {
    require_lock_tools();
    let rt = runtime();
    let c = lock_cluster(&rt);
    let mut a = Mount::new(&c.meta_addrs());
    let b = Mount::new(&c.meta_addrs());
    let (fa, fb) = (a.path.join("f"), b.path.join("f"));
    std::fs::write(&fa, b"x").unwrap();
    let mut x = LockShell::open(&fa);
    assert_eq!(x.run("lock ex 0 0 nowait"), "ok");
    let pid = a.pid().expect("mount process") as i32;
    // SAFETY: kill on a child process of this test.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let killed = Instant::now();
    // Reap the killed mount process (its mount point goes when `a` drops).
    let _ = a.stop();
    drop(x);
    within("lease checks", Duration::from_secs(300), move || {
        let mut y = LockShell::open(&fb);
        assert_eq!(
            y.run("lock ex 0 0 nowait"),
            "err 11",
            "the dead mount's lock went before its lease"
        );
        assert_eq!(y.run("lock ex 0 0 wait"), "ok");
        let after = killed.elapsed();
        assert!(
            after + RENEW_EVERY >= LEASE,
            "granted {after:?} after the holder died, before its lease of {LEASE:?} could lapse"
        );
    });
}

#[test]
fn counters_under_flock_and_fcntl_on_two_mounts_end_exact_and_sqlite_keeps_every_row() {
    require_lock_tools();
    assert!(
        which("flock").is_some() && which("sqlite3").is_some(),
        "flock (util-linux) and sqlite3 are needed; scripts/test.sh installs sqlite3"
    );
    let rt = runtime();
    let c = lock_cluster(&rt);
    let a = Mount::new(&c.meta_addrs());
    let b = Mount::new(&c.meta_addrs());
    let (pa, pb) = (a.path.clone(), b.path.clone());
    std::fs::write(pa.join("flock-counter"), b"0").unwrap();
    std::fs::write(pa.join("fcntl-counter"), b"0").unwrap();
    sh(
        &pa,
        "sqlite3 db 'PRAGMA journal_mode=DELETE; CREATE TABLE t(m TEXT, i INTEGER);' >/dev/null",
        Duration::from_secs(60),
    );
    const N: u32 = 1000;
    const ROWS: u32 = 100;
    within("counters", Duration::from_secs(900), move || {
        // flock(1) around a shell read-increment-write: each increment opens and closes
        // the counter (close-to-open carries the bytes, the lock orders the writers).
        let flock = |dir: std::path::PathBuf| {
            std::thread::spawn(move || {
                sh(
                    &dir,
                    &format!(
                        "for i in $(seq {N}); do flock flock-counter -c \
                         'n=$(cat flock-counter); echo $((n+1)) > flock-counter'; done"
                    ),
                    Duration::from_secs(800),
                )
            })
        };
        // fcntl inside one open: the lock alone must carry size and bytes between mounts.
        let fcntl = |dir: std::path::PathBuf| {
            std::thread::spawn(move || {
                sh(
                    &dir,
                    &format!(
                        "python3 -c '
import fcntl, os
fd = os.open(\"fcntl-counter\", os.O_RDWR)
for _ in range({N}):
    fcntl.lockf(fd, fcntl.LOCK_EX)
    os.lseek(fd, 0, 0)
    d = os.read(fd, 64)
    assert d and b\"\\0\" not in d, d
    os.lseek(fd, 0, 0)
    os.write(fd, str(int(d) + 1).encode())
    fcntl.lockf(fd, fcntl.LOCK_UN)
'"
                    ),
                    Duration::from_secs(800),
                )
            })
        };
        let sqlite = |dir: std::path::PathBuf, who: &'static str| {
            std::thread::spawn(move || {
                sh(
                    &dir,
                    &format!(
                        "for i in $(seq {ROWS}); do sqlite3 -cmd '.timeout 60000' db \
                         \"BEGIN IMMEDIATE; INSERT INTO t VALUES('{who}', $i); COMMIT;\"; done"
                    ),
                    Duration::from_secs(800),
                )
            })
        };
        let jobs = vec![
            flock(pa.clone()),
            flock(pb.clone()),
            fcntl(pa.clone()),
            fcntl(pb.clone()),
            sqlite(pa.clone(), "a"),
            sqlite(pb.clone(), "b"),
        ];
        for j in jobs {
            j.join().expect("a locking job failed");
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap().trim().to_string();
        assert_eq!(read(&pa.join("flock-counter")), (2 * N).to_string());
        assert_eq!(read(&pb.join("fcntl-counter")), (2 * N).to_string());
        let rows = sh(
            &pb,
            "sqlite3 db 'SELECT m, count(*), count(DISTINCT i) FROM t GROUP BY m ORDER BY m; PRAGMA integrity_check;'",
            Duration::from_secs(60),
        );
        assert_eq!(
            rows.trim(),
            format!("a|{ROWS}|{ROWS}\nb|{ROWS}|{ROWS}\nok"),
            "every row of both writers, and an intact database"
        );
    });
}
