//! Namespace commands: init, create, mkdir, symlink, link, unlink, rmdir, rename,
//! setattr, xattrs, open handles, commit-write and garbage.
//!
//! Every function here first runs all of its checks against `&self`, and only then
//! mutates: a command that fails leaves the state (and so the digest) untouched.

use super::*;
use cirrus_types::layout::{DEFAULT_MAX_STRIPE_COUNT, DEFAULT_STRIPE_UNIT};
use cirrus_types::limits::check_file_size;
use cirrus_types::name::validate_name;
use cirrus_types::LAYOUT_FN_VERSION;

impl MetaState {
    pub(super) fn init(&mut self, cluster_id: ClusterId, replicas: u32, now: i64) -> Response {
        if let Some(c) = self.cluster_id {
            // A repeated bootstrap proposal is harmless; a different id is a misconfiguration.
            return if c == cluster_id {
                Ok(Reply::Done)
            } else {
                Err(FsError::Invalid(format!(
                    "already initialised as cluster {c}, not {cluster_id}"
                )))
            };
        }
        if !(1..=3).contains(&replicas) {
            return Err(FsError::Invalid(format!(
                "replication factor {replicas} is not in 1..=3"
            )));
        }
        self.cluster_id = Some(cluster_id);
        self.replicas = replicas;
        self.next_ino = InodeId::ROOT.0 + 1;
        self.next_handle = 1;
        self.next_server = 1;
        self.next_chain = 1;
        let root = new_inode(InodeId::ROOT, 0o755, 0, 0, now, new_dir_body(InodeId::ROOT));
        self.inodes
            .insert(InodeId::ROOT, Inode { nlink: 2, ..root });
        Ok(Reply::Done)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
        &mut self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        client: Option<ClientId>,
        spec: LayoutSpec,
        umask: Option<u32>,
        now: i64,
    ) -> Response {
        validate_name(name)?;
        spec.validate()?;
        if let Some(e) = self.dir_entries(parent)?.get(name) {
            if exclusive {
                return Err(FsError::Exists);
            }
            return match e.kind {
                FileKind::Dir => Err(FsError::IsDir),
                FileKind::Symlink
                | FileKind::Fifo
                | FileKind::Socket
                | FileKind::CharDevice { .. }
                | FileKind::BlockDevice { .. } => Err(FsError::Exists),
                FileKind::File => {
                    let ino = e.ino;
                    let layout = self.layout(ino)?;
                    if let Some(c) = client {
                        self.check_handle_room(c)?;
                    }
                    let handle = client.map(|c| self.add_handle(ino, c));
                    Ok(Reply::Created {
                        attr: self.getattr(ino)?,
                        layout,
                        handle,
                        created: false,
                    })
                }
            };
        }
        if let Some(c) = client {
            self.check_handle_room(c)?;
        }
        let ino = InodeId(self.next_ino);
        let layout = self.choose_layout(parent, spec, ino)?;
        // Checks done; mutate.
        self.next_ino += 1;
        for c in &layout.chains {
            *self.chain_refs.entry(*c).or_default() += 1;
        }
        let body = Body::File {
            layout: layout.clone(),
            open: 0,
        };
        let m = self.new_mode(parent, mode, umask, false);
        let mut inode = new_inode(ino, m.mode, uid, gid, now, body);
        inode.xattrs.extend(m.xattrs);
        self.inodes.insert(ino, inode);
        self.insert_dentry(parent, name, ino, FileKind::File, now);
        let handle = client.map(|c| self.add_handle(ino, c));
        Ok(Reply::Created {
            attr: self.getattr(ino)?,
            layout,
            handle,
            created: true,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn mkdir(
        &mut self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        umask: Option<u32>,
        now: i64,
    ) -> Response {
        validate_name(name)?;
        if self.dir_entries(parent)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.alloc_ino();
        let m = self.new_mode(parent, mode, umask, true);
        let mut inode = new_inode(ino, m.mode, uid, gid, now, new_dir_body(parent));
        inode.xattrs.extend(m.xattrs);
        inode.nlink = 2;
        // A directory's default layout is inherited by its new subdirectories, as
        // `lfs setstripe` defaults are.
        if let Some(v) = self.inode_ref(parent)?.xattrs.get(LAYOUT_XATTR) {
            inode.xattrs.insert(LAYOUT_XATTR.to_vec(), v.clone());
        }
        self.inodes.insert(ino, inode);
        self.insert_dentry(parent, name, ino, FileKind::Dir, now);
        self.inode_mut(parent).nlink += 1;
        self.getattr(ino).map(Reply::Attr)
    }

    pub(super) fn symlink(
        &mut self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
        now: i64,
    ) -> Response {
        validate_name(name)?;
        if target.is_empty() {
            // As symlink(2): an empty target is ENOENT.
            return Err(FsError::NotFound);
        }
        if target.len() > SYMLINK_MAX {
            return Err(FsError::NameTooLong);
        }
        if target.contains(&0) {
            return Err(FsError::Invalid("symlink target contains NUL".into()));
        }
        if self.dir_entries(parent)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.alloc_ino();
        let mut inode = new_inode(
            ino,
            0o777,
            uid,
            gid,
            now,
            Body::Symlink {
                target: target.to_vec(),
            },
        );
        inode.size = target.len() as u64;
        self.inodes.insert(ino, inode);
        self.insert_dentry(parent, name, ino, FileKind::Symlink, now);
        self.getattr(ino).map(Reply::Attr)
    }

    /// A FIFO, unix socket or device node: an inode with a kind (and a device number)
    /// and no data here; the kernel that opens it keeps its data.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mknod(
        &mut self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        umask: Option<u32>,
        now: i64,
    ) -> Response {
        validate_name(name)?;
        if !kind.is_special() {
            return Err(FsError::Invalid(format!(
                "mknod makes a FIFO, socket or device node, not a {kind:?}"
            )));
        }
        if self.dir_entries(parent)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.alloc_ino();
        let m = self.new_mode(parent, mode, umask, false);
        let mut inode = new_inode(ino, m.mode, uid, gid, now, Body::Special { kind });
        inode.xattrs.extend(m.xattrs);
        self.inodes.insert(ino, inode);
        self.insert_dentry(parent, name, ino, kind, now);
        self.getattr(ino).map(Reply::Attr)
    }

    pub(super) fn link(
        &mut self,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
        now: i64,
    ) -> Response {
        validate_name(new_name)?;
        let inode = self.inode_ref(ino)?;
        let kind = inode.kind();
        if kind == FileKind::Dir {
            // link(2) says EPERM; FsError has no EPERM, and EACCES is the nearest refusal.
            return Err(FsError::PermissionDenied);
        }
        if inode.nlink == 0 {
            // An unlinked (open) file cannot be linked back, as link(2) without O_TMPFILE.
            return Err(FsError::NotFound);
        }
        if inode.nlink == u32::MAX {
            return Err(FsError::Invalid("too many links".into()));
        }
        if self.dir_entries(new_parent)?.contains_key(new_name) {
            return Err(FsError::Exists);
        }
        self.insert_dentry(new_parent, new_name, ino, kind, now);
        let inode = self.inode_mut(ino);
        inode.nlink += 1;
        inode.ctime_ns = now;
        self.getattr(ino).map(Reply::Attr)
    }

    pub(super) fn unlink(&mut self, parent: InodeId, name: &[u8], now: i64) -> Response {
        validate_name(name)?;
        let e = self
            .dir_entries(parent)?
            .get(name)
            .cloned()
            .ok_or(FsError::NotFound)?;
        if e.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        self.remove_dentry(parent, name, now);
        self.drop_link(e.ino, now);
        Ok(Reply::Done)
    }

    pub(super) fn rmdir(&mut self, parent: InodeId, name: &[u8], now: i64) -> Response {
        validate_name(name)?;
        let e = self
            .dir_entries(parent)?
            .get(name)
            .cloned()
            .ok_or(FsError::NotFound)?;
        if e.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.dir_entries(e.ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.remove_dentry(parent, name, now);
        self.inodes.remove(&e.ino);
        self.inode_mut(parent).nlink -= 1;
        Ok(Reply::Done)
    }

    pub(super) fn rename(
        &mut self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
        now: i64,
    ) -> Response {
        validate_name(name)?;
        validate_name(new_name)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(FsError::Invalid(format!("rename flags {flags:#x}")));
        }
        let src = self
            .dir_entries(parent)?
            .get(name)
            .cloned()
            .ok_or(FsError::NotFound)?;
        let dst = self.dir_entries(new_parent)?.get(new_name).cloned();
        if flags == RENAME_NOREPLACE && dst.is_some() {
            return Err(FsError::Exists);
        }
        if flags == RENAME_EXCHANGE && dst.is_none() {
            return Err(FsError::NotFound);
        }
        if let Some(d) = &dst {
            // Two names of one inode (or one name onto itself): POSIX says do nothing.
            if d.ino == src.ino {
                return Ok(Reply::Done);
            }
        }
        if src.kind == FileKind::Dir && self.is_within(new_parent, src.ino) {
            return Err(FsError::Invalid(
                "cannot move a directory into its own subtree".into(),
            ));
        }
        if flags == RENAME_EXCHANGE {
            // `dst` exists here (checked above); it moves to `parent`.
            let Some(d) = dst else {
                return Err(FsError::NotFound);
            };
            if d.kind == FileKind::Dir && self.is_within(parent, d.ino) {
                return Err(FsError::Invalid(
                    "cannot move a directory into its own subtree".into(),
                ));
            }
            self.exchange(parent, name, &src, new_parent, new_name, &d, now);
            return Ok(Reply::Done);
        }
        if let Some(d) = &dst {
            match (src.kind == FileKind::Dir, d.kind == FileKind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.dir_entries(d.ino)?.is_empty() => {
                    return Err(FsError::NotEmpty)
                }
                _ => {}
            }
        }
        // Checks done; mutate.
        self.remove_dentry(parent, name, now);
        if let Some(d) = &dst {
            self.remove_dentry(new_parent, new_name, now);
            if d.kind == FileKind::Dir {
                self.inodes.remove(&d.ino);
                self.inode_mut(new_parent).nlink -= 1;
            } else {
                self.drop_link(d.ino, now);
            }
        }
        self.insert_dentry(new_parent, new_name, src.ino, src.kind, now);
        if src.kind == FileKind::Dir && parent != new_parent {
            self.inode_mut(parent).nlink -= 1;
            self.inode_mut(new_parent).nlink += 1;
            if let Body::Dir { parent: p, .. } = &mut self.inode_mut(src.ino).body {
                *p = new_parent;
            }
        }
        self.inode_mut(src.ino).ctime_ns = now;
        Ok(Reply::Done)
    }

    /// RENAME_EXCHANGE after its checks: each name keeps its cookie, the inodes swap.
    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        parent: InodeId,
        name: &[u8],
        src: &Dentry,
        new_parent: InodeId,
        new_name: &[u8],
        dst: &Dentry,
        now: i64,
    ) {
        self.set_dentry_target(parent, name, dst.ino, dst.kind, now);
        self.set_dentry_target(new_parent, new_name, src.ino, src.kind, now);
        if parent != new_parent {
            for (moved, from, to) in [(src, parent, new_parent), (dst, new_parent, parent)] {
                if moved.kind == FileKind::Dir {
                    self.inode_mut(from).nlink -= 1;
                    self.inode_mut(to).nlink += 1;
                    if let Body::Dir { parent: p, .. } = &mut self.inode_mut(moved.ino).body {
                        *p = to;
                    }
                }
            }
        }
        self.inode_mut(src.ino).ctime_ns = now;
        self.inode_mut(dst.ino).ctime_ns = now;
    }

    pub(super) fn setattr(&mut self, ino: InodeId, set: &SetAttr, now: i64) -> Response {
        let inode = self.inode_ref(ino)?;
        if let Some(size) = set.size {
            match inode.kind() {
                FileKind::File => {}
                FileKind::Dir => return Err(FsError::IsDir),
                FileKind::Symlink => {
                    return Err(FsError::Invalid("cannot resize a symlink".into()))
                }
                k => return Err(FsError::Invalid(format!("cannot resize a {k:?}"))),
            }
            // Refused at the service door too. An entry accepted under an older, larger limit
            // is refused here on replay, but every node runs the same binary after an
            // upgrade, so every replica applies it alike and the state stays identical.
            check_file_size(size)?;
        }
        let resolve = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::Ns(ns) => ns,
        };
        let acl = set.mode.and_then(|m| self.acl_after_chmod(ino, m));
        let inode = self.inode_mut(ino);
        if let Some(m) = set.mode {
            inode.mode = m & 0o7777;
        }
        if let Some(a) = acl {
            inode
                .xattrs
                .insert(cirrus_types::acl::ACCESS_XATTR.to_vec(), a);
        }
        if let Some(u) = set.uid {
            inode.uid = u;
        }
        if let Some(g) = set.gid {
            inode.gid = g;
        }
        if let Some(size) = set.size {
            if size != inode.size {
                inode.size = size;
                inode.mtime_ns = now;
            }
        }
        if let Some(t) = set.atime {
            inode.atime_ns = resolve(t);
        }
        if let Some(t) = set.mtime {
            inode.mtime_ns = resolve(t);
        }
        inode.ctime_ns = now;
        Ok(Reply::Attr(inode.attr()))
    }

