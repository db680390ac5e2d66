//! The metadata state machine: namespace (inodes, dentries, xattrs, open handles),
//! file layouts, the data-server registry and the chain table, all as one plain value.
//!
//! This module owns *what a raft entry does*, nothing else: no IO, no clock, no RNG, no
//! tokio. `MetaState::apply` takes a `Command` (one raft entry) and returns a `Response`;
//! the same sequence of commands gives every replica the same state and the same digest.
//! Rules that keep it deterministic (see docs/design/0002-meta-state-machine.md):
//! - time comes only from the leader-stamped `now_ns` of a command, clamped so that it
//!   never runs backwards across leaders (`last_now_ns`);
//! - inode, handle, server and chain ids are allocated here, monotonically, never reused;
//! - every map is a `BTreeMap`, so iteration and serialization order are fixed;
//! - a command that fails changes nothing (all checks run before the first mutation).
//!
//! The raft store (meta-raft) serializes the whole value with bincode for snapshots and
//! calls the read-only query functions for linearizable reads.

mod acls;
mod chains;
pub mod locks;
mod namespace;
pub mod requests;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod once_tests;
#[cfg(test)]
mod tests;

pub use cirrus_types::{Attr, Chain, ChainTable, DirEntry, ServerEntry, SetAttr, Statfs, TimeSet};
use cirrus_types::{
    ChainId, ChainVersion, ClientId, ClusterId, FileKind, FsError, FsResult, HandleId, InodeId,
    Layout, LayoutSpec, LockKind, LockOwner, RequestId, ServerId,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use chains::ideal_members;

/// Linux `renameat2` flags (same values on the wire).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
/// Linux `setxattr` flags.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;
/// The directory xattr holding the default layout of files created in it.
pub const LAYOUT_XATTR: &[u8] = b"cirrus.layout";
/// Limits, as on Linux: xattr name 255 bytes, value 64 KiB, symlink target 4095 bytes.
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_VALUE_MAX: usize = 65536;
pub const SYMLINK_MAX: usize = 4095;
/// Ceilings of one inode's xattrs: how many, and their names and values together. A
/// caller past either gets ENOSPC (as ext4 answers when an inode's xattr space is full);
/// without them one inode could hold any number of 64 KiB values in every node's memory.
pub const XATTRS_MAX_PER_INODE: usize = 1024;
pub const XATTR_BYTES_MAX_PER_INODE: usize = 1 << 20;
/// Open handles one client may hold (each costs a few dozen bytes on every meta node).
/// Far above any real process tree (the kernel's own RLIMIT_NOFILE ceiling is 2^20 per
/// process by default); a client at it is refused a new handle, never grown into.
pub const MAX_HANDLES_PER_CLIENT: usize = 1 << 20;
/// Largest file size: the one every door checks (`cirrus_types::limits`, why in
/// docs/design/0007-limits.md). Apply refuses past it too. Entries written by a binary
/// with the older limit (i64::MAX) replay the same way on every node after an upgrade
/// (all run the same binary), so replicas stay identical.
pub use cirrus_types::MAX_FILE_SIZE;
/// The first readdir cookie handed to a real entry: 1 and 2 are left to the FUSE adapter
/// for "." and "..", and 0 means "from the start".
pub const FIRST_COOKIE: u64 = 3;
/// Block size reported by statfs.
pub const STATFS_BLOCK_SIZE: u64 = 4096;

/// One raft entry. Every mutating command carries `now_ns`, the leader's clock (ns since
/// the Unix epoch) at propose time; apply never reads a clock. The encoding is pinned by
/// golden files (`meta/src/golden_tests.rs`, docs/design/0008): a new variant goes last,
/// no variant or field is reordered, retyped or removed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// First entry of a new group: sets the cluster id and R, creates the root directory.
    /// Repeating it with the same cluster id is a no-op; another id is refused.
    Init {
        cluster_id: ClusterId,
        replicas: u32,
        now_ns: i64,
    },
    /// Regular file. `exclusive`: EEXIST if the name exists; otherwise an existing regular
    /// file is opened (EISDIR for a directory, EEXIST for a symlink). With `client`, a
    /// handle is opened too. Zero fields of `spec` fall back to the directory's
    /// `cirrus.layout` xattr, then to the cluster default.
    Create {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        client: Option<ClientId>,
        spec: LayoutSpec,
        now_ns: i64,
    },
    Mkdir {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        now_ns: i64,
    },
    Symlink {
        parent: InodeId,
        name: Vec<u8>,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
        now_ns: i64,
    },
    /// Hard link of a non-directory.
    Link {
        ino: InodeId,
        new_parent: InodeId,
        new_name: Vec<u8>,
        now_ns: i64,
    },
    Unlink {
        parent: InodeId,
        name: Vec<u8>,
        now_ns: i64,
    },
    Rmdir {
        parent: InodeId,
        name: Vec<u8>,
        now_ns: i64,
    },
    /// `flags`: 0, `RENAME_NOREPLACE` or `RENAME_EXCHANGE`.
    Rename {
        parent: InodeId,
        name: Vec<u8>,
        new_parent: InodeId,
        new_name: Vec<u8>,
        flags: u32,
        now_ns: i64,
    },
    Setattr {
        ino: InodeId,
        set: SetAttr,
        now_ns: i64,
    },
    /// `flags`: 0, `XATTR_CREATE` or `XATTR_REPLACE`.
    SetXattr {
        ino: InodeId,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
        now_ns: i64,
    },
    RemoveXattr {
        ino: InodeId,
        name: Vec<u8>,
        now_ns: i64,
    },
    /// Opens a handle on a regular file (keeps it alive after unlink until released).
    Open {
        ino: InodeId,
        client: ClientId,
        truncate: bool,
        now_ns: i64,
    },
    /// Idempotent: releasing an unknown handle succeeds (a retried release after a
    /// leader change must not fail).
    Release { handle: HandleId, now_ns: i64 },
    /// Drops every handle of a client whose lease lapsed (proposed by the leader).
    ReleaseClient { client: ClientId, now_ns: i64 },
    /// After data is durable on the chains: size = max(size, `size`), mtime set.
    /// `handle`, if given, must be an open handle of `ino` (ESTALE otherwise).
    CommitWrite {
        ino: InodeId,
        handle: Option<HandleId>,
        size: u64,
        mtime_ns: i64,
        now_ns: i64,
    },
    /// The data servers deleted these files' objects: forget them.
    AckGarbage { inos: Vec<InodeId> },
    /// Same uuid => same id; the address and capacity are updated; a server marked down
    /// comes back up (and is re-added to short chains as syncing).
    RegisterServer {
        uuid: String,
        address: String,
        capacity: u64,
        free: u64,
        now_ns: i64,
    },
    /// Capacity report (statfs); changes no chain.
    UpdateCapacity {
        server: ServerId,
        capacity: u64,
        free: u64,
    },
    /// Proposed by the leader after the heartbeat timeout: the server leaves its chains
    /// (except as the last member of a chain) and replacements join as syncing.
    ServerDown { server: ServerId, now_ns: i64 },
    /// A down server heartbeats again without re-registering.
    ServerUp { server: ServerId, now_ns: i64 },
    /// A syncing member finished copying: it becomes the chain's tail. Legacy: carries no
    /// version, so a report for an older sync could promote a member that missed writes;
    /// data servers send `ServerCaughtUpAt` (kept so old logs still decode).
    ServerCaughtUp { server: ServerId, chain: ChainId },
    /// A syncing member finished a copy that is valid for chain `version` (it listed the
    /// source at that version): it becomes the tail only if the chain is still at it.
    ServerCaughtUpAt {
        server: ServerId,
        chain: ChainId,
        version: ChainVersion,
    },
    /// `cmd` under a client's request id, for exactly-once retries: the first
    /// application's response is remembered, and the same id applied again answers it
    /// without applying `cmd` again. `done_below` (at most `id.seq`): every seq of
    /// `id.client` below it has finished at the client. `cmd` must be a plain mutation
    /// (not `Init`, not another `Once`). A new variant goes last: older entries decode.
    Once {
        id: RequestId,
        done_below: u64,
        cmd: Box<Command>,
    },
    /// `Release` of several handles in one entry (a client batches the releases of the
    /// files it closed). Idempotent like `Release`; at most `cirrus_types::MAX_RELEASE_BATCH` handles.
    ReleaseMany { handles: Vec<HandleId>, now_ns: i64 },
    /// A FIFO, unix socket or device node (`kind.is_special()`, else `Invalid`).
    Mknod {
        parent: InodeId,
        name: Vec<u8>,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        now_ns: i64,
    },
    /// Sets (`kind` `Some`) or clears (`None`) `owner`'s lock on the bytes `start..=end`
    /// of a regular file, POSIX style (split and merged per owner). `WouldBlock` when
    /// another owner holds a conflicting lock. Proposed by the leader for `F_SETLK`,
    /// `F_SETLKW` (once a wait finds no conflict), `flock`, and the unlocks of close.
    SetLock {
        ino: InodeId,
        owner: LockOwner,
        kind: Option<LockKind>,
        start: u64,
        end: u64,
        pid: u32,
    },
    /// `cmd` (`Create`, `Mkdir` or `Mknod`) with the caller's umask, for mounts that let
    /// the filesystem apply it (FUSE's POSIX ACL support): applied to the mode unless the
    /// parent has a default ACL, which is inherited instead. Without this wrapper the mode
    /// is taken as given (the kernel applied the umask) and a default ACL still inherits.
    Umasked { umask: u32, cmd: Box<Command> },
}

