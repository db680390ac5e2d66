//! The open-file table: per open inode its state (write-back buffer, local size, commit
//! state, read-ahead blocks, cached attributes), and per handle its inode and meta
//! handle. `open`, `create` and `mknod` go to meta; `register` enters the result.

use super::attrs::CachedAttr;
use super::read::ReadAhead;
use super::{lock, Client};
use crate::buffer::WriteBuffer;
use crate::meta::{Attr, CreateArgs, NewMode, Opened};
use cirrus_types::{FileKind, FsError, FsResult, HandleId, InodeId, Layout};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Default)]
pub(super) struct InodeState {
    /// Writes not yet sent to the data servers.
    pub(super) buf: WriteBuffer,
    /// Writes being sent by the flush in progress; reads lay them under `buf`.
    pub(super) inflight: WriteBuffer,
    /// File size as this mount knows it (meta's size plus local writes and truncates).
    pub(super) size: u64,
    /// mtime of the last local write, ns.
    pub(super) mtime_ns: i64,
    /// Objects written since the last sync.
    pub(super) touched: BTreeSet<u32>,
    /// Bumped per write; a commit clears `uncommitted` only if no write came in meanwhile.
    pub(super) write_gen: u64,
    /// `Client::local_gen` when `size` or `uncommitted` of this inode last changed here (a
    /// write, a commit, a truncate, a copy, an open, an attribute reply taken as the
    /// size): meta's attributes from a call that started at an older generation may
    /// predate the change. Per inode, so the other files of a busy mount do not make
    /// every reply about this one look stale.
    pub(super) size_at: u64,
    pub(super) uncommitted: bool,
    pub(super) opens: usize,
    /// Meta's attributes of the inode from the last reply that carried them (open,
    /// create, setattr, link, commit), when, and `ns_gen` at the time the call started.
    /// While the inode is open here, a getattr is answered from them (size and mtime
    /// laid over): this mount is the writer, and close-to-open only promises another
    /// mount's changes at the next open.
    pub(super) attr: Option<CachedAttr>,
    /// A flush behind the writer is running (at most one per inode).
    pub(super) behind: bool,
    /// The last flush behind failed: none starts again until a foreground flush (a
    /// writer short of room, close, fsync) has succeeded, so a dead chain costs one
    /// deadline per foreground call instead of one per write.
    pub(super) behind_failed: bool,
    /// Blocks fetched ahead of a sequential reader (under the same lock as `buf`, so a
    /// write and the decision to fetch a block are ordered).
    pub(super) ra: ReadAhead,
    /// This inode's share of the client-wide dirty count (`buf` plus `inflight` when
    /// last counted; see `OpenInode::recount`).
    pub(super) counted: usize,
    /// This inode's share of the client-wide count of read-ahead blocks held.
    pub(super) ra_counted: usize,
}

impl InodeState {
    /// Bytes or a size this mount holds that meta does not have yet.
    pub(super) fn pending(&self) -> bool {
        self.uncommitted || !self.buf.is_empty() || !self.inflight.is_empty()
    }

    /// The per-inode stamp rule: a meta reply from a call that started at generation
    /// `seen` may replace this inode's size only if nothing local is pending and the
    /// inode did not change here while the call was in flight. Every path that takes a
    /// size from meta (attribute replies, opens, revalidation after a lock) asks this.
    pub(super) fn meta_size_applies(&self, seen: u64) -> bool {
        !self.pending() && self.size_at <= seen
    }
}

/// An inode with at least one open handle in this mount.
pub(super) struct OpenInode {
    pub(super) ino: InodeId,
    pub(super) layout: Layout,
    pub(super) state: Mutex<InodeState>,
    /// Serialises flushes, commits, truncates and syncs of this inode.
    pub(super) io_lock: tokio::sync::Mutex<()>,
    /// Signalled after every flush behind the writer (room may have been freed).
    pub(super) flushed: tokio::sync::Notify,
    /// The client's dirty bytes across all inodes (`Client::dirty`).
    pub(super) dirty: Arc<Dirty>,
}

/// The client-wide write-back count (every open inode's `buf` plus `inflight`) and
/// read-ahead count (blocks held in every open inode's `ra`).
#[derive(Default)]
pub(super) struct Dirty {
    pub(super) bytes: AtomicUsize,
    pub(super) ra_blocks: AtomicUsize,
    /// Signalled after every flush of any inode (room may have been freed).
    pub(super) drained: tokio::sync::Notify,
}

impl OpenInode {
    /// Brings this inode's shares of the client-wide counts up to date. Called with the
    /// state lock held after every change of `buf`, `inflight` or `ra.blocks`.
    pub(super) fn recount(&self, st: &mut InodeState) {
        fn adjust(total: &AtomicUsize, was: &mut usize, now: usize) {
            if now >= *was {
                total.fetch_add(now - *was, Ordering::Relaxed);
            } else {
                total.fetch_sub(*was - now, Ordering::Relaxed);
            }
            *was = now;
        }
        adjust(
            &self.dirty.bytes,
            &mut st.counted,
            st.buf.len() + st.inflight.len(),
        );
        adjust(
            &self.dirty.ra_blocks,
            &mut st.ra_counted,
            st.ra.blocks.len(),
        );
    }
}

