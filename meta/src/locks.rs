//! Blocking lock waits at the meta leader (`F_SETLKW`, `flock` without `LOCK_NB`). A
//! wait is not raft state: it lives in the leader's memory for one wait slice (at most
//! `MAX_WAIT_SLICE`), and the client asks again when a slice ends without the lock, or
//! at the new leader after a failover. Inside a slice nothing polls: the wait sleeps on
//! its file's wake channel, which the leader bumps after every commit that can free a
//! lock there (an unlock, a downgrade, a lapsed client's release), and only then asks
//! again. A waiter's caller that gets a signal cancels the wait by id; a cancel that
//! arrives before its wait is kept for `CANCEL_KEPT` so the wait ends as it begins.
//!
//! Waits also form the waits-for graph for deadlock detection: a wait blocked by an owner
//! that is itself (transitively) waiting for the waiter's owner answers `EDEADLK`.

use cirrus_types::lock::MAX_LOCK_WAITS_PER_CLIENT;
use cirrus_types::{ClientId, FsError, FsResult, InodeId, LockOwner};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Longest the leader holds one wait call.
pub const MAX_WAIT_SLICE: Duration = Duration::from_secs(10);

/// How long a cancel whose wait has not arrived is remembered.
const CANCEL_KEPT: Duration = Duration::from_secs(60);

type WaitKey = (ClientId, u64);

struct Wait {
    /// `None` for a cancel that came before its wait.
    owner: Option<LockOwner>,
    ino: InodeId,
    /// The owner of the lock this wait found in its way at its last look; cleared when
    /// the wait looks again and whenever a lock on its file may have been freed, so the
    /// waits-for graph holds no edge that may be stale (a false EDEADLK).
    blocked_by: Option<LockOwner>,
    cancelled: bool,
    cancel: Arc<Notify>,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    /// Files with waiters: bumped when a lock there may have been freed.
    files: HashMap<InodeId, watch::Sender<u64>>,
    waits: HashMap<WaitKey, Wait>,
    per_client: HashMap<ClientId, usize>,
}

impl Inner {
    fn remove(&mut self, key: WaitKey) {
        if self.waits.remove(&key).is_some() {
            if let Some(n) = self.per_client.get_mut(&key.0) {
                *n -= 1;
                if *n == 0 {
                    self.per_client.remove(&key.0);
                }
            }
        }
    }

    fn insert(&mut self, key: WaitKey, w: Wait) -> FsResult<()> {
        let n = self.per_client.entry(key.0).or_insert(0);
        if *n >= MAX_LOCK_WAITS_PER_CLIENT {
            return Err(FsError::NoLocks(format!(
                "client {} already has {n} lock waits at the leader (at most {MAX_LOCK_WAITS_PER_CLIENT})",
                key.0
            )));
        }
        *n += 1;
        self.waits.insert(key, w);
        Ok(())
    }

    fn forget_old_cancels(&mut self, now: Instant) {
        let old: Vec<WaitKey> = self
            .waits
            .iter()
            .filter(|(_, w)| w.owner.is_none() && now.duration_since(w.since) > CANCEL_KEPT)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.remove(k);
        }
    }
}

/// Every wait at this leader.
#[derive(Default)]
pub struct LockWaits {
    inner: Mutex<Inner>,
}

/// One wait in progress; dropping it ends the wait.
pub struct WaitGuard<'a> {
    waits: &'a LockWaits,
    key: WaitKey,
    cancel: Arc<Notify>,
}

