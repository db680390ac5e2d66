//! setattr, truncate included: a truncate flushes the inode's writes first, cuts every
//! object on the data servers, then records the size at meta, all under the io lock.

use super::attrs::CachedAttr;
use super::{lock, Client};
use crate::meta::{Attr, SetAttr};
use cirrus_types::{FileKind, FsError, FsResult, InodeId, ObjectKey};
use futures::stream::{self, StreamExt};
use std::time::Instant;

impl Client {
    /// setattr, including truncate: pending writes go out first, then every object is cut
    /// to the size the layout gives it, then meta records the new size.
    pub async fn setattr(&self, ino: InodeId, set: SetAttr, fh: Option<u64>) -> FsResult<Attr> {
        let meta_handle = fh
            .and_then(|f| self.handle(f).ok())
            .map(|(_, h)| h.0)
            .unwrap_or(0);
        if let Some(size) = set.size {
            // Before any data server is asked to truncate an object: a size past the
            // largest file changes nothing anywhere.
            cirrus_types::limits::check_file_size(size)?;
        }
        let Some(size) = set.size else {
            let (seen, ns) = (self.gen(), self.ns());
            let a = self.meta.setattr(ino, &set, meta_handle).await?;
            self.remember_attr(&a, ns);
            return Ok(self.overlay_attr(a, seen));
        };
        let deadline = self.deadline();
        let open = lock(&self.inodes).get(&ino).cloned();
        let _io = match &open {
            Some(i) => Some(i.io_lock.lock().await),
            None => None,
        };
        let layout = match &open {
            Some(i) => {
                self.flush_locked(i, deadline).await?;
                i.layout.clone()
            }
            None => {
                let a = self.meta.getattr(ino).await?;
                match a.kind {
                    FileKind::Dir => return Err(FsError::IsDir),
                    FileKind::Symlink => {
                        return Err(FsError::Invalid("truncate of a symlink".into()))
                    }
                    FileKind::File => {}
                    k => return Err(FsError::Invalid(format!("truncate of a {k:?}"))),
                }
                self.meta.get_layout(ino).await?
            }
        };
        let results: Vec<FsResult<()>> = stream::iter((0..layout.stripe_count()).map(|i| {
            let chain = layout.chains[i as usize];
            let key = ObjectKey {
                inode: ino,
                index: i,
            };
            self.data
                .truncate(chain, key, layout.object_size(i, size), deadline)
        }))
        .buffer_unordered(self.cfg.max_inflight)
        .collect()
        .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        let mut set = set;
        if set.mtime.is_none() {
            // truncate(2) updates mtime and ctime, as on a local filesystem.
            set.mtime = Some(crate::meta::TimeSet::Now);
        }
        let ns = self.ns();
        let a = self.meta.setattr(ino, &set, meta_handle).await?;
        if let Some(i) = &open {
            let mut st = lock(&i.state);
            st.buf.truncate(size);
            st.ra.clear();
            i.recount(&mut st);
            st.size = size;
            st.mtime_ns = a.mtime_ns;
            st.attr = Some(CachedAttr {
                attr: a.clone(),
                at: Instant::now(),
                ns_gen: ns,
            });
            self.changed(&mut st);
        }
        Ok(self.overlay_attr(a, self.gen()))
    }
}
