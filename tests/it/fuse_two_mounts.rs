//! Close-to-open consistency between two mounts of one cluster: after close on A, an open
//! on B sees the new size and bytes, even when B has the old bytes in its page cache or
//! the old size in its attribute cache.

use crate::fuse_common;

use fuse_common::{cluster, runtime, within, Mount};
use std::io::{Read, Write};
use std::time::Duration;

fn read(p: &std::path::Path) -> Vec<u8> {
    let mut f = std::fs::File::open(p).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn close_on_one_mount_then_open_on_another_sees_size_and_bytes() {
    let rt = runtime();
    let c = cluster(&rt, 3, 2);
    let a = Mount::new(&c.meta_addrs());
    let b = Mount::new(&c.meta_addrs());
    let (pa, pb) = (a.path.clone(), b.path.clone());
    within("two-mount checks", Duration::from_secs(240), move || {
        // A file created and closed on A exists on B with its bytes.
        let v1: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::create_dir(pa.join("dir")).unwrap();
        std::fs::write(pa.join("dir/f"), &v1).unwrap();
        assert_eq!(read(&pb.join("dir/f")), v1, "B after A's first close");
        let names: Vec<_> = std::fs::read_dir(pb.join("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);

        // Same size, new bytes: B has the old ones cached and must not serve them.
        let v2: Vec<u8> = v1.iter().map(|x| x.wrapping_add(7)).collect();
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(pa.join("dir/f"))
                .unwrap();
            f.write_all(&v2).unwrap();
        }
        assert!(
            read(&pb.join("dir/f")) == v2,
            "B served stale bytes after A's close"
        );

        // Grown on A (append), then shrunk on A: B sees each new size. B's kernel holds
        // the old size from this stat (attributes are cached for 1 s): the open must
        // drop it, or the read stops at the old size.
        assert_eq!(
            std::fs::metadata(pb.join("dir/f")).unwrap().len(),
            v2.len() as u64
        );
        {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(pa.join("dir/f"))
                .unwrap();
            f.write_all(b"tail").unwrap();
        }
        let got = read(&pb.join("dir/f"));
        assert_eq!(got.len(), v2.len() + 4, "B size after A's append");
        assert_eq!(&got[v2.len()..], b"tail");
        std::fs::OpenOptions::new()
            .write(true)
            .open(pa.join("dir/f"))
            .unwrap()
            .set_len(1000)
            .unwrap();
        assert_eq!(
            read(&pb.join("dir/f")),
            v2[..1000].to_vec(),
            "B after A's truncate"
        );
        assert_eq!(std::fs::metadata(pb.join("dir/f")).unwrap().len(), 1000);

        // And the other way round, with B writing at an offset.
        {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(pb.join("dir/f"))
                .unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(b"from-b", 2_000_000).unwrap();
        }
        let got = read(&pa.join("dir/f"));
        assert_eq!(got.len(), 2_000_006);
        assert_eq!(&got[..1000], &v2[..1000]);
        assert!(
            got[1000..2_000_000].iter().all(|x| *x == 0),
            "the hole reads as zeros"
        );
        assert_eq!(&got[2_000_000..], b"from-b");

        // Renames and unlinks on one are seen by the other at the next open.
        std::fs::rename(pa.join("dir/f"), pa.join("dir/g")).unwrap();
        assert!(std::fs::File::open(pb.join("dir/g")).is_ok());
        std::fs::remove_file(pb.join("dir/g")).unwrap();
        assert_eq!(
            std::fs::File::open(pa.join("dir/g")).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    });
}
