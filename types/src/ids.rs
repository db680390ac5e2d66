//! Newtypes for every id and unit, so that an inode number is never passed as a chain id.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$m:meta])* $name:ident($inner:ty)) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub $inner);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_newtype!(
    /// An inode number. Allocated by the meta state machine's apply step, never reused.
    InodeId(u64)
);
id_newtype!(
    /// A meta (raft) node id, as given by `cirrus meta --id`.
    NodeId(u64)
);
id_newtype!(
    /// A data server id, allocated by the meta group at registration.
    ServerId(u64)
);
id_newtype!(
    /// A replication chain id.
    ChainId(u32)
);
id_newtype!(
    /// A chain's version, bumped on every membership change of that chain.
    ChainVersion(u64)
);
id_newtype!(
    /// An open-file handle id, allocated by the meta group.
    HandleId(u64)
);

/// Most handles one release call (one raft entry) may carry: bounds the entry's size and
/// its apply time. Clients batch the releases of closed files up to this.
pub const MAX_RELEASE_BATCH: usize = 4096;

/// Refuses a release of `n` handles over `MAX_RELEASE_BATCH` (the meta door and the state
/// machine give the same answer).
pub fn check_release_batch(n: usize) -> crate::FsResult<()> {
    if n > MAX_RELEASE_BATCH {
        return Err(crate::FsError::Invalid(format!(
            "{n} handles in one release (at most {MAX_RELEASE_BATCH})"
        )));
    }
    Ok(())
}
id_newtype!(
    /// A client (mount) id, random per mount, used for handle leases.
    ClientId(u64)
);

/// Identity of one logical mutating call to the meta group, the same on every retry of
/// that call: `client` is random per `MetaConn` (per process), `seq` counts that
/// connection's calls from 1. The meta state machine remembers recent results by it, so
/// a retried mutation that was already applied answers what it answered the first time.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct RequestId {
    pub client: u128,
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}/{}", self.client, self.seq)
    }
}

impl std::str::FromStr for RequestId {
    type Err = crate::FsError;
    /// `<32 hex digits>/<decimal seq>`; client 0 and seq 0 are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            crate::FsError::Invalid(format!(
                "request id {s:?} is not <32 hex digits>/<seq 1..2^64-1>"
            ))
        };
        let (c, q) = s.split_once('/').ok_or_else(bad)?;
        if c.len() != 32
            || !c.bytes().all(|b| b.is_ascii_hexdigit())
            || q.is_empty()
            || q.len() > 20
            || !q.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let client = u128::from_str_radix(c, 16).map_err(|_| bad())?;
        let seq = q.parse::<u64>().map_err(|_| bad())?;
        if client == 0 || seq == 0 {
            return Err(bad());
        }
        Ok(RequestId { client, seq })
    }
}

impl InodeId {
    /// The root directory.
    pub const ROOT: InodeId = InodeId(1);
}

/// Identity of a cluster, created once when the meta group initialises. Rendered as 32
/// lowercase hex digits. Data servers and clients refuse to talk to another cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u128);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for ClusterId {
    type Err = crate::FsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(crate::FsError::Invalid(format!(
                "cluster id {s:?} is not 32 hex digits"
            )));
        }
        u128::from_str_radix(s, 16)
            .map(ClusterId)
            .map_err(|_| crate::FsError::Invalid(format!("cluster id {s:?} is not hex")))
    }
}

/// Kind of an inode. Serialized in the raft log and snapshots (bincode: by variant
/// index), so new kinds go last. A device node's number travels with its kind, as the
/// kernel encodes it (`new_encode_dev`, what FUSE hands over): it is part of what the
/// inode is, fixed at mknod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A named pipe: its data never leaves the kernel that opens it.
    Fifo,
    /// A unix socket's name: its data never leaves the kernel that binds it.
    Socket,
    CharDevice {
        rdev: u32,
    },
    BlockDevice {
        rdev: u32,
    },
}

impl FileKind {
    /// Wire code: 1 file, 2 dir, 3 symlink, 4 fifo, 5 socket, 6 char device, 7 block
    /// device (the device number travels beside it, `rdev`).
    pub fn code(self) -> u32 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::Socket => 5,
            FileKind::CharDevice { .. } => 6,
            FileKind::BlockDevice { .. } => 7,
        }
    }

    /// The kind of wire code `c` with device number `rdev` (ignored but for devices).
    pub fn from_code(c: u32, rdev: u32) -> Option<Self> {
        match c {
            1 => Some(FileKind::File),
            2 => Some(FileKind::Dir),
            3 => Some(FileKind::Symlink),
            4 => Some(FileKind::Fifo),
            5 => Some(FileKind::Socket),
            6 => Some(FileKind::CharDevice { rdev }),
            7 => Some(FileKind::BlockDevice { rdev }),
            _ => None,
        }
    }

    /// The device number of a device node, else 0.
    pub fn rdev(self) -> u32 {
        match self {
            FileKind::CharDevice { rdev } | FileKind::BlockDevice { rdev } => rdev,
            _ => 0,
        }
    }

    /// A FIFO, socket or device node: an inode with no data of its own here.
    pub fn is_special(self) -> bool {
        !matches!(self, FileKind::File | FileKind::Dir | FileKind::Symlink)
    }
}
