//! Real programs on a real mount of a real cluster: tar, diff, cp -a, git, and a program
//! doing mixed pwrite/pread/ftruncate/fsync checked against a local file.

use crate::fuse_common;

use crate::fixtures::metric_sum;
use fuse_common::{cluster, runtime, sh, within, Mount};
use rand::{Rng, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(300);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn git_archive_extracts_diffs_and_copies_back() {
    let rt = runtime();
    let c = cluster(&rt, 3, 2);
    let m = Mount::new(&c.meta_addrs());
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let tar = w.join("src.tar");
    sh(
        repo(),
        &format!("git archive --format=tar -o {} HEAD", tar.display()),
        LONG,
    );
    std::fs::create_dir(w.join("local")).unwrap();
    sh(
        &w.join("local"),
        &format!("tar -xf {}", tar.display()),
        LONG,
    );
    let on = m.path.join("tree");
    std::fs::create_dir(&on).unwrap();
    sh(&on, &format!("tar -xf {}", tar.display()), LONG);
    sh(w, &format!("diff -r local {}", on.display()), LONG);
    // And back out, with modes and times.
    sh(w, &format!("cp -a {} back", on.display()), LONG);
    sh(w, "diff -r local back", LONG);
    let files = sh(w, "find back -type f | wc -l", LONG);
    assert!(
        files.trim().parse::<u32>().unwrap() > 50,
        "the archive should be a real source tree, got {files} files"
    );
}

#[test]
fn git_init_add_commit_log_on_the_mount() {
    let rt = runtime();
    let c = cluster(&rt, 3, 2);
    let m = Mount::new(&c.meta_addrs());
    let r = m.path.join("repo");
    std::fs::create_dir(&r).unwrap();
    sh(&r, "git init -q -b main .", LONG);
    std::fs::write(r.join("README"), "first\n").unwrap();
    std::fs::create_dir(r.join("src")).unwrap();
    std::fs::write(r.join("src/lib.rs"), "pub fn x() {}\n".repeat(500)).unwrap();
    sh(&r, "git add -A && git commit -q -m one", LONG);
    std::fs::write(r.join("README"), "second\n").unwrap();
    sh(
        &r,
        "git mv src/lib.rs src/main.rs && git commit -q -am two",
        LONG,
    );
    let log = sh(&r, "git log --format=%s", LONG);
    assert_eq!(log, "two\none\n");
    sh(
        &r,
        "git fsck --strict --no-progress && git status --porcelain | (! grep .)",
        LONG,
    );
    let show = sh(&r, "git show HEAD~1:README", LONG);
    assert_eq!(show, "first\n");
}

#[test]
fn mixed_pwrite_pread_ftruncate_fsync_match_a_local_file() {
    let rt = runtime();
    let c = cluster(&rt, 3, 2);
    let m = Mount::new(&c.meta_addrs());
    let local = tempfile::tempdir().unwrap();
    let (mp, lp) = (m.path.join("mixed.bin"), local.path().join("mixed.bin"));
    within("mixed pwrite/pread program", LONG, move || {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .unwrap()
        };
        let (fm, fl) = (open(&mp), open(&lp));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(20261129);
        const MIB: u64 = 1 << 20;
        for i in 0..400 {
            match rng.gen_range(0..10) {
                0..=4 => {
                    // Straddle stripe (1 MiB) boundaries often.
                    let off = rng.gen_range(0..5 * MIB) & !(rng.gen_range(0..2) * 0xfff);
                    let big = rng.gen_bool(0.2);
                    let len = rng.gen_range(1..(if big { 2 * MIB } else { 70_000 }));
                    let buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    fm.write_all_at(&buf, off).unwrap();
                    fl.write_all_at(&buf, off).unwrap();
                }
                5..=7 => {
                    let off = rng.gen_range(0..6 * MIB);
                    let len = rng.gen_range(1..(3 * MIB as usize / 2));
                    let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                    let na = read_full(&fm, &mut a, off);
                    let nb = read_full(&fl, &mut b, off);
                    assert_eq!(na, nb, "op {i}: pread({off}, {len}) count differs");
                    assert!(
                        a[..na] == b[..nb],
                        "op {i}: pread({off}, {len}) bytes differ"
                    );
                }
                8 => {
                    let size = rng.gen_range(0..6 * MIB);
                    fm.set_len(size).unwrap();
                    fl.set_len(size).unwrap();
                }
                _ => {
                    fm.sync_all().unwrap();
                    fl.sync_all().unwrap();
                    assert_eq!(
                        fm.metadata().unwrap().len(),
                        fl.metadata().unwrap().len(),
                        "op {i}: size after fsync"
                    );
                }
            }
        }
        fm.sync_all().unwrap();
        drop(fm);
        drop(fl);
        assert!(
            std::fs::read(&mp).unwrap() == std::fs::read(&lp).unwrap(),
            "final contents differ"
        );
    });
}

