//! File layouts: how a file's bytes map onto objects, and objects onto chains.
//!
//! Stripe unit `s` of a file lives in object `s % stripe_count` at object offset
//! `(s / stripe_count) * stripe_unit`. This is a pure, versioned function: client and
//! meta compute it identically, and `stripe_mapping_is_pinned` fixes it. Changing it
//! means a new `LAYOUT_FN_VERSION`, never an edit of version 1.

use crate::ids::{ChainId, InodeId};
use crate::{FsError, FsResult};
use serde::{Deserialize, Serialize};

/// Version of the stripe mapping function below.
pub const LAYOUT_FN_VERSION: u32 = 1;
/// Default stripe unit: 1 MiB.
pub const DEFAULT_STRIPE_UNIT: u32 = 1 << 20;
/// Default upper bound of the stripe count (actual default is min(4, chains)).
pub const DEFAULT_MAX_STRIPE_COUNT: u32 = 4;
/// Stripe units must be a multiple of this (the checksum block and O_DIRECT alignment).
pub const STRIPE_UNIT_ALIGN: u32 = 4096;
/// Largest accepted stripe unit (64 MiB) and stripe count.
pub const MAX_STRIPE_UNIT: u32 = 64 << 20;
pub const MAX_STRIPE_COUNT: u32 = 256;

/// What a directory's `cirrus.layout` xattr or a create request asks for. Zero means "default".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutSpec {
    pub stripe_unit: u32,
    pub stripe_count: u32,
}

impl LayoutSpec {
    /// Parses the xattr text form `stripe_unit=1048576,stripe_count=4` (either key optional).
    pub fn parse(text: &str) -> FsResult<Self> {
        let mut spec = LayoutSpec::default();
        for part in text.trim().split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                FsError::Invalid(format!("layout item {part:?} is not key=value"))
            })?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| FsError::Invalid(format!("layout value {v:?} is not a number")))?;
            match k.trim() {
                "stripe_unit" => spec.stripe_unit = v,
                "stripe_count" => spec.stripe_count = v,
                other => return Err(FsError::Invalid(format!("unknown layout key {other:?}"))),
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    pub fn render(&self) -> String {
        format!(
            "stripe_unit={},stripe_count={}",
            self.stripe_unit, self.stripe_count
        )
    }

    pub fn validate(&self) -> FsResult<()> {
        if self.stripe_unit != 0
            && (!self.stripe_unit.is_multiple_of(STRIPE_UNIT_ALIGN)
                || self.stripe_unit > MAX_STRIPE_UNIT)
        {
            return Err(FsError::Invalid(format!(
                "stripe_unit {} must be a multiple of {STRIPE_UNIT_ALIGN} and at most {MAX_STRIPE_UNIT}",
                self.stripe_unit
            )));
        }
        if self.stripe_count > MAX_STRIPE_COUNT {
            return Err(FsError::Invalid(format!(
                "stripe_count {} is above {MAX_STRIPE_COUNT}",
                self.stripe_count
            )));
        }
        Ok(())
    }
}

/// A file's layout, fixed at create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Which mapping function (always `LAYOUT_FN_VERSION` today).
    pub fn_version: u32,
    pub stripe_unit: u32,
    /// Chain of each object; `chains.len()` is the stripe count.
    pub chains: Vec<ChainId>,
}

/// One object of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub inode: InodeId,
    pub index: u32,
}

/// A contiguous piece of a file range that lies inside one stripe unit of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub object_index: u32,
    pub object_offset: u64,
    pub file_offset: u64,
    pub len: u64,
}

impl Layout {
    pub fn stripe_count(&self) -> u32 {
        self.chains.len() as u32
    }

    pub fn validate(&self) -> FsResult<()> {
        if self.fn_version != LAYOUT_FN_VERSION {
            return Err(FsError::Invalid(format!(
                "unknown layout version {}",
                self.fn_version
            )));
        }
        if self.chains.is_empty() || self.chains.len() > MAX_STRIPE_COUNT as usize {
            return Err(FsError::Invalid(format!(
                "stripe count {} out of range",
                self.chains.len()
            )));
        }
        if self.stripe_unit == 0
            || !self.stripe_unit.is_multiple_of(STRIPE_UNIT_ALIGN)
            || self.stripe_unit > MAX_STRIPE_UNIT
        {
            return Err(FsError::Invalid(format!(
                "stripe unit {} out of range",
                self.stripe_unit
            )));
        }
        Ok(())
    }

