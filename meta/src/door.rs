//! The meta door's conversions: each mutating request of the gRPC `Meta` service becomes
//! one `Command` here, validated (names, zero ids, flags, sizes and ceilings refused
//! before anything reaches the log), and stamped with the leader's clock. `service.rs`
//! runs the same opening for every call (`MetaService::propose`): the cluster id, this
//! conversion, the caller's request id, one proposal.

use crate::raft_types::Command;
use crate::state::{self, SetAttr, TimeSet};
use cirrus_proto::pb;
use cirrus_types::name::validate_name;
use cirrus_types::{check_release_batch, ClientId, FileKind, FsError, FsResult, HandleId};
use cirrus_types::{InodeId, LayoutSpec};

/// A request addressed to one cluster.
pub trait Scoped {
    /// The cluster id the caller believes it talks to.
    fn cluster_id(&self) -> &str;
}

macro_rules! scoped {
    ($($t:ty),* $(,)?) => {
        $(impl Scoped for $t {
            fn cluster_id(&self) -> &str {
                &self.cluster_id
            }
        })*
    };
}

scoped!(
    pb::LookupRequest,
    pb::GetattrRequest,
    pb::SetattrRequest,
    pb::CreateRequest,
    pb::MkdirRequest,
    pb::MknodRequest,
    pb::SymlinkRequest,
    pb::ReadlinkRequest,
    pb::LinkRequest,
    pb::UnlinkRequest,
    pb::RmdirRequest,
    pb::RenameRequest,
    pb::ReaddirRequest,
    pb::GetXattrRequest,
    pb::SetXattrRequest,
    pb::ListXattrRequest,
    pb::RemoveXattrRequest,
    pb::StatfsRequest,
    pb::OpenRequest,
    pb::ReleaseRequest,
    pb::CommitWriteRequest,
    pb::GetLayoutRequest,
    pb::GetChainsRequest,
    pb::RenewLeaseRequest,
    pb::LockRequest,
    pb::CancelLockWaitRequest,
    pb::RegisterServerRequest,
    pb::HeartbeatRequest,
);

/// A request that becomes exactly one raft command.
pub trait Proposal: Scoped {
    /// The command, validated; `now_ns` is the leader's clock at propose time.
    fn command(self, now_ns: i64) -> FsResult<Command>;
}

/// A nonzero inode id from the wire (`what` names the field in the error).
pub fn ino(v: u64, what: &str) -> FsResult<InodeId> {
    if v == 0 {
        return Err(FsError::Invalid(format!("{what}: inode 0")));
    }
    Ok(InodeId(v))
}

/// `cmd` under the caller's umask, when it sent one (see `Command::Umasked`).
fn umasked(umask: Option<u32>, cmd: Command) -> FsResult<Command> {
    match umask {
        None => Ok(cmd),
        Some(u) if u & !0o777 != 0 => Err(FsError::Invalid(format!("umask {u:#o}"))),
        Some(umask) => Ok(Command::Umasked {
            umask,
            cmd: Box::new(cmd),
        }),
    }
}

/// The client a request names, if any (0: none).
pub fn client(id: u64) -> Option<ClientId> {
    (id != 0).then_some(ClientId(id))
}

impl Proposal for pb::SetattrRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        // A size past the largest file never reaches the log.
        if let Some(size) = self.size {
            cirrus_types::limits::check_file_size(size)?;
        }
        let set = SetAttr {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: self.atime.map(TimeSet::from),
            mtime: self.mtime.map(TimeSet::from),
        };
        Ok(Command::Setattr {
            ino: ino(self.ino, "setattr")?,
            set,
            now_ns,
        })
    }
}

impl Proposal for pb::CreateRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        validate_name(&self.name)?;
        let spec = LayoutSpec {
            stripe_unit: self.stripe_unit,
            stripe_count: self.stripe_count,
        };
        spec.validate()?;
        let cmd = Command::Create {
            parent: ino(self.parent, "create parent")?,
            name: self.name,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            exclusive: self.exclusive,
            client: client(self.client_id),
            spec,
            now_ns,
        };
        umasked(self.umask, cmd)
    }
}

impl Proposal for pb::MkdirRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        validate_name(&self.name)?;
        let cmd = Command::Mkdir {
            parent: ino(self.parent, "mkdir parent")?,
            name: self.name,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            now_ns,
        };
        umasked(self.umask, cmd)
    }
}

impl Proposal for pb::MknodRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        validate_name(&self.name)?;
        let parent = ino(self.parent, "mknod parent")?;
        let kind = FileKind::from_code(self.kind, self.rdev)
            .filter(|k| k.is_special())
            .ok_or_else(|| {
                FsError::Invalid(format!(
                    "mknod kind {} is not a FIFO (4), socket (5) or device node (6, 7)",
                    self.kind
                ))
            })?;
        let cmd = Command::Mknod {
            parent,
            name: self.name,
            kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            now_ns,
        };
        umasked(self.umask, cmd)
    }
}

impl Proposal for pb::SymlinkRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        validate_name(&self.name)?;
        if self.target.len() > state::SYMLINK_MAX {
            return Err(FsError::NameTooLong);
        }
        Ok(Command::Symlink {
            parent: ino(self.parent, "symlink parent")?,
            name: self.name,
            target: self.target,
            uid: self.uid,
            gid: self.gid,
            now_ns,
        })
    }
}