impl LockWaits {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        cirrus_types::sync::lock(&self.inner)
    }

    /// Starts wait `wait_id` of `owner`'s client: `Interrupted` if it was cancelled
    /// already, `NoLocks` past the client's ceiling, `Invalid` if it is in progress.
    pub fn begin(&self, wait_id: u64, owner: LockOwner, ino: InodeId) -> FsResult<WaitGuard<'_>> {
        let key = (owner.client, wait_id);
        let mut g = self.inner();
        g.forget_old_cancels(Instant::now());
        match g.waits.get(&key) {
            Some(w) if w.owner.is_none() => {
                g.remove(key);
                return Err(FsError::Interrupted(format!(
                    "lock wait {wait_id} was cancelled"
                )));
            }
            Some(_) => {
                return Err(FsError::Invalid(format!(
                    "lock wait {wait_id} of client {} is in progress",
                    owner.client
                )))
            }
            None => {}
        }
        let cancel = Arc::new(Notify::new());
        g.insert(
            key,
            Wait {
                owner: Some(owner),
                ino,
                blocked_by: None,
                cancelled: false,
                cancel: cancel.clone(),
                since: Instant::now(),
            },
        )?;
        Ok(WaitGuard {
            waits: self,
            key,
            cancel,
        })
    }

    /// The wake channel of `ino`; take it before looking at the locks, so a wake after
    /// the look is not missed.
    pub fn subscribe(&self, ino: InodeId) -> watch::Receiver<u64> {
        let mut g = self.inner();
        g.files.retain(|_, tx| tx.receiver_count() > 0);
        g.files
            .entry(ino)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// A lock on `ino` may have been freed: its waiters look again.
    pub fn wake(&self, ino: InodeId) {
        let mut g = self.inner();
        for w in g.waits.values_mut().filter(|w| w.ino == ino) {
            w.blocked_by = None;
        }
        if let Some(tx) = g.files.get(&ino) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Locks may have been freed anywhere (a client's locks were dropped).
    pub fn wake_all(&self) {
        let mut g = self.inner();
        for w in g.waits.values_mut() {
            w.blocked_by = None;
        }
        for tx in g.files.values() {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Cancels wait `wait_id` of `client` (or the wait when it arrives).
    pub fn cancel(&self, client: ClientId, wait_id: u64) -> FsResult<()> {
        let key = (client, wait_id);
        let mut g = self.inner();
        g.forget_old_cancels(Instant::now());
        if let Some(w) = g.waits.get_mut(&key) {
            w.cancelled = true;
            w.cancel.notify_one();
            return Ok(());
        }
        g.insert(
            key,
            Wait {
                owner: None,
                ino: InodeId(0),
                blocked_by: None,
                cancelled: true,
                cancel: Arc::new(Notify::new()),
                since: Instant::now(),
            },
        )
    }

    /// Waits in progress (tests and metrics).
    pub fn len(&self) -> usize {
        self.inner()
            .waits
            .values()
            .filter(|w| w.owner.is_some())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl WaitGuard<'_> {
    pub fn cancelled(&self) -> bool {
        self.waits
            .inner()
            .waits
            .get(&self.key)
            .is_some_and(|w| w.cancelled)
    }

    /// The wait looks again (or takes the lock): its last edge may be stale.
    pub fn unblocked(&self) {
        if let Some(w) = self.waits.inner().waits.get_mut(&self.key) {
            w.blocked_by = None;
        }
    }

    /// Resolves when the wait is cancelled.
    pub async fn on_cancel(&self) {
        self.cancel.notified().await
    }

    /// Records that this wait is blocked by `holder`; `Deadlock` if `holder` waits,
    /// directly or through other waiters, for this wait's owner.
    pub fn blocked_by(&self, holder: LockOwner) -> FsResult<()> {
        let mut g = self.waits.inner();
        let Some(me) = g.waits.get(&self.key).and_then(|w| w.owner) else {
            return Ok(());
        };
        let mut seen = BTreeSet::new();
        let mut next = vec![holder];
        while let Some(o) = next.pop() {
            if o == me {
                return Err(FsError::Deadlock(format!(
                    "owner {} of client {} waits, through other waiters, for owner {} of client {}",
                    holder.owner, holder.client, me.owner, me.client
                )));
            }
            if !seen.insert(o) {
                continue;
            }
            next.extend(
                g.waits
                    .values()
                    .filter(|w| w.owner == Some(o))
                    .filter_map(|w| w.blocked_by),
            );
        }
        if let Some(w) = g.waits.get_mut(&self.key) {
            w.blocked_by = Some(holder);
        }
        Ok(())
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.waits.inner().remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(client: u64, owner: u64) -> LockOwner {
        LockOwner {
            client: ClientId(client),
            owner,
        }
    }

    #[test]
    fn a_cycle_of_waiters_is_a_deadlock_and_a_chain_is_not() {
        let w = LockWaits::default();
        let a = w.begin(1, o(1, 10), InodeId(5)).unwrap();
        a.blocked_by(o(2, 20)).unwrap();
        let b = w.begin(1, o(2, 20), InodeId(5)).unwrap();
        b.blocked_by(o(3, 30)).unwrap();
        // 3 waits for 1: 3 -> 1 -> 2 -> 3 is a cycle.
        let c = w.begin(7, o(3, 30), InodeId(6)).unwrap();
        assert!(matches!(c.blocked_by(o(1, 10)), Err(FsError::Deadlock(_))));
        // 3 waiting for someone outside the chain is fine.
        c.blocked_by(o(4, 40)).unwrap();
        // A wake on file 5 clears the edges of its waits: 1 and 2 look again.
        w.wake(InodeId(5));
        c.blocked_by(o(1, 10)).unwrap();
        a.blocked_by(o(2, 20)).unwrap();
        b.blocked_by(o(3, 30)).unwrap_err();
        drop(a);
        // Once 1 stopped waiting, 2 may wait for 3 again.
        b.blocked_by(o(3, 30)).unwrap();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_cancel_before_its_wait_ends_the_wait_as_it_begins_and_one_during_wakes_it() {
        let w = LockWaits::default();
        w.cancel(ClientId(1), 5).unwrap();
        assert!(matches!(
            w.begin(5, o(1, 10), InodeId(5)),
            Err(FsError::Interrupted(_))
        ));
        // The cancel is used up: the same id may wait again.
        let g = w.begin(5, o(1, 10), InodeId(5)).unwrap();
        assert!(!g.cancelled());
        w.cancel(ClientId(1), 5).unwrap();
        assert!(g.cancelled());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), g.on_cancel())
                .await
                .expect("a cancel wakes its wait");
        });
        drop(g);
        assert!(w.is_empty());
    }

    #[test]
    fn waits_per_client_are_capped() {
        let w = LockWaits::default();
        let guards: Vec<_> = (0..MAX_LOCK_WAITS_PER_CLIENT as u64)
            .map(|i| w.begin(i, o(1, i), InodeId(5)).unwrap())
            .collect();
        assert!(matches!(
            w.begin(u64::MAX, o(1, 0), InodeId(5)),
            Err(FsError::NoLocks(_))
        ));
        assert!(
            w.begin(0, o(2, 0), InodeId(5)).is_ok(),
            "another client is not capped"
        );
        drop(guards);
        assert!(w.begin(u64::MAX, o(1, 0), InodeId(5)).is_ok());
    }

    #[test]
    fn a_wake_reaches_every_subscriber_of_its_file_only() {
        let w = LockWaits::default();
        let mut r1 = w.subscribe(InodeId(5));
        let r2 = w.subscribe(InodeId(6));
        w.wake(InodeId(5));
        assert!(r1.has_changed().unwrap());
        assert!(!r2.has_changed().unwrap());
        r1.borrow_and_update();
        w.wake_all();
        assert!(r1.has_changed().unwrap() && r2.has_changed().unwrap());
    }
}