impl Command {
    /// The leader stamp of a command, if it has one.
    pub fn now_ns(&self) -> Option<i64> {
        use Command::*;
        match self {
            Init { now_ns, .. }
            | Create { now_ns, .. }
            | Mkdir { now_ns, .. }
            | Symlink { now_ns, .. }
            | Link { now_ns, .. }
            | Unlink { now_ns, .. }
            | Rmdir { now_ns, .. }
            | Rename { now_ns, .. }
            | Setattr { now_ns, .. }
            | SetXattr { now_ns, .. }
            | RemoveXattr { now_ns, .. }
            | Open { now_ns, .. }
            | Release { now_ns, .. }
            | ReleaseMany { now_ns, .. }
            | ReleaseClient { now_ns, .. }
            | CommitWrite { now_ns, .. }
            | RegisterServer { now_ns, .. }
            | ServerDown { now_ns, .. }
            | ServerUp { now_ns, .. }
            | Mknod { now_ns, .. } => Some(*now_ns),
            AckGarbage { .. }
            | UpdateCapacity { .. }
            | ServerCaughtUp { .. }
            | ServerCaughtUpAt { .. }
            | SetLock { .. } => None,
            Once { cmd, .. } | Umasked { cmd, .. } => cmd.now_ns(),
        }
    }
}

