//! What this mount must undo at close: the (file, lock owner) pairs it has asked meta to
//! lock, and through which open handles. The kernel does not send unlocks for remote
//! locks at close (it keeps no local record of them), so the FUSE door does: a flush
//! (every `close(2)`) drops the POSIX locks of the closing process's owner on the file,
//! and the release of an open file drops the locks taken through it (`flock` and OFD
//! locks are owned by the open file).

use cirrus_types::InodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct HeldLocks {
    /// (file, lock owner) -> handles the owner locked through.
    held: Mutex<BTreeMap<(InodeId, u64), BTreeSet<u64>>>,
    next_wait: AtomicU64,
}

impl HeldLocks {
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<(InodeId, u64), BTreeSet<u64>>> {
        cirrus_types::sync::lock(&self.held)
    }

    /// `owner` asks for a lock on `ino` through handle `fh` (noted before the call, so a
    /// close unlocks even a lock whose grant was lost on the way back).
    pub fn note(&self, ino: InodeId, owner: u64, fh: u64) {
        self.held().entry((ino, owner)).or_default().insert(fh);
    }

    /// At a flush by `owner`: whether it may hold locks on `ino` (they are to be
    /// dropped; the record goes).
    pub fn take_owner(&self, ino: InodeId, owner: u64) -> bool {
        self.held().remove(&(ino, owner)).is_some()
    }

    /// At the release of `fh`: the owners that locked through it and through no other
    /// open handle of `ino` (their locks are to be dropped).
    pub fn release_handle(&self, ino: InodeId, fh: u64) -> Vec<u64> {
        let mut held = self.held();
        let mut gone = Vec::new();
        held.retain(|&(i, owner), fhs| {
            if i != ino || !fhs.remove(&fh) {
                return true;
            }
            if fhs.is_empty() {
                gone.push(owner);
                return false;
            }
            true
        });
        gone
    }

    /// A fresh id for one blocking wait.
    pub fn next_wait(&self) -> u64 {
        self.next_wait.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn len(&self) -> usize {
        self.held().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_takes_its_owner_and_a_release_takes_owners_of_that_handle_only() {
        let h = HeldLocks::default();
        let f = InodeId(9);
        h.note(f, 1, 100);
        h.note(f, 2, 100);
        h.note(f, 2, 101);
        h.note(InodeId(10), 3, 100);
        assert!(h.take_owner(f, 1));
        assert!(!h.take_owner(f, 1), "taken once");
        // Owner 2 still locks through handle 101; the other file is not touched.
        assert_eq!(h.release_handle(f, 100), Vec::<u64>::new());
        assert_eq!(h.release_handle(f, 101), vec![2]);
        assert_eq!(h.len(), 1);
        assert_ne!(h.next_wait(), h.next_wait());
    }
}
