//! The seeded random POSIX exerciser (`cirrus_raft_tests::posix`, also the
//! `cirrus-exercise` binary) on a real mount against a local directory, for a few seeds.
//! Every result (errno, counts, bytes, stats, listings, xattrs) must agree, also at the
//! extreme offsets and sizes the exerciser draws (EFBIG past the largest file).

use crate::fuse_common;

use cirrus_raft_tests::posix::{self, ExerciseConfig};
use fuse_common::{cluster, runtime, within, Mount};
use std::time::Duration;

#[test]
fn random_posix_calls_agree_with_a_local_directory() {
    let rt = runtime();
    let c = cluster(&rt, 3, 2);
    let m = Mount::new(&c.meta_addrs());
    let local = tempfile::tempdir().unwrap();
    let xattrs = posix::supports_user_xattrs(local.path());
    assert!(
        xattrs,
        "the local temp dir {} has no user xattrs; the xattr calls cannot be compared",
        local.path().display()
    );
    let (mut extreme_ops, mut punch_ops) = (0, 0);
    let (mut mknod_ops, mut lock_ops, mut lock_conflicts, mut copy_ops) = (0, 0, 0, 0);
    for seed in [1u64, 2, 3] {
        let (md, ld) = (
            m.path.join(format!("s{seed}")),
            local.path().join(format!("s{seed}")),
        );
        std::fs::create_dir(&md).unwrap();
        std::fs::create_dir(&ld).unwrap();
        let mut cfg = ExerciseConfig::new(seed);
        cfg.ops = 400;
        cfg.deadline = Duration::from_secs(40);
        // Every child's exec closes the open files: FLUSHes racing the calls.
        cfg.spawn_children = true;
        eprintln!("exerciser seed {seed} (replay: cirrus-exercise --seed {seed} --ops 400)");
        let r = within("exerciser", Duration::from_secs(400), move || {
            posix::run(&md, &ld, &cfg, None)
        });
        match r {
            Ok(rep) => {
                eprintln!(
                    "seed {seed}: {} ops ({} succeeded), {} B written, {} B read, {} children, slowest {:?} ({})",
                    rep.ops, rep.ok_ops, rep.bytes_written, rep.bytes_read, rep.children, rep.slowest, rep.slowest_op
                );
                assert!(
                    rep.children > 0,
                    "seed {seed}: no child was spawned beside the calls"
                );
                extreme_ops += rep.extreme_ops;
                punch_ops += rep.punch_ops;
                mknod_ops += rep.mknod_ops;
                lock_ops += rep.lock_ops;
                lock_conflicts += rep.lock_conflicts;
                copy_ops += rep.copy_ops;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Far offsets and sizes (2^40, segment boundaries, 8 TiB, past the largest file)
    // were among the calls that agreed.
    assert!(extreme_ops > 0, "no seed drew an extreme offset or size");
    eprintln!("{extreme_ops} ops at extreme offsets or sizes");
    // Holes punched and ranges zeroed (fallocate) read back the same as ext4's.
    assert!(punch_ops > 0, "no seed punched a hole that succeeded");
    assert!(mknod_ops > 0, "no seed made a FIFO, socket or device node");
    // OFD locks: two slots open on one file are two owners, refused alike on both sides.
    assert!(
        lock_ops > 0 && lock_conflicts > 0,
        "locks taken: {lock_ops}, refused by another open file's lock: {lock_conflicts}"
    );
    eprintln!("{mknod_ops} nodes made, {lock_ops} lock calls, {lock_conflicts} lock conflicts");
    eprintln!("{punch_ops} successful PUNCH_HOLE/ZERO_RANGE calls");
    // copy_file_range (done by the data servers on the mount) agreed with ext4's.
    assert!(copy_ops > 0, "no seed copied bytes with copy_file_range");
    eprintln!("{copy_ops} copy_file_range calls that copied bytes");
}