/// The successful result of a command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Commands with nothing to return.
    Done,
    /// Mkdir, Symlink, Link, Setattr, CommitWrite.
    Attr(Attr),
    /// Create: `created` is false when an existing file was opened.
    Created {
        attr: Attr,
        layout: Layout,
        handle: Option<HandleId>,
        created: bool,
    },
    Opened {
        handle: HandleId,
        attr: Attr,
        layout: Layout,
    },
    Server(ServerId),
}

/// What apply returns for one entry (the raft response).
pub type Response = FsResult<Reply>;

/// One directory entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Dentry {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Assigned at insert from the directory's counter; never changes while the entry
    /// exists. Readdir resumes with entries whose cookie is greater.
    pub cookie: u64,
}

/// Kind-specific part of an inode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Body {
    File {
        layout: Layout,
        /// Open handles on this inode (the handles map is the truth; this is its count).
        open: u32,
    },
    Dir {
        /// The containing directory (itself for the root): for the subtree check.
        parent: InodeId,
        entries: BTreeMap<Vec<u8>, Dentry>,
        by_cookie: BTreeMap<u64, Vec<u8>>,
        next_cookie: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A FIFO, socket or device node (`kind.is_special()`). Last: older snapshots decode.
    Special {
        kind: FileKind,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: InodeId,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub crtime_ns: i64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub body: Body,
}

impl Inode {
    pub fn kind(&self) -> FileKind {
        match self.body {
            Body::File { .. } => FileKind::File,
            Body::Dir { .. } => FileKind::Dir,
            Body::Symlink { .. } => FileKind::Symlink,
            Body::Special { kind } => kind,
        }
    }

    pub fn attr(&self) -> Attr {
        Attr {
            ino: self.ino,
            kind: self.kind(),
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.nlink,
            atime_ns: self.atime_ns,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            crtime_ns: self.crtime_ns,
        }
    }
}

/// An open handle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    pub ino: InodeId,
    pub client: ClientId,
}

