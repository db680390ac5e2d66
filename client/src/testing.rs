//! In-memory meta and data servers behind `MetaApi` and `DataApi`, for the client's unit
//! tests. `FakeMeta` runs meta's own pure state machine (`cirrus_meta::state::MetaState`):
//! each call is turned into the `Command` the meta service would propose (as
//! `meta/src/service.rs` does) and applied, or answered from the state like the service's
//! reads, so the namespace rules are the real ones. `FakeData` keeps each object as a byte
//! vector. Both can fail a named call, and meta can pause one, which is how a test sets up a race: the
//! paused call's answer is fixed (or not yet applied) while the test does something else.
//! Several `Client`s over one pair of fakes are several mounts of one cluster.

use crate::api::{DataApi, MetaApi};
use crate::client::{Client, ClientConfig};
use crate::meta::{Attr, CreateArgs, DirEntry, Opened, SetAttr};
use bytes::Bytes;
use cirrus_meta::door::Proposal;
use cirrus_meta::state::{Command, MetaState, Reply};
use cirrus_types::{
    ChainId, ClientId, ClusterId, FsError, FsResult, HandleId, HeldLock, InodeId, Layout, LockCall,
    ObjectKey,
};
use futures::future::{BoxFuture, FutureExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use cirrus_types::sync::lock;

/// Where a paused call stops: before it touches the state, or after its answer is fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum When {
    Before,
    After,
}

/// A call held at a pause point until `go`.
pub struct Paused {
    reached: oneshot::Receiver<()>,
    go: oneshot::Sender<()>,
}

impl Paused {
    /// Waits until the call is at its pause point.
    pub async fn reached(&mut self) {
        (&mut self.reached)
            .await
            .expect("the paused call was dropped before reaching its pause point");
    }

    /// Lets the call go on.
    pub fn go(self) {
        let _ = self.go.send(());
    }
}

/// The call's side of a `Paused`.
struct Gate {
    reached: oneshot::Sender<()>,
    go: oneshot::Receiver<()>,
}

/// Failures and pauses armed for named calls, shared by both fakes.
#[derive(Default)]
struct Hooks {
    /// One-shot pauses by (call, point).
    pauses: Mutex<HashMap<(&'static str, When), Gate>>,
    /// Calls that fail until cleared, with the error they fail with.
    failing: Mutex<HashMap<&'static str, FsError>>,
    /// Names of the calls made, in order.
    calls: Mutex<Vec<&'static str>>,
}

impl Hooks {
    fn pause(&self, op: &'static str, when: When) -> Paused {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        lock(&self.pauses).insert(
            (op, when),
            Gate {
                reached: reached_tx,
                go: go_rx,
            },
        );
        Paused {
            reached: reached_rx,
            go: go_tx,
        }
    }

    async fn gate(&self, op: &'static str, when: When) {
        let gate = lock(&self.pauses).remove(&(op, when));
        if let Some(g) = gate {
            let _ = g.reached.send(());
            let _ = g.go.await;
        }
    }

    /// Records the call, then its armed failure if any.
    fn enter(&self, op: &'static str) -> FsResult<()> {
        lock(&self.calls).push(op);
        match lock(&self.failing).get(op) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Runs one call through its hooks: pause before, failure, `f`, pause after.
    async fn call<T>(&self, op: &'static str, f: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        self.gate(op, When::Before).await;
        self.enter(op)?;
        let r = f();
        self.gate(op, When::After).await;
        r
    }
}

/// Leader time of the first command; each command gets the next nanosecond.
const T0: i64 = 1_700_000_000_000_000_000;

/// The meta group as one in-memory `MetaState` with one data server and R=1.
pub struct FakeMeta {
    state: Mutex<MetaState>,
    now: AtomicI64,
    hooks: Hooks,
}

fn unexpected<T>(r: Reply) -> FsResult<T> {
    Err(FsError::Io(format!("unexpected apply result {r:?}")))
}

fn attr_reply(r: FsResult<Reply>) -> FsResult<Attr> {
    match r? {
        Reply::Attr(a) => Ok(a),
        other => unexpected(other),
    }
}

impl FakeMeta {
    pub fn new() -> Arc<FakeMeta> {
        let mut s = MetaState::new();
        s.apply(&Command::Init {
            cluster_id: ClusterId(0xc1),
            replicas: 1,
            now_ns: T0,
        })
        .expect("init the fake meta state");
        s.apply(&Command::RegisterServer {
            uuid: "data-0".into(),
            address: "data-0.invalid:7101".into(),
            capacity: 1 << 40,
            free: 1 << 40,
            now_ns: T0,
        })
        .expect("register the fake data server");
        Arc::new(FakeMeta {
            state: Mutex::new(s),
            now: AtomicI64::new(T0),
            hooks: Hooks::default(),
        })
    }

