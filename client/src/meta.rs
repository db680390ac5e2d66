//! Typed meta client: one async method per meta RPC, domain types in and out, `FsError`
//! out. Wire types stop here. Leader following, per-try and total deadlines come from
//! `MetaConn`; this module adds the request shapes and the validation of replies.
//!
//! It also keeps the attributes of directories this client has just changed: namespace
//! replies carry the parent's attributes right after the change, and `cached_dir` serves
//! them for up to `DIR_ATTR_TTL`. With `default_permissions` the kernel drops a directory's
//! attributes after every create or unlink in it and asks for them again at the next
//! permission check; without this, every file created cost one more read barrier at meta.

use cirrus_proto::convert::{attr, lock_request, required};
use cirrus_proto::{pb, MetaConn};
pub use cirrus_types::{Attr, ChainTable, CreateArgs, DirEntry, SetAttr, Statfs, TimeSet};
use cirrus_types::{
    ClientId, FileKind, FsError, FsResult, HandleId, HeldLock, InodeId, Layout, LockCall,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long this client answers for a directory's attributes after changing it: the
/// kernel's own attribute TTL (`fuse::DIR_TTL`), so another mount's change of the
/// directory is seen as late as it would be without the cache.
pub const DIR_ATTR_TTL: Duration = Duration::from_secs(1);

/// Directories' attributes from the replies of this client's own changes.
#[derive(Default)]
struct DirAttrs {
    /// Bumped by changes whose reply may not name every directory they touched (an
    /// unlink or rename can change a moved directory's ctime, an xattr change its
    /// attributes): entries of an older generation are not served.
    gen: u64,
    by_ino: HashMap<InodeId, (Attr, Instant, u64)>,
}

/// Entries kept before the cache is cleared wholesale.
const DIR_ATTRS_MAX: usize = 4096;

/// An open handle at the meta group.
#[derive(Clone, Debug)]
pub struct Opened {
    pub handle: HandleId,
    pub attr: Attr,
    pub layout: Layout,
}

/// The attributes a reply must carry.
fn reply_attr(p: Option<&pb::Attr>) -> FsResult<Attr> {
    Ok(attr(p, "reply.attr")?)
}

fn layout(p: Option<&pb::Layout>) -> FsResult<Layout> {
    let p = required(p, "layout")?;
    Layout::try_from(p).map_err(|e| FsError::Protocol(format!("meta sent a bad layout: {e}")))
}

/// The typed meta client. Cheap to clone.
#[derive(Clone)]
pub struct MetaClient {
    conn: Arc<MetaConn>,
    dirs: Arc<Mutex<DirAttrs>>,
}

/// Runs one RPC through `MetaConn::call`, cloning the request for each attempt and
/// filling in the cluster id.
macro_rules! rpc {
    ($self:ident, $what:literal, $method:ident, $req:expr) => {{
        let mut req = $req;
        req.cluster_id = $self.conn.cluster_id();
        $self
            .conn
            .call($what, |mut c| {
                let r = req.clone();
                async move { c.$method(r).await }
            })
            .await
    }};
}

impl MetaClient {
    pub fn new(conn: Arc<MetaConn>) -> Self {
        MetaClient {
            conn,
            dirs: Arc::default(),
        }
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, DirAttrs> {
        cirrus_types::sync::lock(&self.dirs)
    }

    /// Attributes of directory `ino` from a change this client made less than
    /// `DIR_ATTR_TTL` ago, if any.
    pub fn cached_dir(&self, ino: InodeId) -> Option<Attr> {
        let d = self.dirs();
        d.by_ino
            .get(&ino)
            .filter(|(_, at, gen)| *gen == d.gen && at.elapsed() < DIR_ATTR_TTL)
            .map(|(a, _, _)| a.clone())
    }

    /// Remembers a directory's attributes from a reply (`gen`: the generation before the
    /// call was sent, so a change that raced with it wins).
    fn note_dir(&self, a: Option<&pb::Attr>, gen: u64) {
        let Some(a) = a.and_then(|a| Attr::try_from(a).ok()) else {
            return;
        };
        if a.kind != FileKind::Dir {
            return;
        }
        let mut d = self.dirs();
        if d.gen != gen {
            return;
        }
        if d.by_ino.len() >= DIR_ATTRS_MAX {
            d.by_ino.clear();
        }
        d.by_ino.insert(a.ino, (a, Instant::now(), gen));
    }

    /// Drops every cached directory attribute; returns the new generation.
    fn dirs_changed(&self) -> u64 {
        let mut d = self.dirs();
        d.gen += 1;
        d.by_ino.clear();
        d.gen
    }

    fn dir_gen(&self) -> u64 {
        self.dirs().gen
    }

    pub fn conn(&self) -> &Arc<MetaConn> {
        &self.conn
    }

    pub async fn lookup(&self, parent: InodeId, name: &[u8]) -> FsResult<Attr> {
        let r = rpc!(
            self,
            "lookup",
            lookup,
            pb::LookupRequest {
                cluster_id: String::new(),
                parent: parent.0,
                name: name.to_vec(),
            }
        )?;
        reply_attr(r.attr.as_ref())
    }

    pub async fn getattr(&self, ino: InodeId) -> FsResult<Attr> {
        let r = rpc!(
            self,
            "getattr",
            getattr,
            pb::GetattrRequest {
                cluster_id: String::new(),
                ino: ino.0,
            }
        )?;
        reply_attr(r.attr.as_ref())
    }

    pub async fn setattr(&self, ino: InodeId, set: &SetAttr, handle: u64) -> FsResult<Attr> {
        let r = rpc!(
            self,
            "setattr",
            setattr,
            pb::SetattrRequest {
                cluster_id: String::new(),
                ino: ino.0,
                mode: set.mode,
                uid: set.uid,
                gid: set.gid,
                size: set.size,
                atime: set.atime.map(Into::into),
                mtime: set.mtime.map(Into::into),
                handle,
            }
        )?;
        // Only this inode changed: its cached attributes (if a directory) are replaced.
        self.dirs().by_ino.remove(&ino);
        let gen = self.dir_gen();
        self.note_dir(r.attr.as_ref(), gen);
        reply_attr(r.attr.as_ref())
    }

    /// Creates a regular file; with a client id also opens a handle.
    pub async fn create(&self, args: &CreateArgs) -> FsResult<Opened> {
        let gen = self.dir_gen();
        let r = rpc!(self, "create", create, pb::CreateRequest::from(args))?;
        self.note_dir(r.parent.as_ref(), gen);
        Ok(Opened {
            handle: HandleId(r.handle),
            attr: reply_attr(r.attr.as_ref())?,
            layout: layout(r.layout.as_ref())?,
        })
    }

    pub async fn mkdir(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: impl Into<NewMode>,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let gen = self.dir_gen();
        let m = mode.into();
        let r = rpc!(
            self,
            "mkdir",
            mkdir,
            pb::MkdirRequest {
                cluster_id: String::new(),
                parent: parent.0,
                name: name.to_vec(),
                mode: m.mode,
                uid,
                gid,
                umask: m.umask,
            }
        )?;
        self.note_dir(r.parent.as_ref(), gen);
        reply_attr(r.attr.as_ref())
    }

    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let gen = self.dir_gen();
        let r = rpc!(
            self,
            "symlink",
            symlink,
            pb::SymlinkRequest {
                cluster_id: String::new(),
                parent: parent.0,
                name: name.to_vec(),
                target: target.to_vec(),
                uid,
                gid,
            }
        )?;
        self.note_dir(r.parent.as_ref(), gen);
        reply_attr(r.attr.as_ref())
    }

    /// A FIFO, unix socket or device node (`kind.is_special()`).
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        mode: impl Into<NewMode>,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let gen = self.dir_gen();
        let m = mode.into();
        let r = rpc!(
            self,
            "mknod",
            mknod,
            pb::MknodRequest {
                cluster_id: String::new(),
                parent: parent.0,
                name: name.to_vec(),
                kind: kind.code(),
                mode: m.mode,
                rdev: kind.rdev(),
                uid,
                gid,
                umask: m.umask,
            }
        )?;
        self.note_dir(r.parent.as_ref(), gen);
        reply_attr(r.attr.as_ref())
    }

    pub async fn readlink(&self, ino: InodeId) -> FsResult<Vec<u8>> {
        let r = rpc!(
            self,
            "readlink",
            readlink,
            pb::ReadlinkRequest {
                cluster_id: String::new(),
                ino: ino.0,
            }
        )?;
        Ok(r.target)
    }

    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> FsResult<Attr> {
        let gen = self.dir_gen();
        let r = rpc!(
            self,
            "link",
            link,
            pb::LinkRequest {
                cluster_id: String::new(),
                ino: ino.0,
                new_parent: new_parent.0,
                new_name: new_name.to_vec(),
            }
        )?;
        self.note_dir(r.parent.as_ref(), gen);
        reply_attr(r.attr.as_ref())
    }

    pub async fn unlink(&self, parent: InodeId, name: &[u8]) -> FsResult<()> {
        let gen = self.dirs_changed();
        let r = rpc!(
            self,
            "unlink",
            unlink,
            pb::UnlinkRequest {
                cluster_id: String::new(),
                parent: parent.0,
                name: name.to_vec(),
            }
        )?;
        self.note_dir(r.parent.as_ref(), gen);
        Ok(())
    }

    pub async fn rmdir(&self, parent: InodeId, name: &[u8]) -> FsResult<()> {
        let gen = self.dirs_changed();
        let r = rpc!(
            self,
            "rmdir",
            rmdir,
            pb::RmdirRequest {
                cluster_id: String::new(),
                parent: parent.0,
                name: name.to_vec(),
            }
        )?;
        self.note_dir(r.parent.as_ref(), gen);
        Ok(())
    }

    /// `flags`: 1 = RENAME_NOREPLACE, 2 = RENAME_EXCHANGE (the Linux values).
    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let gen = self.dirs_changed();
        let r = rpc!(
            self,
            "rename",
            rename,
            pb::RenameRequest {
                cluster_id: String::new(),
                parent: parent.0,
                name: name.to_vec(),
                new_parent: new_parent.0,
                new_name: new_name.to_vec(),
                flags,
            }
        )?;
        self.note_dir(r.parent.as_ref(), gen);
        self.note_dir(r.new_parent.as_ref(), gen);
        Ok(())
    }

    /// Entries after `cookie` (0: from the start); `bool` is true at the end of the directory.
    pub async fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> FsResult<(Vec<DirEntry>, bool)> {
        let r = rpc!(
            self,
            "readdir",
            readdir,
            pb::ReaddirRequest {
                cluster_id: String::new(),
                ino: ino.0,
                cookie,
                limit,
                plus,
            }
        )?;
        let mut out = Vec::with_capacity(r.entries.len());
        for e in &r.entries {
            let mut e = DirEntry::try_from(e)?;
            if !plus {
                e.attr = None;
            }
            out.push(e);
        }
        Ok((out, r.eof))
    }

    pub async fn getxattr(&self, ino: InodeId, name: &[u8]) -> FsResult<Vec<u8>> {
        let r = rpc!(
            self,
            "getxattr",
            get_xattr,
            pb::GetXattrRequest {
                cluster_id: String::new(),
                ino: ino.0,
                name: name.to_vec(),
            }
        )?;
        Ok(r.value)
    }

    /// `flags`: 1 XATTR_CREATE, 2 XATTR_REPLACE.
    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.dirs_changed();
        rpc!(
            self,
            "setxattr",
            set_xattr,
            pb::SetXattrRequest {
                cluster_id: String::new(),
                ino: ino.0,
                name: name.to_vec(),
                value: value.to_vec(),
                flags,
            }
        )?;
        Ok(())
    }

    pub async fn listxattr(&self, ino: InodeId) -> FsResult<Vec<Vec<u8>>> {
        let r = rpc!(
            self,
            "listxattr",
            list_xattr,
            pb::ListXattrRequest {
                cluster_id: String::new(),
                ino: ino.0,
            }
        )?;
        Ok(r.names)
    }

    pub async fn removexattr(&self, ino: InodeId, name: &[u8]) -> FsResult<()> {
        self.dirs_changed();
        rpc!(
            self,
            "removexattr",
            remove_xattr,
            pb::RemoveXattrRequest {
                cluster_id: String::new(),
                ino: ino.0,
                name: name.to_vec(),
            }
        )?;
        Ok(())
    }

    pub async fn statfs(&self) -> FsResult<Statfs> {
        let r = rpc!(
            self,
            "statfs",
            statfs,
            pb::StatfsRequest {
                cluster_id: String::new(),
            }
        )?;
        Ok(Statfs::from(&r))
    }

    pub async fn open(&self, ino: InodeId, client: ClientId, truncate: bool) -> FsResult<Opened> {
        let r = rpc!(
            self,
            "open",
            open,
            pb::OpenRequest {
                cluster_id: String::new(),
                ino: ino.0,
                client_id: client.0,
                truncate,
            }
        )?;
        Ok(Opened {
            handle: HandleId(r.handle),
            attr: reply_attr(r.attr.as_ref())?,
            layout: layout(r.layout.as_ref())?,
        })
    }

    pub async fn release(&self, handle: HandleId) -> FsResult<()> {
        self.release_many(&[handle]).await
    }

    /// Releases `handles` (1 to `MAX_RELEASE_BATCH`) in one raft entry.
    pub async fn release_many(&self, handles: &[HandleId]) -> FsResult<()> {
        let Some((first, more)) = handles.split_first() else {
            return Ok(());
        };
        rpc!(
            self,
            "release",
            release,
            pb::ReleaseRequest {
                cluster_id: String::new(),
                handle: first.0,
                more: more.iter().map(|h| h.0).collect(),
            }
        )?;
        Ok(())
    }

    /// Records that data up to `size` is on the chains: size = max(size, committed).
    pub async fn commit_write(
        &self,
        ino: InodeId,
        handle: HandleId,
        size: u64,
        mtime_ns: i64,
    ) -> FsResult<Attr> {
        let r = rpc!(
            self,
            "commit write",
            commit_write,
            pb::CommitWriteRequest {
                cluster_id: String::new(),
                ino: ino.0,
                handle: handle.0,
                size,
                mtime_ns,
            }
        )?;
        reply_attr(r.attr.as_ref())
    }

    pub async fn get_layout(&self, ino: InodeId) -> FsResult<Layout> {
        let r = rpc!(
            self,
            "get layout",
            get_layout,
            pb::GetLayoutRequest {
                cluster_id: String::new(),
                ino: ino.0,
            }
        )?;
        layout(r.layout.as_ref())
    }

    pub async fn get_chains(&self) -> FsResult<ChainTable> {
        let r = rpc!(
            self,
            "get chains",
            get_chains,
            pb::GetChainsRequest {
                cluster_id: String::new(),
            }
        )?;
        Ok(ChainTable::from(&r))
    }

    pub async fn renew_lease(&self, client: ClientId) -> FsResult<()> {
        rpc!(
            self,
            "renew lease",
            renew_lease,
            pb::RenewLeaseRequest {
                cluster_id: String::new(),
                client_id: client.0,
            }
        )?;
        Ok(())
    }
    /// `F_SETLK` (`wait == None`) or one slice of `F_SETLKW` (`Some((wait_id, slice))`):
    /// `WouldBlock` while another owner holds a conflicting lock.
    pub async fn set_lock(&self, lock: &LockCall, wait: Option<(u64, Duration)>) -> FsResult<()> {
        let (wait_id, wait_ms) = wait.map_or((0, 0), |(id, d)| (id, d.as_millis() as u64));
        rpc!(
            self,
            "set lock",
            set_lock,
            pb::LockRequest {
                wait: wait.is_some(),
                wait_id,
                wait_ms,
                ..lock_request(lock)
            }
        )?;
        Ok(())
    }

    /// `F_GETLK`: the first lock of another owner in the way of `lock`, if any.
    pub async fn get_lock(&self, lock: &LockCall) -> FsResult<Option<HeldLock>> {
        let r = rpc!(self, "get lock", get_lock, lock_request(lock))?;
        let kind = match cirrus_proto::convert::lock_kind(r.kind) {
            Ok(None) => return Ok(None),
            Ok(Some(k)) => k,
            Err(e) => return Err(FsError::Io(format!("meta answered: {e}"))),
        };
        Ok(Some(HeldLock {
            // The holder's identity is not sent back; only what F_GETLK reports is.
            owner: lock.owner,
            kind,
            start: r.start,
            end: r.end,
            pid: r.pid,
        }))
    }

    /// Ends lock wait `wait_id` (its caller got a signal).
    pub async fn cancel_lock_wait(&self, client: ClientId, wait_id: u64) -> FsResult<()> {
        rpc!(
            self,
            "cancel lock wait",
            cancel_lock_wait,
            pb::CancelLockWaitRequest {
                cluster_id: String::new(),
                client_id: client.0,
                wait_id,
            }
        )?;
        Ok(())
    }
}

/// A new inode's permission bits, with the caller's umask when the filesystem is to apply
/// it (a mount with POSIX ACLs: meta applies it unless the parent has a default ACL,
/// which is inherited instead). A plain `u32` is a final mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewMode {
    pub mode: u32,
    pub umask: Option<u32>,
}

impl From<u32> for NewMode {
    fn from(mode: u32) -> Self {
        NewMode { mode, umask: None }
    }
}

impl NewMode {
    /// The permission bits only (file type bits dropped).
    pub fn perms(self) -> Self {
        NewMode {
            mode: self.mode & 0o7777,
            ..self
        }
    }
}
