//! Namespace calls that go to meta as they are, with what they do to the attribute
//! cache: those that change an inode's attributes without returning them mark every
//! cached attribute stale (`ns_changed`); those that return attributes lay the local
//! size over them.

use super::Client;
use crate::meta::Attr;
use cirrus_types::{FsResult, InodeId};

impl Client {
    pub async fn unlink(&self, parent: InodeId, name: &[u8]) -> FsResult<()> {
        let r = self.meta.unlink(parent, name).await;
        self.ns_changed();
        r
    }

    pub async fn rmdir(&self, parent: InodeId, name: &[u8]) -> FsResult<()> {
        let r = self.meta.rmdir(parent, name).await;
        self.ns_changed();
        r
    }

    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let r = self
            .meta
            .rename(parent, name, new_parent, new_name, flags)
            .await;
        self.ns_changed();
        r
    }

    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let r = self.meta.setxattr(ino, name, value, flags).await;
        self.ns_changed();
        r
    }

    pub async fn removexattr(&self, ino: InodeId, name: &[u8]) -> FsResult<()> {
        let r = self.meta.removexattr(ino, name).await;
        self.ns_changed();
        r
    }

    /// A hard link; the reply carries the inode's attributes, so an open file's local
    /// size is laid over them (the kernel would take meta's older size).
    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> FsResult<Attr> {
        let seen = self.gen();
        let r = self.meta.link(ino, new_parent, new_name).await;
        self.ns_changed();
        let a = r?;
        self.remember_attr(&a, self.ns());
        Ok(self.overlay_attr(a, seen))
    }

    /// Directory entries after `cookie`; with `plus`, each entry's attributes have this
    /// mount's local size laid over (readdirplus updates the kernel's inodes).
    pub async fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> FsResult<(Vec<crate::meta::DirEntry>, bool)> {
        let seen = self.gen();
        let (mut entries, eof) = self.meta.readdir(ino, cookie, limit, plus).await?;
        for e in &mut entries {
            if let Some(a) = e.attr.take() {
                e.attr = Some(self.overlay_attr(a, seen));
            }
        }
        Ok((entries, eof))
    }
}
