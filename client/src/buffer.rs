//! Pure pieces of the file data path, kept free of IO so they are unit- and
//! property-tested: the write-back buffer (non-overlapping dirty segments, later writes
//! win), the flush plan (dirty bytes cut at stripe-unit boundaries, grouped per object and
//! merged where contiguous in object space) and read assembly (server bytes, zero fill
//! for holes and short objects, dirty bytes laid over).

use bytes::Bytes;
use cirrus_types::Layout;
use std::collections::BTreeMap;

/// Dirty file bytes not yet written to the data servers.
#[derive(Clone, Debug, Default)]
pub struct WriteBuffer {
    /// Start offset -> bytes. Segments never overlap and never touch (touching ones merge).
    segs: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl WriteBuffer {
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Dirty bytes held.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// One past the last dirty byte (0 when empty).
    pub fn end(&self) -> u64 {
        self.segs
            .iter()
            .next_back()
            .map(|(o, d)| o + d.len() as u64)
            .unwrap_or(0)
    }

    pub fn segments(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.segs.iter().map(|(o, d)| (*o, d.as_slice()))
    }

    /// Records a write; newer bytes replace older ones where they overlap.
    pub fn insert(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        // Fast path: appending right after an existing segment that nothing follows
        // closely (sequential writes), amortised O(len).
        if let Some((&s, seg)) = self.segs.range_mut(..=off).next_back() {
            let seg_end = s + seg.len() as u64;
            let next_touches = self
                .segs
                .range(off + 1..)
                .next()
                .map(|(&n, _)| n <= end)
                .unwrap_or(false);
            if seg_end == off && !next_touches {
                if let Some(seg) = self.segs.get_mut(&s) {
                    seg.extend_from_slice(data);
                    self.bytes += data.len();
                }
                return;
            }
        }
        // General case: merge every segment that overlaps or touches [off, end].
        let mut start = off;
        let mut new_end = end;
        let touching: Vec<u64> = self
            .segs
            .range(..=end)
            .filter(|(&s, d)| s + d.len() as u64 >= off)
            .map(|(&s, _)| s)
            .collect();
        for s in &touching {
            if let Some(d) = self.segs.get(s) {
                start = start.min(*s);
                new_end = new_end.max(s + d.len() as u64);
            }
        }
        let mut merged = vec![0u8; (new_end - start) as usize];
        for s in touching {
            if let Some(d) = self.segs.remove(&s) {
                self.bytes -= d.len();
                let at = (s - start) as usize;
                merged[at..at + d.len()].copy_from_slice(&d);
            }
        }
        let at = (off - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.segs.insert(start, merged);
    }

    /// Drops dirty bytes at or beyond `size` (a truncate).
    pub fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self.segs.range(size..).map(|(&s, _)| s).collect();
        for s in beyond {
            if let Some(d) = self.segs.remove(&s) {
                self.bytes -= d.len();
            }
        }
        if let Some((&s, d)) = self.segs.range_mut(..size).next_back() {
            let keep = (size - s) as usize;
            if d.len() > keep {
                self.bytes -= d.len() - keep;
                d.truncate(keep);
            }
        }
    }

    /// Copies the dirty bytes that fall inside `[off, off + buf.len())` over `buf`.
    pub fn overlay(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        for (&s, d) in self.segs.range(..end) {
            let s_end = s + d.len() as u64;
            if s_end <= off {
                continue;
            }
            let from = s.max(off);
            let to = s_end.min(end);
            let src = &d[(from - s) as usize..(to - s) as usize];
            buf[(from - off) as usize..(to - off) as usize].copy_from_slice(src);
        }
    }

    /// Lays `newer` over `self` (used to put a failed flush back under later writes).
    pub fn absorb_newer(&mut self, newer: WriteBuffer) {
        for (o, d) in newer.segs {
            self.insert(o, &d);
        }
    }
}

/// One RPC of a flush: bytes for one object at one object offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub object_index: u32,
    pub object_offset: u64,
    pub data: Bytes,
}

/// Cuts the buffer into per-object chunks. Pieces contiguous in object space (stripe
/// units `s` and `s + stripe_count` of a sequential write) merge up to `max_chunk` bytes,
/// so a large sequential flush costs about one RPC per object per `max_chunk`.
pub fn plan_flush(buf: &WriteBuffer, layout: &Layout, max_chunk: usize) -> Vec<Chunk> {
    let mut pieces: Vec<(u32, u64, &[u8])> = Vec::new();
    for (off, data) in buf.segments() {
        for e in layout.extents(off, data.len() as u64) {
            let at = (e.file_offset - off) as usize;
            pieces.push((
                e.object_index,
                e.object_offset,
                &data[at..at + e.len as usize],
            ));
        }
    }
    pieces.sort_by_key(|p| (p.0, p.1));
    let mut out: Vec<Chunk> = Vec::new();
    let mut cur: Option<(u32, u64, Vec<u8>)> = None;
    for (obj, ooff, d) in pieces {
        if let Some((cobj, coff, cdata)) = &mut cur {
            if *cobj == obj
                && *coff + cdata.len() as u64 == ooff
                && cdata.len() + d.len() <= max_chunk
            {
                cdata.extend_from_slice(d);
                continue;
            }
        }
        if let Some((o, off, data)) = cur.take() {
            out.push(Chunk {
                object_index: o,
                object_offset: off,
                data: Bytes::from(data),
            });
        }
        cur = Some((obj, ooff, d.to_vec()));
    }
    if let Some((o, off, data)) = cur {
        out.push(Chunk {
            object_index: o,
            object_offset: off,
            data: Bytes::from(data),
        });
    }
    out
}