    /// Object index and object offset of one file offset.
    pub fn locate(&self, file_offset: u64) -> (u32, u64) {
        let unit = self.stripe_unit as u64;
        let count = self.chains.len() as u64;
        let s = file_offset / unit;
        let within = file_offset % unit;
        ((s % count) as u32, (s / count) * unit + within)
    }

    /// Splits `[offset, offset+len)` at stripe-unit boundaries, in file order.
    pub fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        let unit = self.stripe_unit as u64;
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset.saturating_add(len);
        while pos < end {
            let unit_end = (pos / unit + 1) * unit;
            let piece = unit_end.min(end) - pos;
            let (object_index, object_offset) = self.locate(pos);
            out.push(Extent {
                object_index,
                object_offset,
                file_offset: pos,
                len: piece,
            });
            pos += piece;
        }
        out
    }

    /// Size object `index` must have so that the file is exactly `file_size` bytes long:
    /// the bytes of the file that live in that object, up to its last one.
    pub fn object_size(&self, index: u32, file_size: u64) -> u64 {
        let unit = self.stripe_unit as u64;
        let count = self.chains.len() as u64;
        let full_units = file_size / unit;
        let tail = file_size % unit;
        let idx = index as u64;
        // Units of this object entirely below file_size.
        let units = full_units / count + u64::from(full_units % count > idx);
        let partial = if full_units % count == idx { tail } else { 0 };
        units * unit + partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(unit: u32, count: u32) -> Layout {
        Layout {
            fn_version: LAYOUT_FN_VERSION,
            stripe_unit: unit,
            chains: (0..count).map(ChainId).collect(),
        }
    }

    #[test]
    fn stripe_mapping_is_pinned() {
        // Version 1 of the mapping, fixed forever: unit s -> object s % n at (s / n) * unit.
        let l = layout(1 << 20, 4);
        assert_eq!(l.locate(0), (0, 0));
        assert_eq!(l.locate((1 << 20) - 1), (0, (1 << 20) - 1));
        assert_eq!(l.locate(1 << 20), (1, 0));
        assert_eq!(l.locate(3 << 20), (3, 0));
        assert_eq!(l.locate(4 << 20), (0, 1 << 20));
        assert_eq!(l.locate((9 << 20) + 5), (1, (2 << 20) + 5));
        let l = layout(65536, 3);
        assert_eq!(l.locate(7 * 65536 + 10), (1, 2 * 65536 + 10));
    }

    #[test]
    fn layout_spec_parses_and_rejects() {
        let s = LayoutSpec::parse("stripe_unit=65536,stripe_count=2").unwrap();
        assert_eq!(
            s,
            LayoutSpec {
                stripe_unit: 65536,
                stripe_count: 2
            }
        );
        assert!(LayoutSpec::parse("stripe_unit=1000").is_err());
        assert!(LayoutSpec::parse("bogus=1").is_err());
        assert!(LayoutSpec::parse("stripe_count=x").is_err());
        assert_eq!(LayoutSpec::parse(&s.render()).unwrap(), s);
    }

    proptest! {
        #[test]
        fn extents_cover_the_range_exactly_once(
            unit_k in 1u32..64, count in 1u32..8, off in 0u64..(1 << 30), len in 0u64..(1 << 24)
        ) {
            let l = layout(unit_k * 4096, count);
            let ex = l.extents(off, len);
            let mut pos = off;
            for e in &ex {
                prop_assert_eq!(e.file_offset, pos);
                prop_assert!(e.len > 0);
                let (i, o) = l.locate(pos);
                prop_assert_eq!((e.object_index, e.object_offset), (i, o));
                // never crosses a stripe unit
                prop_assert_eq!(e.file_offset / l.stripe_unit as u64,
                    (e.file_offset + e.len - 1) / l.stripe_unit as u64);
                pos += e.len;
            }
            prop_assert_eq!(pos, off + len);
        }

        #[test]
        fn object_sizes_sum_to_file_size_and_bound_every_byte(
            unit_k in 1u32..16, count in 1u32..6, size in 0u64..(1 << 26)
        ) {
            let l = layout(unit_k * 4096, count);
            let total: u64 = (0..count).map(|i| l.object_size(i, size)).sum();
            prop_assert_eq!(total, size);
            if size > 0 {
                let (i, o) = l.locate(size - 1);
                prop_assert_eq!(l.object_size(i, size), o + 1);
            }
        }
    }
}
