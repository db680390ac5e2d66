//! The issue-19 reproduction through a real mount (3 meta + 3 data, R=2):
//! `echo hi > a && truncate -s 999999999999999 a` made every data server allocate
//! gigabytes until the OOM killer ended all three. Here: every size past the largest file
//! (4 PiB) gets EFBIG and changes nothing; that truncate, bytes written at 2^40, 2^50 and
//! at the last bytes, and a truncate to the largest size succeed and read back with zeros
//! in the holes; and no data server's resident memory grows by more than a few MiB
//! through all of it. Also through the mount: 100,000 handles held open at once, and
//! xattrs at their size and count ceilings, with memory bounded and clear errors past
//! each limit.

use crate::fuse_common;

use cirrus_meta::state::{
    XATTRS_MAX_PER_INODE, XATTR_BYTES_MAX_PER_INODE, XATTR_NAME_MAX, XATTR_VALUE_MAX,
};
use cirrus_types::MAX_FILE_SIZE;
use fuse_common::{cluster, require_fuse, runtime, setxattr, within, Mount};
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Growth of a data server's resident memory allowed: buffers, not a 4 PiB size.
const RSS_SLACK: u64 = 16 << 20;

fn rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"));
    kib * 1024
}

fn efbig(r: std::io::Result<()>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EFBIG) => {}
        other => panic!("{what}: expected EFBIG, got {other:?}"),
    }
}

#[test]
fn sizes_past_the_largest_file_are_efbig_and_sizes_up_to_it_stay_sparse() {
    require_fuse();
    let rt = runtime();
    let c = cluster(&rt, 3, 2);
    let pids: Vec<i32> = (0..3)
        .map(|i| c.data_pid(i).expect("data server pid"))
        .collect();
    let before: Vec<u64> = pids.iter().map(|p| rss(*p)).collect();
    let m = Mount::new(&c.meta_addrs());
    let p = m.path.clone();
    within(
        "extreme sizes through the mount",
        Duration::from_secs(180),
        move || {
            let a = p.join("a");
            std::fs::write(&a, b"hi\n").unwrap();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&a)
                .unwrap();
            // Past the largest file: refused whole.
            efbig(
                f.set_len(MAX_FILE_SIZE + 1),
                "truncate past the largest size",
            );
            efbig(
                f.write_all_at(b"x", MAX_FILE_SIZE),
                "pwrite of one byte at the largest size",
            );
            // SAFETY: fallocate on an open descriptor of ours, mode 0, a range past the max.
            let r = unsafe {
                use std::os::unix::io::AsRawFd;
                libc::fallocate(f.as_raw_fd(), 0, (MAX_FILE_SIZE - 4096) as i64, 8192)
            };
            assert_eq!(
                (r, std::io::Error::last_os_error().raw_os_error()),
                (-1, Some(libc::EFBIG)),
                "fallocate past the largest size"
            );
            // Nothing changed.
            assert_eq!(std::fs::metadata(&a).unwrap().len(), 3);
            assert_eq!(std::fs::read(&a).unwrap(), b"hi\n");

            // The issue's call: a sparse file of about 1 PB.
            f.set_len(999_999_999_999_999).unwrap();
            assert_eq!(std::fs::metadata(&a).unwrap().len(), 999_999_999_999_999);
            let mut b = [9u8; 4];
            f.read_exact_at(&mut b, 999_999_999_999_995).unwrap();
            assert_eq!(&b, b"\0\0\0\0");

            // Up to the largest size: succeed, sparse, zeros in the holes.
            f.write_all_at(b"A", 1 << 40).unwrap();
            f.write_all_at(b"B", 1 << 50).unwrap();
            f.write_all_at(b"Y", MAX_FILE_SIZE - 2).unwrap();
            f.write_all_at(b"Z", MAX_FILE_SIZE - 1).unwrap();
            f.sync_all().unwrap();
            assert_eq!(std::fs::metadata(&a).unwrap().len(), MAX_FILE_SIZE);
            let mut b = [9u8; 6];
            f.read_exact_at(&mut b, 0).unwrap();
            assert_eq!(&b, b"hi\n\0\0\0");
            let mut b = [9u8; 3];
            f.read_exact_at(&mut b, (1 << 40) - 1).unwrap();
            assert_eq!(&b, b"\0A\0");
            f.read_exact_at(&mut b, (1 << 50) - 1).unwrap();
            assert_eq!(&b, b"\0B\0");
            let mut b = [9u8; 3];
            f.read_exact_at(&mut b, MAX_FILE_SIZE - 3).unwrap();
            assert_eq!(&b, b"\0YZ");
            // Holes, one of them across the data servers' 4 TiB segment boundaries.
            for at in [1u64 << 42, (1 << 44) - (1 << 19)] {
                let mut hole = vec![9u8; 1 << 20];
                f.read_exact_at(&mut hole, at).unwrap();
                assert!(
                    hole.iter().all(|x| *x == 0),
                    "the hole at {at} read back non-zero bytes"
                );
            }

            // A second file truncated straight to the largest size reads zeros at its end.
            let b2 = p.join("b");
            let g = std::fs::File::create(&b2).unwrap();
            g.set_len(MAX_FILE_SIZE).unwrap();
            drop(g);
            let g = std::fs::File::open(&b2).unwrap();
            let mut end = [9u8; 4096];
            g.read_exact_at(&mut end, MAX_FILE_SIZE - 4096).unwrap();
            assert!(end.iter().all(|x| *x == 0));
            assert_eq!(std::fs::metadata(&b2).unwrap().len(), MAX_FILE_SIZE);
        },
    );
    for (i, (pid, b)) in pids.iter().zip(&before).enumerate() {
        let now = rss(*pid);
        assert!(
            now <= b + RSS_SLACK,
            "data-{} resident memory grew from {} to {} MiB",
            i + 1,
            b >> 20,
            now >> 20
        );
    }
    drop(m);
}