/// The byte range a read may return: `[off, min(off + len, size))`, empty at or past EOF.
pub fn clamp_read(off: u64, len: u32, size: u64) -> u64 {
    if off >= size {
        0
    } else {
        (len as u64).min(size - off)
    }
}

/// Places one extent's server bytes into the read buffer; a short reply (the object
/// ends there) leaves zeros behind it, which is what a hole or sparse tail reads as.
pub fn place(out: &mut [u8], at: usize, got: &[u8]) {
    let n = got.len().min(out.len().saturating_sub(at));
    out[at..at + n].copy_from_slice(&got[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirrus_types::{ChainId, LAYOUT_FN_VERSION};
    use proptest::prelude::*;

    fn layout(unit: u32, count: u32) -> Layout {
        Layout {
            fn_version: LAYOUT_FN_VERSION,
            stripe_unit: unit,
            chains: (0..count).map(ChainId).collect(),
        }
    }

    #[test]
    fn sequential_writes_coalesce_into_one_segment() {
        let mut b = WriteBuffer::default();
        for i in 0..10u64 {
            b.insert(i * 100, &[i as u8; 100]);
        }
        assert_eq!(b.segments().count(), 1);
        assert_eq!(b.len(), 1000);
        assert_eq!(b.end(), 1000);
    }

    #[test]
    fn later_write_wins_and_truncate_cuts() {
        let mut b = WriteBuffer::default();
        b.insert(10, &[1; 10]);
        b.insert(30, &[3; 10]);
        b.insert(15, &[2; 20]); // bridges both
        assert_eq!(b.segments().count(), 1);
        let mut out = vec![9u8; 40];
        b.overlay(0, &mut out);
        assert_eq!(&out[..10], &[9; 10]);
        assert_eq!(&out[10..15], &[1; 5]);
        assert_eq!(&out[15..35], &[2; 20]);
        assert_eq!(&out[35..40], &[3; 5]);
        b.truncate(20);
        assert_eq!(b.end(), 20);
        assert_eq!(b.len(), 10);
        b.truncate(5);
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn sequential_flush_merges_per_object() {
        // 4 objects, 64 KiB units, 1 MiB sequential: 16 units -> 4 chunks of 256 KiB.
        let l = layout(65536, 4);
        let mut b = WriteBuffer::default();
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        b.insert(0, &data);
        let plan = plan_flush(&b, &l, 4 << 20);
        assert_eq!(plan.len(), 4);
        for c in &plan {
            assert_eq!(c.object_offset, 0);
            assert_eq!(c.data.len(), 256 << 10);
        }
        // Bytes land where the layout says.
        for c in &plan {
            for (k, byte) in c.data.iter().enumerate().step_by(4099) {
                let unit_in_obj = k as u64 / 65536;
                let file_unit = unit_in_obj * 4 + c.object_index as u64;
                let file_off = file_unit * 65536 + k as u64 % 65536;
                assert_eq!(*byte, data[file_off as usize]);
            }
        }
        // max_chunk bounds chunk sizes.
        let plan = plan_flush(&b, &l, 65536);
        assert_eq!(plan.len(), 16);
    }

    #[test]
    fn short_server_reply_reads_as_zeros() {
        let mut out = vec![7u8; 10];
        out.fill(0);
        place(&mut out, 2, &[1, 2, 3]);
        assert_eq!(out, vec![0, 0, 1, 2, 3, 0, 0, 0, 0, 0]);
        assert_eq!(clamp_read(5, 10, 8), 3);
        assert_eq!(clamp_read(8, 10, 8), 0);
        assert_eq!(clamp_read(9, 10, 8), 0);
    }

    proptest! {
        // The buffer behaves like a byte array with a dirty mask; the flush plan covers
        // exactly the dirty bytes at the layout's positions.
        #[test]
        fn buffer_and_plan_match_a_byte_model(
            writes in proptest::collection::vec((0u64..20000, 1usize..5000, any::<u8>()), 1..30),
            trunc in proptest::option::of(0u64..25000),
        ) {
            let l = layout(4096, 3);
            let mut b = WriteBuffer::default();
            let mut model: Vec<Option<u8>> = vec![None; 30000];
            for (off, len, v) in &writes {
                b.insert(*off, &vec![*v; *len]);
                for i in *off..*off + *len as u64 { model[i as usize] = Some(*v); }
            }
            if let Some(t) = trunc {
                b.truncate(t);
                for m in model.iter_mut().skip(t as usize) { *m = None; }
            }
            let dirty = model.iter().filter(|m| m.is_some()).count();
            prop_assert_eq!(b.len(), dirty);
            let mut out = vec![0xEEu8; 30000];
            b.overlay(0, &mut out);
            for (i, m) in model.iter().enumerate() {
                prop_assert_eq!(out[i], m.unwrap_or(0xEE));
            }
            let plan = plan_flush(&b, &l, 10000);
            let mut seen = 0usize;
            for c in &plan {
                prop_assert!(c.data.len() <= 10000);
                for (k, byte) in c.data.iter().enumerate() {
                    let ooff = c.object_offset + k as u64;
                    let unit = ooff / 4096 * 3 + c.object_index as u64;
                    let foff = unit * 4096 + ooff % 4096;
                    prop_assert_eq!(Some(*byte), model[foff as usize]);
                    seen += 1;
                }
            }
            prop_assert_eq!(seen, dirty);
        }
    }
}