    pub(super) fn set_xattr(
        &mut self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
        now: i64,
    ) -> Response {
        let inode = self.inode_ref(ino)?;
        if name.is_empty() || name.len() > XATTR_NAME_MAX || value.len() > XATTR_VALUE_MAX {
            return Err(FsError::Range);
        }
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
            return Err(FsError::Invalid(format!("xattr flags {flags:#x}")));
        }
        let present = inode.xattrs.get(name);
        if flags == XATTR_CREATE && present.is_some() {
            return Err(FsError::Exists);
        }
        if flags == XATTR_REPLACE && present.is_none() {
            return Err(FsError::NoAttr);
        }
        if present.is_none() && inode.xattrs.len() >= XATTRS_MAX_PER_INODE {
            return Err(FsError::NoSpace);
        }
        let held: usize = inode.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        let freed = present.map_or(0, |v| name.len() + v.len());
        if held - freed + name.len() + value.len() > XATTR_BYTES_MAX_PER_INODE {
            return Err(FsError::NoSpace);
        }
        if name == LAYOUT_XATTR {
            if inode.kind() != FileKind::Dir {
                return Err(FsError::Invalid(
                    "cirrus.layout is a directory default; a file's layout is fixed at create"
                        .into(),
                ));
            }
            let text = std::str::from_utf8(value)
                .map_err(|_| FsError::Invalid("cirrus.layout is not UTF-8".into()))?;
            LayoutSpec::parse(text)?;
        }
        let acl = self.acl_set(ino, name, value)?;
        let inode = self.inode_mut(ino);
        match acl {
            None => {
                inode.xattrs.insert(name.to_vec(), value.to_vec());
            }
            Some((keep, mode)) => {
                inode.mode = mode;
                match keep {
                    Some(v) => inode.xattrs.insert(name.to_vec(), v),
                    None => inode.xattrs.remove(name),
                };
            }
        }
        inode.ctime_ns = now;
        Ok(Reply::Done)
    }

    pub(super) fn remove_xattr(&mut self, ino: InodeId, name: &[u8], now: i64) -> Response {
        if !self.inode_ref(ino)?.xattrs.contains_key(name) {
            return Err(FsError::NoAttr);
        }
        let inode = self.inode_mut(ino);
        inode.xattrs.remove(name);
        inode.ctime_ns = now;
        Ok(Reply::Done)
    }

    pub(super) fn open(
        &mut self,
        ino: InodeId,
        client: ClientId,
        truncate: bool,
        now: i64,
    ) -> Response {
        let layout = self.layout(ino)?;
        self.check_handle_room(client)?;
        let handle = self.add_handle(ino, client);
        let inode = self.inode_mut(ino);
        if truncate {
            inode.size = 0;
            inode.mtime_ns = now;
            inode.ctime_ns = now;
        }
        Ok(Reply::Opened {
            handle,
            attr: inode.attr(),
            layout,
        })
    }

    pub(super) fn release(&mut self, handle: HandleId, now: i64) -> Response {
        let Some(h) = self.handles.remove(&handle) else {
            return Ok(Reply::Done);
        };
        if let Some(set) = self.client_handles.get_mut(&h.client) {
            set.remove(&handle);
            if set.is_empty() {
                self.client_handles.remove(&h.client);
            }
        }
        let inode = self.inode_mut(h.ino);
        if let Body::File { open, .. } = &mut inode.body {
            *open = open.saturating_sub(1);
        }
        self.collect_if_unreferenced(h.ino, now);
        Ok(Reply::Done)
    }

    pub(super) fn release_many(&mut self, handles: &[HandleId], now: i64) -> Response {
        cirrus_types::check_release_batch(handles.len())?;
        for h in handles {
            self.release(*h, now)?;
        }
        Ok(Reply::Done)
    }

    pub(super) fn release_client(&mut self, client: ClientId, now: i64) -> Response {
        let handles: Vec<HandleId> = self
            .client_handles
            .get(&client)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for h in handles {
            self.release(h, now)?;
        }
        self.drop_client_locks(client);
        Ok(Reply::Done)
    }

    pub(super) fn commit_write(
        &mut self,
        ino: InodeId,
        handle: Option<HandleId>,
        size: u64,
        mtime_ns: i64,
        now: i64,
    ) -> Response {
        self.layout(ino)?;
        // Checked at the service door too; see `setattr` on why apply checks again.
        check_file_size(size)?;
        if let Some(h) = handle {
            match self.handles.get(&h) {
                Some(open) if open.ino == ino => {}
                _ => return Err(FsError::StaleHandle),
            }
        }
        let inode = self.inode_mut(ino);
        inode.size = inode.size.max(size);
        inode.mtime_ns = mtime_ns;
        inode.ctime_ns = now;
        Ok(Reply::Attr(inode.attr()))
    }

    pub(super) fn ack_garbage(&mut self, inos: &[InodeId]) -> Response {
        // Idempotent: an inode acknowledged twice (a retried proposal) is simply absent.
        for ino in inos {
            if let Some(g) = self.garbage.remove(ino) {
                for c in &g.layout.chains {
                    if let Some(n) = self.chain_refs.get_mut(c) {
                        *n -= 1;
                        if *n == 0 {
                            self.chain_refs.remove(c);
                        }
                    }
                }
            }
        }
        Ok(Reply::Done)
    }

    // ------------------------------------------------------------ helpers

    /// The inode, or ENOENT.
    pub(super) fn inode_ref(&self, ino: InodeId) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(FsError::NotFound)
    }

    /// Only called after the caller checked that `ino` exists.
    fn inode_mut(&mut self, ino: InodeId) -> &mut Inode {
        self.inodes
            .get_mut(&ino)
            .unwrap_or_else(|| unreachable!("inode {ino} checked before mutation"))
    }

    fn alloc_ino(&mut self) -> InodeId {
        let ino = InodeId(self.next_ino);
        self.next_ino += 1;
        ino
    }

    /// Adds `name -> ino` to directory `dir` (checked to exist and lack the name), with the
    /// directory's next cookie, and stamps the directory's mtime and ctime.
    fn insert_dentry(&mut self, dir: InodeId, name: &[u8], ino: InodeId, kind: FileKind, now: i64) {
        let d = self.inode_mut(dir);
        d.mtime_ns = now;
        d.ctime_ns = now;
        if let Body::Dir {
            entries,
            by_cookie,
            next_cookie,
            ..
        } = &mut d.body
        {
            let cookie = *next_cookie;
            *next_cookie += 1;
            entries.insert(name.to_vec(), Dentry { ino, kind, cookie });
            by_cookie.insert(cookie, name.to_vec());
        }
    }

    fn remove_dentry(&mut self, dir: InodeId, name: &[u8], now: i64) {
        let d = self.inode_mut(dir);
        d.mtime_ns = now;
        d.ctime_ns = now;
        if let Body::Dir {
            entries, by_cookie, ..
        } = &mut d.body
        {
            if let Some(e) = entries.remove(name) {
                by_cookie.remove(&e.cookie);
            }
        }
    }

    /// Points an existing entry at another inode, keeping its cookie (RENAME_EXCHANGE).
    fn set_dentry_target(
        &mut self,
        dir: InodeId,
        name: &[u8],
        ino: InodeId,
        kind: FileKind,
        now: i64,
    ) {
        let d = self.inode_mut(dir);
        d.mtime_ns = now;
        d.ctime_ns = now;
        if let Body::Dir { entries, .. } = &mut d.body {
            if let Some(e) = entries.get_mut(name) {
                e.ino = ino;
                e.kind = kind;
            }
        }
    }

    /// One name of a non-directory is gone: nlink drops, and an inode with neither names
    /// nor open handles is removed (a file's objects become garbage).
    fn drop_link(&mut self, ino: InodeId, now: i64) {
        let inode = self.inode_mut(ino);
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.ctime_ns = now;
        self.collect_if_unreferenced(ino, now);
    }

    fn collect_if_unreferenced(&mut self, ino: InodeId, now: i64) {
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        let open = match &inode.body {
            Body::File { open, .. } => *open,
            _ => 0,
        };
        if inode.nlink > 0 || open > 0 {
            return;
        }
        self.forget_locks(ino);
        if let Some(Inode {
            body: Body::File { layout, .. },
            ..
        }) = self.inodes.remove(&ino)
        {
            self.garbage.insert(
                ino,
                Garbage {
                    ino,
                    layout,
                    since_ns: now,
                },
            );
        }
    }

    /// Refuses a new handle for a client at [`MAX_HANDLES_PER_CLIENT`].
    fn check_handle_room(&self, client: ClientId) -> FsResult<()> {
        let held = self.client_handles.get(&client).map_or(0, BTreeSet::len);
        if held >= MAX_HANDLES_PER_CLIENT {
            return Err(FsError::TooManyOpen(format!(
                "client {client} holds {held} open handles, the most one client may hold \
                 (close some first)"
            )));
        }
        Ok(())
    }

    /// Opens a handle on a regular file (checked by the caller).
    fn add_handle(&mut self, ino: InodeId, client: ClientId) -> HandleId {
        let id = HandleId(self.next_handle);
        self.next_handle += 1;
        self.handles.insert(id, Handle { ino, client });
        self.client_handles.entry(client).or_default().insert(id);
        if let Body::File { open, .. } = &mut self.inode_mut(ino).body {
            *open += 1;
        }
        id
    }

    /// True if directory `dir` is `ancestor` or lies below it (walks parent pointers up to
    /// the root, which is its own parent).
    fn is_within(&self, dir: InodeId, ancestor: InodeId) -> bool {
        let mut cur = dir;
        loop {
            if cur == ancestor {
                return true;
            }
            match self.inodes.get(&cur).map(|i| &i.body) {
                Some(Body::Dir { parent, .. }) if *parent != cur => cur = *parent,
                _ => return false,
            }
        }
    }

    /// Layout of a new file: request fields, else the directory's `cirrus.layout`, else the
    /// cluster default (1 MiB, min(4, chains)). Objects go to consecutive usable chains
    /// starting at `ino % n`, so consecutive files start on different chains.
    fn choose_layout(&self, parent: InodeId, spec: LayoutSpec, ino: InodeId) -> FsResult<Layout> {
        let dir_spec = self
            .inode_ref(parent)?
            .xattrs
            .get(LAYOUT_XATTR)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|t| LayoutSpec::parse(t).ok())
            .unwrap_or_default();
        let pick = |a: u32, b: u32, default: u32| {
            if a != 0 {
                a
            } else if b != 0 {
                b
            } else {
                default
            }
        };
        let unit = pick(spec.stripe_unit, dir_spec.stripe_unit, DEFAULT_STRIPE_UNIT);
        let want = pick(
            spec.stripe_count,
            dir_spec.stripe_count,
            DEFAULT_MAX_STRIPE_COUNT,
        );
        let usable = self.usable_chains();
        if usable.is_empty() {
            return Err(FsError::NoSpace);
        }
        let n = usable.len();
        let count = (want as usize).min(n);
        let start = (ino.0 % n as u64) as usize;
        let layout = Layout {
            fn_version: LAYOUT_FN_VERSION,
            stripe_unit: unit,
            chains: (0..count).map(|i| usable[(start + i) % n]).collect(),
        };
        layout.validate()?;
        Ok(layout)
    }
}

fn new_dir_body(parent: InodeId) -> Body {
    Body::Dir {
        parent,
        entries: BTreeMap::new(),
        by_cookie: BTreeMap::new(),
        next_cookie: FIRST_COOKIE,
    }
}

fn new_inode(ino: InodeId, mode: u32, uid: u32, gid: u32, now: i64, body: Body) -> Inode {
    Inode {
        ino,
        mode,
        uid,
        gid,
        size: 0,
        nlink: 1,
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
        crtime_ns: now,
        xattrs: BTreeMap::new(),
        body,
    }
}
