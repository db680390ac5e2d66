//! POSIX ACLs kept in step with the mode, as FUSE's POSIX ACL support leaves to the
//! filesystem (the kernel enforces them): a new inode inherits its directory's default
//! ACL (the caller's umask is then ignored, as POSIX says), setting an access ACL sets the
//! mode's rwx bits from it (an ACL the mode alone says is not kept), and a chmod rewrites
//! the access ACL's base entries. The arithmetic is `cirrus_types::acl`'s.

use super::*;
use cirrus_types::acl::{Acl, ACCESS_XATTR, DEFAULT_XATTR};

/// The mode and the ACL xattrs of a new inode.
pub(super) struct NewMode {
    pub mode: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl MetaState {
    /// What a new inode under `parent` created with `mode` gets: with a default ACL on
    /// the parent, the access ACL cut to `mode` (and for a directory the default ACL
    /// too); without one, `mode` less the `umask` when the caller sent one.
    pub(super) fn new_mode(
        &self,
        parent: InodeId,
        mode: u32,
        umask: Option<u32>,
        dir: bool,
    ) -> NewMode {
        let inherited = self
            .inodes
            .get(&parent)
            .and_then(|p| p.xattrs.get(DEFAULT_XATTR))
            .and_then(|v| Acl::parse(v).ok().map(|a| (v.clone(), a)));
        let Some((raw, default)) = inherited else {
            return NewMode {
                mode: mode & !umask.unwrap_or(0) & 0o7777,
                xattrs: Vec::new(),
            };
        };
        let (mode, access) = default.create_masq(mode);
        let mut xattrs = Vec::new();
        if let Some(a) = access {
            xattrs.push((ACCESS_XATTR.to_vec(), a.encode()));
        }
        if dir {
            xattrs.push((DEFAULT_XATTR.to_vec(), raw));
        }
        NewMode {
            mode: mode & 0o7777,
            xattrs,
        }
    }

    /// For a set of an ACL xattr on `ino`: checks the value and says what to store
    /// (`None`: drop the xattr, the mode says it all) and the mode that goes with it.
    pub(super) fn acl_set(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
    ) -> FsResult<Option<(Option<Vec<u8>>, u32)>> {
        let inode = self.inode_ref(ino)?;
        if name == DEFAULT_XATTR {
            if inode.kind() != FileKind::Dir {
                return Err(FsError::PermissionDenied);
            }
            Acl::parse(value)?;
            return Ok(Some((Some(value.to_vec()), inode.mode)));
        }
        if name != ACCESS_XATTR {
            return Ok(None);
        }
        let acl = Acl::parse(value)?;
        let (bits, equiv) = acl.mode_bits();
        let mode = (inode.mode & !0o777) | bits;
        Ok(Some(((!equiv).then(|| value.to_vec()), mode)))
    }

    /// The access ACL after a chmod of `ino` to `mode`, if it has one.
    pub(super) fn acl_after_chmod(&self, ino: InodeId, mode: u32) -> Option<Vec<u8>> {
        let v = self.inodes.get(&ino)?.xattrs.get(ACCESS_XATTR)?;
        let mut acl = Acl::parse(v).ok()?;
        acl.chmod(mode);
        Some(acl.encode())
    }
}
