//! The crcs of one object's blocks, held sparsely: pages of [`PAGE_BLOCKS`] crcs exist
//! only where a block was written, and every other block below the size is a hole whose
//! crc is implicitly that of a zero block. Memory is about 4 bytes per written 4 KiB block
//! (plus one page per written 4 MiB region), whatever the object's size says: a truncate
//! to 4 PiB costs nothing, a byte written at 4 PiB costs one page.

use super::{zero_block_crc, BLOCK};
use std::collections::BTreeMap;

/// Blocks per page: 4 MiB of object per 4 KiB of crcs.
pub const PAGE_BLOCKS: u64 = 1024;
/// Bytes of object one page covers.
pub const PAGE_BYTES: u64 = PAGE_BLOCKS * BLOCK;
/// At most this many ranges describe where an object holds data (`data_ranges`); more
/// are merged across their smallest gaps, so a listing of a fragmented object stays small
/// (a range list is a superset of the data, never a subset).
pub const MAX_RANGES: usize = 256;

#[derive(Clone, Debug, Default)]
pub struct CrcMap {
    pages: BTreeMap<u64, Box<[u32]>>,
}

impl CrcMap {
    /// The crc of block `b` (a zero block's where nothing was written).
    pub fn get(&self, b: u64) -> u32 {
        self.pages
            .get(&(b / PAGE_BLOCKS))
            .map_or_else(zero_block_crc, |p| p[(b % PAGE_BLOCKS) as usize])
    }

    pub fn set(&mut self, b: u64, crc: u32) {
        let p = self
            .pages
            .entry(b / PAGE_BLOCKS)
            .or_insert_with(|| vec![zero_block_crc(); PAGE_BLOCKS as usize].into_boxed_slice());
        p[(b % PAGE_BLOCKS) as usize] = crc;
    }

    /// Forgets every block at or past `nblocks` (a truncate): they read as holes again.
    pub fn truncate(&mut self, nblocks: u64) {
        let keep = nblocks.div_ceil(PAGE_BLOCKS);
        let _ = self.pages.split_off(&keep);
        if !nblocks.is_multiple_of(PAGE_BLOCKS) {
            if let Some(p) = self.pages.get_mut(&(nblocks / PAGE_BLOCKS)) {
                p[(nblocks % PAGE_BLOCKS) as usize..].fill(zero_block_crc());
            }
        }
    }

    /// Forgets blocks `[first, end)` (a punched hole): they read as holes again, and a page
    /// left with no written block is freed. Costs the pages held, not the range's length.
    pub fn punch(&mut self, first: u64, end: u64) {
        if first >= end {
            return;
        }
        let z = zero_block_crc();
        let held: Vec<u64> = self
            .pages
            .range(first / PAGE_BLOCKS..=(end - 1) / PAGE_BLOCKS)
            .map(|(p, _)| *p)
            .collect();
        for p in held {
            let base = p * PAGE_BLOCKS;
            let (lo, hi) = (first.max(base) - base, end.min(base + PAGE_BLOCKS) - base);
            if let Some(v) = self.pages.get_mut(&p) {
                v[lo as usize..hi as usize].fill(z);
                if v.iter().all(|c| *c == z) {
                    self.pages.remove(&p);
                }
            }
        }
    }

    /// The written blocks (crc not a zero block's) in `[first, end)`, in order; costs the
    /// pages held in the range.
    pub fn written_in(&self, first: u64, end: u64) -> Vec<u64> {
        if first >= end {
            return Vec::new();
        }
        let z = zero_block_crc();
        self.pages
            .range(first / PAGE_BLOCKS..=(end - 1) / PAGE_BLOCKS)
            .flat_map(|(p, v)| {
                v.iter()
                    .enumerate()
                    .filter(|(_, c)| **c != z)
                    .map(move |(i, _)| p * PAGE_BLOCKS + i as u64)
            })
            .filter(|b| (first..end).contains(b))
            .collect()
    }