    /// Pauses the next call named `op` (a `MetaApi` method name) at `when`.
    pub fn pause(&self, op: &'static str, when: When) -> Paused {
        self.hooks.pause(op, when)
    }

    /// Makes every call named `op` fail with `err` until `heal`.
    pub fn fail(&self, op: &'static str, err: FsError) {
        lock(&self.hooks.failing).insert(op, err);
    }

    pub fn heal(&self, op: &'static str) {
        lock(&self.hooks.failing).remove(op);
    }

    /// How many calls named `op` were made.
    pub fn calls(&self, op: &str) -> usize {
        lock(&self.hooks.calls).iter().filter(|c| **c == op).count()
    }

    /// Meta's size of `ino`, `None` once the inode is gone.
    pub fn size(&self, ino: InodeId) -> Option<u64> {
        lock(&self.state).inode(ino).map(|i| i.size)
    }

    /// How many handles are open at meta.
    pub fn open_handles(&self) -> u64 {
        lock(&self.state).open_handle_count()
    }

    fn apply(&self, cmd: Command) -> FsResult<Reply> {
        lock(&self.state).apply(&cmd)
    }

    fn now(&self) -> i64 {
        self.now.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn read<T>(&self, f: impl FnOnce(&MetaState) -> FsResult<T>) -> FsResult<T> {
        f(&lock(&self.state))
    }
}

impl MetaApi for FakeMeta {
    fn cached_dir(&self, _ino: InodeId) -> Option<Attr> {
        None
    }

    fn lookup<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<Attr>> {
        self.hooks
            .call("lookup", move || self.read(|s| s.lookup(parent, name)))
            .boxed()
    }

    fn getattr(&self, ino: InodeId) -> BoxFuture<'_, FsResult<Attr>> {
        self.hooks
            .call("getattr", move || self.read(|s| s.getattr(ino)))
            .boxed()
    }

