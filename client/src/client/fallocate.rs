//! fallocate(2): allocate (size only), zero range and punch hole.

use super::{lock, Client};
use crate::meta::SetAttr;
use cirrus_types::{FsError, FsResult, InodeId, ObjectKey};
use futures::stream::{self, StreamExt};

/// What a fallocate call asks (the FUSE door maps the mode bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallocate {
    /// Mode 0, or `FALLOC_FL_KEEP_SIZE`.
    Allocate { keep_size: bool },
    /// `FALLOC_FL_ZERO_RANGE`, with or without `KEEP_SIZE`.
    Zero { keep_size: bool },
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`.
    PunchHole,
}

impl Client {
    /// fallocate. `Allocate` (mode 0, or `KEEP_SIZE`): the range reads as zeros and,
    /// without `keep_size`, the file is at least that long; space is not reserved
    /// (objects are sparse), a documented limit. `Zero` (`ZERO_RANGE`) and `PunchHole`
    /// (`PUNCH_HOLE | KEEP_SIZE`): pending writes go out, then every member of every
    /// object's chain makes the range read as zeros (whole blocks given back, edges
    /// rewritten under fresh crcs), then `Zero` without `keep_size` extends the file to
    /// the range's end; mtime and ctime change, as on a local filesystem.
    pub async fn fallocate(
        &self,
        ino: InodeId,
        fh: u64,
        off: u64,
        len: u64,
        mode: Fallocate,
    ) -> FsResult<()> {
        let end = cirrus_types::limits::check_file_range(off, len)?;
        let (zero, keep_size) = match mode {
            Fallocate::Allocate { keep_size } => (false, keep_size),
            Fallocate::Zero { keep_size } => (true, keep_size),
            Fallocate::PunchHole => (true, true),
        };
        if zero {
            self.zero_range(ino, off, end).await?;
        }
        let cur = self.getattr(ino).await?.size;
        let grow = (!keep_size && end > cur).then_some(end);
        if grow.is_some() || zero {
            self.setattr(
                ino,
                SetAttr {
                    size: grow,
                    mtime: zero.then_some(crate::meta::TimeSet::Now),
                    ..SetAttr::default()
                },
                Some(fh),
            )
            .await?;
        }
        Ok(())
    }

    /// Makes `[off, end)` of the file, below its size, read as zeros on every member.
    /// File range `[off, end)` is object range `[object_size(i, off), object_size(i,
    /// end))` of each object `i`, so there is one call per object, whatever the length.
    async fn zero_range(&self, ino: InodeId, off: u64, end: u64) -> FsResult<()> {
        let deadline = self.deadline();
        let open = lock(&self.inodes).get(&ino).cloned();
        let Some(inode) = open else {
            return Err(FsError::StaleHandle);
        };
        let _io = inode.io_lock.lock().await;
        self.flush_locked(&inode, deadline).await?;
        let size = lock(&inode.state).size;
        let end = end.min(size);
        let layout = inode.layout.clone();
        if off < end {
            let results: Vec<FsResult<()>> =
                stream::iter((0..layout.stripe_count()).filter_map(|i| {
                    let (a, b) = (layout.object_size(i, off), layout.object_size(i, end));
                    (a < b).then(|| {
                        let key = ObjectKey {
                            inode: ino,
                            index: i,
                        };
                        self.data
                            .punch(layout.chains[i as usize], key, a, b - a, deadline)
                    })
                }))
                .buffer_unordered(self.cfg.max_inflight)
                .collect()
                .await;
            results.into_iter().collect::<FsResult<Vec<()>>>()?;
        }
        let mut st = lock(&inode.state);
        st.ra.clear();
        inode.recount(&mut st);
        Ok(())
    }
}
