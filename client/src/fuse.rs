//! The FUSE adapter: maps kernel requests onto `Client`. Each request is answered from a
//! tokio task (fuser replies are `Send`), so the fuser threads only decode and dispatch.
//! Every task runs under the client's deadline: a request always gets an answer, at worst
//! ETIMEDOUT. `FsError::errno` is the only errno mapping.
//!
//! Names and attributes are cached by the kernel for `TTL` (1 s). Close-to-open still
//! holds: `open` revalidates the file at meta and then invalidates the kernel's cached
//! attributes of the inode (a reverse notification), so the first stat or read past the
//! old size after an open asks again, and is answered from the open's fresh attributes.
//! No FOPEN_KEEP_CACHE: every open drops the kernel's page cache of the file.

use crate::client::{Buffered, Client, Fallocate};
use crate::meta::{Attr, NewMode, SetAttr, TimeSet};
use cirrus_types::{FileKind, FsError, FsResult, InodeId, LockKind};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;
/// Entries fetched per readdir call from meta.
const READDIR_BATCH: u32 = 256;

/// How long the kernel may cache names and attributes (a change by another mount is
/// seen within this, and at the next open of the file at once).
const DIR_TTL: Duration = Duration::from_secs(1);
const FILE_TTL: Duration = Duration::from_secs(1);

pub struct CirrusFs {
    client: Arc<Client>,
    rt: tokio::runtime::Handle,
    /// `security.*` xattrs known to be absent, until the instant given. The kernel asks
    /// for `security.capability` before every write(2) (to drop file capabilities); without
    /// this each write waited for a meta round trip. Local set/remove clear the entry;
    /// another mount's `setcap` is seen within `DIR_TTL`, like a new name.
    absent_xattrs: Arc<std::sync::Mutex<AbsentXattrs>>,
    /// Bumped by every local `security.*` set/remove: an absent answer fetched across one
    /// is not cached (it may predate the change).
    xattr_gen: Arc<std::sync::atomic::AtomicU64>,
    /// Set once the session exists: `open` invalidates the kernel's cached attributes of
    /// the inode through it (close-to-open with a non-zero attribute TTL).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

/// (inode, xattr name) -> absent until.
type AbsentXattrs = HashMap<(u64, Vec<u8>), Instant>;

/// Entries kept in `absent_xattrs` before it is cleared wholesale.
const ABSENT_XATTRS_MAX: usize = 65536;

fn is_security_xattr(n: &[u8]) -> bool {
    n.starts_with(b"security.")
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice { .. } => FileType::CharDevice,
        FileKind::BlockDevice { .. } => FileType::BlockDevice,
    }
}

pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.crtime_ns),
        kind: kind(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.kind.rdev(),
        blksize: 1 << 20,
        flags: 0,
    }
}

fn ttl(a: &Attr) -> Duration {
    if a.kind == FileKind::File {
        FILE_TTL
    } else {
        DIR_TTL
    }
}

