//! File locks held by the meta group: a table of byte-range locks per file, owned by
//! (client, lock owner). Applying `SetLock` checks conflicts with other owners and the
//! per-client ceiling against `&self` first and mutates only when both pass, as every
//! command does. A lock dies with its holder: the client unlocks at close, and
//! `ReleaseClient` (a lapsed lease) drops all of a client's locks with its handles.
//! Blocking waits are not state: the leader keeps them (see `crate::locks`).

use super::*;
use cirrus_types::lock::{
    apply_lock, check_lock_range, first_conflict, HeldLock, LockKind, LockOwner,
    MAX_LOCKS_PER_CLIENT,
};

/// Every held lock, per file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LockTable {
    by_ino: BTreeMap<InodeId, Vec<HeldLock>>,
    /// Lock records per client: for the ceiling, and so the leader's lease timer covers
    /// every client that holds a lock.
    per_client: BTreeMap<ClientId, usize>,
}

impl LockTable {
    fn count(&mut self, client: ClientId, was: usize, now: usize) {
        let n = self.per_client.entry(client).or_insert(0);
        *n = (*n + now).saturating_sub(was);
        if *n == 0 {
            self.per_client.remove(&client);
        }
    }

    /// Replaces the locks of `ino` (recounting every client whose records changed).
    fn replace(&mut self, ino: InodeId, new: Vec<HeldLock>) {
        let old = self.by_ino.remove(&ino).unwrap_or_default();
        let mut clients: BTreeMap<ClientId, (usize, usize)> = BTreeMap::new();
        for l in &old {
            clients.entry(l.owner.client).or_default().0 += 1;
        }
        for l in &new {
            clients.entry(l.owner.client).or_default().1 += 1;
        }
        for (c, (was, now)) in clients {
            self.count(c, was, now);
        }
        if !new.is_empty() {
            self.by_ino.insert(ino, new);
        }
    }

    fn held(&self, ino: InodeId) -> &[HeldLock] {
        self.by_ino.get(&ino).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Files on which `client` holds locks.
    fn inos_of(&self, client: ClientId) -> Vec<InodeId> {
        self.by_ino
            .iter()
            .filter(|(_, v)| v.iter().any(|l| l.owner.client == client))
            .map(|(i, _)| *i)
            .collect()
    }
}

impl MetaState {
    /// `SetLock`: `kind` `None` unlocks. `WouldBlock` if another owner holds a
    /// conflicting lock, `NoLocks` past the client's ceiling; either changes nothing.
    pub(super) fn set_lock(
        &mut self,
        ino: InodeId,
        owner: LockOwner,
        kind: Option<LockKind>,
        start: u64,
        end: u64,
        pid: u32,
    ) -> Response {
        check_lock_range(start, end)?;
        match self.inodes.get(&ino).map(Inode::kind) {
            None => return Err(FsError::NotFound),
            Some(FileKind::File) => {}
            Some(FileKind::Dir) => return Err(FsError::IsDir),
            Some(k) => {
                return Err(FsError::Invalid(format!(
                    "locks are kept for regular files, not a {k:?}"
                )))
            }
        }
        let held = self.locks.held(ino);
        if let Some(kind) = kind {
            if let Some(c) = first_conflict(held, owner, kind, start, end) {
                return Err(FsError::WouldBlock(format!(
                    "bytes {}..={} are locked by owner {} of client {}",
                    c.start, c.end, c.owner.owner, c.owner.client
                )));
            }
        }
        let new = apply_lock(held, owner, kind, start, end, pid);
        let mine = |v: &[HeldLock]| v.iter().filter(|l| l.owner.client == owner.client).count();
        let before = self
            .locks
            .per_client
            .get(&owner.client)
            .copied()
            .unwrap_or(0);
        let after = before + mine(&new) - mine(held);
        if after > before && after > MAX_LOCKS_PER_CLIENT {
            return Err(FsError::NoLocks(format!(
                "client {} would hold {after} lock records (at most {MAX_LOCKS_PER_CLIENT})",
                owner.client
            )));
        }
        self.locks.replace(ino, new);
        Ok(Reply::Done)
    }

    /// The first lock of another owner that stops `owner` from taking `kind` on
    /// `start..=end` of `ino` (`F_GETLK`, and the leader's wait decisions).
    pub fn lock_conflict(
        &self,
        ino: InodeId,
        owner: LockOwner,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> Option<HeldLock> {
        first_conflict(self.locks.held(ino), owner, kind, start, end)
    }

    /// Every lock held on `ino`, in range order (status tools and tests).
    pub fn locks_on(&self, ino: InodeId) -> Vec<HeldLock> {
        self.locks.held(ino).to_vec()
    }

    /// Clients holding at least one lock.
    pub(super) fn clients_with_locks(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.locks.per_client.keys().copied()
    }

    /// Drops every lock of `client` (its lease lapsed).
    pub(super) fn drop_client_locks(&mut self, client: ClientId) {
        for ino in self.locks.inos_of(client) {
            let keep: Vec<HeldLock> = self
                .locks
                .held(ino)
                .iter()
                .filter(|l| l.owner.client != client)
                .copied()
                .collect();
            self.locks.replace(ino, keep);
        }
    }

    /// Drops the locks of a file that is gone.
    pub(super) fn forget_locks(&mut self, ino: InodeId) {
        if self.locks.by_ino.contains_key(&ino) {
            self.locks.replace(ino, Vec::new());
        }
    }
}
