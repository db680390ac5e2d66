//! POSIX ACLs (issue 21) through real mounts: the same setfacl/chmod/umask script on the
//! mount and on a local ext4 directory gives the same `getfacl` and `ls -l` answers
//! (inheritance of default ACLs, the mask, chmod's effect on it, removal); the kernel
//! enforces them for a user the mode alone would refuse; and another mount sees them.

use crate::fuse_common;

use fuse_common::{cluster, runtime, setxattr, sh, which, within, Mount};
use std::path::Path;
use std::time::Duration;

/// Every step of the script; each prints what it made, so the two sides can be compared
/// line by line.
const SCRIPT: &str = r#"
umask 022
mkdir d
setfacl -d -m u:nobody:rwx,g::r-x d
setfacl -m u:nobody:r-- d
touch d/f
mkdir d/sub
mkfifo d/pipe
umask 077
touch d/masked-by-acl d/sub/deeper
mkdir plain
touch plain/masked-by-umask
umask 022
echo x > e
setfacl -m u:nobody:rw,g:daemon:r e
chmod 640 e
setfacl -x g:daemon e
cp -a e e-copy 2>/dev/null || cp e e-copy
setfacl -b d/f
setfacl -k d/sub
for p in d d/f d/sub d/pipe d/masked-by-acl d/sub/deeper plain plain/masked-by-umask e; do
  getfacl -p "$p"
done
ls -l d d/sub plain e | sed -E 's/ +[0-9]+ [A-Z][a-z]{2} +[0-9]+ [0-9:]{4,5} / /; s/^total [0-9]+$/total/; s/^(d[rwx-]{9}\+?) +[0-9]+ root root +[0-9]+/\1 root root/'
"#;

fn as_nobody(path: &Path) -> bool {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv (util-linux)")
        .success()
}

#[test]
fn acls_on_the_mount_answer_as_on_a_local_disk_are_enforced_and_seen_by_another_mount() {
    assert!(
        which("setfacl").is_some() && which("getfacl").is_some(),
        "setfacl/getfacl are missing: scripts/test.sh installs the Debian package acl"
    );
    let rt = runtime();
    let c = cluster(&rt, 2, 2);
    let a = Mount::new(&c.meta_addrs());
    let b = Mount::new(&c.meta_addrs());
    let local = tempfile::tempdir().unwrap();
    let (pa, pb, pl) = (a.path.clone(), b.path.clone(), local.path().to_path_buf());
    within("acl checks", Duration::from_secs(240), move || {
        let want = sh(&pl, SCRIPT, Duration::from_secs(60));
        let got = sh(&pa, SCRIPT, Duration::from_secs(60));
        assert!(
            want.contains("default:user:nobody:rwx") && want.contains("#effective:"),
            "the local disk has ACLs: {want}"
        );
        assert_eq!(got, want, "mount (left) and local ext4 (right) differ");

        // The kernel enforces the ACL: nobody reads a 0600 file only through it, and a
        // chmod that empties the mask takes it away again.
        std::fs::write(pa.join("secret"), b"s").unwrap();
        sh(&pa, "chmod 600 secret", Duration::from_secs(10));
        // The mount point itself must be searchable by nobody.
        sh(&pa, "chmod 755 .", Duration::from_secs(10));
        assert!(!as_nobody(&pa.join("secret")), "0600 without an ACL");
        sh(&pa, "setfacl -m u:nobody:r secret", Duration::from_secs(10));
        assert!(as_nobody(&pa.join("secret")), "granted by user:nobody:r");
        // Another mount sees the ACL and enforces it too.
        assert!(as_nobody(&pb.join("secret")), "granted on the other mount");
        assert!(
            sh(
                &pb,
                "getfacl -p d/f; getfacl -p d/sub",
                Duration::from_secs(10)
            ) == sh(
                &pa,
                "getfacl -p d/f; getfacl -p d/sub",
                Duration::from_secs(10)
            ),
            "the other mount reads the same ACLs"
        );
        sh(&pa, "chmod 600 secret", Duration::from_secs(10));
        assert!(!as_nobody(&pa.join("secret")), "chmod 600 emptied the mask");
        // A file made on the other mount inherits the default ACL made on this one.
        sh(&pb, "umask 077; touch d/from-b", Duration::from_secs(10));
        let inherited = sh(&pa, "getfacl -p d/from-b", Duration::from_secs(10));
        assert!(
            inherited.contains("user:nobody:rwx") && inherited.contains("mask::rw-"),
            "{inherited}"
        );
        // A malformed ACL (version 1; a named entry without a mask) is refused with the
        // errno ext4 gives (EOPNOTSUPP, EINVAL) and changes nothing.
        let before = sh(&pa, "getfacl -p e", Duration::from_secs(10));
        let mut no_mask = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [(1u16, 6u16, 0u32), (2, 4, 65534), (4, 4, 0), (0x20, 0, 0)] {
            no_mask.extend_from_slice(&tag.to_le_bytes());
            no_mask.extend_from_slice(&perm.to_le_bytes());
            no_mask.extend_from_slice(&id.to_le_bytes());
        }
        let mut v1 = no_mask.clone();
        v1[0] = 1;
        for (what, value) in [
            ("version 1", &v1),
            ("a named entry without a mask", &no_mask),
        ] {
            let on_disk = setxattr(&pl.join("e"), "system.posix_acl_access", value)
                .map_err(|e| e.raw_os_error());
            assert!(on_disk.is_err(), "ext4 took {what}");
            assert_eq!(
                setxattr(&pa.join("e"), "system.posix_acl_access", value)
                    .map_err(|e| e.raw_os_error()),
                on_disk,
                "{what}: mount (left) and ext4 (right)"
            );
        }
        assert_eq!(sh(&pa, "getfacl -p e", Duration::from_secs(10)), before);
    });
}
