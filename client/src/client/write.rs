//! Write-back: `try_write`/`write` buffer bytes within the per-inode and client-wide
//! budgets, a flush behind the writer sends settled bytes, and `flush` (close), `fsync`
//! and `flush_all` (unmount) send the rest and commit size and mtime to meta.

use super::attrs::CachedAttr;
use super::open_files::OpenInode;
use super::{lock, now_ns, Client};
use crate::buffer::plan_flush;
use cirrus_types::{FsError, FsResult, HandleId, ObjectKey};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// What `try_write` did with a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Buffered {
    /// Buffered: the write is done (this many bytes).
    Done(usize),
    /// No room: nothing was buffered; `write` waits for room.
    Full,
}

impl Client {
    /// Buffers a write without waiting when there is room (buffered plus being sent
    /// below `max_dirty`, or nothing held at all), and starts a flush behind the writer
    /// once `flush_behind` bytes wait. Callable from a thread outside the runtime: the
    /// FUSE threads answer most writes this way, without a task.
    pub fn try_write(self: &Arc<Self>, fh: u64, off: u64, data: &[u8]) -> FsResult<Buffered> {
        let (inode, _) = self.handle(fh)?;
        // The client's door: past the largest file is EFBIG here, before anything is
        // buffered or sent (the data servers and meta refuse it again).
        let end = cirrus_types::limits::check_file_range(off, data.len() as u64)?;
        let start_behind = {
            let mut st = lock(&inode.state);
            let held = st.buf.len() + st.inflight.len();
            if held > 0 && held + data.len() > self.cfg.max_dirty {
                return Ok(Buffered::Full);
            }
            // The client-wide budget. Checked, not reserved: writers of other inodes
            // checking at the same moment may each add one write past it.
            let all = self.dirty.bytes.load(Ordering::Relaxed);
            if all > 0 && all + data.len() > self.cfg.max_dirty_total {
                return Ok(Buffered::Full);
            }
            st.buf.insert(off, data);
            st.ra.drop_range(off, end);
            inode.recount(&mut st);
            st.size = st.size.max(end);
            st.mtime_ns = now_ns();
            st.write_gen += 1;
            st.uncommitted = true;
            self.changed(&mut st);
            let go = !st.behind && !st.behind_failed && st.buf.len() >= self.cfg.flush_behind;
            if go {
                st.behind = true;
            }
            go
        };
        if start_behind {
            let (c, i) = (self.clone(), inode.clone());
            self.rt.spawn(async move { c.flush_behind(i).await });
        }
        Ok(Buffered::Done(data.len()))
    }

    /// write(2): buffers the bytes, waiting for room while `max_dirty` bytes of this
    /// inode or `max_dirty_total` of the client are held. A writer short of room with
    /// no flush behind it flushes its own inode in the foreground, so a failing chain
    /// surfaces here as that flush's error; one that holds nothing while other files
    /// fill the client's budget flushes the fullest of them.
    pub async fn write(self: &Arc<Self>, fh: u64, off: u64, data: &[u8]) -> FsResult<usize> {
        let deadline = self.deadline();
        let timeout = || {
            FsError::Timeout("write: no room in the write-back buffer before the deadline".into())
        };
        loop {
            let (inode, _) = self.handle(fh)?;
            // Registered before the check, so a flush finishing in between still wakes it.
            let notified = inode.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let drained = self.dirty.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if let Buffered::Done(n) = self.try_write(fh, off, data)? {
                return Ok(n);
            }
            let (behind, held) = {
                let st = lock(&inode.state);
                (st.behind, st.buf.len() + st.inflight.len())
            };
            if behind {
                if tokio::time::timeout_at(deadline.into(), notified)
                    .await
                    .is_err()
                {
                    return Err(timeout());
                }
            } else if held > 0 {
                self.flush_inode(&inode, deadline).await?;
            } else {
                // Other inodes hold the client's budget. Their bytes are not this
                // writer's to fail on: a flush that fails leaves them buffered and the
                // writer waits for any flush until its deadline.
                let flushed = match self.fullest() {
                    Some(other) => self.flush_inode(&other, deadline).await.map_err(|e| {
                        tracing::warn!(ino = %other.ino, err = %e, "flush for room in the client's write-back budget failed");
                    }),
                    None => Err(()),
                };
                if flushed.is_err()
                    && tokio::time::timeout_at(deadline.into(), drained)
                        .await
                        .is_err()
                {
                    return Err(timeout());
                }
            }
        }
    }