/// A file whose objects the data servers must delete.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Garbage {
    pub ino: InodeId,
    pub layout: Layout,
    /// When it became garbage (leader time), for reporting.
    pub since_ns: i64,
}

/// A registered data server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: ServerId,
    pub uuid: String,
    pub address: String,
    pub capacity: u64,
    pub free: u64,
    /// False after `ServerDown`, until it registers again or `ServerUp`.
    pub alive: bool,
    pub registered_ns: i64,
}

/// The whole replicated state. Serialized as one value (bincode) in snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaState {
    /// None until `Init` is applied.
    cluster_id: Option<ClusterId>,
    /// Configured replication factor R.
    replicas: u32,
    /// Largest leader time applied so far: time never runs backwards across leaders.
    last_now_ns: i64,
    next_ino: u64,
    next_handle: u64,
    next_server: u64,
    next_chain: u32,
    inodes: BTreeMap<InodeId, Inode>,
    handles: BTreeMap<HandleId, Handle>,
    client_handles: BTreeMap<ClientId, BTreeSet<HandleId>>,
    garbage: BTreeMap<InodeId, Garbage>,
    servers: BTreeMap<ServerId, ServerInfo>,
    server_by_uuid: BTreeMap<String, ServerId>,
    chains: BTreeMap<ChainId, Chain>,
    /// Objects (live files and unacknowledged garbage) placed on each chain. A chain with
    /// none holds no data, so it can be re-placed freely without a rebuild.
    chain_refs: BTreeMap<ChainId, u64>,
    /// Recent results by request id (exactly-once retries). A version-1 snapshot is
    /// the encoding of the fields up to here, without it (see `sm_store`).
    requests: requests::RequestTable,
    /// File locks. Kept the last field: a version-2 snapshot is this encoding without
    /// it (see `sm_store`).
    locks: locks::LockTable,
}

