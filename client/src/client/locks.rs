//! File locks held by the meta group (`F_GETLK`, `F_SETLK(W)`, `flock`, OFD locks),
//! with the flush before an unlock or read lock. Which owners a close must unlock is
//! `crate::locks`.

use super::Client;
use cirrus_types::{FsError, FsResult, HeldLock, InodeId, LockCall, LockKind, LockOwner};
use futures::future::BoxFuture;

impl Client {
    /// `F_GETLK`: the first lock of another owner in the way of `owner` taking `kind` on
    /// `start..=end` (its range, kind and holder's pid), if any.
    pub async fn getlk(
        &self,
        fh: u64,
        owner: u64,
        kind: LockKind,
        start: u64,
        end: u64,
        pid: u32,
    ) -> FsResult<Option<HeldLock>> {
        let (inode, _) = self.handle(fh)?;
        let args = self.lock_args(inode.ino, owner, Some(kind), start, end, pid);
        self.meta.get_lock(&args).await
    }

    /// `F_SETLK`, `F_SETLKW` (with `interrupted`: resolves when the caller got a signal)
    /// and `flock`; `kind` `None` unlocks. NFS-like coherence for the bytes a lock
    /// guards: before a lock is released or downgraded, this mount's writes to the file
    /// go to the chains and its size is committed; after one is taken, the size is
    /// fetched from meta again and no byte fetched before it is served.
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        fh: u64,
        owner: u64,
        kind: Option<LockKind>,
        start: u64,
        end: u64,
        pid: u32,
        interrupted: Option<BoxFuture<'static, ()>>,
    ) -> FsResult<()> {
        let (inode, _) = self.handle(fh)?;
        let args = self.lock_args(inode.ino, owner, kind, start, end, pid);
        match kind {
            None => {
                // An unlock goes out even when the flush failed (the flush's error is
                // the answer): a lock must not outlive a write error.
                let flushed = self.flush(fh).await;
                self.meta.set_lock(&args, None).await?;
                return flushed;
            }
            Some(LockKind::Read) => self.flush(fh).await?,
            Some(LockKind::Write) => {}
        }
        self.locks.note(inode.ino, owner, fh);
        match interrupted {
            Some(signal) => self.wait_lock(&args, signal).await?,
            None => self.meta.set_lock(&args, None).await?,
        }
        self.revalidate(&inode).await;
        Ok(())
    }

    /// Drops `owner`'s locks on the file of `fh` if it may hold any (every close: POSIX
    /// locks die with any close of the file by their process). Call after the flush.
    pub async fn unlock_owner(&self, fh: u64, owner: u64) -> FsResult<()> {
        let (inode, _) = self.handle(fh)?;
        if !self.locks.take_owner(inode.ino, owner) {
            return Ok(());
        }
        let args = self.lock_args(inode.ino, owner, None, 0, u64::MAX, 0);
        self.meta.set_lock(&args, None).await
    }

    /// Drops the locks taken through `fh` alone (its release: `flock` and OFD locks are
    /// owned by the open file). Call before `close`.
    pub async fn unlock_handle(&self, fh: u64) -> FsResult<()> {
        let (inode, _) = self.handle(fh)?;
        let mut res = Ok(());
        for owner in self.locks.release_handle(inode.ino, fh) {
            let args = self.lock_args(inode.ino, owner, None, 0, u64::MAX, 0);
            res = res.and(self.meta.set_lock(&args, None).await);
        }
        res
    }

    fn lock_args(
        &self,
        ino: InodeId,
        owner: u64,
        kind: Option<LockKind>,
        start: u64,
        end: u64,
        pid: u32,
    ) -> LockCall {
        LockCall {
            ino,
            owner: LockOwner {
                client: self.client_id,
                owner,
            },
            kind,
            start,
            end,
            pid,
        }
    }

    /// A blocking lock: one wait slice at the meta leader after another until the lock
    /// is granted. When the caller gets a signal the wait is cancelled at meta and its
    /// answer taken: granted if the lock came first (as a local lock call that returns
    /// before the signal is handled), `Interrupted` otherwise, with nothing held.
    async fn wait_lock(&self, args: &LockCall, mut signal: BoxFuture<'static, ()>) -> FsResult<()> {
        let wait_id = self.locks.next_wait();
        // Well inside one attempt's deadline, so a slice never looks like a lost call.
        let slice = self.cfg.meta_per_try * 3 / 5;
        loop {
            let call = self.meta.set_lock(args, Some((wait_id, slice)));
            tokio::pin!(call);
            let r = tokio::select! {
                r = &mut call => r,
                _ = &mut signal => {
                    if let Err(e) = self.meta.cancel_lock_wait(self.client_id, wait_id).await {
                        tracing::debug!(err = %e, wait_id, "cancel lock wait");
                    }
                    return match call.await {
                        Err(FsError::WouldBlock(_)) => Err(FsError::Interrupted(
                            "signal while waiting for a lock".into(),
                        )),
                        r => r,
                    };
                }
            };
            match r {
                Err(FsError::WouldBlock(_)) => continue,
                r => return r,
            }
        }
    }
}