    /// The crcs of blocks `[first, first + n)`; `n` is bounded by the caller's request.
    pub fn window(&self, first: u64, n: u64) -> Vec<u32> {
        (first..first.saturating_add(n))
            .map(|b| self.get(b))
            .collect()
    }

    /// Every block whose crc is not a zero block's, in order.
    pub fn written(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let z = zero_block_crc();
        self.pages.iter().flat_map(move |(p, v)| {
            v.iter()
                .enumerate()
                .filter(move |(_, c)| **c != z)
                .map(move |(i, c)| (p * PAGE_BLOCKS + i as u64, *c))
        })
    }

    /// Pages held (memory is this times 4 KiB).
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Byte ranges `[start, end)` below `size` that may hold data, sorted, disjoint, at
    /// most [`MAX_RANGES`]: the blocks whose crc is not a zero block's. A block whose crc
    /// is a zero block's reads as zeros whether it was written or is a hole (or fails its
    /// crc), so everything outside the ranges is, to a reader, a hole.
    pub fn data_ranges(&self, size: u64) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        for (b, _) in self.written() {
            let (s, e) = (b * BLOCK, ((b + 1) * BLOCK).min(size));
            if s >= e {
                break;
            }
            match v.last_mut() {
                Some(l) if l.1 == s => l.1 = e,
                _ => v.push((s, e)),
            }
            if v.len() > 4 * MAX_RANGES {
                v = coarsen(v, MAX_RANGES);
            }
        }
        coarsen(v, MAX_RANGES)
    }
}

/// The end of the range of `ranges` (sorted) that holds `off`, if one does.
pub fn range_end(ranges: &[(u64, u64)], off: u64) -> Option<u64> {
    ranges.iter().find(|r| r.0 <= off && off < r.1).map(|r| r.1)
}

/// Merges ranges across their smallest gaps until at most `max` remain.
pub fn coarsen(mut v: Vec<(u64, u64)>, max: usize) -> Vec<(u64, u64)> {
    let max = max.max(1);
    while v.len() > max {
        let mut gaps: Vec<u64> = v.windows(2).map(|w| w[1].0 - w[0].1).collect();
        gaps.sort_unstable();
        // Merging every gap up to the (len - max)-th smallest gets under max in one step.
        let limit = gaps[v.len() - max - 1];
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(max);
        for r in v {
            match out.last_mut() {
                Some(l) if r.0 - l.1 <= limit => l.1 = r.1,
                _ => out.push(r),
            }
        }
        v = out;
    }
    v
}

/// Adds `b` to the sorted disjoint ranges `a`: their union, sorted and disjoint.
pub fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().filter(|r| r.0 < r.1).collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(l) if r.0 <= l.1 => l.1 = l.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