impl MetaState {
    /// An empty, uninitialised state (same as `Default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one raft entry. On error nothing changes.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        if self.cluster_id.is_none() && !matches!(cmd, Command::Init { .. }) {
            return Err(FsError::Unavailable(
                "metadata state is not initialised".into(),
            ));
        }
        if let Command::Once {
            id,
            done_below,
            cmd: inner,
        } = cmd
        {
            return self.apply_once(*id, *done_below, inner);
        }
        let now = cmd.now_ns().map(|t| t.max(self.last_now_ns)).unwrap_or(0);
        use Command::*;
        let result = match cmd {
            Create { .. } | Mkdir { .. } | Mknod { .. } => self.apply_new_inode(cmd, None, now),
            Init {
                cluster_id,
                replicas,
                ..
            } => self.init(*cluster_id, *replicas, now),
            Symlink {
                parent,
                name,
                target,
                uid,
                gid,
                ..
            } => self.symlink(*parent, name, target, *uid, *gid, now),
            Link {
                ino,
                new_parent,
                new_name,
                ..
            } => self.link(*ino, *new_parent, new_name, now),
            Unlink { parent, name, .. } => self.unlink(*parent, name, now),
            Rmdir { parent, name, .. } => self.rmdir(*parent, name, now),
            Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                ..
            } => self.rename(*parent, name, *new_parent, new_name, *flags, now),
            Setattr { ino, set, .. } => self.setattr(*ino, set, now),
            SetXattr {
                ino,
                name,
                value,
                flags,
                ..
            } => self.set_xattr(*ino, name, value, *flags, now),
            RemoveXattr { ino, name, .. } => self.remove_xattr(*ino, name, now),
            Open {
                ino,
                client,
                truncate,
                ..
            } => self.open(*ino, *client, *truncate, now),
            Release { handle, .. } => self.release(*handle, now),
            ReleaseMany { handles, .. } => self.release_many(handles, now),
            ReleaseClient { client, .. } => self.release_client(*client, now),
            CommitWrite {
                ino,
                handle,
                size,
                mtime_ns,
                ..
            } => self.commit_write(*ino, *handle, *size, *mtime_ns, now),
            AckGarbage { inos } => self.ack_garbage(inos),
            RegisterServer {
                uuid,
                address,
                capacity,
                free,
                ..
            } => self.register_server(uuid, address, *capacity, *free, now),
            UpdateCapacity {
                server,
                capacity,
                free,
            } => self.update_capacity(*server, *capacity, *free),
            ServerDown { server, .. } => self.server_down(*server),
            ServerUp { server, .. } => self.server_up(*server),
            ServerCaughtUp { server, chain } => self.server_caught_up(*server, *chain),
            ServerCaughtUpAt {
                server,
                chain,
                version,
            } => self.server_caught_up_at(*server, *chain, *version),
            SetLock {
                ino,
                owner,
                kind,
                start,
                end,
                pid,
            } => self.set_lock(*ino, *owner, *kind, *start, *end, *pid),
            Umasked { umask, cmd } => self.apply_new_inode(cmd, Some(*umask), now),
            Once { .. } => Err(FsError::Invalid("nested request id".into())),
        };
        if result.is_ok() && cmd.now_ns().is_some() {
            self.last_now_ns = now;
        }
        result
    }

    /// `Create`, `Mkdir` and `Mknod`, with the caller's umask when it came in `Umasked`
    /// (anything else under `Umasked` is refused).
    fn apply_new_inode(&mut self, cmd: &Command, u: Option<u32>, now: i64) -> Response {
        match cmd {
            Command::Create {
                parent,
                name,
                mode,
                uid,
                gid,
                exclusive,
                client,
                spec,
                ..
            } => self.create(
                *parent, name, *mode, *uid, *gid, *exclusive, *client, *spec, u, now,
            ),
            Command::Mkdir {
                parent,
                name,
                mode,
                uid,
                gid,
                ..
            } => self.mkdir(*parent, name, *mode, *uid, *gid, u, now),
            Command::Mknod {
                parent,
                name,
                kind,
                mode,
                uid,
                gid,
                ..
            } => self.mknod(*parent, name, *kind, *mode, *uid, *gid, u, now),
            other => Err(FsError::Invalid(format!(
                "a umask goes with a create, mkdir or mknod, not {other:?}"
            ))),
        }
    }

    /// `Once`: answers a remembered result, refuses a late duplicate, or applies `cmd` and
    /// remembers a success. A failure is not remembered: it changed nothing, so applying
    /// the retry afresh is a valid linearization of the call (and a failing command keeps
    /// changing nothing, digest included).
    fn apply_once(&mut self, id: RequestId, done_below: u64, cmd: &Command) -> Response {
        if matches!(cmd, Command::Once { .. } | Command::Init { .. }) {
            return Err(FsError::Invalid(
                "a request id wraps one plain mutation, not Init or another request".into(),
            ));
        }
        if id.client == 0 || id.seq == 0 || done_below > id.seq {
            return Err(FsError::Invalid(format!(
                "request id {id} with done-below mark {done_below}: client and seq must be \
                 nonzero and the mark at most the seq"
            )));
        }
        if let Some(remembered) = self.requests.lookup(id)? {
            return remembered;
        }
        let reply = self.apply(cmd)?;
        // The clock of the table: the command's leader stamp (clamped like apply does),
        // or the last one for unstamped commands.
        let now = cmd
            .now_ns()
            .map_or(self.last_now_ns, |t| t.max(self.last_now_ns));
        self.requests.record(id, done_below, now, Ok(reply.clone()));
        Ok(reply)
    }

    /// The exactly-once table (for tests and status).
    pub fn requests(&self) -> &requests::RequestTable {
        &self.requests
    }

    /// Hex digest of the whole state: equal on every replica that applied the same
    /// entries. FNV-1a 64 and crc32c over the bincode encoding, plus its length.
    pub fn digest(&self) -> String {
        let bytes = match bincode::serialize(self) {
            Ok(b) => b,
            // Serializing plain BTreeMaps of owned data cannot fail; say so if it ever does.
            Err(e) => return format!("unserializable:{e}"),
        };
        let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
        for b in &bytes {
            fnv ^= u64::from(*b);
            fnv = fnv.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!(
            "{fnv:016x}{:08x}{:08x}",
            cirrus_types::checksum::crc32c(&bytes),
            bytes.len() as u32
        )
    }

    // ------------------------------------------------------------ read-only queries

    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.cluster_id
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The leader time of the last applied stamped command.
    pub fn last_now_ns(&self) -> i64 {
        self.last_now_ns
    }

    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> FsResult<Attr> {
        cirrus_types::name::validate_name(name)?;
        let d = self.dir_entries(parent)?;
        let e = d.get(name).ok_or(FsError::NotFound)?;
        self.getattr(e.ino)
    }

    /// Works for unlinked inodes that are still open (nlink 0).
    pub fn getattr(&self, ino: InodeId) -> FsResult<Attr> {
        self.inodes
            .get(&ino)
            .map(Inode::attr)
            .ok_or(FsError::NotFound)
    }

    /// Entries with cookie > `cookie` in cookie order, at most `limit` (0: no limit);
    /// `eof` is true when nothing is left after the last one returned.
    pub fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
    ) -> FsResult<(Vec<DirEntry>, bool)> {
        let inode = self.inodes.get(&ino).ok_or(FsError::NotFound)?;
        let Body::Dir {
            entries, by_cookie, ..
        } = &inode.body
        else {
            return Err(FsError::NotDir);
        };
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let mut out = Vec::new();
        let mut rest = by_cookie.range(cookie.saturating_add(1)..);
        for (c, name) in rest.by_ref() {
            let Some(d) = entries.get(name) else { continue };
            out.push(DirEntry {
                name: name.clone(),
                ino: d.ino,
                kind: d.kind,
                cookie: *c,
                attr: None,
            });
            if out.len() >= limit {
                break;
            }
        }
        let eof = rest.next().is_none();
        Ok((out, eof))
    }

    pub fn readlink(&self, ino: InodeId) -> FsResult<Vec<u8>> {
        match &self.inodes.get(&ino).ok_or(FsError::NotFound)?.body {
            Body::Symlink { target } => Ok(target.clone()),
            _ => Err(FsError::Invalid("not a symlink".into())),
        }
    }

    pub fn getxattr(&self, ino: InodeId, name: &[u8]) -> FsResult<Vec<u8>> {
        let inode = self.inodes.get(&ino).ok_or(FsError::NotFound)?;
        inode.xattrs.get(name).cloned().ok_or(FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: InodeId) -> FsResult<Vec<Vec<u8>>> {
        let inode = self.inodes.get(&ino).ok_or(FsError::NotFound)?;
        Ok(inode.xattrs.keys().cloned().collect())
    }

    /// Totals over live servers divided by R (every byte is stored R times).
    pub fn statfs(&self) -> Statfs {
        let r = u64::from(self.replicas.max(1));
        let (cap, free) = self
            .servers
            .values()
            .filter(|s| s.alive)
            .fold((0u64, 0u64), |(c, f), s| {
                (c.saturating_add(s.capacity), f.saturating_add(s.free))
            });
        Statfs {
            total_bytes: cap / r,
            free_bytes: free / r,
            files: self.inodes.len() as u64,
            block_size: STATFS_BLOCK_SIZE,
        }
    }

    /// Layout of a regular file (EISDIR for a directory, EINVAL for a symlink).
    pub fn layout(&self, ino: InodeId) -> FsResult<Layout> {
        match &self.inodes.get(&ino).ok_or(FsError::NotFound)?.body {
            Body::File { layout, .. } => Ok(layout.clone()),
            Body::Dir { .. } => Err(FsError::IsDir),
            Body::Symlink { .. } => Err(FsError::Invalid("a symlink has no layout".into())),
            Body::Special { kind } => Err(FsError::Invalid(format!("a {kind:?} has no layout"))),
        }
    }

    pub fn chain_table(&self) -> ChainTable {
        ChainTable {
            chains: self.chains.clone(),
            servers: self
                .servers
                .values()
                .map(|s| {
                    (
                        s.id,
                        ServerEntry {
                            address: s.address.clone(),
                            alive: s.alive,
                            capacity_bytes: s.capacity,
                            free_bytes: s.free,
                            last_heartbeat_ms: 0,
                        },
                    )
                })
                .collect(),
            replicas: self.replicas,
        }
    }

    pub fn chain(&self, id: ChainId) -> Option<&Chain> {
        self.chains.get(&id)
    }

    pub fn server(&self, id: ServerId) -> Option<&ServerInfo> {
        self.servers.get(&id)
    }

    pub fn server_by_uuid(&self, uuid: &str) -> Option<&ServerInfo> {
        self.server_by_uuid
            .get(uuid)
            .and_then(|id| self.servers.get(id))
    }

    /// Files whose objects must be deleted, oldest inode first, at most `limit`.
    pub fn garbage(&self, limit: usize) -> Vec<Garbage> {
        self.garbage.values().take(limit).cloned().collect()
    }

    pub fn garbage_len(&self) -> usize {
        self.garbage.len()
    }

    pub fn handle(&self, id: HandleId) -> Option<&Handle> {
        self.handles.get(&id)
    }

    /// Clients holding handles or locks: a new leader starts a lease timer for each.
    pub fn leased_clients(&self) -> Vec<ClientId> {
        let mut c: BTreeSet<ClientId> = self.client_handles.keys().copied().collect();
        c.extend(self.clients_with_locks());
        c.into_iter().collect()
    }

    pub fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }

    pub fn open_handle_count(&self) -> u64 {
        self.handles.len() as u64
    }

    /// Read access to one inode (for status tools and tests).
    pub fn inode(&self, ino: InodeId) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// Every inode, by number (orphans included).
    pub fn inodes(&self) -> impl Iterator<Item = &Inode> {
        self.inodes.values()
    }

    fn dir_entries(&self, ino: InodeId) -> FsResult<&BTreeMap<Vec<u8>, Dentry>> {
        match &self.inodes.get(&ino).ok_or(FsError::NotFound)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(FsError::NotDir),
        }
    }
}