/// Handles held open at once through one mount (issue 19: "a client with 100,000 open
/// handles").
const HANDLES: usize = 100_000;
/// Processes that share them: a process may not raise its own open-file limit past
/// the hard limit without CAP_SYS_RESOURCE, so each holds a share under it.
const HOLDERS: usize = 8;
/// Resident memory a meta node may gain per open handle: the handle's entry in the
/// state machine and the raft entries that opened it, not a buffer per handle.
const META_BYTES_PER_HANDLE: u64 = 2048;

/// A holder: opens `$1` handles on `$2/f0..f99` round robin, reads one byte through
/// every 997th, says `ready`, and holds them until its stdin closes.
const HOLDER: &str = r#"
set -eu
n=$1; dir=$2; fds=()
for ((i = 0; i < n; i++)); do exec {fd}<"$dir/f$((i % 100))"; fds+=("$fd"); done
for ((i = 0; i < n; i += 997)); do
  read -r -n1 -u "${fds[i]}" b || true
  [ "$b" = x ] || { echo "handle $i read '$b'" >&2; exit 1; }
done
echo ready
read -r _ || true
"#;

#[test]
fn a_client_with_100000_open_handles_costs_every_server_bounded_memory() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    require_fuse();
    let per_holder = HANDLES / HOLDERS;
    let limit = {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass; no other preconditions.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        l.rlim_max
    };
    assert!(
        limit >= per_holder as u64 + 64,
        "this test needs an open-file hard limit of at least {} per process (have {limit})",
        per_holder + 64
    );
    let rt = runtime();
    let c = cluster(&rt, 3, 2);
    let m = Mount::new(&c.meta_addrs());
    for i in 0..100 {
        std::fs::write(m.path.join(format!("f{i}")), b"x").unwrap();
    }
    let meta_pids: Vec<i32> = (0..3).map(|i| c.meta_pid(i).expect("meta pid")).collect();
    let data_pids: Vec<i32> = (0..3).map(|i| c.data_pid(i).expect("data pid")).collect();
    let meta_before: Vec<u64> = meta_pids.iter().map(|p| rss(*p)).collect();
    let data_before: Vec<u64> = data_pids.iter().map(|p| rss(*p)).collect();
    // The writes' releases go to meta in batches behind the closes: start from none.
    rt.block_on(c.wait_until(
        "the writes' handles released at meta",
        Duration::from_secs(60),
        || async { c.open_handles().await.map(|h| h == 0).unwrap_or(false) },
    ))
    .expect("no handles before the opens");
    let base = 0;

    let started = std::time::Instant::now();
    let dir = m.path.clone();
    let holders = within(
        "100,000 opens through the mount",
        Duration::from_secs(900),
        move || {
            let mut holders: Vec<_> = (0..HOLDERS)
                .map(|_| {
                    Command::new("bash")
                        .args(["-c", HOLDER, "holder"])
                        .arg(per_holder.to_string())
                        .arg(&dir)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .expect("spawn bash holder")
                })
                .collect();
            for h in &mut holders {
                let mut line = String::new();
                BufReader::new(h.stdout.as_mut().expect("holder stdout"))
                    .read_line(&mut line)
                    .expect("read holder");
                assert_eq!(line.trim(), "ready", "a holder failed: {:?}", h.try_wait());
            }
            holders
        },
    );
    let took = started.elapsed();
    let held = rt.block_on(c.open_handles()).expect("open handles");
    assert!(
        held >= base + HANDLES as u64,
        "meta holds {held} handles with {HANDLES} open (before: {base})"
    );
    let meta_now: Vec<u64> = meta_pids.iter().map(|p| rss(*p)).collect();
    let data_now: Vec<u64> = data_pids.iter().map(|p| rss(*p)).collect();
    let mount_rss = rss(m.pid().expect("mount pid") as i32);
    eprintln!(
        "{HANDLES} opens in {took:?}; meta RSS MiB before {:?} after {:?}; data RSS MiB \
         before {:?} after {:?}; mount RSS {} MiB",
        meta_before.iter().map(|b| b >> 20).collect::<Vec<_>>(),
        meta_now.iter().map(|b| b >> 20).collect::<Vec<_>>(),
        data_before.iter().map(|b| b >> 20).collect::<Vec<_>>(),
        data_now.iter().map(|b| b >> 20).collect::<Vec<_>>(),
        mount_rss >> 20
    );
    for (i, (b, n)) in meta_before.iter().zip(&meta_now).enumerate() {
        assert!(
            n.saturating_sub(*b) <= META_BYTES_PER_HANDLE * HANDLES as u64,
            "meta-{} grew from {} to {} MiB for {HANDLES} handles",
            i + 1,
            b >> 20,
            n >> 20
        );
    }
    for (i, (b, n)) in data_before.iter().zip(&data_now).enumerate() {
        assert!(
            *n <= b + RSS_SLACK,
            "data-{} grew from {} to {} MiB while a client held {HANDLES} handles",
            i + 1,
            b >> 20,
            n >> 20
        );
    }

    // Closing them all (each holder exits when its stdin closes) releases them at meta,
    // in batches behind the closes.
    for mut h in holders {
        drop(h.stdin.take());
        let st = h.wait().expect("wait holder");
        assert!(st.success(), "holder exited {st}");
    }
    rt.block_on(c.wait_until(
        "the closed handles released at meta",
        Duration::from_secs(300),
        || async { c.open_handles().await.map(|h| h <= base).unwrap_or(false) },
    ))
    .expect("handles released");
    drop(m);
}

