//! An object's data as segment files. ext4 with 4 KiB blocks stops one file at 16 TiB,
//! and an object may be as long as the largest file (`cirrus_types::MAX_FILE_SIZE`,
//! 4 PiB), so bytes `[k * SEGMENT, (k + 1) * SEGMENT)` of an object live in segment `k`:
//! the file `<base>.dat` for `k = 0` (every object has it) and `<base>.dat.<k>` past it.
//! A segment is created by the first write or allocation that reaches it, so a sparse
//! object of 4 PiB with two written bytes is two small files; a segment never created
//! reads as zeros. Everything above this module addresses the object as one range;
//! [`pieces`] cuts a range at segment boundaries.

use super::{StoreError, StoreResult};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes per segment file: 4 TiB, a quarter of what ext4 holds in one file, and a
/// multiple of every block and alignment size (so a piece of an aligned range is aligned).
pub const SEGMENT: u64 = 1 << 42;

/// One part of a range that lies inside one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub seg: u64,
    /// Offset inside the segment file.
    pub off: u64,
    /// Offset of this piece inside the range.
    pub at: usize,
    pub len: usize,
}

/// The pieces of `[off, off + len)`, in order; one piece unless the range crosses a
/// segment boundary. Callers have checked the range against the largest object.
pub fn pieces(off: u64, len: u64) -> impl Iterator<Item = Piece> {
    let end = off.saturating_add(len);
    let mut at = off;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let seg = at / SEGMENT;
        let stop = (seg + 1).saturating_mul(SEGMENT).min(end);
        let p = Piece {
            seg,
            off: at - seg * SEGMENT,
            at: (at - off) as usize,
            len: (stop - at) as usize,
        };
        at = stop;
        Some(p)
    })
}

/// The segment number of a data file name `<base>.dat.<k>` (k >= 1) and its base.
pub fn parse_segment_name(name: &str) -> Option<(&str, u64)> {
    let (stem, k) = name.rsplit_once('.')?;
    let base = stem.strip_suffix(".dat")?;
    let k: u64 = k.parse().ok()?;
    (k >= 1).then_some((base, k))
}

/// The segment files of one object. Only segment 0 stays open: a segment past it is
/// opened for each use (rare: it takes an object past 4 TiB), so an object holds one
/// data descriptor however many segments a caller's offsets created.
pub struct Segments {
    dir: PathBuf,
    base: String,
    direct: bool,
    first: Arc<File>,
    /// Segments past the first that exist, and whether one was written since the last
    /// `sync_files`.
    far: Mutex<BTreeMap<u64, bool>>,
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::from_io(what, e)
}

