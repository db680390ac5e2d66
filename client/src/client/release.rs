//! The last close of a handle: flushed and committed in the foreground, released at meta
//! either at once (`release`) or behind the call in batches (`close`, the release
//! queue); `drain_releases` and `release_all` send what waits at unmount.

use super::{lock, Client};
use cirrus_types::{FsError, FsResult, HandleId};
use std::sync::Arc;
use std::time::Duration;

/// Handles waiting to be released at meta in one batch.
#[derive(Default)]
pub(super) struct ReleaseQueue {
    pub(super) handles: Vec<HandleId>,
    /// A task owns sending: it sends batches until the queue is empty, then clears this.
    pub(super) sender: bool,
}

/// Pause before a failed release batch is sent again.
const RELEASE_RETRY: Duration = Duration::from_secs(1);

impl Client {
    /// Last close of a handle: flush, commit, release at meta. Errors of the flush are
    /// returned after the handle is released anyway (the kernel ignores release errors,
    /// but `flush` already reported them to close(2)).
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let (res, handle) = self.close_local(fh).await?;
        let rel = self.meta.release(handle).await;
        res.and(rel)
    }

    /// Like `release`, but the handle is released at meta behind the call: closes of the
    /// next `release_delay` share one meta call and one raft entry. Until then the file
    /// only stays referenced at meta (an unlinked file's objects are collected a few ms
    /// later); a batch that fails is sent again, and the mount's lease covers a client
    /// that dies first. `drain_releases` sends what waits (unmount).
    pub async fn close(self: &Arc<Self>, fh: u64) -> FsResult<()> {
        let (res, handle) = self.close_local(fh).await?;
        let start = {
            let mut q = lock(&self.releases);
            q.handles.push(handle);
            !std::mem::replace(&mut q.sender, true)
        };
        if start {
            let c = self.clone();
            self.rt.spawn(async move { c.send_releases().await });
        }
        res
    }

    /// Flush and commit, then forget the handle here; returns the flush's result and the
    /// meta handle still to release.
    async fn close_local(&self, fh: u64) -> FsResult<(FsResult<()>, HandleId)> {
        let res = self.flush(fh).await;
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return Err(FsError::StaleHandle);
        };
        {
            let mut inodes = lock(&self.inodes);
            let mut st = lock(&h.inode.state);
            st.opens = st.opens.saturating_sub(1);
            let idle = st.opens == 0 && st.buf.is_empty() && !st.uncommitted;
            drop(st);
            if idle {
                inodes.remove(&h.inode.ino);
            }
        }
        Ok((res, h.meta))
    }

    /// The release sender: after `release_delay` (or at once when hurried), sends
    /// everything queued in one call; stops once the queue is empty.
    async fn send_releases(self: Arc<Self>) {
        let mut pause = self.cfg.release_delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.release_now.notified() => {}
            }
            let batch: Vec<HandleId> = {
                let mut q = lock(&self.releases);
                if q.handles.is_empty() {
                    q.sender = false;
                    drop(q);
                    self.releases_idle.notify_waiters();
                    return;
                }
                let n = q.handles.len().min(cirrus_types::MAX_RELEASE_BATCH);
                q.handles.drain(..n).collect()
            };
            pause = match self.meta.release_many(&batch).await {
                Ok(()) => self.cfg.release_delay,
                // Io too: a transport failure of the batch says nothing about the handles.
                Err(e) if e.is_retryable() || matches!(e, FsError::Io(_)) => {
                    tracing::warn!(err = %e, handles = batch.len(), "release at meta, will retry");
                    lock(&self.releases).handles.extend(batch);
                    RELEASE_RETRY
                }
                Err(e) => {
                    // Refused outright (wrong cluster, bad input): retrying cannot help;
                    // meta drops the handles when this mount's lease ends.
                    tracing::error!(err = %e, handles = batch.len(), "release at meta");
                    self.cfg.release_delay
                }
            };
        }
    }

    /// Sends the releases queued by `close` now and waits until none is left or in
    /// flight. The caller bounds the wait (a meta group that stays down keeps it going;
    /// `release_all` gives it the deadline).
    pub async fn drain_releases(&self) {
        loop {
            let idle = self.releases_idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let q = lock(&self.releases);
                if q.handles.is_empty() && !q.sender {
                    return;
                }
            }
            self.release_now.notify_one();
            idle.await;
        }
    }

    /// Releases every handle still open and every release `close` queued (unmount):
    /// flushes, then releases at meta.
    pub async fn release_all(&self) {
        let fhs: Vec<u64> = lock(&self.handles).keys().copied().collect();
        for fh in fhs {
            // A handle the kernel released meanwhile (its own RELEASE raced this sweep)
            // is gone from the table: nothing is left to do for it.
            if let Err(e) = self.release(fh).await.or_else(|e| match e {
                FsError::StaleHandle => Ok(()),
                e => Err(e),
            }) {
                tracing::error!(err = %e, "release at unmount");
            }
        }
        if tokio::time::timeout(self.cfg.deadline, self.drain_releases())
            .await
            .is_err()
        {
            tracing::error!(
                "releases at meta still pending after {:?}; meta drops them when this \
                 mount's lease lapses",
                self.cfg.deadline
            );
        }
    }
}