fn entry(reply: ReplyEntry, r: FsResult<Attr>) {
    match r {
        Ok(a) => reply.entry_with_ttls(&DIR_TTL, &ttl(&a), &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(reply: ReplyEmpty, r: FsResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn attr(reply: ReplyAttr, r: FsResult<Attr>) {
    match r {
        Ok(a) => reply.attr(&ttl(&a), &file_attr(&a)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn set_time(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::Ns(to_ns(t)),
    }
}

impl CirrusFs {
    /// `notifier` is filled in by the caller once the fuser session exists; until then
    /// opens cannot invalidate the kernel's attributes (nothing is cached before mount).
    pub fn new(
        client: Arc<Client>,
        rt: tokio::runtime::Handle,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    ) -> Self {
        CirrusFs {
            client,
            rt,
            absent_xattrs: Arc::default(),
            xattr_gen: Arc::default(),
            notifier,
        }
    }

    fn forget_absent(&self, ino: u64, n: &[u8]) {
        if is_security_xattr(n) {
            let mut m = cirrus_types::sync::lock(&self.absent_xattrs);
            self.xattr_gen
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            m.remove(&(ino, n.to_vec()));
        }
    }

    /// Runs `f` on the runtime under the client's deadline; `done` gets its result.
    fn run<T, Fut, F, D>(&self, f: F, done: D)
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = FsResult<T>> + Send + 'static,
        D: FnOnce(FsResult<T>) + Send + 'static,
    {
        let deadline = self.client.config().deadline;
        let fut = f(self.client.clone());
        self.rt.spawn(async move {
            // The inner calls have their own deadlines; this one catches anything that
            // stacks several of them (flush + commit) so the kernel always gets an answer.
            let r = match tokio::time::timeout(deadline + Duration::from_secs(5), fut).await {
                Ok(r) => r,
                Err(_) => Err(FsError::Timeout(format!(
                    "request took longer than {deadline:?}"
                ))),
            };
            done(r);
        });
    }
}

fn name(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

impl Filesystem for CirrusFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        // Ask only for what the kernel offers; each is an optimisation, not a need.
        for f in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Locks between mounts: POSIX record and OFD locks, and flock (which the
            // kernel then sends as a whole-file lock owned by the open file, as NFS does).
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
            // POSIX ACLs: the kernel enforces them (with default_permissions) and leaves
            // the umask to us (DONT_MASK), so meta can skip it under a default ACL.
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DONT_MASK,
        ] {
            let _ = config.add_capabilities(f);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let c = self.client.clone();
        // Runs on a fuser thread, outside the runtime: block on the flush.
        let _ = self.rt.block_on(async move {
            tokio::time::timeout(c.config().deadline, c.release_all()).await
        });
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let n = name(n);
        self.run(
            move |c| async move { c.lookup(InodeId(parent.0), &n).await },
            move |r| entry(reply, r),
        );
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inode numbers are stable cluster-wide; nothing is kept per lookup.
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(
            move |c| async move { c.getattr(InodeId(ino.0)).await },
            move |r| attr(reply, r),
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        self.run(
            move |c| async move { c.setattr(InodeId(ino.0), set, fh.map(|f| f.0)).await },
            move |r| attr(reply, r),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(
            move |c| async move { c.meta().readlink(InodeId(ino.0)).await },
            move |r| match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let new = NewMode {
            mode: mode & 0o7777,
            umask: Some(umask & 0o777),
        };
        // A FIFO's or socket's data stays in the kernel that opens it (the kernel never
        // sends their opens here), and a device node's open goes to the local driver.
        let special = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => None,
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDevice { rdev }),
            libc::S_IFBLK => Some(FileKind::BlockDevice { rdev }),
            _ => {
                reply.error(Errno::EINVAL);
                return;
            }
        };
        let (n, uid, gid) = (name(n), req.uid(), req.gid());
        self.run(
            move |c| async move {
                match special {
                    None => c.mknod(InodeId(parent.0), &n, new, uid, gid).await,
                    Some(kind) => {
                        c.meta()
                            .mknod(InodeId(parent.0), &n, kind, new, uid, gid)
                            .await
                    }
                }
            },
            move |r| entry(reply, r),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let new = NewMode {
            mode: mode & 0o7777,
            umask: Some(umask & 0o777),
        };
        let (n, uid, gid) = (name(n), req.uid(), req.gid());
        self.run(
            move |c| async move { c.meta().mkdir(InodeId(parent.0), &n, new, uid, gid).await },
            move |r| entry(reply, r),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.run(
            move |c| async move { c.unlink(InodeId(parent.0), &n).await },
            move |r| empty(reply, r),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.run(
            move |c| async move { c.rmdir(InodeId(parent.0), &n).await },
            move |r| empty(reply, r),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (n, t, uid, gid) = (
            name(link_name),
            target.as_os_str().as_bytes().to_vec(),
            req.uid(),
            req.gid(),
        );
        self.run(
            move |c| async move { c.meta().symlink(InodeId(parent.0), &n, &t, uid, gid).await },
            move |r| entry(reply, r),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let known = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
        if !known.contains(flags) || flags.is_all() {
            // RENAME_WHITEOUT (overlayfs) or both at once.
            reply.error(Errno::EINVAL);
            return;
        }
        let (n, nn, bits) = (name(n), name(newname), flags.bits());
        self.run(
            move |c| async move {
                c.rename(InodeId(parent.0), &n, InodeId(newparent.0), &nn, bits)
                    .await
            },
            move |r| empty(reply, r),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let nn = name(newname);
        self.run(
            move |c| async move { c.link(InodeId(ino.0), InodeId(newparent.0), &nn).await },
            move |r| entry(reply, r),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let notifier = self.notifier.clone();
        self.run(
            move |c| async move { c.open(InodeId(ino.0)).await },
            move |r| match r {
                Ok((fh, _)) => {
                    // Close-to-open: the kernel may hold attributes (size) from before
                    // another mount's close; drop them before the opener can use them.
                    // Offset -1: attributes only (the page cache goes at open anyway).
                    if let Some(n) = notifier.get() {
                        if let Err(e) = n.inval_inode(ino, -1, 0) {
                            tracing::debug!(err = %e, "invalidate attributes at open");
                        }
                    }
                    reply.opened(FileHandle(fh), FopenFlags::empty())
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(
            move |c| async move { c.read(fh.0, offset, size).await },
            move |r| match r {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Most writes fit in the write-back buffer: answered here, on the FUSE thread,
        // with one copy (from the request buffer into the file's buffer) and no task.
        match self.client.try_write(fh.0, offset, data) {
            Ok(Buffered::Done(n)) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
            Ok(Buffered::Full) => {
                let data = data.to_vec();
                self.run(
                    move |c| async move { c.write(fh.0, offset, &data).await },
                    move |r| match r {
                        Ok(n) => reply.written(n as u32),
                        Err(e) => reply.error(errno(&e)),
                    },
                );
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every close(2): the data goes out, then the closing process's POSIX locks on
        // the file go (the kernel sends no unlock for remote locks).
        self.run(
            move |c| async move {
                let flushed = c.flush(fh.0).await;
                let unlocked = c.unlock_owner(fh.0, lock_owner.0).await;
                flushed.and(unlocked)
            },
            move |r| empty(reply, r),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // flock and OFD locks belong to the open file: they go with its release.
        self.run(
            move |c| async move {
                let unlocked = c.unlock_handle(fh.0).await;
                if let Err(e) = &unlocked {
                    tracing::warn!(err = %e, "unlock at release: the lease drops them if the unlock is lost");
                }
                c.close(fh.0).await
            },
            move |r| empty(reply, r),
        );
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Some(Some(kind)) = lock_kind(typ) else {
            reply.error(Errno::EINVAL);
            return;
        };
        self.run(
            move |c| async move { c.getlk(fh.0, lock_owner.0, kind, start, end, pid).await },
            move |r| match r {
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Ok(Some(h)) => reply.locked(h.start, h.end, lock_typ(h.kind), h.pid),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(kind) = lock_kind(typ) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let caller = req.pid();
        let notifier = self.notifier.clone();
        self.run(
            move |c| async move {
                let signal = (sleep && kind.is_some())
                    .then(|| futures::FutureExt::boxed(signal_pending(caller)));
                c.setlk(fh.0, lock_owner.0, kind, start, end, pid, signal)
                    .await
            },
            move |r| {
                if r.is_ok() && kind.is_some() {
                    // Taking a lock revalidates: no page cached before it is served.
                    if let Some(n) = notifier.get() {
                        if let Err(e) = n.inval_inode(ino, 0, 0) {
                            tracing::debug!(err = %e, "invalidate pages after a lock");
                        }
                    }
                }
                empty(reply, r)
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.run(
            move |c| async move {
                c.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
                    .await
            },
            move |r| match r {
                // At most COPY_PER_CALL: fits the reply's u32.
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(
            move |c| async move { c.fsync(fh.0).await },
            move |r| empty(reply, r),
        );
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel opens only inodes it knows are directories; a directory removed
        // meanwhile fails at the first readdir (meta answers ENOENT). No meta call here.
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Kernel offsets: 1 after ".", 2 after "..", cookie + 2 after an entry.
        self.run(
            move |c| async move {
                let cookie = offset.saturating_sub(2);
                c.meta()
                    .readdir(InodeId(ino.0), cookie, READDIR_BATCH, false)
                    .await
            },
            move |r| match r {
                Ok((entries, _eof)) => {
                    if offset == 0 && reply.add(ino, 1, FileType::Directory, ".") {
                        return reply.ok();
                    }
                    if offset <= 1 && reply.add(ino, 2, FileType::Directory, "..") {
                        return reply.ok();
                    }
                    for e in entries {
                        if reply.add(
                            INodeNo(e.ino.0),
                            e.cookie + 2,
                            kind(e.kind),
                            OsStr::from_bytes(&e.name),
                        ) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.run(
            move |c| async move {
                let cookie = offset.saturating_sub(2);
                let dir = if offset <= 1 {
                    Some(c.getattr(InodeId(ino.0)).await?)
                } else {
                    None
                };
                let (entries, _) = c
                    .readdir(InodeId(ino.0), cookie, READDIR_BATCH, true)
                    .await?;
                Ok((dir, entries))
            },
            move |r| match r {
                Ok((dir, entries)) => {
                    if let Some(d) = &dir {
                        let fa = file_attr(d);
                        if offset == 0 && reply.add(ino, 1, ".", &DIR_TTL, &fa, Generation(0)) {
                            return reply.ok();
                        }
                        if reply.add(ino, 2, "..", &DIR_TTL, &fa, Generation(0)) {
                            return reply.ok();
                        }
                    }
                    for e in entries {
                        let Some(a) = &e.attr else {
                            // Meta gave no attributes: stop here; the kernel asks again
                            // from this offset and lookup fills the gap.
                            break;
                        };
                        if reply.add(
                            INodeNo(e.ino.0),
                            e.cookie + 2,
                            OsStr::from_bytes(&e.name),
                            &ttl(a),
                            &file_attr(a),
                            Generation(0),
                        ) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every namespace change is durable on a raft majority before it is acknowledged.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(
            move |c| async move { c.meta().statfs().await },
            move |r| match r {
                Ok(s) => {
                    let bs = if s.block_size == 0 {
                        4096
                    } else {
                        s.block_size
                    };
                    let blocks = s.total_bytes / bs;
                    let bfree = s.free_bytes / bs;
                    // Inodes are not a fixed resource: report plenty free.
                    let ffree = u64::MAX / 2;
                    reply.statfs(
                        blocks,
                        bfree,
                        bfree,
                        s.files.saturating_add(ffree),
                        ffree,
                        bs as u32,
                        255,
                        bs as u32,
                    )
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (n, v) = (name(n), value.to_vec());
        let flags = (flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE)) as u32;
        self.forget_absent(ino.0, &n);
        self.run(
            move |c| async move { c.setxattr(InodeId(ino.0), &n, &v, flags).await },
            move |r| empty(reply, r),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        let n = name(n);
        let cache = is_security_xattr(&n).then(|| self.absent_xattrs.clone());
        if let Some(c) = &cache {
            let key = (ino.0, n.clone());
            let mut m = cirrus_types::sync::lock(c);
            match m.get(&key) {
                Some(until) if *until > Instant::now() => {
                    drop(m);
                    reply.error(errno(&FsError::NoAttr));
                    return;
                }
                Some(_) => {
                    m.remove(&key);
                }
                None => {}
            }
        }
        let key_name = n.clone();
        let gen = self.xattr_gen.clone();
        let gen0 = gen.load(std::sync::atomic::Ordering::SeqCst);
        self.run(
            move |c| async move { c.meta().getxattr(InodeId(ino.0), &n).await },
            move |r| {
                if let (Some(c), Err(FsError::NoAttr)) = (&cache, &r) {
                    let mut m = cirrus_types::sync::lock(c);
                    if gen.load(std::sync::atomic::Ordering::SeqCst) == gen0 {
                        if m.len() >= ABSENT_XATTRS_MAX {
                            m.clear();
                        }
                        m.insert((ino.0, key_name), Instant::now() + DIR_TTL);
                    }
                }
                xattr_reply(reply, size, r)
            },
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run(
            move |c| async move {
                let names = c.meta().listxattr(InodeId(ino.0)).await?;
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                Ok(out)
            },
            move |r| xattr_reply(reply, size, r),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.forget_absent(ino.0, &n);
        self.run(
            move |c| async move { c.removexattr(InodeId(ino.0), &n).await },
            move |r| empty(reply, r),
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks mode bits itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let new = NewMode {
            mode: mode & 0o7777,
            umask: Some(umask & 0o777),
        };
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let (n, uid, gid) = (name(n), req.uid(), req.gid());
        let exclusive = flags & libc::O_EXCL != 0;
        let absent = self.absent_xattrs.clone();
        self.run(
            move |c| async move {
                c.create(InodeId(parent.0), &n, new, uid, gid, exclusive)
                    .await
            },
            move |r| match r {
                Ok((fh, a)) => {
                    if exclusive {
                        // A file this call made has no xattrs: spare the first write's
                        // security.capability round trip.
                        let mut m = cirrus_types::sync::lock(&absent);
                        if m.len() < ABSENT_XATTRS_MAX {
                            m.insert(
                                (a.ino.0, b"security.capability".to_vec()),
                                Instant::now() + DIR_TTL,
                            );
                        }
                    }
                    reply.created(
                        &DIR_TTL,
                        &file_attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    )
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        // COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE and unknown bits: not supported.
        let mode = match mode {
            0 => Fallocate::Allocate { keep_size: false },
            KEEP => Fallocate::Allocate { keep_size: true },
            m if m == PUNCH | KEEP => Fallocate::PunchHole,
            ZERO => Fallocate::Zero { keep_size: false },
            m if m == ZERO | KEEP => Fallocate::Zero { keep_size: true },
            _ => {
                reply.error(Errno::EOPNOTSUPP);
                return;
            }
        };
        self.run(
            move |c| async move {
                c.fallocate(InodeId(ino.0), fh.0, offset, length, mode)
                    .await
            },
            move |r| empty(reply, r),
        );
    }
}

/// The lock kind of an `fcntl` type: `Some(None)` for `F_UNLCK`, `None` for no type.
fn lock_kind(typ: i32) -> Option<Option<LockKind>> {
    match typ {
        libc::F_RDLCK => Some(Some(LockKind::Read)),
        libc::F_WRLCK => Some(Some(LockKind::Write)),
        libc::F_UNLCK => Some(None),
        _ => None,
    }
}

fn lock_typ(k: LockKind) -> i32 {
    match k {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
    }
}

/// Whether a `/proc/<tid>/status` shows a signal pending that the thread does not block.
fn unblocked_signal_pending(status: &str) -> bool {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

/// Resolves when thread `tid` (a blocked lock call's caller) has a signal to handle, or
/// is gone. fuser answers the kernel's FUSE_INTERRUPT with ENOSYS, after which the kernel
/// sends none and a caller stuck in a remote lock wait could not even be killed; so the
/// wait watches its caller itself (a read of one /proc file every 20 ms, local only).
async fn signal_pending(tid: u32) {
    let path = format!("/proc/{tid}/status");
    loop {
        match std::fs::read_to_string(&path) {
            Ok(s) if !unblocked_signal_pending(&s) => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, r: FsResult<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_signal_counts_only_when_the_thread_does_not_block_it() {
        let status = |pnd: &str, shd: &str, blk: &str| {
            format!("Name:\tpython3\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t0000000001001000\n")
        };
        assert!(!unblocked_signal_pending(&status(
            "0000000000000000",
            "0000000000000000",
            "0000000000000000"
        )));
        // SIGALRM (14) pending for the process, not blocked.
        assert!(unblocked_signal_pending(&status(
            "0000000000000000",
            "0000000000002000",
            "0000000000000000"
        )));
        // The same signal blocked by the thread.
        assert!(!unblocked_signal_pending(&status(
            "0000000000000000",
            "0000000000002000",
            "0000000000002000"
        )));
        // SIGKILL (9) pending for the thread.
        assert!(unblocked_signal_pending(&status(
            "0000000000000100",
            "0000000000000000",
            "0000000000000000"
        )));
        assert_eq!(lock_kind(libc::F_UNLCK), Some(None));
        assert_eq!(lock_kind(99), None);
        assert_eq!(
            lock_kind(lock_typ(LockKind::Write)),
            Some(Some(LockKind::Write))
        );
    }
}
