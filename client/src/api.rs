//! The two seams of `Client`: `MetaApi`, what it asks of the meta group, and `DataApi`,
//! what it asks of the data servers, exactly the calls `Client` makes and no more.
//! `MetaClient` and `DataPath` are the real implementations; unit tests put in-memory
//! ones behind the same traits (`crate::testing`), so the client's own rules (size
//! stamps, write-back, close and release) are tested without a cluster. Object-safe:
//! every async call returns a boxed future borrowing its arguments.

use crate::data::DataPath;
use crate::meta::{Attr, CreateArgs, DirEntry, MetaClient, Opened, SetAttr};
use bytes::Bytes;
use cirrus_types::{
    ChainId, ClientId, FsResult, HandleId, HeldLock, InodeId, Layout, LockCall, ObjectKey,
};
use futures::future::{BoxFuture, FutureExt};
use std::time::{Duration, Instant};

/// The meta group as `Client` uses it. Each call has the meaning of the `MetaClient`
/// method of the same name.
pub trait MetaApi: Send + Sync {
    /// Attributes of a directory this mount changed within `meta::DIR_ATTR_TTL`, if any.
    fn cached_dir(&self, ino: InodeId) -> Option<Attr>;
    fn lookup<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<Attr>>;
    fn getattr(&self, ino: InodeId) -> BoxFuture<'_, FsResult<Attr>>;
    fn setattr<'a>(
        &'a self,
        ino: InodeId,
        set: &'a SetAttr,
        handle: u64,
    ) -> BoxFuture<'a, FsResult<Attr>>;
    fn create<'a>(&'a self, args: &'a CreateArgs) -> BoxFuture<'a, FsResult<Opened>>;
    fn link<'a>(
        &'a self,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &'a [u8],
    ) -> BoxFuture<'a, FsResult<Attr>>;
    fn unlink<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>>;
    fn rmdir<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>>;
    fn rename<'a>(
        &'a self,
        parent: InodeId,
        name: &'a [u8],
        new_parent: InodeId,
        new_name: &'a [u8],
        flags: u32,
    ) -> BoxFuture<'a, FsResult<()>>;
    fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> BoxFuture<'_, FsResult<(Vec<DirEntry>, bool)>>;
    fn setxattr<'a>(
        &'a self,
        ino: InodeId,
        name: &'a [u8],
        value: &'a [u8],
        flags: u32,
    ) -> BoxFuture<'a, FsResult<()>>;
    fn removexattr<'a>(&'a self, ino: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>>;
    fn open(
        &self,
        ino: InodeId,
        client: ClientId,
        truncate: bool,
    ) -> BoxFuture<'_, FsResult<Opened>>;
    fn release(&self, handle: HandleId) -> BoxFuture<'_, FsResult<()>>;
    fn release_many<'a>(&'a self, handles: &'a [HandleId]) -> BoxFuture<'a, FsResult<()>>;
    fn commit_write(
        &self,
        ino: InodeId,
        handle: HandleId,
        size: u64,
        mtime_ns: i64,
    ) -> BoxFuture<'_, FsResult<Attr>>;
    fn get_layout(&self, ino: InodeId) -> BoxFuture<'_, FsResult<Layout>>;
    fn renew_lease(&self, client: ClientId) -> BoxFuture<'_, FsResult<()>>;
    fn set_lock<'a>(
        &'a self,
        lock: &'a LockCall,
        wait: Option<(u64, Duration)>,
    ) -> BoxFuture<'a, FsResult<()>>;
    fn get_lock<'a>(&'a self, lock: &'a LockCall) -> BoxFuture<'a, FsResult<Option<HeldLock>>>;
    fn cancel_lock_wait(&self, client: ClientId, wait_id: u64) -> BoxFuture<'_, FsResult<()>>;
}