    fn setattr<'a>(
        &'a self,
        ino: InodeId,
        set: &'a SetAttr,
        _handle: u64,
    ) -> BoxFuture<'a, FsResult<Attr>> {
        self.hooks
            .call("setattr", move || {
                attr_reply(self.apply(Command::Setattr {
                    ino,
                    set: set.clone(),
                    now_ns: self.now(),
                }))
            })
            .boxed()
    }

    fn create<'a>(&'a self, a: &'a CreateArgs) -> BoxFuture<'a, FsResult<Opened>> {
        self.hooks
            .call("create", move || {
                // The request the real client sends, through meta's own door.
                let cmd = cirrus_proto::pb::CreateRequest::from(a).command(self.now())?;
                match self.apply(cmd)? {
                    Reply::Created {
                        attr: a,
                        layout,
                        handle,
                        ..
                    } => Ok(Opened {
                        handle: handle.unwrap_or(HandleId(0)),
                        attr: a,
                        layout,
                    }),
                    other => unexpected(other),
                }
            })
            .boxed()
    }

    fn link<'a>(
        &'a self,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &'a [u8],
    ) -> BoxFuture<'a, FsResult<Attr>> {
        self.hooks
            .call("link", move || {
                attr_reply(self.apply(Command::Link {
                    ino,
                    new_parent,
                    new_name: new_name.to_vec(),
                    now_ns: self.now(),
                }))
            })
            .boxed()
    }

    fn unlink<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>> {
        self.hooks
            .call("unlink", move || {
                self.apply(Command::Unlink {
                    parent,
                    name: name.to_vec(),
                    now_ns: self.now(),
                })
                .map(drop)
            })
            .boxed()
    }

    fn rmdir<'a>(&'a self, parent: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>> {
        self.hooks
            .call("rmdir", move || {
                self.apply(Command::Rmdir {
                    parent,
                    name: name.to_vec(),
                    now_ns: self.now(),
                })
                .map(drop)
            })
            .boxed()
    }

    fn rename<'a>(
        &'a self,
        parent: InodeId,
        name: &'a [u8],
        new_parent: InodeId,
        new_name: &'a [u8],
        flags: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        self.hooks
            .call("rename", move || {
                self.apply(Command::Rename {
                    parent,
                    name: name.to_vec(),
                    new_parent,
                    new_name: new_name.to_vec(),
                    flags,
                    now_ns: self.now(),
                })
                .map(drop)
            })
            .boxed()
    }

    fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> BoxFuture<'_, FsResult<(Vec<DirEntry>, bool)>> {
        self.hooks
            .call("readdir", move || {
                self.read(|s| {
                    let (entries, eof) = s.readdir(ino, cookie, limit)?;
                    let out = entries
                        .into_iter()
                        .map(|e| DirEntry {
                            attr: plus.then(|| s.getattr(e.ino).ok()).flatten(),
                            ..e
                        })
                        .collect();
                    Ok((out, eof))
                })
            })
            .boxed()
    }

    fn setxattr<'a>(
        &'a self,
        ino: InodeId,
        name: &'a [u8],
        value: &'a [u8],
        flags: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        self.hooks
            .call("setxattr", move || {
                self.apply(Command::SetXattr {
                    ino,
                    name: name.to_vec(),
                    value: value.to_vec(),
                    flags,
                    now_ns: self.now(),
                })
                .map(drop)
            })
            .boxed()
    }

    fn removexattr<'a>(&'a self, ino: InodeId, name: &'a [u8]) -> BoxFuture<'a, FsResult<()>> {
        self.hooks
            .call("removexattr", move || {
                self.apply(Command::RemoveXattr {
                    ino,
                    name: name.to_vec(),
                    now_ns: self.now(),
                })
                .map(drop)
            })
            .boxed()
    }

    fn open(
        &self,
        ino: InodeId,
        client: ClientId,
        truncate: bool,
    ) -> BoxFuture<'_, FsResult<Opened>> {
        self.hooks
            .call("open", move || {
                match self.apply(Command::Open {
                    ino,
                    client,
                    truncate,
                    now_ns: self.now(),
                })? {
                    Reply::Opened {
                        handle,
                        attr: a,
                        layout,
                    } => Ok(Opened {
                        handle,
                        attr: a,
                        layout,
                    }),
                    other => unexpected(other),
                }
            })
            .boxed()
    }

    fn release(&self, handle: HandleId) -> BoxFuture<'_, FsResult<()>> {
        self.hooks
            .call("release", move || {
                self.apply(Command::Release {
                    handle,
                    now_ns: self.now(),
                })
                .map(drop)
            })
            .boxed()
    }

    fn release_many<'a>(&'a self, handles: &'a [HandleId]) -> BoxFuture<'a, FsResult<()>> {
        self.hooks
            .call("release_many", move || {
                self.apply(Command::ReleaseMany {
                    handles: handles.to_vec(),
                    now_ns: self.now(),
                })
                .map(drop)
            })
            .boxed()
    }

    fn commit_write(
        &self,
        ino: InodeId,
        handle: HandleId,
        size: u64,
        mtime_ns: i64,
    ) -> BoxFuture<'_, FsResult<Attr>> {
        self.hooks
            .call("commit_write", move || {
                attr_reply(self.apply(Command::CommitWrite {
                    ino,
                    handle: (handle.0 != 0).then_some(handle),
                    size,
                    mtime_ns,
                    now_ns: self.now(),
                }))
            })
            .boxed()
    }

    fn get_layout(&self, ino: InodeId) -> BoxFuture<'_, FsResult<Layout>> {
        self.hooks
            .call("get_layout", move || self.read(|s| s.layout(ino)))
            .boxed()
    }

    fn renew_lease(&self, _client: ClientId) -> BoxFuture<'_, FsResult<()>> {
        self.hooks.call("renew_lease", || Ok(())).boxed()
    }

    /// Applies the lock at once; a wait is not modelled (a conflict is `WouldBlock`, on
    /// which a blocking caller would ask again at once).
    fn set_lock<'a>(
        &'a self,
        call: &'a LockCall,
        _wait: Option<(u64, Duration)>,
    ) -> BoxFuture<'a, FsResult<()>> {
        self.hooks
            .call("set_lock", move || {
                self.apply(Command::SetLock {
                    ino: call.ino,
                    owner: call.owner,
                    kind: call.kind,
                    start: call.start,
                    end: call.end,
                    pid: call.pid,
                })
                .map(drop)
            })
            .boxed()
    }

    fn get_lock<'a>(&'a self, call: &'a LockCall) -> BoxFuture<'a, FsResult<Option<HeldLock>>> {
        self.hooks
            .call("get_lock", move || {
                let kind = call
                    .kind
                    .ok_or_else(|| FsError::Invalid("F_GETLK of an unlock".into()))?;
                self.read(|s| Ok(s.lock_conflict(call.ino, call.owner, kind, call.start, call.end)))
            })
            .boxed()
    }

    fn cancel_lock_wait(&self, _client: ClientId, _wait_id: u64) -> BoxFuture<'_, FsResult<()>> {
        self.hooks.call("cancel_lock_wait", || Ok(())).boxed()
    }
}

