//! The one policy for a poisoned lock.
//!
//! A std `Mutex`/`RwLock` is poisoned when a thread panicked while holding it. Cirrus has
//! two kinds of locked memory, and each has one rule:
//! - **Caches and bookkeeping** (the leader's memory of heartbeats and garbage notices,
//!   connection pools, a client's open-file table, lock tables of a data server): each
//!   critical section leaves them consistent at every point a panic can interrupt, so
//!   the value behind a poisoned lock is as good as any other. Take the guard and go on,
//!   with the three helpers below. Skipping the work instead (`if let Ok(g) = m.lock()`)
//!   would silently drop duties (a leader that stops marking servers down) for nothing.
//! - **Durable state** (meta's state machine and raft log stores): a panic in the middle
//!   of an apply or an append can leave them half-changed. Their locks turn poison into
//!   an I/O error (`sm_store`, `log_store`), so the node stops serving from that state
//!   and is restarted, rebuilding it from its snapshot and log.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, recovering the guard of a poisoned lock.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, recovering the guard of a poisoned lock.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `l`, recovering the guard of a poisoned lock.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_value() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 6);
        let l = RwLock::new(1);
        *write(&l) = 2;
        assert_eq!(*read(&l), 2);
    }
}
