//! File locks as the meta group holds them: byte-range locks (POSIX `fcntl` record
//! locks, OFD locks, and `flock`, which the FUSE kernel sends as a whole-file lock owned
//! by the open file, as NFS does) owned by (client, lock owner), the owner being the
//! number the kernel reports through FUSE for the process or the open file.
//!
//! Pure: the range arithmetic here is what the meta state machine applies, so every
//! replica computes the same table.

use crate::{ClientId, FsError, FsResult, InodeId};
use serde::{Deserialize, Serialize};

/// Lock records one client may hold in all (each costs about 50 bytes on every meta
/// node); the next lock that would add one is `ENOLCK` and changes nothing.
pub const MAX_LOCKS_PER_CLIENT: usize = 16_384;

/// Blocking lock waits one client may have at the meta leader at once; the next is
/// `ENOLCK`.
pub const MAX_LOCK_WAITS_PER_CLIENT: usize = 1024;

/// Shared (`F_RDLCK`) or exclusive (`F_WRLCK`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockKind {
    Read,
    Write,
}

/// Who holds a lock: a lock owner of one client.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockOwner {
    pub client: ClientId,
    pub owner: u64,
}

/// One held lock on the bytes `start..=end` of a file.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub owner: LockOwner,
    pub kind: LockKind,
    pub start: u64,
    /// Inclusive (the kernel's `OFFSET_MAX` for "to the end of the file and past it").
    pub end: u64,
    /// The holder's process id on its own machine, for `F_GETLK`.
    pub pid: u32,
}

impl HeldLock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// Whether this lock stops `owner` from taking `kind` on `start..=end`.
    pub fn conflicts(&self, owner: LockOwner, kind: LockKind, start: u64, end: u64) -> bool {
        self.owner != owner
            && self.overlaps(start, end)
            && (self.kind == LockKind::Write || kind == LockKind::Write)
    }
}

/// One lock call as a caller asks it: `kind` `None` unlocks `start..=end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockCall {
    pub ino: InodeId,
    pub owner: LockOwner,
    pub kind: Option<LockKind>,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

/// Refuses a range that ends before it starts (`EINVAL`, as `fcntl` answers).
pub fn check_lock_range(start: u64, end: u64) -> FsResult<()> {
    if start > end {
        return Err(FsError::Invalid(format!(
            "lock range starts at {start} past its end {end}"
        )));
    }
    Ok(())
}

/// The first lock in `held` that stops `owner` from taking `kind` on `start..=end`.
pub fn first_conflict(
    held: &[HeldLock],
    owner: LockOwner,
    kind: LockKind,
    start: u64,
    end: u64,
) -> Option<HeldLock> {
    held.iter()
        .find(|l| l.conflicts(owner, kind, start, end))
        .copied()
}

