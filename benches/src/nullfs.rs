//! `fuse-null`: the ceiling of FUSE itself on this machine, as a system of the benchmark.
//! A filesystem in this process (fuser, the same crate, settings and thread count as the
//! Cirrus mount) that keeps only names and sizes: writes are acknowledged and dropped,
//! reads return zeros up to the size. fio through it measures what the kernel's FUSE path
//! alone allows (request copies, context switches), so a Cirrus figure can be read as a
//! fraction of what any FUSE filesystem could reach here, next to the local disk.
//!
//! Only what fio's sequential job needs: a flat root directory of regular files.

use crate::systems::Mounted;
use anyhow::{Context, Result};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(1);
/// As the Cirrus mount (client/src/fuse.rs).
const MAX_WRITE: u32 = 1 << 20;
static ZEROS: [u8; MAX_WRITE as usize] = [0; MAX_WRITE as usize];

#[derive(Default)]
struct Files {
    by_name: HashMap<OsString, u64>,
    size: HashMap<u64, u64>,
    next: u64,
}

struct NullFs {
    files: Mutex<Files>,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    let dir = ino == 1;
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl NullFs {
    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn size_of(&self, ino: u64) -> Option<u64> {
        if ino == 1 {
            return Some(0);
        }
        self.files().size.get(&ino).copied()
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let f = self.files();
        match (parent.0, f.by_name.get(name)) {
            (1, Some(ino)) => {
                let size = f.size.get(ino).copied().unwrap_or(0);
                reply.entry(&TTL, &attr(*ino, size), Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.size_of(ino.0) {
            Some(s) => reply.attr(&TTL, &attr(ino.0, s)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut f = self.files();
        if ino.0 == 1 {
            return reply.attr(&TTL, &attr(1, 0));
        }
        let Some(cur) = f.size.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(s) = size {
            *cur = s;
        }
        let s = *cur;
        reply.attr(&TTL, &attr(ino.0, s))
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut f = self.files();
        match f.by_name.remove(name) {
            Some(ino) => {
                f.size.remove(&ino);
                reply.ok()
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.size_of(ino.0) {
            Some(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut f = self.files();
        let ino = match f.by_name.get(name) {
            Some(i) => *i,
            None => {
                f.next = f.next.max(1) + 1;
                let i = f.next;
                f.by_name.insert(name.to_os_string(), i);
                f.size.insert(i, 0);
                i
            }
        };
        let size = f.size.get(&ino).copied().unwrap_or(0);
        reply.created(
            &TTL,
            &attr(ino, size),
            Generation(0),
            FileHandle(0),
            FopenFlags::empty(),
        )
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = self.size_of(ino.0).unwrap_or(0);
        let n = end.saturating_sub(offset).min(size as u64) as usize;
        reply.data(&ZEROS[..n.min(ZEROS.len())])
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut f = self.files();
        if let Some(s) = f.size.get_mut(&ino.0) {
            *s = (*s).max(offset + data.len() as u64);
        }
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let f = self.files();
        let mut entries: Vec<(u64, &OsString)> = f.by_name.iter().map(|(n, i)| (*i, n)).collect();
        entries.sort();
        for (k, (ino, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (k + 1) as u64, FileType::RegularFile, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Room for any job: 1 PiB in 4 KiB blocks.
        let blocks = 1u64 << 38;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096)
    }
}

/// A mounted null filesystem; unmounted by `stop` or on drop.
pub struct NullMount {
    mnt: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl NullMount {
    /// Mounts it at `work/fuse-null/mnt` with the Cirrus mount's session settings.
    pub fn start(work: &Path) -> Result<NullMount> {
        let mnt = work.join("fuse-null").join("mnt");
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .status();
        std::fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("fuse-null".into()),
            MountOption::DefaultPermissions,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(4);
        config.clone_fd = true;
        let fs = NullFs {
            files: Mutex::new(Files::default()),
        };
        let session = fuser::spawn_mount(fs, &mnt, &config)
            .with_context(|| format!("mount the null FUSE filesystem on {}", mnt.display()))?;
        Ok(NullMount {
            mnt,
            session: Some(session),
        })
    }
}

impl Mounted for NullMount {
    fn dir(&self) -> &Path {
        &self.mnt
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(s) = self.session.take() {
            s.umount_and_join()
                .with_context(|| format!("unmount {}", self.mnt.display()))?;
        }
        Ok(())
    }
}

impl Drop for NullMount {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