fn open_file(path: &Path, direct: bool, create: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(create);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

impl Segments {
    /// Opens segment 0 (creating it when `create`) and records the further segments
    /// `extra` found on disk.
    pub fn open(
        dir: &Path,
        base: &str,
        direct: bool,
        create: bool,
        extra: &[u64],
    ) -> StoreResult<Segments> {
        let first = open_file(&dir.join(format!("{base}.dat")), direct, create)
            .map_err(io_err("open object file"))?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            base: base.to_string(),
            direct,
            first: Arc::new(first),
            far: Mutex::new(extra.iter().map(|k| (*k, false)).collect()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, bool>> {
        cirrus_types::sync::lock(&self.far)
    }

    pub fn path(&self, seg: u64) -> PathBuf {
        if seg == 0 {
            self.dir.join(format!("{}.dat", self.base))
        } else {
            self.dir.join(format!("{}.dat.{seg}", self.base))
        }
    }

    /// Segment `seg`'s file: None if it was never created and `create` is false (its
    /// bytes are zeros). `create` is for writes and allocations: it marks the segment
    /// for the next `sync_files`.
    pub fn get(&self, seg: u64, create: bool) -> std::io::Result<Option<Arc<File>>> {
        if seg == 0 {
            return Ok(Some(self.first.clone()));
        }
        let known = self.lock().contains_key(&seg);
        if !known && !create {
            return Ok(None);
        }
        let f = open_file(&self.path(seg), self.direct, create)?;
        if create {
            self.lock().insert(seg, true);
        }
        Ok(Some(Arc::new(f)))
    }

    /// The files an fdatasync must cover: segment 0 and every segment written since
    /// the last call (fdatasync through a fresh descriptor flushes the file's data).
    pub fn sync_files(&self) -> std::io::Result<Vec<Arc<File>>> {
        let dirty: Vec<u64> = {
            let mut far = self.lock();
            far.iter_mut()
                .filter(|(_, d)| **d)
                .map(|(k, d)| {
                    *d = false;
                    *k
                })
                .collect()
        };
        let mut v = vec![self.first.clone()];
        for k in dirty {
            v.push(Arc::new(open_file(&self.path(k), self.direct, false)?));
        }
        Ok(v)
    }

    /// The object offset where the highest segment file ends: the allocated length.
    pub fn allocated(&self) -> StoreResult<u64> {
        let last = self.lock().keys().next_back().copied();
        let (k, len) = match last {
            None => (0, self.first.metadata()),
            Some(k) => (k, std::fs::metadata(self.path(k))),
        };
        Ok(k * SEGMENT + len.map_err(io_err("stat object file"))?.len())
    }

    /// Cuts the data files to end at `keep` (truncate down): the segment holding the new
    /// end is set to that length and every segment past it is removed.
    pub fn cut(&self, keep: u64) -> StoreResult<()> {
        let holder = keep.saturating_sub(1) / SEGMENT;
        let mut far = self.lock();
        let past: Vec<u64> = far.range(holder + 1..).map(|(k, _)| *k).collect();
        for k in past {
            far.remove(&k);
            remove(&self.path(k))?;
        }
        // A new end inside a segment never written leaves the ones below as they are.
        let len = keep - holder * SEGMENT;
        if holder == 0 {
            self.first
                .set_len(len)
                .map_err(io_err("truncate object file"))?;
        } else if far.contains_key(&holder) {
            let f = open_file(&self.path(holder), self.direct, false)
                .map_err(io_err("open object file"))?;
            f.set_len(len).map_err(io_err("truncate object file"))?;
        }
        Ok(())
    }

    /// Removes every segment file (delete).
    pub fn remove_all(&self) -> StoreResult<()> {
        let keys: Vec<u64> = std::mem::take(&mut *self.lock()).into_keys().collect();
        for k in keys {
            remove(&self.path(k))?;
        }
        remove(&self.path(0))
    }
}

fn remove(p: &Path) -> StoreResult<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::from_io("delete object file", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_inside_one_segment_is_one_piece() {
        let p: Vec<Piece> = pieces(SEGMENT + 4096, 8192).collect();
        assert_eq!(
            p,
            vec![Piece {
                seg: 1,
                off: 4096,
                at: 0,
                len: 8192
            }]
        );
        assert_eq!(pieces(7, 0).count(), 0);
    }

    #[test]
    fn a_range_across_a_boundary_is_cut_there() {
        let p: Vec<Piece> = pieces(SEGMENT - 4096, 3 * 4096).collect();
        assert_eq!(
            p,
            vec![
                Piece {
                    seg: 0,
                    off: SEGMENT - 4096,
                    at: 0,
                    len: 4096
                },
                Piece {
                    seg: 1,
                    off: 0,
                    at: 4096,
                    len: 8192
                },
            ]
        );
        let last = cirrus_types::MAX_FILE_SIZE - 1;
        let p: Vec<Piece> = pieces(last, 1).collect();
        assert_eq!(p[0].seg, last / SEGMENT);
        assert_eq!(p[0].off, SEGMENT - 1);
    }

    #[test]
    fn segment_names_parse_and_the_first_segment_is_not_one_of_them() {
        assert_eq!(parse_segment_name("7_2.dat.3"), Some(("7_2", 3)));
        assert_eq!(parse_segment_name("7_2.dat.0"), None);
        assert_eq!(parse_segment_name("7_2.dat"), None);
        assert_eq!(parse_segment_name("7_2.crc"), None);
        assert_eq!(parse_segment_name("7_2.crc.v2tmp"), None);
    }
}