/// The data servers as one map of objects, each a byte vector (a hole is zeros, a read
/// past the end is short, as a data server answers).
#[derive(Default)]
pub struct FakeData {
    objects: Mutex<HashMap<ObjectKey, Vec<u8>>>,
    hooks: Hooks,
}

impl FakeData {
    pub fn new() -> Arc<FakeData> {
        Arc::new(FakeData::default())
    }

    /// Makes every call named `op` fail with `err` until `heal`.
    pub fn fail(&self, op: &'static str, err: FsError) {
        lock(&self.hooks.failing).insert(op, err);
    }

    pub fn heal(&self, op: &'static str) {
        lock(&self.hooks.failing).remove(op);
    }

    /// Bytes stored in object `index` of `ino`.
    pub fn object(&self, ino: InodeId, index: u32) -> Vec<u8> {
        let key = ObjectKey { inode: ino, index };
        lock(&self.objects).get(&key).cloned().unwrap_or_default()
    }

    fn with<T>(&self, key: ObjectKey, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        f(lock(&self.objects).entry(key).or_default())
    }
}

fn put(obj: &mut Vec<u8>, off: usize, data: &[u8]) {
    if obj.len() < off + data.len() {
        obj.resize(off + data.len(), 0);
    }
    obj[off..off + data.len()].copy_from_slice(data);
}

impl DataApi for FakeData {
    fn write(
        &self,
        _chain: ChainId,
        key: ObjectKey,
        offset: u64,
        data: Bytes,
        _deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        self.hooks
            .call("write", move || {
                self.with(key, |o| put(o, offset as usize, &data));
                Ok(())
            })
            .boxed()
    }

    fn read(
        &self,
        _chain: ChainId,
        key: ObjectKey,
        offset: u64,
        len: u32,
        _deadline: Instant,
    ) -> BoxFuture<'_, FsResult<Bytes>> {
        self.hooks
            .call("read", move || {
                Ok(self.with(key, |o| {
                    let from = (offset as usize).min(o.len());
                    let to = (from + len as usize).min(o.len());
                    Bytes::copy_from_slice(&o[from..to])
                }))
            })
            .boxed()
    }

    fn sync(
        &self,
        _chain: ChainId,
        keys: Vec<ObjectKey>,
        _deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        self.hooks
            .call("sync", move || {
                drop(keys);
                Ok(())
            })
            .boxed()
    }

    fn truncate(
        &self,
        _chain: ChainId,
        key: ObjectKey,
        size: u64,
        _deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        self.hooks
            .call("truncate", move || {
                self.with(key, |o| o.resize(size as usize, 0));
                Ok(())
            })
            .boxed()
    }

    fn punch(
        &self,
        _chain: ChainId,
        key: ObjectKey,
        offset: u64,
        length: u64,
        _deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        self.hooks
            .call("punch", move || {
                self.with(key, |o| {
                    let from = (offset as usize).min(o.len());
                    let to = ((offset + length) as usize).min(o.len());
                    o[from..to].fill(0);
                });
                Ok(())
            })
            .boxed()
    }

    fn copy(
        &self,
        _chain: ChainId,
        dst: ObjectKey,
        dst_off: u64,
        _src_chain: ChainId,
        src: ObjectKey,
        src_off: u64,
        len: u32,
        _deadline: Instant,
    ) -> BoxFuture<'_, FsResult<()>> {
        self.hooks
            .call("copy", move || {
                let bytes = self.with(src, |o| {
                    let from = (src_off as usize).min(o.len());
                    let to = (from + len as usize).min(o.len());
                    let mut b = o[from..to].to_vec();
                    b.resize(len as usize, 0);
                    b
                });
                self.with(dst, |o| put(o, dst_off as usize, &bytes));
                Ok(())
            })
            .boxed()
    }
}

/// One cluster of fakes; each `mount` is another `Client` over it.
pub struct Cluster {
    pub meta: Arc<FakeMeta>,
    pub data: Arc<FakeData>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            meta: FakeMeta::new(),
            data: FakeData::new(),
        }
    }

    /// A client with short deadlines, no flush behind the writer below 1 MiB, and
    /// releases sent 1 ms after a close (a test that needs one to trail pauses
    /// `release_many`).
    pub fn mount(&self) -> Arc<Client> {
        self.mount_with(ClientConfig {
            deadline: Duration::from_secs(5),
            release_delay: Duration::from_millis(1),
            flush_behind: 1 << 20,
            ..ClientConfig::default()
        })
    }

    pub fn mount_with(&self, cfg: ClientConfig) -> Arc<Client> {
        Client::with_apis(self.meta.clone(), self.data.clone(), cfg)
    }
}