/// The data servers as `Client` uses them. Each call has the meaning of the `DataPath`
/// method of the same name.
pub trait DataApi: Send + Sync {
    fn write(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        data: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>>;
    fn read(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        len: u32,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<Bytes>>;
    fn sync(
        &self,
        chain: ChainId,
        keys: Vec<ObjectKey>,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>>;
    fn truncate(
        &self,
        chain: ChainId,
        key: ObjectKey,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>>;
    fn punch(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        length: u64,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>>;
    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        chain: ChainId,
        dst: ObjectKey,
        dst_off: u64,
        src_chain: ChainId,
        src: ObjectKey,
        src_off: u64,
        len: u32,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>>;
}

impl MetaApi for MetaClient {
    fn cached_dir(&self, ino: InodeId) -> Option<Attr> {
        MetaClient::cached_dir(self, ino)
    }
    fn lookup<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<Attr>> {
        MetaClient::lookup(self, parent, name).boxed()
    }
    fn getattr(&self, ino: InodeId) -> BoxFuture<'_, FsResult<Attr>> {
        MetaClient::getattr(self, ino).boxed()
    }
    fn setattr<'a>(
        &'a self,
        ino: InodeId,
        set: &'a SetAttr,
        handle: u64,
    ) -> BoxFuture<'a, FsResult<Attr>> {
        MetaClient::setattr(self, ino, set, handle).boxed()
    }
    fn create<'a>(&'a self, args: &'a CreateArgs) -> BoxFuture<'a, FsResult<Opened>> {
        MetaClient::create(self, args).boxed()
    }
    fn link<'a>(
        &'a self,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &'a [u8],
    ) -> BoxFuture<'a, FsResult<Attr>> {
        MetaClient::link(self, ino, new_parent, new_name).boxed()
    }
    fn unlink<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>> {
        MetaClient::unlink(self, parent, name).boxed()
    }
    fn rmdir<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>> {
        MetaClient::rmdir(self, parent, name).boxed()
    }
    fn rename<'a>(
        &'a self,
        parent: InodeId,
        name: &'a [u8],
        new_parent: InodeId,
        new_name: &'a [u8],
        flags: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        MetaClient::rename(self, parent, name, new_parent, new_name, flags).boxed()
    }
    fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> BoxFuture<'_, FsResult<(Vec<DirEntry>, bool)>> {
        MetaClient::readdir(self, ino, cookie, limit, plus).boxed()
    }
    fn setxattr<'a>(
        &'a self,
        ino: InodeId,
        name: &'a [u8],
        value: &'a [u8],
        flags: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        MetaClient::setxattr(self, ino, name, value, flags).boxed()
    }
    fn removexattr<'a>(&'a self, ino: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>> {
        MetaClient::removexattr(self, ino, name).boxed()
    }
    fn open(
        &self,
        ino: InodeId,
        client: ClientId,
        truncate: bool,
    ) -> BoxFuture<'_, FsResult<Opened>> {
        MetaClient::open(self, ino, client, truncate).boxed()
    }
    fn release(&self, handle: HandleId) -> BoxFuture<'_, FsResult<()>> {
        MetaClient::release(self, handle).boxed()
    }
    fn release_many<'a>(&'a self, handles: &'a [HandleId]) -> BoxFuture<'a, FsResult<()>> {
        MetaClient::release_many(self, handles).boxed()
    }
    fn commit_write(
        &self,
        ino: InodeId,
        handle: HandleId,
        size: u64,
        mtime_ns: i64,
    ) -> BoxFuture<'_, FsResult<Attr>> {
        MetaClient::commit_write(self, ino, handle, size, mtime_ns).boxed()
    }
    fn get_layout(&self, ino: InodeId) -> BoxFuture<'_, FsResult<Layout>> {
        MetaClient::get_layout(self, ino).boxed()
    }
    fn renew_lease(&self, client: ClientId) -> BoxFuture<'_, FsResult<()>> {
        MetaClient::renew_lease(self, client).boxed()
    }
    fn set_lock<'a>(
        &'a self,
        lock: &'a LockCall,
        wait: Option<(u64, Duration)>,
    ) -> BoxFuture<'a, FsResult<()>> {
        MetaClient::set_lock(self, lock, wait).boxed()
    }
    fn get_lock<'a>(&'a self, lock: &'a LockCall) -> BoxFuture<'a, FsResult<Option<HeldLock>>> {
        MetaClient::get_lock(self, lock).boxed()
    }
    fn cancel_lock_wait(&self, client: ClientId, wait_id: u64) -> BoxFuture<'_, FsResult<()>> {
        MetaClient::cancel_lock_wait(self, client, wait_id).boxed()
    }
}

impl DataApi for DataPath {
    fn write(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        data: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        DataPath::write(self, chain, key, offset, data, deadline).boxed()
    }
    fn read(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        len: u32,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<Bytes>> {
        DataPath::read(self, chain, key, offset, len, deadline).boxed()
    }
    fn sync(
        &self,
        chain: ChainId,
        keys: Vec<ObjectKey>,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        DataPath::sync(self, chain, keys, deadline).boxed()
    }
    fn truncate(
        &self,
        chain: ChainId,
        key: ObjectKey,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        DataPath::truncate(self, chain, key, size, deadline).boxed()
    }
    fn punch(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        length: u64,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        DataPath::punch(self, chain, key, offset, length, deadline).boxed()
    }
    fn copy(
        &self,
        chain: ChainId,
        dst: ObjectKey,
        dst_off: u64,
        src_chain: ChainId,
        src: ObjectKey,
        src_off: u64,
        len: u32,
        deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        DataPath::copy(
            self, chain, dst, dst_off, src_chain, src, src_off, len, deadline,
        )
        .boxed()
    }
}
