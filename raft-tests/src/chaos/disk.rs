//! Disk faults on a data server: a small loop-mounted ext4 filesystem per server (so
//! "disk full" fills only that server's disk, never the machine's), a filler file that
//! takes every free block, a blkio throttle on the loop device (slow disk), and a flipped
//! block in an object file (on-disk corruption, which the crc sidecar must catch).

use anyhow::{bail, Context, Result};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::netns::run_cmd as run;

/// A small ext4 filesystem in a sparse image, loop-mounted at `mnt`; the data server's
/// `--dir` is `mnt/d` so the filler file never shows up among its objects.
#[derive(Debug)]
pub struct LoopDisk {
    pub mnt: PathBuf,
    pub dir: PathBuf,
    /// `MAJ:MIN` of the loop device, for the blkio throttle.
    pub dev: String,
    cgroup: Option<PathBuf>,
}

impl LoopDisk {
    /// Whether loop-mounted filesystems can be made here, with the reason if not.
    pub fn available() -> std::result::Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: loop mounts need CAP_SYS_ADMIN".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("/dev/loop-control is missing (modprobe loop)".into());
        }
        for tool in ["mkfs.ext4", "mount", "umount", "findmnt"] {
            let found = std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
            if !found {
                return Err(format!("`{tool}` not found"));
            }
        }
        Ok(())
    }

    /// Creates a `size_mib` image under `root` and mounts it at `root/NAME`.
    pub fn create(root: &Path, name: &str, size_mib: u64) -> Result<LoopDisk> {
        let img = root.join(format!("{name}.img"));
        let f = std::fs::File::create(&img).with_context(|| format!("create {}", img.display()))?;
        f.set_len(size_mib << 20).context("size the image")?;
        drop(f);
        let imgs = img.display().to_string();
        // 4 KiB blocks whatever the image size: mke2fs picks 1 KiB for small images, and
        // ext4 with 1 KiB blocks stops files at 4 TiB, below the crc sidecar of the largest
        // object a data server must hold (`cirrus_types::MAX_FILE_SIZE`; the data workload
        // writes there).
        run(&["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", &imgs])?;
        let mnt = root.join(name);
        std::fs::create_dir_all(&mnt).context("create mount point")?;
        let mnts = mnt.display().to_string();
        run(&["mount", "-o", "loop", &imgs, &mnts])?;
        let mut disk = LoopDisk {
            mnt: mnt.clone(),
            dir: mnt.join("d"),
            dev: String::new(),
            cgroup: None,
        };
        let src = run(&["findmnt", "-no", "MAJ:MIN", &mnts])?;
        disk.dev = src;
        std::fs::create_dir_all(&disk.dir).context("create the data dir on the loop disk")?;
        Ok(disk)
    }

    fn filler(&self) -> PathBuf {
        self.mnt.join("chaos-filler")
    }

    /// Takes every free block with a filler file. Returns the bytes taken.
    pub fn fill(&self) -> Result<u64> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(self.filler())
            .context("open filler")?;
        let mut taken = f.metadata().map(|m| m.len()).unwrap_or(0);
        // Big steps first, then smaller ones, until even 4 KiB does not fit.
        let mut step: u64 = 64 << 20;
        while step >= 4096 {
            // SAFETY: fallocate on an fd we own, in-range arguments.
            let rc = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    taken as libc::off_t,
                    step as libc::off_t,
                )
            };
            if rc == 0 {
                taken += step;
            } else {
                step /= 2;
            }
        }
        Ok(taken)
    }

    /// Removes the filler.
    pub fn unfill(&self) -> Result<()> {
        match std::fs::remove_file(self.filler()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("remove filler"),
        }
    }

    /// Puts `pid` in a blkio cgroup that lets `bps` bytes per second through to this
    /// disk (reads and writes; O_DIRECT I/O bypasses the page cache, so it is throttled).
    pub fn throttle(&mut self, pid: i32, bps: u64) -> Result<()> {
        let base = Path::new("/sys/fs/cgroup/blkio");
        if !base.join("blkio.throttle.write_bps_device").exists() {
            bail!("no cgroup v1 blkio throttle at {}", base.display());
        }
        let name = self
            .mnt
            .file_name()
            .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
            .unwrap_or_else(|| "disk".into());
        let cg = base.join(format!("cirrus-chaos-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&cg).context("create blkio cgroup")?;
        self.cgroup = Some(cg.clone());
        std::fs::write(cg.join("cgroup.procs"), pid.to_string()).context("join blkio cgroup")?;
        for f in [
            "blkio.throttle.write_bps_device",
            "blkio.throttle.read_bps_device",
        ] {
            std::fs::write(cg.join(f), format!("{} {bps}", self.dev))
                .with_context(|| format!("set {f}"))?;
        }
        Ok(())
    }

    /// Lifts the throttle (the process stays in the cgroup, unthrottled).
    pub fn unthrottle(&self) -> Result<()> {
        if let Some(cg) = &self.cgroup {
            for f in [
                "blkio.throttle.write_bps_device",
                "blkio.throttle.read_bps_device",
            ] {
                std::fs::write(cg.join(f), format!("{} 0", self.dev))
                    .with_context(|| format!("clear {f}"))?;
            }
        }
        Ok(())
    }

    /// Unmounts (the loop device detaches itself) and removes the cgroup. Call after the
    /// data server is gone.
    pub fn teardown(&mut self) {
        let _ = self.unthrottle();
        if let Some(cg) = self.cgroup.take() {
            // Fails while a process is still inside; it is gone by now.
            let _ = std::fs::remove_dir(&cg);
        }
        let m = self.mnt.display().to_string();
        if run(&["umount", &m]).is_err() {
            let _ = run(&["umount", "-l", &m]);
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The object data files (`objects/<chain>/<ino>_<index>.dat`) under a data dir.
pub fn object_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v = Vec::new();
    let Ok(chains) = std::fs::read_dir(dir.join("objects")) else {
        return v;
    };
    for c in chains.flatten() {
        let Ok(files) = std::fs::read_dir(c.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "dat") {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len >= 4096 {
                    v.push((p, len));
                }
            }
        }
    }
    v.sort();
    v
}

/// Flips 16 bytes inside one 4 KiB block of one object file, chosen by `pick` among the
/// objects of `chains` (`objects/<chain>/`), and makes it durable. Returns a description,
/// or None when the server holds no such data.
pub fn corrupt_block(dir: &Path, pick: u64, chains: &[u32]) -> Result<Option<String>> {
    let in_chain = |p: &Path| {
        p.parent()
            .and_then(|c| c.file_name())
            .and_then(|c| c.to_str())
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| chains.contains(&c))
    };
    let files: Vec<(PathBuf, u64)> = object_files(dir)
        .into_iter()
        .filter(|(p, _)| in_chain(p))
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    let (path, len) = &files[(pick % files.len() as u64) as usize];
    let blocks = len / 4096;
    if blocks == 0 {
        return Ok(None);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    // Objects are sparse (the data workload writes at the end of the largest file): aim
    // at a block that holds data, the first at or after the picked one, else the first.
    let picked = (pick >> 16) % blocks;
    let block = match next_data(&f, picked * 4096).or_else(|| next_data(&f, 0)) {
        Some(off) => (off / 4096).min(blocks - 1),
        None => picked,
    };
    let at = block * 4096 + 64 + (pick >> 40) % 3000;
    let mut b = [0u8; 16];
    f.read_exact_at(&mut b, at).context("read the block")?;
    for x in &mut b {
        *x ^= 0xA5;
    }
    f.write_all_at(&b, at).context("write the block")?;
    f.sync_data().context("fdatasync")?;
    Ok(Some(format!(
        "{} block {block} (16 bytes at {at})",
        path.strip_prefix(dir).unwrap_or(path).display()
    )))
}

/// The first offset at or after `from` that holds data (`SEEK_DATA`), if any.
fn next_data(f: &std::fs::File, from: u64) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    let from = i64::try_from(from).ok()?;
    // SAFETY: lseek on a file descriptor we own; it moves only that description's offset,
    // which nothing else here uses (reads and writes are positional).
    let r = unsafe { libc::lseek(f.as_raw_fd(), from, libc::SEEK_DATA) };
    u64::try_from(r).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_block_changes_exactly_sixteen_bytes_of_an_object() {
        let d = tempfile::tempdir().expect("tempdir");
        let obj = d.path().join("objects").join("3");
        std::fs::create_dir_all(&obj).expect("mkdir");
        let data = vec![7u8; 3 * 4096];
        std::fs::write(obj.join("12_0.dat"), &data).expect("write");
        std::fs::write(obj.join("12_0.crc"), b"sidecar").expect("write");
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(corrupt_block(empty.path(), 1, &[3])
            .expect("empty dir")
            .is_none());
        assert!(
            corrupt_block(d.path(), 1, &[4])
                .expect("other chain")
                .is_none(),
            "an object of a chain not allowed was corrupted"
        );
        let what = corrupt_block(d.path(), 0x1234_5678_9abc, &[3])
            .expect("corrupt")
            .expect("a file");
        assert!(what.contains("12_0.dat"), "{what}");
        let after = std::fs::read(obj.join("12_0.dat")).expect("read");
        let diff = after.iter().zip(&data).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 16);
        assert_eq!(
            std::fs::read(obj.join("12_0.crc")).expect("crc"),
            b"sidecar"
        );
    }

    #[test]
    fn corrupt_block_of_a_sparse_object_lands_on_its_data() {
        let d = tempfile::tempdir().expect("tempdir");
        let obj = d.path().join("objects").join("3");
        std::fs::create_dir_all(&obj).expect("mkdir");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(obj.join("7_0.dat"))
            .expect("create");
        let far = 1u64 << 32;
        f.write_all_at(&[9u8; 4096], far).expect("write far");
        f.sync_all().expect("sync");
        // Every pick lands on the one block of data, wherever it points in the hole.
        for pick in [0u64, 0x1234_5678_9abc, u64::MAX / 3] {
            let what = corrupt_block(d.path(), pick, &[3])
                .expect("corrupt")
                .expect("a file");
            let mut b = [0u8; 4096];
            f.read_exact_at(&mut b, far).expect("read");
            assert!(b.iter().any(|x| *x != 9), "{what}: data block unchanged");
            assert!(what.contains(&format!("block {}", far / 4096)), "{what}");
            f.write_all_at(&[9u8; 4096], far).expect("restore");
        }
    }
}