fn read_full(f: &std::fs::File, buf: &mut [u8], off: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    got
}

#[test]
fn mkfifo_mknod_and_unix_sockets_work_on_the_mount_and_their_data_stays_local() {
    use std::io::{Read, Write};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::net::{UnixListener, UnixStream};

    let rt = runtime();
    let c = cluster(&rt, 1, 1);
    let m = Mount::new(&c.meta_addrs());
    let d = m.path.join("special");
    std::fs::create_dir(&d).unwrap();
    sh(
        &d,
        "mkfifo -m 640 pipe && mknod null c 1 3 && mknod loop b 7 0",
        LONG,
    );
    let st = |p: &Path| {
        std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
    };
    let pipe = st(&d.join("pipe"));
    assert!(pipe.file_type().is_fifo(), "{pipe:?}");
    assert_eq!(pipe.mode() & 0o7777, 0o640);
    let null = st(&d.join("null"));
    assert!(null.file_type().is_char_device(), "{null:?}");
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let lp = st(&d.join("loop"));
    assert!(lp.file_type().is_block_device(), "{lp:?}");
    assert_eq!(lp.rdev(), libc::makedev(7, 0));

    // A FIFO's bytes go from writer to reader through the kernel of this machine.
    let p = d.join("pipe");
    let got = within("a FIFO on the mount", LONG, move || {
        let w = {
            let p = p.clone();
            std::thread::spawn(move || std::fs::write(&p, b"through the pipe").unwrap())
        };
        let got = std::fs::read(&p).unwrap();
        w.join().unwrap();
        got
    });
    assert_eq!(got, b"through the pipe");
    assert_eq!(
        st(&d.join("pipe")).size(),
        0,
        "a FIFO's data is never stored"
    );

    // A unix socket bound on the mount.
    let sock = d.join("sock");
    let l = UnixListener::bind(&sock).unwrap();
    assert!(st(&sock).file_type().is_socket());
    let echoed = within("a unix socket on the mount", LONG, move || {
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        });
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        server.join().unwrap();
        b
    });
    assert_eq!(&echoed, b"hello");

    // Another mount sees the same kinds and device numbers; ls shows them.
    let m2 = Mount::new(&c.meta_addrs());
    let d2 = m2.path.join("special");
    assert!(st(&d2.join("pipe")).file_type().is_fifo());
    assert!(st(&d2.join("sock")).file_type().is_socket());
    assert_eq!(st(&d2.join("null")).rdev(), libc::makedev(1, 3));
    let ls = sh(
        &d2,
        "ls -l | tail -n +2 | cut -c1 | sort | tr -d '\\n'",
        LONG,
    );
    assert_eq!(ls.trim(), "bcps", "ls -l type letters: {ls:?}");

    // cp -a and tar copy them as what they are; mv, ln and rm work as for any file.
    sh(
        &m.path,
        "cp -a special copy && tar -cf t.tar special && mkdir x && tar -xf t.tar -C x",
        LONG,
    );
    for top in ["copy", "x/special"] {
        let t = m.path.join(top);
        assert!(st(&t.join("pipe")).file_type().is_fifo(), "{top}");
        assert_eq!(st(&t.join("null")).rdev(), libc::makedev(1, 3), "{top}");
        assert!(st(&t.join("loop")).file_type().is_block_device(), "{top}");
    }
    sh(&d, "mv pipe pipe2 && ln pipe2 pipe3 && test $(stat -c %h pipe3) = 2 && rm pipe2 pipe3 null loop sock", LONG);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    drop(m2);
}