    /// The open inode holding the most buffered bytes not yet being sent, if any holds
    /// some.
    fn fullest(&self) -> Option<Arc<OpenInode>> {
        let inodes = lock(&self.inodes);
        inodes
            .values()
            .map(|i| (lock(&i.state).buf.len(), i))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)
            .map(|(_, i)| i.clone())
    }

    /// Dirty bytes this client holds across all its files (buffered or being sent).
    pub fn dirty_bytes(&self) -> usize {
        self.dirty.bytes.load(Ordering::Relaxed)
    }

    /// Sends settled dirty bytes (all but a block still being filled) batch after batch
    /// while at least `flush_behind` bytes wait, then ends.
    async fn flush_behind(self: Arc<Self>, inode: Arc<OpenInode>) {
        loop {
            let io = inode.io_lock.lock().await;
            let r = self.flush_batch(&inode, self.deadline(), true).await;
            drop(io);
            let again = {
                let mut st = lock(&inode.state);
                if r.is_err() {
                    st.behind_failed = true;
                }
                let again = r.is_ok() && st.buf.len() >= self.cfg.flush_behind;
                if !again {
                    st.behind = false;
                }
                again
            };
            inode.flushed.notify_waiters();
            if let Err(e) = r {
                tracing::warn!(ino = %inode.ino, err = %e, "flush behind the writer failed; the bytes stay buffered for the next flush");
            }
            if !again {
                return;
            }
        }
    }

    /// Sends the inode's buffer to the chains, in parallel, one RPC per chunk.
    async fn flush_inode(&self, inode: &Arc<OpenInode>, deadline: Instant) -> FsResult<()> {
        let _io = inode.io_lock.lock().await;
        self.flush_locked(inode, deadline).await
    }

    pub(super) async fn flush_locked(
        &self,
        inode: &Arc<OpenInode>,
        deadline: Instant,
    ) -> FsResult<()> {
        self.flush_batch(inode, deadline, false).await?;
        lock(&inode.state).behind_failed = false;
        Ok(())
    }

    /// One flush under the io lock: every dirty byte, or with `settled` all but a block
    /// still being filled. The batch is frozen, so its RPCs carry slices of the buffer's
    /// own allocations and reads lay it over server bytes without a copy.
    async fn flush_batch(
        &self,
        inode: &Arc<OpenInode>,
        deadline: Instant,
        settled: bool,
    ) -> FsResult<()> {
        let batch = {
            let mut st = lock(&inode.state);
            let mut b = if settled {
                st.buf.take_settled()
            } else {
                std::mem::take(&mut st.buf)
            };
            if b.is_empty() {
                return Ok(());
            }
            b.freeze();
            st.inflight = b.clone();
            inode.recount(&mut st);
            b
        };
        let chunks = plan_flush(&batch, &inode.layout, self.cfg.max_chunk);
        drop(batch);
        let objects: BTreeSet<u32> = chunks.iter().map(|c| c.object_index).collect();
        let results: Vec<FsResult<()>> = stream::iter(chunks.into_iter().map(|c| {
            let chain = inode.layout.chains[c.object_index as usize];
            let key = ObjectKey {
                inode: inode.ino,
                index: c.object_index,
            };
            self.data
                .write(chain, key, c.object_offset, c.data, deadline)
        }))
        .buffer_unordered(self.cfg.max_inflight)
        .collect()
        .await;
        let err = results.into_iter().find_map(Result::err);
        let mut st = lock(&inode.state);
        let inflight = std::mem::take(&mut st.inflight);
        st.touched.extend(objects);
        let r = match err {
            Some(e) => {
                // Keep the bytes: a later flush retries them (writes since then stay on top).
                let newer = std::mem::take(&mut st.buf);
                st.buf = inflight;
                st.buf.absorb_newer(newer);
                let size = st.size;
                st.buf.truncate(size);
                Err(e)
            }
            None => Ok(()),
        };
        inode.recount(&mut st);
        drop(st);
        self.dirty.drained.notify_waiters();
        r
    }

    /// Records size and mtime at meta when local writes are not yet committed. Called
    /// with the inode's io lock held: meta keeps the larger of its size and a commit's,
    /// so a commit that read the size before a truncate and reached meta after it would
    /// grow the file back (a close in another process, or the close-on-exec of a child,
    /// sends FLUSH while this one truncates).
    async fn commit(&self, inode: &Arc<OpenInode>, handle: HandleId) -> FsResult<()> {
        let (size, mtime, gen) = {
            let st = lock(&inode.state);
            if !st.uncommitted {
                return Ok(());
            }
            (st.size, st.mtime_ns, st.write_gen)
        };
        let ns = self.ns();
        let a = self
            .meta
            .commit_write(inode.ino, handle, size, mtime)
            .await?;
        let mut st = lock(&inode.state);
        if st.write_gen == gen && st.buf.is_empty() {
            st.uncommitted = false;
        }
        st.attr = Some(CachedAttr {
            attr: a,
            at: Instant::now(),
            ns_gen: ns,
        });
        self.changed(&mut st);
        Ok(())
    }

    /// close(2): data to the chains, size and mtime to meta (close-to-open).
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let (inode, handle) = self.handle(fh)?;
        let deadline = self.deadline();
        let _io = inode.io_lock.lock().await;
        self.flush_locked(&inode, deadline).await?;
        self.commit(&inode, handle).await
    }

    /// fsync(2): flush, then every object written since the last sync is made durable on
    /// every member of its chain, then size and mtime are committed.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let (inode, handle) = self.handle(fh)?;
        let deadline = self.deadline();
        let _io = inode.io_lock.lock().await;
        self.flush_locked(&inode, deadline).await?;
        let touched = std::mem::take(&mut lock(&inode.state).touched);
        let mut per_chain: BTreeMap<u32, Vec<ObjectKey>> = BTreeMap::new();
        for i in &touched {
            per_chain
                .entry(inode.layout.chains[*i as usize].0)
                .or_default()
                .push(ObjectKey {
                    inode: inode.ino,
                    index: *i,
                });
        }
        let results: Vec<FsResult<()>> = stream::iter(
            per_chain
                .into_iter()
                .map(|(c, keys)| self.data.sync(cirrus_types::ChainId(c), keys, deadline)),
        )
        .buffer_unordered(self.cfg.max_inflight)
        .collect()
        .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            lock(&inode.state).touched.extend(touched);
            return Err(e);
        }
        self.commit(&inode, handle).await
    }

    /// Flushes and commits every open inode (unmount).
    pub async fn flush_all(&self) -> FsResult<()> {
        let fhs: Vec<u64> = lock(&self.handles).keys().copied().collect();
        let mut first = Ok(());
        for fh in fhs {
            if let Err(e) = self.flush(fh).await.or_else(|e| match e {
                FsError::StaleHandle => Ok(()),
                e => Err(e),
            }) {
                tracing::error!(err = %e, "flush at unmount");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
