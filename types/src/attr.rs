//! The namespace vocabulary every crate speaks: an inode's attributes, what a setattr
//! changes, a directory entry, capacity. Meta's state machine stores `Attr`, `SetAttr`
//! and `TimeSet` inside raft entries and snapshots, so their bincode is pinned by the
//! golden files under meta/tests/golden (docs/design/0008-encodings.md): no field is
//! reordered, retyped or removed, and a new one is a new snapshot version.

use crate::ids::{FileKind, InodeId};
use serde::{Deserialize, Serialize};

/// Attributes of an inode, as the meta group holds them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Permission bits only (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub crtime_ns: i64,
}

/// A time to set: the leader's clock of the command (`Now`), or an explicit one.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    Ns(i64),
}

/// What a setattr changes; `None` leaves a field alone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (masked to 0o7777).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Truncate or extend (regular files only); the client resizes the objects itself.
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// One directory entry of a readdir; `attr` is filled for readdirplus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
    /// Readdir resumes after the entry with this cookie.
    pub cookie: u64,
    pub attr: Option<Attr>,
}

/// Capacity as statfs reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub files: u64,
    pub block_size: u64,
}

/// A new regular file: where, its name, its mode and owner, and who opens it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateArgs {
    pub parent: InodeId,
    pub name: Vec<u8>,
    /// Permission bits asked for.
    pub mode: u32,
    /// The caller's umask, applied unless the parent has a default ACL; `None` when the
    /// caller applied it already.
    pub umask: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// Fail with `Exists` if the name exists (O_EXCL); else open what is there.
    pub exclusive: bool,
    /// The client that holds the new file open; `None` creates it closed (mknod).
    pub client: Option<crate::ids::ClientId>,
}
