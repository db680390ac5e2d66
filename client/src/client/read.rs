//! read(2): reads planned per block, served from read-ahead blocks where held and from
//! the data servers otherwise, with this mount's dirty bytes laid over.

use super::open_files::{InodeState, OpenInode};
use super::{lock, Client};
use crate::buffer::{clamp_read, place, SEG_BLOCK};
use bytes::Bytes;
use cirrus_types::{FsError, FsResult, ObjectKey};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// One read-ahead block's fetch, shared by every read that needs it.
type Fetch = Shared<BoxFuture<'static, FsResult<Bytes>>>;

#[derive(Default)]
pub(super) struct ReadAhead {
    /// End of the last read; a read starting within a block of it continues the run.
    pub(super) next: u64,
    /// Bytes to keep fetched ahead of the reader: doubles per sequential read up to
    /// `read_ahead`, back to 0 on a jump.
    pub(super) window: u64,
    /// Block start (a multiple of `SEG_BLOCK`) -> its fetch of the whole block (or up to
    /// the size known when it started).
    pub(super) blocks: BTreeMap<u64, Fetch>,
}

impl ReadAhead {
    /// Forgets blocks overlapping `[off, end)` (a local write there).
    pub(super) fn drop_range(&mut self, off: u64, end: u64) {
        let first = off / SEG_BLOCK * SEG_BLOCK;
        let keys: Vec<u64> = self.blocks.range(first..end).map(|(&b, _)| b).collect();
        for b in keys {
            self.blocks.remove(&b);
        }
    }

    pub(super) fn clear(&mut self) {
        self.blocks.clear();
        self.window = 0;
    }
}

/// One piece of a read, inside one block.
struct ReadPiece {
    off: u64,
    len: u64,
    block_start: u64,
    /// The read-ahead fetch of its block, when one is held.
    block: Option<Fetch>,
}

impl Client {
    /// Bytes of read-ahead blocks this client holds across all its files (fetched or
    /// being fetched).
    pub fn read_ahead_bytes(&self) -> u64 {
        self.dirty.ra_blocks.load(Ordering::Relaxed) as u64 * SEG_BLOCK
    }

    /// read(2): the bytes of `[off, off + len)` up to the size this mount knows, from
    /// read-ahead blocks where held and the data servers otherwise, with this mount's
    /// dirty bytes laid over. A read served by one block or one RPC with no dirty bytes
    /// over it returns the server's buffer itself.
    pub async fn read(self: &Arc<Self>, fh: u64, off: u64, len: u32) -> FsResult<Bytes> {
        let (inode, _) = self.handle(fh)?;
        let deadline = self.deadline();
        let (n, pieces, overlay_in, overlay_buf) = {
            let mut guard = lock(&inode.state);
            let st = &mut *guard;
            let n = clamp_read(off, len, st.size);
            if n == 0 {
                return Ok(Bytes::new());
            }
            let pieces = self.plan_read(&inode, st, off, n, deadline);
            inode.recount(st);
            (
                n,
                pieces,
                st.inflight.clone_range(off, n),
                st.buf.clone_range(off, n),
            )
        };
        let parts = futures::future::join_all(pieces.into_iter().map(|p| {
            let inode = inode.clone();
            async move {
                if let Some(fetch) = p.block {
                    match fetch.await {
                        Ok(bytes) if bytes.len() as u64 >= p.off - p.block_start + p.len => {
                            let at = (p.off - p.block_start) as usize;
                            return Ok((p.off, bytes.slice(at..at + p.len as usize)));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(ino = %inode.ino, err = %e, "read-ahead block failed; reading the range itself");
                        }
                    }
                }
                let got = self.clone().fetch(inode, p.off, p.len, deadline).await?;
                Ok::<_, FsError>((p.off, got))
            }
        }))
        .await;
        let mut parts = parts.into_iter().collect::<FsResult<Vec<_>>>()?;
        if parts.len() == 1 && overlay_in.is_empty() && overlay_buf.is_empty() {
            if let Some((_, only)) = parts.pop() {
                return Ok(only);
            }
        }
        let mut out = vec![0u8; n as usize];
        for (p_off, got) in parts {
            place(&mut out, (p_off - off) as usize, &got);
        }
        overlay_in.overlay(off, &mut out);
        overlay_buf.overlay(off, &mut out);
        Ok(Bytes::from(out))
    }