/// The locks of one file after `owner` sets `kind` (`None`: unlocks) on `start..=end`,
/// POSIX style: the owner's locks in the range are replaced (split where they stick out),
/// and the owner's locks of the same kind that touch or overlap are merged into one.
/// Conflicts are not checked here (see [`first_conflict`]).
pub fn apply_lock(
    held: &[HeldLock],
    owner: LockOwner,
    kind: Option<LockKind>,
    start: u64,
    end: u64,
    pid: u32,
) -> Vec<HeldLock> {
    let mut out = Vec::with_capacity(held.len() + 2);
    let (mut start, mut end) = (start, end);
    for l in held {
        if l.owner != owner {
            out.push(*l);
            continue;
        }
        let touches = l.start <= end.saturating_add(1) && start <= l.end.saturating_add(1);
        if Some(l.kind) == kind && touches {
            // Same kind, touching: merge into the new lock.
            start = start.min(l.start);
            end = end.max(l.end);
            continue;
        }
        if !l.overlaps(start, end) {
            out.push(*l);
            continue;
        }
        // Overlapping, other kind (or an unlock): keep what sticks out on either side.
        if l.start < start {
            out.push(HeldLock {
                end: start - 1,
                ..*l
            });
        }
        if l.end > end {
            out.push(HeldLock {
                start: end + 1,
                ..*l
            });
        }
    }
    if let Some(kind) = kind {
        out.push(HeldLock {
            owner,
            kind,
            start,
            end,
            pid,
        });
    }
    out.sort_by_key(|l| (l.start, l.owner, l.end));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: LockOwner = LockOwner {
        client: ClientId(1),
        owner: 10,
    };
    const B: LockOwner = LockOwner {
        client: ClientId(2),
        owner: 10,
    };

    fn ranges(held: &[HeldLock], o: LockOwner) -> Vec<(LockKind, u64, u64)> {
        held.iter()
            .filter(|l| l.owner == o)
            .map(|l| (l.kind, l.start, l.end))
            .collect()
    }

    #[test]
    fn an_unlock_in_the_middle_splits_a_lock_and_a_touching_lock_of_the_same_kind_merges() {
        let t = apply_lock(&[], A, Some(LockKind::Write), 0, 99, 1);
        let t = apply_lock(&t, A, None, 40, 59, 1);
        assert_eq!(
            ranges(&t, A),
            vec![(LockKind::Write, 0, 39), (LockKind::Write, 60, 99)]
        );
        let t = apply_lock(&t, A, Some(LockKind::Write), 40, 59, 1);
        assert_eq!(ranges(&t, A), vec![(LockKind::Write, 0, 99)]);
        // A read lock in the middle of a write lock splits it into three.
        let t = apply_lock(&t, A, Some(LockKind::Read), 10, 19, 1);
        assert_eq!(
            ranges(&t, A),
            vec![
                (LockKind::Write, 0, 9),
                (LockKind::Read, 10, 19),
                (LockKind::Write, 20, 99)
            ]
        );
    }

    #[test]
    fn readers_share_and_a_writer_conflicts_with_anyone_else_but_not_with_itself() {
        let t = apply_lock(&[], A, Some(LockKind::Read), 0, u64::MAX, 1);
        assert_eq!(first_conflict(&t, B, LockKind::Read, 5, 5), None);
        assert_eq!(
            first_conflict(&t, B, LockKind::Write, 5, 5).map(|l| l.owner),
            Some(A)
        );
        assert_eq!(first_conflict(&t, A, LockKind::Write, 0, 9), None);
        let t = apply_lock(&[], A, Some(LockKind::Write), 100, 199, 1);
        assert_eq!(first_conflict(&t, B, LockKind::Write, 0, 99), None);
        assert_eq!(
            first_conflict(&t, B, LockKind::Read, 199, 300).map(|l| l.pid),
            Some(1)
        );
        assert!(check_lock_range(5, 4).is_err());
        assert!(check_lock_range(5, 5).is_ok());
    }

    proptest! {
        /// The table after any sequence of one owner's calls holds, byte for byte, what a
        /// per-byte model holds, and never two of its records overlap or touch with the
        /// same kind.
        #[test]
        fn lock_arithmetic_matches_a_per_byte_model(
            ops in proptest::collection::vec((0u64..64, 0u64..64, 0u8..3), 1..40)
        ) {
            let mut t: Vec<HeldLock> = Vec::new();
            let mut model = [None::<LockKind>; 64];
            for (a, b, k) in ops {
                let (s, e) = (a.min(b), a.max(b));
                let kind = match k { 0 => None, 1 => Some(LockKind::Read), _ => Some(LockKind::Write) };
                t = apply_lock(&t, A, kind, s, e, 7);
                for m in &mut model[s as usize..=e as usize] { *m = kind; }
            }
            for (i, m) in model.iter().enumerate() {
                let at: Vec<_> = t.iter().filter(|l| l.start <= i as u64 && i as u64 <= l.end).collect();
                prop_assert!(at.len() <= 1, "byte {} in {} records", i, at.len());
                prop_assert_eq!(at.first().map(|l| l.kind), *m, "byte {}", i);
            }
            for w in t.windows(2) {
                prop_assert!(w[0].end < w[1].start);
                prop_assert!(w[0].kind != w[1].kind || w[0].end + 1 < w[1].start, "{:?} not merged", w);
            }
        }
    }
}