/// The first offset at or after `off` inside one of `ranges` (sorted), if any.
pub fn next_data(ranges: &[(u64, u64)], off: u64) -> Option<u64> {
    ranges.iter().find(|r| r.1 > off).map(|r| r.0.max(off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_far_block_costs_one_page_and_holes_read_as_zero_blocks() {
        let mut m = CrcMap::default();
        let far = cirrus_types::MAX_FILE_SIZE / BLOCK - 1;
        m.set(far, 7);
        assert_eq!(m.pages(), 1);
        assert_eq!(m.get(far), 7);
        assert_eq!(m.get(0), zero_block_crc());
        assert_eq!(m.get(far - 1), zero_block_crc());
        let r = m.data_ranges(cirrus_types::MAX_FILE_SIZE);
        assert_eq!(r, vec![(far * BLOCK, cirrus_types::MAX_FILE_SIZE)]);
    }

    #[test]
    fn truncate_forgets_blocks_past_the_end_inside_and_across_pages() {
        let mut m = CrcMap::default();
        for b in [1, 5, PAGE_BLOCKS + 3, 9 * PAGE_BLOCKS] {
            m.set(b, b as u32 + 100);
        }
        m.truncate(4);
        assert_eq!(m.get(1), 101);
        assert_eq!(m.get(5), zero_block_crc());
        assert_eq!(m.get(PAGE_BLOCKS + 3), zero_block_crc());
        assert_eq!(m.pages(), 1);
        m.truncate(0);
        assert_eq!(m.pages(), 0);
    }

    #[test]
    fn a_punch_of_the_largest_range_frees_its_pages_and_keeps_the_rest() {
        let mut m = CrcMap::default();
        let far = cirrus_types::MAX_FILE_SIZE / BLOCK - 1;
        for b in [0, 3, PAGE_BLOCKS + 1, far] {
            m.set(b, (b % 1000) as u32 + 100);
        }
        m.punch(1, far);
        assert_eq!(m.get(0), 100);
        assert_eq!(m.get(3), zero_block_crc());
        assert_eq!(m.get(far), (far % 1000) as u32 + 100);
        assert_eq!(m.pages(), 2, "the page of block 0 and the far page stay");
        assert_eq!(m.written_in(0, far + 1), vec![0, far]);
        m.punch(0, far + 1);
        assert_eq!(m.pages(), 0);
    }

    #[test]
    fn ranges_are_coarsened_to_a_superset_of_at_most_max() {
        let v: Vec<(u64, u64)> = (0..1000u64).map(|i| (i * 10, i * 10 + 1 + i % 3)).collect();
        let c = coarsen(v.clone(), 7);
        assert!(c.len() <= 7);
        for r in &v {
            assert!(c.iter().any(|x| x.0 <= r.0 && r.1 <= x.1), "{r:?} lost");
        }
        assert_eq!(
            union(&[(0, 4), (10, 12)], &[(3, 6), (12, 13), (20, 20)]),
            vec![(0, 6), (10, 13)]
        );
        assert_eq!(next_data(&[(10, 20), (30, 40)], 0), Some(10));
        assert_eq!(next_data(&[(10, 20), (30, 40)], 15), Some(15));
        assert_eq!(next_data(&[(10, 20), (30, 40)], 20), Some(30));
        assert_eq!(next_data(&[(10, 20), (30, 40)], 40), None);
        assert_eq!(range_end(&[(10, 20), (30, 40)], 15), Some(20));
        assert_eq!(range_end(&[(10, 20), (30, 40)], 25), None);
    }

    proptest! {
        #[test]
        fn matches_a_dense_model(ops in proptest::collection::vec((0u64..4 * PAGE_BLOCKS, any::<u32>(), 0u8..4), 1..60)) {
            let mut m = CrcMap::default();
            let mut dense: Vec<u32> = Vec::new();
            for (b, c, kind) in ops {
                if kind == 0 {
                    m.truncate(b);
                    dense.truncate(b as usize);
                } else if kind == 1 {
                    // A punch of up to two pages from b.
                    let end = b + u64::from(c) % (2 * PAGE_BLOCKS);
                    m.punch(b, end);
                    let hi = (end as usize).min(dense.len());
                    if (b as usize) < hi {
                        dense[b as usize..hi].fill(zero_block_crc());
                    }
                    let want: Vec<u64> = (b..end)
                        .filter(|x| dense.get(*x as usize).is_some_and(|c| *c != zero_block_crc()))
                        .collect();
                    prop_assert_eq!(m.written_in(b, end), want);
                } else {
                    m.set(b, c);
                    if dense.len() <= b as usize {
                        dense.resize(b as usize + 1, zero_block_crc());
                    }
                    dense[b as usize] = c;
                }
                for (i, want) in dense.iter().enumerate() {
                    prop_assert_eq!(m.get(i as u64), *want);
                }
                let size = dense.len() as u64 * BLOCK;
                let r = m.data_ranges(size);
                for (i, c) in dense.iter().enumerate() {
                    if *c != zero_block_crc() {
                        let at = i as u64 * BLOCK;
                        prop_assert!(r.iter().any(|x| x.0 <= at && at < x.1));
                    }
                }
            }
        }
    }
}