impl Drop for OpenInode {
    /// An inode forgotten by the client takes its share of the dirty count with it.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.dirty.bytes.fetch_sub(st.counted, Ordering::Relaxed);
        self.dirty
            .ra_blocks
            .fetch_sub(st.ra_counted, Ordering::Relaxed);
    }
}

pub(super) struct Handle {
    pub(super) inode: Arc<OpenInode>,
    pub(super) meta: HandleId,
}

impl Client {
    /// `seen` is `gen()` from before the meta call that opened it.
    fn register(&self, opened: Opened, ns: u64, seen: u64) -> (u64, Attr) {
        let ino = opened.attr.ino;
        let inode = {
            let mut inodes = lock(&self.inodes);
            let inode = inodes
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenInode {
                        ino,
                        layout: opened.layout.clone(),
                        state: Mutex::new(InodeState::default()),
                        io_lock: tokio::sync::Mutex::new(()),
                        flushed: tokio::sync::Notify::new(),
                        dirty: self.dirty.clone(),
                    })
                })
                .clone();
            let mut st = lock(&inode.state);
            if st.meta_size_applies(seen) {
                // Close-to-open: a fresh open takes meta's size. Bytes this mount still
                // holds (a close whose flush failed keeps them for a retry) stay visible,
                // as a local page cache keeps them: taking meta's older size here made
                // them unreadable and the next close committed the short size. Nor is
                // meta's size taken when this inode's size or commit state changed here
                // while the open was in flight: a commit still on its way when meta
                // answered the open lands after the answer, and taking the answer's size
                // cut a file this mount had just extended (exerciser seed 2, #347).
                st.size = opened.attr.size;
                st.mtime_ns = opened.attr.mtime_ns;
            }
            st.opens += 1;
            // Close-to-open: bytes fetched ahead before this open may predate another
            // mount's close.
            st.ra.clear();
            inode.recount(&mut st);
            st.attr = Some(CachedAttr {
                attr: opened.attr.clone(),
                at: Instant::now(),
                ns_gen: ns,
            });
            self.changed(&mut st);
            drop(st);
            inode
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Handle {
                inode,
                meta: opened.handle,
            },
        );
        let attr = self.overlay_attr(opened.attr, seen);
        (fh, attr)
    }

    /// Opens a regular file; returns the local handle and fresh attributes.
    pub async fn open(&self, ino: InodeId) -> FsResult<(u64, Attr)> {
        let ns = self.ns();
        let seen = self.gen();
        // An inode gone at meta is a stale entry of the kernel's (another mount removed
        // the name): ESTALE, on which the kernel walks the path again with a fresh
        // lookup, so an open (O_CREAT included) acts on what the name is now.
        let opened = match self.meta.open(ino, self.client_id, false).await {
            Err(FsError::NotFound) => return Err(FsError::StaleHandle),
            r => r?,
        };
        if opened.attr.kind != FileKind::File {
            let _ = self.meta.release(opened.handle).await;
            return Err(FsError::IsDir);
        }
        // No name reaches the inode any more: another mount unlinked it, and meta keeps it
        // only for a handle not yet released (the kernel sends RELEASE after close(2)
        // returns, so it can trail that mount's unlink). An open through a stale entry
        // here is ESTALE, as if the inode were gone (the kernel looks the name up again);
        // one on an inode this mount still holds open (a reopen through /proc/self/fd)
        // goes on, as on a local disk.
        if opened.attr.nlink == 0 && !lock(&self.inodes).contains_key(&ino) {
            let _ = self.meta.release(opened.handle).await;
            return Err(FsError::StaleHandle);
        }
        Ok(self.register(opened, ns, seen))
    }

    /// Creates (or with `exclusive == false` opens an existing) regular file and opens it.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: impl Into<NewMode>,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> FsResult<(u64, Attr)> {
        let ns = self.ns();
        let seen = self.gen();
        let m = mode.into().perms();
        let args = CreateArgs {
            parent,
            name: name.to_vec(),
            mode: m.mode,
            umask: m.umask,
            uid,
            gid,
            exclusive,
            client: Some(self.client_id),
        };
        let opened = self.meta.create(&args).await?;
        Ok(self.register(opened, ns, seen))
    }

    /// Creates a regular file without opening it (mknod).
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: impl Into<NewMode>,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let m = mode.into().perms();
        let args = CreateArgs {
            parent,
            name: name.to_vec(),
            mode: m.mode,
            umask: m.umask,
            uid,
            gid,
            exclusive: true,
            client: None,
        };
        let o = self.meta.create(&args).await?;
        Ok(o.attr)
    }
}
