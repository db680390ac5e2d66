//! Every attribute reply the kernel gets for a file that this mount holds open with
//! unflushed writes carries the mount's own size, not meta's older committed one: the
//! kernel takes the size of any reply (lookup, link, readdirplus, getattr) as the file's
//! size and answers a read past it with 0 bytes without asking the mount.
//!
//! Found by the chaos replay of seed 1010 (POSIX exerciser seed 8389618, op #106: a
//! read of 60,683 bytes gave 0 bytes right after a hard link of the open file); it
//! reproduced without any fault: `link` answered with meta's attributes.

use crate::fuse_common;

use fuse_common::{cluster, runtime, within, Mount};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::time::Duration;

/// Reads exactly `len` bytes at `off` unless EOF comes first; returns what it got.
fn pread(f: &std::fs::File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    buf
}

#[test]
fn a_link_or_readdir_of_a_file_with_unflushed_writes_keeps_its_size_for_readers() {
    let rt = runtime();
    let c = cluster(&rt, 3, 2);
    let m = Mount::new(&c.meta_addrs());
    let p = m.path.clone();
    within("link/readdir checks", Duration::from_secs(120), move || {
        std::fs::create_dir(p.join("d")).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(p.join("d/f"))
            .unwrap();
        // Committed size at meta: 100 bytes.
        f.write_all_at(&[1u8; 100], 0).unwrap();
        f.sync_all().unwrap();
        // Not flushed yet: the file is 3 MiB + 139 bytes in this mount only.
        let tail_at = 3u64 << 20;
        f.write_all_at(&[2u8; 139], tail_at).unwrap();
        let want = tail_at + 139;

        std::fs::hard_link(p.join("d/f"), p.join("d/f-link")).unwrap();
        // No stat in between: the read must not depend on a refresh of the attributes.
        let got = pread(&f, 2_092_457, 60_683);
        assert_eq!(
            got.len(),
            60_683,
            "a read below the written size after link(2) came back short"
        );
        assert!(got.iter().all(|b| *b == 0), "the hole reads as zeros");
        assert_eq!(
            pread(&f, tail_at, 1000),
            vec![2u8; 139],
            "the tail after link"
        );
        assert_eq!(f.metadata().unwrap().len(), want, "fstat after link(2)");
        assert_eq!(f.metadata().unwrap().nlink(), 2);

        // Grow it again without flushing, then list the directory (readdirplus).
        f.write_all_at(&[3u8; 10], want).unwrap();
        let names: Vec<_> = std::fs::read_dir(p.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(
            pread(&f, tail_at, 1000).len(),
            149,
            "the tail after a readdir"
        );
        assert_eq!(
            std::fs::metadata(p.join("d/f-link")).unwrap().len(),
            want + 10,
            "stat of the other name"
        );
        drop(f);

        // After close, both names show the whole file to a new open.
        let all = std::fs::read(p.join("d/f-link")).unwrap();
        assert_eq!(all.len() as u64, want + 10);
        assert_eq!(&all[..100], &[1u8; 100]);
        assert_eq!(
            &all[tail_at as usize..],
            &[[2u8; 139].as_slice(), &[3u8; 10]].concat()
        );
    });
}
