//! copy_file_range(2): done by the data servers, one piece per stripe unit, or through
//! this client when the servers lack the call.

use super::open_files::OpenInode;
use super::{lock, now_ns, Client};
use cirrus_types::{FsError, FsResult, Layout, ObjectKey};
use futures::stream::{self, StreamExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

/// The most bytes one copy_file_range call moves (a short count; callers loop), so one
/// call stays well inside the mount's deadline.
pub const COPY_PER_CALL: u64 = 64 << 20;

/// Bytes one copy_file_range call moves: at most `COPY_PER_CALL`, and none past the
/// source's size as this mount knows it.
fn copy_len(src: &OpenInode, off_in: u64, len: u64) -> u64 {
    len.min(COPY_PER_CALL)
        .min(lock(&src.state).size.saturating_sub(off_in))
}

impl Client {
    /// copy_file_range(2) from `fh_in` to `fh_out`, both open here: pending writes of
    /// both go out, then the data servers copy, piece by piece (at most `MAX_COPY` each,
    /// cut where either file's stripe unit ends), each piece read from a member of the
    /// source's chain by the head of the destination's, so the bytes never cross this
    /// client; the destination then reads as if this mount had written them (size, mtime,
    /// committed at close or fsync like a write). At most `COPY_PER_CALL` bytes per call
    /// (callers loop on a short count, as for any copy_file_range) and never past the
    /// source's size. Data servers without the call (`NotSupported`) get the bytes read
    /// and written through this client instead.
    pub async fn copy_file_range(
        self: &Arc<Self>,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u64> {
        let (src, _) = self.handle(fh_in)?;
        let (dst, _) = self.handle(fh_out)?;
        let deadline = self.deadline();
        match self
            .copy_by_servers(&src, off_in, &dst, off_out, len, deadline)
            .await
        {
            Err(FsError::NotSupported(why)) => {
                tracing::debug!(%why, "copy_file_range through the client");
            }
            r => return r,
        }
        let n = copy_len(&src, off_in, len);
        let mut done = 0;
        while done < n {
            let want = (n - done).min(cirrus_types::limits::MAX_COPY as u64) as u32;
            let got = self.read(fh_in, off_in + done, want).await?;
            if got.is_empty() {
                break;
            }
            self.write(fh_out, off_out + done, &got).await?;
            done += got.len() as u64;
        }
        Ok(done)
    }

    async fn copy_by_servers(
        &self,
        src: &Arc<OpenInode>,
        off_in: u64,
        dst: &Arc<OpenInode>,
        off_out: u64,
        len: u64,
        deadline: Instant,
    ) -> FsResult<u64> {
        let same = Arc::ptr_eq(src, dst);
        // Both io locks, in inode order: two copies in opposite directions cannot deadlock.
        let (first, second) = if src.ino <= dst.ino {
            (src, dst)
        } else {
            (dst, src)
        };
        let _first = first.io_lock.lock().await;
        let _second = match same {
            true => None,
            false => Some(second.io_lock.lock().await),
        };
        self.flush_locked(src, deadline).await?;
        if !same {
            self.flush_locked(dst, deadline).await?;
        }
        let n = copy_len(src, off_in, len);
        if n == 0 {
            return Ok(0);
        }
        let end = cirrus_types::limits::check_file_range(off_out, n)?;
        if same && off_in < end && off_out < off_in + n {
            return Err(FsError::Invalid(
                "copy_file_range within one file between overlapping ranges".into(),
            ));
        }
        let unit_left = |layout: &Layout, at: u64| {
            let unit = layout.stripe_unit as u64;
            unit - at % unit
        };
        let mut pieces = Vec::new();
        let mut pos = 0;
        while pos < n {
            let (s_at, d_at) = (off_in + pos, off_out + pos);
            let piece = (n - pos)
                .min(unit_left(&src.layout, s_at))
                .min(unit_left(&dst.layout, d_at))
                .min(cirrus_types::limits::MAX_COPY as u64);
            pieces.push((s_at, d_at, piece as u32));
            pos += piece;
        }
        let objects: BTreeSet<u32> = pieces
            .iter()
            .map(|&(_, d_at, _)| dst.layout.locate(d_at).0)
            .collect();
        let results: Vec<FsResult<()>> =
            stream::iter(pieces.into_iter().map(|(s_at, d_at, piece)| {
                let (si, so) = src.layout.locate(s_at);
                let (di, dof) = dst.layout.locate(d_at);
                self.data.copy(
                    dst.layout.chains[di as usize],
                    ObjectKey {
                        inode: dst.ino,
                        index: di,
                    },
                    dof,
                    src.layout.chains[si as usize],
                    ObjectKey {
                        inode: src.ino,
                        index: si,
                    },
                    so,
                    piece,
                    deadline,
                )
            }))
            .buffer_unordered(self.cfg.max_inflight)
            .collect()
            .await;
        let mut st = lock(&dst.state);
        // Objects written even by a failed copy are synced by the next fsync.
        st.touched.extend(objects);
        results.into_iter().collect::<FsResult<Vec<()>>>()?;
        st.ra.drop_range(off_out, end);
        dst.recount(&mut st);
        st.size = st.size.max(end);
        st.mtime_ns = now_ns();
        st.write_gen += 1;
        st.uncommitted = true;
        self.changed(&mut st);
        drop(st);
        Ok(n)
    }
}