fn getxattr(path: &std::path::Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; XATTR_VALUE_MAX];
    // SAFETY: both strings are NUL-terminated; the buffer is writable for its length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn errno(r: std::io::Result<impl std::fmt::Debug>, want: i32, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(want) => {}
        other => panic!("{what}: expected errno {want}, got {other:?}"),
    }
}

#[test]
fn xattrs_at_the_size_limits_round_trip_and_past_them_are_refused_with_nothing_changed() {
    require_fuse();
    let rt = runtime();
    let c = cluster(&rt, 1, 1);
    let meta_pids: Vec<i32> = (0..3).map(|i| c.meta_pid(i).expect("meta pid")).collect();
    let before: Vec<u64> = meta_pids.iter().map(|p| rss(*p)).collect();
    let m = Mount::new(&c.meta_addrs());
    let p = m.path.clone();
    within(
        "xattrs at their limits",
        Duration::from_secs(300),
        move || {
            let a = p.join("a");
            std::fs::write(&a, b"a").unwrap();
            // One value of the largest size (64 KiB) and the longest name round-trip.
            let full: Vec<u8> = (0..XATTR_VALUE_MAX).map(|i| (i * 7 % 251) as u8).collect();
            let long = format!("user.{}", "n".repeat(XATTR_NAME_MAX - 5));
            setxattr(&a, &long, &full).expect("a 64 KiB value under a 255-byte name");
            assert_eq!(getxattr(&a, &long).unwrap(), full);
            // Past them: the kernel refuses before the call reaches us (E2BIG, ERANGE).
            errno(
                setxattr(&a, "user.big", &vec![1; XATTR_VALUE_MAX + 1]),
                libc::E2BIG,
                "65537-byte value",
            );
            errno(
                setxattr(
                    &a,
                    &format!("user.{}", "n".repeat(XATTR_NAME_MAX - 4)),
                    b"v",
                ),
                libc::ERANGE,
                "256-byte name",
            );
            errno(getxattr(&a, "user.big"), libc::ENODATA, "the refused value");

            // Bytes per inode: 64 KiB values until the 1 MiB ceiling, then ENOSPC, and the
            // refused one was not stored.
            let b = p.join("b");
            std::fs::write(&b, b"b").unwrap();
            let mut held = 0;
            let mut i = 0;
            loop {
                let name = format!("user.v{i}");
                if held + name.len() + XATTR_VALUE_MAX > XATTR_BYTES_MAX_PER_INODE {
                    errno(
                        setxattr(&b, &name, &full),
                        libc::ENOSPC,
                        "past 1 MiB of xattrs",
                    );
                    errno(
                        getxattr(&b, &name),
                        libc::ENODATA,
                        "the value refused for space",
                    );
                    break;
                }
                setxattr(&b, &name, &full)
                    .unwrap_or_else(|e| panic!("value {i} ({held} B held): {e}"));
                held += name.len() + XATTR_VALUE_MAX;
                i += 1;
            }
            for j in 0..i {
                assert_eq!(
                    getxattr(&b, &format!("user.v{j}")).unwrap(),
                    full,
                    "value {j}"
                );
            }

            // Count per inode: 1024 small ones, then ENOSPC.
            let d = p.join("d");
            std::fs::write(&d, b"d").unwrap();
            for j in 0..XATTRS_MAX_PER_INODE {
                setxattr(&d, &format!("user.s{j}"), b"1")
                    .unwrap_or_else(|e| panic!("xattr {j}: {e}"));
            }
            errno(
                setxattr(&d, "user.one-more", b"1"),
                libc::ENOSPC,
                "the 1025th xattr",
            );
            // Replacing one that exists is not a new one.
            setxattr(&d, "user.s0", b"2").expect("replace at the count ceiling");
            assert_eq!(getxattr(&d, "user.s0").unwrap(), b"2");
        },
    );
    let after: Vec<u64> = meta_pids.iter().map(|p| rss(*p)).collect();
    eprintln!(
        "meta RSS MiB before {:?} after {:?}",
        before.iter().map(|b| b >> 20).collect::<Vec<_>>(),
        after.iter().map(|b| b >> 20).collect::<Vec<_>>()
    );
    // About 1.1 MiB of xattrs, in the state and in the raft log's entries.
    for (i, (b, n)) in before.iter().zip(&after).enumerate() {
        assert!(
            *n <= b + 4 * RSS_SLACK,
            "meta-{} grew from {} to {} MiB holding about 1 MiB of xattrs",
            i + 1,
            b >> 20,
            n >> 20
        );
    }
    drop(m);
}