#[test]
fn seek_data_and_hole_copy_file_range_and_fallocate_modes_answer_truthfully() {
    use std::os::fd::AsRawFd;

    let rt = runtime();
    let c = cluster(&rt, 2, 2);
    let meta = c.meta_addrs();
    let data_metrics = [c.data_metrics_addr(0), c.data_metrics_addr(1)];
    let m = Mount::new(&meta);
    let p = m.path.clone();
    within("seek, copy_file_range and fallocate", LONG, move || {
        let a = p.join("a");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&a, &data).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&a)
            .unwrap();
        let fd = f.as_raw_fd();
        // SEEK_DATA/SEEK_HOLE: the whole-file answer (all data, the hole at the end).
        // SAFETY: lseek on an open descriptor; no memory is passed.
        let (d, h) = unsafe {
            (
                libc::lseek(fd, 100, libc::SEEK_DATA),
                libc::lseek(fd, 100, libc::SEEK_HOLE),
            )
        };
        assert_eq!(
            (d, h),
            (100, data.len() as i64),
            "SEEK_DATA and SEEK_HOLE from 100"
        );
        // SAFETY: as above.
        let past = unsafe { libc::lseek(fd, data.len() as i64 + 1, libc::SEEK_DATA) };
        assert_eq!(past, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENXIO)
        );

        // copy_file_range between two files of the mount copies the bytes exactly, and
        // the data servers do it: their copied-bytes counters grow by what was copied.
        let copied = || -> f64 {
            (0..2)
                .map(|i| {
                    metric_sum(&data_metrics[i], "cirrus_data_copied_bytes_total", "").unwrap()
                })
                .sum()
        };
        let copy = |from: &std::fs::File,
                    mut off_in: i64,
                    to: &std::fs::File,
                    mut off_out: i64,
                    mut left: usize| {
            while left > 0 {
                // SAFETY: both descriptors are open; the offsets are valid i64 locals.
                let n = unsafe {
                    libc::copy_file_range(
                        from.as_raw_fd(),
                        &mut off_in,
                        to.as_raw_fd(),
                        &mut off_out,
                        left,
                        0,
                    )
                };
                assert!(
                    n > 0,
                    "copy_file_range: {n} {}",
                    std::io::Error::last_os_error()
                );
                left -= n as usize;
            }
        };
        let before = copied();
        let b = p.join("b");
        let g = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&b)
            .unwrap();
        copy(&f, 1000, &g, 5, data.len() - 1000);
        let by_servers = copied() - before;
        assert_eq!(
            by_servers,
            (data.len() - 1000) as f64,
            "every copied byte was copied by a data server"
        );
        let mut want_b = vec![0u8; 5];
        want_b.extend_from_slice(&data[1000..]);
        assert!(std::fs::read(&b).unwrap() == want_b, "copied bytes differ");
        // Bytes not yet flushed on either side are copied and kept: pending writes go
        // out first. Then a copy within one file, between ranges that do not overlap.
        f.write_all_at(b"fresh source bytes", 2_000_000).unwrap();
        g.write_all_at(b"pending in b", 100).unwrap();
        want_b[100..112].copy_from_slice(b"pending in b");
        copy(&f, 1_999_990, &g, 200, 40);
        let mut want_a = data.clone();
        want_a[2_000_000..2_000_018].copy_from_slice(b"fresh source bytes");
        want_b[200..240].copy_from_slice(&want_a[1_999_990..2_000_030]);
        copy(&g, 0, &g, 2_500_000, 300_000);
        want_b.copy_within(..300_000, 2_500_000);
        // Past the end of the destination: the file grows to the copy's end.
        copy(&f, 0, &g, want_b.len() as i64 + 4096, 10_000);
        want_b.resize(want_b.len() + 4096, 0);
        want_b.extend_from_slice(&want_a[..10_000]);
        drop(g);
        assert!(
            std::fs::read(&b).unwrap() == want_b,
            "copies of pending bytes, within one file and past the end"
        );
        // Overlapping ranges of one file are EINVAL (the kernel's own rule), nothing changed.
        let g = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&b)
            .unwrap();
        let (mut i, mut o): (i64, i64) = (0, 100);
        // SAFETY: as above.
        let r =
            unsafe { libc::copy_file_range(g.as_raw_fd(), &mut i, g.as_raw_fd(), &mut o, 1000, 0) };
        assert_eq!(
            (r, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EINVAL))
        );
        drop(g);
        assert!(
            std::fs::read(&b).unwrap() == want_b,
            "a refused copy changed the file"
        );
        f.write_all_at(&data[2_000_000..2_000_018], 2_000_000)
            .unwrap();

        // fallocate modes Cirrus does not do are EOPNOTSUPP and change nothing.
        for (mode, what) in [
            (libc::FALLOC_FL_COLLAPSE_RANGE, "COLLAPSE_RANGE"),
            (libc::FALLOC_FL_INSERT_RANGE, "INSERT_RANGE"),
            (libc::FALLOC_FL_PUNCH_HOLE, "PUNCH_HOLE without KEEP_SIZE"),
        ] {
            // SAFETY: fallocate on an open descriptor; no memory is passed.
            let r = unsafe { libc::fallocate(fd, mode, 4096, 4096) };
            assert_eq!(r, -1, "{what}");
            let e = std::io::Error::last_os_error().raw_os_error();
            assert!(
                e == Some(libc::EOPNOTSUPP) || e == Some(libc::EINVAL),
                "{what}: {e:?}"
            );
        }
        assert!(
            std::fs::read(&a).unwrap() == data,
            "a refused fallocate changed the file"
        );
        let mut want = data.clone();
        // KEEP_SIZE past the end: the size stays.
        // SAFETY: as above.
        let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 8_000_000) };
        assert_eq!(r, 0, "KEEP_SIZE: {}", std::io::Error::last_os_error());
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
        // PUNCH_HOLE, unaligned at both ends and across stripe units: zeros there, the
        // bytes around kept, the size kept; also through a second mount.
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: as above.
        let r = unsafe { libc::fallocate(fd, mode, 1_234, 2_000_000) };
        assert_eq!(r, 0, "PUNCH_HOLE: {}", std::io::Error::last_os_error());
        want[1_234..2_001_234].fill(0);
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
        assert!(std::fs::read(&a).unwrap() == want, "PUNCH_HOLE read back");
        // A punch of the whole largest range past some data: the tail reads as zeros.
        // SAFETY: as above.
        let r = unsafe { libc::fallocate(fd, mode, 2_900_001, (1i64 << 52) - 2_900_001) };
        assert_eq!(
            r,
            0,
            "PUNCH_HOLE to 4 PiB: {}",
            std::io::Error::last_os_error()
        );
        want[2_900_001..].fill(0);
        assert!(std::fs::read(&a).unwrap() == want, "PUNCH_HOLE to the end");
        // ZERO_RANGE with KEEP_SIZE keeps the size; without it, it extends the file.
        // SAFETY: as above.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                2_500_000,
                1_000_000,
            )
        };
        assert_eq!(
            r,
            0,
            "ZERO_RANGE|KEEP_SIZE: {}",
            std::io::Error::last_os_error()
        );
        want[2_500_000..].fill(0);
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
        // SAFETY: as above.
        let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 2_400_000, 1_000_000) };
        assert_eq!(r, 0, "ZERO_RANGE: {}", std::io::Error::last_os_error());
        want[2_400_000..].fill(0);
        want.resize(3_400_000, 0);
        assert_eq!(f.metadata().unwrap().len(), 3_400_000);
        assert!(std::fs::read(&a).unwrap() == want, "ZERO_RANGE read back");
        // Past the largest file: EFBIG (or the kernel's EINVAL/EFBIG), nothing changed.
        // SAFETY: as above.
        let r = unsafe { libc::fallocate(fd, mode, 1i64 << 52, 4096) };
        assert_eq!(r, -1, "a punch past the largest file succeeded");
        assert!(
            std::fs::read(&a).unwrap() == want,
            "a refused punch changed the file"
        );
        // Mode 0 extends the size with zeros.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 4_000_000) }, 0);
        assert_eq!(f.metadata().unwrap().len(), 4_000_000);
        want.resize(4_000_000, 0);
        assert!(std::fs::read(&a).unwrap() == want, "mode 0 read back");
        drop(f);
        // A second mount (no cached bytes) reads the same from the data servers.
        let m2 = Mount::new(&meta);
        assert!(
            std::fs::read(m2.path.join("a")).unwrap() == want,
            "second mount"
        );
    });
}
