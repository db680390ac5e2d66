//! Namespace commands: create, mkdir, symlink, link, unlink, rmdir, rename, setattr,
//! xattrs, open handles, commit-write and garbage. Each validates fully, then mutates.

use super::*;

#[allow(clippy::too_many_arguments)]
impl MetaState {
    pub(super) fn init(&mut self, _c: ClusterId, _r: u32, _now: i64) -> Response {
        Err(FsError::NotSupported("init".into()))
    }
    pub(super) fn create(&mut self, _p: InodeId, _n: &[u8], _m: u32, _u: u32, _g: u32, _x: bool, _c: Option<ClientId>, _s: LayoutSpec, _now: i64) -> Response {
        Err(FsError::NotSupported("create".into()))
    }
    pub(super) fn mkdir(&mut self, _p: InodeId, _n: &[u8], _m: u32, _u: u32, _g: u32, _now: i64) -> Response {
        Err(FsError::NotSupported("mkdir".into()))
    }
    pub(super) fn symlink(&mut self, _p: InodeId, _n: &[u8], _t: &[u8], _u: u32, _g: u32, _now: i64) -> Response {
        Err(FsError::NotSupported("symlink".into()))
    }
    pub(super) fn link(&mut self, _i: InodeId, _p: InodeId, _n: &[u8], _now: i64) -> Response {
        Err(FsError::NotSupported("link".into()))
    }
    pub(super) fn unlink(&mut self, _p: InodeId, _n: &[u8], _now: i64) -> Response {
        Err(FsError::NotSupported("unlink".into()))
    }
    pub(super) fn rmdir(&mut self, _p: InodeId, _n: &[u8], _now: i64) -> Response {
        Err(FsError::NotSupported("rmdir".into()))
    }
    pub(super) fn rename(&mut self, _p: InodeId, _n: &[u8], _np: InodeId, _nn: &[u8], _f: u32, _now: i64) -> Response {
        Err(FsError::NotSupported("rename".into()))
    }
    pub(super) fn setattr(&mut self, _i: InodeId, _s: &SetAttr, _now: i64) -> Response {
        Err(FsError::NotSupported("setattr".into()))
    }
    pub(super) fn set_xattr(&mut self, _i: InodeId, _n: &[u8], _v: &[u8], _f: u32, _now: i64) -> Response {
        Err(FsError::NotSupported("setxattr".into()))
    }
    pub(super) fn remove_xattr(&mut self, _i: InodeId, _n: &[u8], _now: i64) -> Response {
        Err(FsError::NotSupported("removexattr".into()))
    }
    pub(super) fn open(&mut self, _i: InodeId, _c: ClientId, _t: bool, _now: i64) -> Response {
        Err(FsError::NotSupported("open".into()))
    }
    pub(super) fn release(&mut self, _h: HandleId, _now: i64) -> Response {
        Err(FsError::NotSupported("release".into()))
    }
    pub(super) fn release_client(&mut self, _c: ClientId, _now: i64) -> Response {
        Err(FsError::NotSupported("release_client".into()))
    }
    pub(super) fn commit_write(&mut self, _i: InodeId, _h: Option<HandleId>, _s: u64, _m: i64, _now: i64) -> Response {
        Err(FsError::NotSupported("commit_write".into()))
    }
    pub(super) fn ack_garbage(&mut self, _i: &[InodeId]) -> Response {
        Err(FsError::NotSupported("ack_garbage".into()))
    }
}