    /// Cuts a read into pieces at block boundaries, moves the read-ahead window and
    /// starts fetching the blocks a sequential reader will want (its current ones
    /// included). Blocks holding local dirty bytes are not fetched ahead: their pieces
    /// are read per request, with the overlay taken under the same lock.
    fn plan_read(
        self: &Arc<Self>,
        inode: &Arc<OpenInode>,
        st: &mut InodeState,
        off: u64,
        n: u64,
        deadline: Instant,
    ) -> Vec<ReadPiece> {
        let end = off + n;
        let max = self.cfg.read_ahead;
        let ra = &mut st.ra;
        let sequential = off + SEG_BLOCK >= ra.next && off <= ra.next + SEG_BLOCK;
        if max > 0 && sequential {
            ra.window = (ra.window * 2).max(2 * n).min(max);
        } else {
            ra.clear();
        }
        ra.next = end;
        let first = off / SEG_BLOCK * SEG_BLOCK;
        // Blocks behind the reader are done with.
        let behind: Vec<u64> = ra.blocks.range(..first).map(|(&b, _)| b).collect();
        for b in behind {
            ra.blocks.remove(&b);
        }
        if ra.window > 0 {
            let until = end.saturating_add(ra.window).min(st.size);
            // Blocks past this read are fetched ahead only within the client-wide budget;
            // the blocks of the read itself always are.
            let held = inode.dirty.ra_blocks.load(Ordering::Relaxed) as u64;
            let mut room = (self.cfg.read_ahead_total / SEG_BLOCK).saturating_sub(held);
            let mut b = first;
            while b < until {
                if b >= end {
                    if room == 0 {
                        break;
                    }
                    room -= 1;
                }
                let len = SEG_BLOCK.min(st.size - b);
                if !ra.blocks.contains_key(&b)
                    && !st.buf.overlaps(b, len)
                    && !st.inflight.overlaps(b, len)
                {
                    let task = self
                        .rt
                        .spawn(self.clone().fetch(inode.clone(), b, len, deadline));
                    let fetch: Fetch = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(FsError::Io(format!("read-ahead task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    ra.blocks.insert(b, fetch);
                }
                b += SEG_BLOCK;
            }
        }
        let mut pieces = Vec::new();
        let mut pos = off;
        while pos < end {
            let b = pos / SEG_BLOCK * SEG_BLOCK;
            let p_end = (b + SEG_BLOCK).min(end);
            pieces.push(ReadPiece {
                off: pos,
                len: p_end - pos,
                block_start: b,
                block: ra.blocks.get(&b).cloned(),
            });
            pos = p_end;
        }
        pieces
    }

    /// `[off, off + len)` of the file from the data servers, every extent in parallel,
    /// exactly `len` bytes (holes and bytes past an object's end read as zeros). One
    /// extent that came back whole is returned without a copy.
    async fn fetch(
        self: Arc<Self>,
        inode: Arc<OpenInode>,
        off: u64,
        len: u64,
        deadline: Instant,
    ) -> FsResult<Bytes> {
        let extents = inode.layout.extents(off, len);
        let results: Vec<FsResult<(usize, Bytes)>> = stream::iter(extents.into_iter().map(|e| {
            let chain = inode.layout.chains[e.object_index as usize];
            let key = ObjectKey {
                inode: inode.ino,
                index: e.object_index,
            };
            let data = &self.data;
            async move {
                let got = data
                    .read(chain, key, e.object_offset, e.len as u32, deadline)
                    .await?;
                Ok(((e.file_offset - off) as usize, got))
            }
        }))
        .buffer_unordered(self.cfg.max_inflight)
        .collect()
        .await;
        let mut results = results.into_iter().collect::<FsResult<Vec<_>>>()?;
        if results.len() == 1 && results[0].1.len() as u64 == len {
            if let Some((_, only)) = results.pop() {
                return Ok(only);
            }
        }
        let mut out = vec![0u8; len as usize];
        for (at, got) in results {
            place(&mut out, at, &got);
        }
        Ok(Bytes::from(out))
    }
}
