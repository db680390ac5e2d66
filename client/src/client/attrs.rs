//! The attribute cache of open inodes and the per-inode size stamp rule: every attribute
//! that reaches the kernel has this mount's local size laid over (`overlay_attr`), and a
//! meta reply replaces an inode's local size only if the inode did not change here while
//! the call was in flight (`gen`, `changed`, `InodeState::size_at`). `revalidate` is the
//! same rule after a lock is taken.

use super::open_files::{InodeState, OpenInode};
use super::{lock, Client};
use crate::meta::Attr;
use cirrus_types::{FsResult, InodeId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub(super) struct CachedAttr {
    pub(super) attr: Attr,
    pub(super) at: Instant,
    pub(super) ns_gen: u64,
}

/// How long attributes of an open inode are served from this mount before meta is asked
/// again (bounds how late a chmod or chown from another mount is seen by a stat here).
pub const OPEN_ATTR_TTL: Duration = Duration::from_secs(1);

impl Client {
    /// A snapshot of `local_gen`, taken before a meta call whose attributes
    /// `overlay_attr` will see.
    pub(super) fn gen(&self) -> u64 {
        self.local_gen.load(Ordering::SeqCst)
    }

    /// Records a local change of `st`'s size or commit state (see `InodeState::size_at`).
    pub(super) fn changed(&self, st: &mut InodeState) {
        st.size_at = self.local_gen.fetch_add(1, Ordering::SeqCst) + 1;
    }

    /// Attributes with this mount's unflushed size and mtime laid over. Every attribute
    /// that reaches the kernel goes through here: the kernel takes the size of any reply
    /// (lookup, link, readdirplus, getattr) as the file's size, and a read past it
    /// returns 0 bytes without asking this process. `seen` is `gen()` from before the
    /// meta call that produced `attr`.
    pub(super) fn overlay_attr(&self, mut attr: Attr, seen: u64) -> Attr {
        if let Some(inode) = lock(&self.inodes).get(&attr.ino) {
            let mut st = lock(&inode.state);
            if st.meta_size_applies(seen) {
                if st.size != attr.size {
                    st.size = attr.size;
                    self.changed(&mut st);
                }
            } else {
                attr.size = st.size;
                attr.mtime_ns = st.mtime_ns.max(attr.mtime_ns);
            }
        }
        attr
    }

    pub async fn lookup(&self, parent: InodeId, name: &[u8]) -> FsResult<Attr> {
        let seen = self.gen();
        let a = self.meta.lookup(parent, name).await?;
        Ok(self.overlay_attr(a, seen))
    }

    pub async fn getattr(&self, ino: InodeId) -> FsResult<Attr> {
        if let Some(a) = self.open_attr(ino) {
            return Ok(a);
        }
        // A directory this mount changed within the last second: the attributes meta
        // returned with that change (see `meta::DIR_ATTR_TTL`).
        if let Some(a) = self.meta.cached_dir(ino) {
            return Ok(a);
        }
        let (seen, ns) = (self.gen(), self.ns());
        let a = self.meta.getattr(ino).await?;
        self.remember_attr(&a, ns);
        Ok(self.overlay_attr(a, seen))
    }

    pub(super) fn ns(&self) -> u64 {
        self.ns_gen.load(Ordering::SeqCst)
    }

    /// Marks every cached attribute of an open inode as possibly stale (after a namespace
    /// call that changed some inode's link count or ctime without telling which).
    pub(super) fn ns_changed(&self) {
        self.ns_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// Attributes of an inode open in this mount, from its cached meta attributes with
    /// the local size and mtime laid over; `None` when not open here or not fresh.
    fn open_attr(&self, ino: InodeId) -> Option<Attr> {
        let inode = lock(&self.inodes).get(&ino).cloned()?;
        let st = lock(&inode.state);
        let c = st.attr.as_ref()?;
        if c.ns_gen != self.ns() || c.at.elapsed() >= OPEN_ATTR_TTL {
            return None;
        }
        let mut a = c.attr.clone();
        a.size = st.size;
        if st.pending() {
            a.mtime_ns = st.mtime_ns.max(a.mtime_ns);
        }
        Some(a)
    }

    /// Keeps `a` as the cached attributes of its inode if the inode is open here. `ns` is
    /// `ns()` from before the call that returned `a`.
    pub(super) fn remember_attr(&self, a: &Attr, ns: u64) {
        if let Some(inode) = lock(&self.inodes).get(&a.ino) {
            lock(&inode.state).attr = Some(CachedAttr {
                attr: a.clone(),
                at: Instant::now(),
                ns_gen: ns,
            });
        }
    }

    /// After a lock is taken: meta's size (unless this mount holds bytes not yet
    /// committed), and no read-ahead block from before the lock. An answer fetched while
    /// this inode's size changed here (a flush behind the writer committing a larger
    /// size, a truncate) may predate the change: meta is asked again, a few times, and
    /// then the larger of the two sizes is kept. Keeping the local size instead let a
    /// mount read a counter "100" as the "10" it had written itself, under the lock.
    pub(super) async fn revalidate(&self, inode: &Arc<OpenInode>) {
        const ASKS: usize = 3;
        for ask in 1..=ASKS {
            let (ns, seen) = (self.ns(), self.gen());
            let fresh = self.meta.getattr(inode.ino).await;
            let mut st = lock(&inode.state);
            st.ra.clear();
            inode.recount(&mut st);
            match fresh {
                Ok(a) => {
                    if !st.pending() {
                        if st.meta_size_applies(seen) {
                            st.size = a.size;
                            st.mtime_ns = a.mtime_ns;
                        } else if ask < ASKS {
                            continue;
                        } else {
                            st.size = st.size.max(a.size);
                            st.mtime_ns = st.mtime_ns.max(a.mtime_ns);
                        }
                        self.changed(&mut st);
                    }
                    st.attr = Some(CachedAttr {
                        attr: a,
                        at: Instant::now(),
                        ns_gen: ns,
                    });
                }
                Err(e) => {
                    tracing::debug!(ino = %inode.ino, err = %e, "attributes after a lock");
                    st.attr = None;
                }
            }
            break;
        }
    }
}