impl Proposal for pb::LinkRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        validate_name(&self.new_name)?;
        let new_parent = ino(self.new_parent, "link parent")?;
        Ok(Command::Link {
            ino: ino(self.ino, "link")?,
            new_parent,
            new_name: self.new_name,
            now_ns,
        })
    }
}

impl Proposal for pb::UnlinkRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        validate_name(&self.name)?;
        Ok(Command::Unlink {
            parent: ino(self.parent, "unlink parent")?,
            name: self.name,
            now_ns,
        })
    }
}

impl Proposal for pb::RmdirRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        validate_name(&self.name)?;
        Ok(Command::Rmdir {
            parent: ino(self.parent, "rmdir parent")?,
            name: self.name,
            now_ns,
        })
    }
}

impl Proposal for pb::RenameRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        validate_name(&self.name)?;
        validate_name(&self.new_name)?;
        if !matches!(
            self.flags,
            0 | state::RENAME_NOREPLACE | state::RENAME_EXCHANGE
        ) {
            return Err(FsError::Invalid(format!("rename flags {:#x}", self.flags)));
        }
        let (parent, new_parent) = (
            ino(self.parent, "rename parent")?,
            ino(self.new_parent, "rename new parent")?,
        );
        Ok(Command::Rename {
            parent,
            name: self.name,
            new_parent,
            new_name: self.new_name,
            flags: self.flags,
            now_ns,
        })
    }
}

impl Proposal for pb::SetXattrRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        // An oversized name or value never reaches the log (apply checks again).
        if self.name.is_empty()
            || self.name.len() > state::XATTR_NAME_MAX
            || self.value.len() > state::XATTR_VALUE_MAX
        {
            return Err(FsError::Range);
        }
        Ok(Command::SetXattr {
            ino: ino(self.ino, "setxattr")?,
            name: self.name,
            value: self.value,
            flags: self.flags,
            now_ns,
        })
    }
}

impl Proposal for pb::RemoveXattrRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        Ok(Command::RemoveXattr {
            ino: ino(self.ino, "removexattr")?,
            name: self.name,
            now_ns,
        })
    }
}

impl Proposal for pb::OpenRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        let client = client(self.client_id)
            .ok_or_else(|| FsError::Invalid("open without a client id".into()))?;
        Ok(Command::Open {
            ino: ino(self.ino, "open")?,
            client,
            truncate: self.truncate,
            now_ns,
        })
    }
}

impl Proposal for pb::ReleaseRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        // Refused before anything is proposed: an oversized batch never reaches the log.
        check_release_batch(self.more.len() + 1)?;
        Ok(if self.more.is_empty() {
            Command::Release {
                handle: HandleId(self.handle),
                now_ns,
            }
        } else {
            Command::ReleaseMany {
                handles: std::iter::once(self.handle)
                    .chain(self.more)
                    .map(HandleId)
                    .collect(),
                now_ns,
            }
        })
    }
}

impl Proposal for pb::CommitWriteRequest {
    fn command(self, now_ns: i64) -> FsResult<Command> {
        cirrus_types::limits::check_file_size(self.size)?;
        Ok(Command::CommitWrite {
            ino: ino(self.ino, "commit write")?,
            handle: (self.handle != 0).then_some(HandleId(self.handle)),
            size: self.size,
            mtime_ns: self.mtime_ns,
            now_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_become_no_command() {
        let unlink = pb::UnlinkRequest {
            parent: 1,
            name: b"a/b".to_vec(),
            ..Default::default()
        };
        assert!(unlink.command(0).is_err());
        let rename = pb::RenameRequest {
            parent: 1,
            new_parent: 1,
            name: b"a".to_vec(),
            new_name: b"b".to_vec(),
            flags: 0x80,
            ..Default::default()
        };
        assert!(matches!(rename.command(0), Err(FsError::Invalid(_))));
        let create = pb::CreateRequest {
            parent: 1,
            name: b"f".to_vec(),
            stripe_unit: 1 << 20,
            stripe_count: 1,
            umask: Some(0o1777),
            ..Default::default()
        };
        assert!(matches!(create.command(0), Err(FsError::Invalid(_))));
        let big = pb::CommitWriteRequest {
            ino: 5,
            size: u64::MAX,
            ..Default::default()
        };
        assert_eq!(big.command(0), Err(FsError::TooBig));
        let open = pb::OpenRequest {
            ino: 5,
            ..Default::default()
        };
        assert!(matches!(open.command(0), Err(FsError::Invalid(_))));
    }

    #[test]
    fn a_umask_wraps_the_command_and_the_clock_is_stamped() {
        let mkdir = pb::MkdirRequest {
            parent: 1,
            name: b"d".to_vec(),
            mode: 0o777,
            umask: Some(0o022),
            ..Default::default()
        };
        match mkdir.command(42) {
            Ok(Command::Umasked { umask, cmd }) => {
                assert_eq!(umask, 0o022);
                assert_eq!(cmd.now_ns(), Some(42));
            }
            other => panic!("{other:?}"),
        }
    }
}