/// A byte pattern that differs per file and per offset.
fn pattern(file: usize, off: usize, len: usize) -> Vec<u8> {
    (off..off + len)
        .map(|i| (i.wrapping_mul(31) ^ file.wrapping_mul(131)) as u8)
        .collect()
}

#[test]
fn a_client_writing_many_files_at_once_holds_at_most_its_write_back_budget() {
    use cirrus_client::client::{Client, ClientConfig};
    use cirrus_types::InodeId;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const BUDGET: usize = 8 << 20;
    const FILES: usize = 40;
    const EACH: usize = 1 << 20;
    const CHUNK: usize = 128 << 10;
    const WRITERS: usize = 8;
    let rt = runtime();
    let c = cluster(&rt, 1, 1);
    rt.block_on(async {
        // Neither the per-file ceiling nor a flush behind the writer ever starts here
        // (each file gets 1 MiB): only the client-wide budget holds the 40 MiB written
        // back.
        let cfg = ClientConfig {
            max_dirty_total: BUDGET,
            max_dirty: 32 << 20,
            flush_behind: 64 << 20,
            ..ClientConfig::default()
        };
        let cl = Client::connect(&c.meta_addrs(), cfg).await.expect("connect");
        let mut files = Vec::new();
        for i in 0..FILES {
            let (fh, attr) = cl
                .create(InodeId::ROOT, format!("w{i}").as_bytes(), 0o644, 0, 0, true)
                .await
                .expect("create");
            files.push((fh, attr.ino));
        }
        let peak = Arc::new(AtomicUsize::new(0));
        // Writers take files round robin, a chunk at a time across all of their files,
        // so every file holds dirty bytes at once.
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (cl, peak) = (cl.clone(), peak.clone());
                let mine: Vec<_> = files.iter().copied().enumerate().skip(w).step_by(WRITERS).collect();
                tokio::spawn(async move {
                    for off in (0..EACH).step_by(CHUNK) {
                        for (i, (fh, _)) in &mine {
                            cl.write(*fh, off as u64, &pattern(*i, off, CHUNK))
                                .await
                                .unwrap_or_else(|e| panic!("write file {i} at {off}: {e}"));
                            peak.fetch_max(cl.dirty_bytes(), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer");
        }
        let peak = peak.load(Ordering::Relaxed);
        eprintln!(
            "{} MiB written to {FILES} files by {WRITERS} writers; peak dirty {} KiB (budget {} KiB)",
            (FILES * EACH) >> 20,
            peak >> 10,
            BUDGET >> 10
        );
        // Checked, not reserved: each concurrent writer may add one chunk past it.
        assert!(
            peak <= BUDGET + WRITERS * CHUNK,
            "the client held {peak} dirty bytes with a budget of {BUDGET}"
        );
        for (fh, _) in &files {
            cl.release(*fh).await.expect("close");
        }
        assert_eq!(cl.dirty_bytes(), 0, "dirty bytes counted after every close");
        // Every byte reached the data servers and reads back through a fresh open.
        for (i, (_, ino)) in files.iter().enumerate() {
            let (fh, attr) = cl.open(*ino).await.expect("reopen");
            assert_eq!(attr.size, EACH as u64, "file {i} size");
            let got = cl.read(fh, 0, EACH as u32).await.expect("read");
            assert!(got[..] == pattern(i, 0, EACH)[..], "file {i} bytes differ");
            cl.release(fh).await.expect("close");
        }
    });
}

#[test]
fn a_client_reading_many_files_at_once_holds_at_most_its_read_ahead_budget() {
    use cirrus_client::client::{Client, ClientConfig};
    use cirrus_types::InodeId;

    const BUDGET: u64 = 4 << 20;
    const FILES: usize = 8;
    const EACH: usize = 8 << 20;
    const CHUNK: usize = 256 << 10;
    let rt = runtime();
    let c = cluster(&rt, 1, 1);
    rt.block_on(async {
        let cfg = ClientConfig {
            read_ahead: 8 << 20,
            read_ahead_total: BUDGET,
            ..ClientConfig::default()
        };
        let cl = Client::connect(&c.meta_addrs(), cfg)
            .await
            .expect("connect");
        let mut inos = Vec::new();
        for i in 0..FILES {
            let (fh, attr) = cl
                .create(InodeId::ROOT, format!("r{i}").as_bytes(), 0o644, 0, 0, true)
                .await
                .expect("create");
            cl.write(fh, 0, &pattern(i, 0, EACH)).await.expect("write");
            cl.release(fh).await.expect("close");
            inos.push(attr.ino);
        }
        let mut fhs = Vec::new();
        for ino in &inos {
            fhs.push(cl.open(*ino).await.expect("open").0);
        }
        // Every file read sequentially, a chunk at a time across all of them: each one's
        // window alone would fetch 8 MiB ahead.
        let mut peak = 0;
        for off in (0..EACH).step_by(CHUNK) {
            for (i, fh) in fhs.iter().enumerate() {
                let got = cl.read(*fh, off as u64, CHUNK as u32).await.expect("read");
                assert!(got[..] == pattern(i, off, CHUNK)[..], "file {i} at {off}");
                peak = peak.max(cl.read_ahead_bytes());
            }
        }
        eprintln!(
            "{FILES} files of {} MiB read at once; peak read-ahead {} KiB (budget {} KiB)",
            EACH >> 20,
            peak >> 10,
            BUDGET >> 10
        );
        // Past the budget only the blocks of a read itself are fetched through it: at
        // most one block per file beyond the budget.
        assert!(
            peak <= BUDGET + FILES as u64 * (1 << 20),
            "the client held {peak} bytes of read-ahead with a budget of {BUDGET}"
        );
        for fh in fhs {
            cl.release(fh).await.expect("close");
        }
        assert_eq!(
            cl.read_ahead_bytes(),
            0,
            "read-ahead counted after every close"
        );
    });
}
