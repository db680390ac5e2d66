//! The issue-19 reproduction through a real mount (3 meta + 3 data, R=2):
//! `echo hi > a && truncate -s 999999999999999 a` made every data server allocate
//! gigabytes until the OOM killer ended all three. Here: every size past the largest file
//! (4 PiB) gets EFBIG and changes nothing; that truncate, bytes written at 2^40, 2^50 and
//! at the last bytes, and a truncate to the largest size succeed and read back with zeros
//! in the holes; and no data server's resident memory grows by more than a few MiB
//! through all of it.

mod fuse_common;

use cirrus_types::MAX_FILE_SIZE;
use fuse_common::{cluster, require_fuse, runtime, within, Mount};
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

            // The call: a sparse file of about 1 PB.
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
