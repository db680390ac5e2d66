//! The raft state machine store (`RaftStateMachine`): the in-memory `MetaState` plus the
//! last applied log id and membership, and the on-disk snapshot file `snapshot`.
//!
//! Applied state is not written per entry: after a crash the latest snapshot is loaded
//! and openraft re-applies the log after it (the log is durable, apply is deterministic).
//! A snapshot is the serialized state with its raft meta, framed with magic, version and
//! crc32c, written to a temp file, fsynced and renamed; the same bytes travel to a
//! follower in InstallSnapshot, and the receiver checks them before installing.

use crate::frame;
use crate::identity::Identity;
use crate::raft_types::{Command, MetaState, NodeId, Response, TypeConfig};
use crate::state::locks::LockTable;
use crate::state::requests::RequestTable;
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

pub const SNAP_MAGIC: &[u8; 8] = b"CIRRUSSN";
/// Version 3 added the lock table (the last field of `MetaState`).
pub const SNAP_VERSION: u32 = 3;
/// Version 2: the same payload without the lock table; still read (with an empty one).
pub const SNAP_VERSION_V2: u32 = 2;
/// Version 1: version 2 without the request table; still read (with empty ones).
pub const SNAP_VERSION_V1: u32 = 1;
const SNAP_FILE: &str = "snapshot";

/// The applied state, shared with the gRPC service for reads.
pub struct Applied {
    pub state: MetaState,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

pub type Shared = Arc<RwLock<Applied>>;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: MetaState,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    bytes: Arc<Vec<u8>>,
}

/// State machine store; clones (the snapshot builder) share everything.
#[derive(Clone)]
pub struct SmStore {
    dir: PathBuf,
    shared: Shared,
    current: Arc<RwLock<Option<StoredSnapshot>>>,
    identity: Arc<Identity>,
    /// Index of the last applied entry, for waiters (e.g. the bootstrap).
    applied_tx: Arc<watch::Sender<u64>>,
    snap_seq: Arc<AtomicU64>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn decode_snapshot(bytes: &[u8]) -> io::Result<SnapshotFile> {
    let version = bytes
        .get(8..12)
        .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
    // bincode encodes a struct as its fields in order, and each version added one last
    // field of the state, which is the last field of the file: an older payload followed
    // by the empty tables it lacks is the current encoding.
    if let Some(v @ (SNAP_VERSION_V1 | SNAP_VERSION_V2)) = version {
        let p = frame::read_single_record_file(bytes, SNAP_MAGIC, v, "snapshot")?;
        let mut full = p.to_vec();
        let extend = |full: &mut Vec<u8>| -> bincode::Result<()> {
            if v == SNAP_VERSION_V1 {
                bincode::serialize_into(&mut *full, &RequestTable::default())?;
            }
            bincode::serialize_into(&mut *full, &LockTable::default())
        };
        extend(&mut full).map_err(|e| invalid(format!("extend version-{v} snapshot: {e}")))?;
        return bincode::deserialize(&full)
            .map_err(|e| invalid(format!("version-{v} snapshot does not decode: {e}")));
    }
    let p = frame::read_single_record_file(bytes, SNAP_MAGIC, SNAP_VERSION, "snapshot")?;
    bincode::deserialize(p).map_err(|e| invalid(format!("snapshot does not decode: {e}")))
}

/// Decodes snapshot file bytes (either version) into the state they hold (for tests).
pub fn decode_snapshot_state(bytes: &[u8]) -> io::Result<MetaState> {
    decode_snapshot(bytes).map(|f| f.state)
}

fn rlock<T>(l: &RwLock<T>) -> io::Result<std::sync::RwLockReadGuard<'_, T>> {
    l.read()
        .map_err(|_| io::Error::other("state machine lock poisoned"))
}

fn wlock<T>(l: &RwLock<T>) -> io::Result<std::sync::RwLockWriteGuard<'_, T>> {
    l.write()
        .map_err(|_| io::Error::other("state machine lock poisoned"))
}

impl SmStore {
    /// Opens the store in `dir`, loading the latest snapshot if there is one.
    pub fn open(dir: &Path, identity: Arc<Identity>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SNAP_FILE);
        let (applied, current) = match std::fs::read(&path) {
            Ok(bytes) => {
                let f = decode_snapshot(&bytes)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                let applied = Applied {
                    state: f.state,
                    last_applied: f.meta.last_log_id,
                    membership: f.meta.last_membership.clone(),
                };
                let cur = StoredSnapshot {
                    meta: f.meta,
                    bytes: Arc::new(bytes),
                };
                (applied, Some(cur))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (
                Applied {
                    state: MetaState::default(),
                    last_applied: None,
                    membership: StoredMembership::default(),
                },
                None,
            ),
            Err(e) => return Err(e),
        };
        if let Some(id) = crate::raft_types::cluster_id_of(&applied.state) {
            identity.learn(id)?;
        }
        let idx = applied.last_applied.map(|l| l.index).unwrap_or(0);
        let (tx, _) = watch::channel(idx);
        Ok(SmStore {
            dir: dir.to_path_buf(),
            shared: Arc::new(RwLock::new(applied)),
            current: Arc::new(RwLock::new(current)),
            identity,
            applied_tx: Arc::new(tx),
            snap_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The applied state, for queries.
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// Watch of the last applied log index.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    fn learn_cluster_id(&self, state: &MetaState) -> io::Result<()> {
        match crate::raft_types::cluster_id_of(state) {
            Some(id) => self.identity.learn(id),
            None => Ok(()),
        }
    }

    fn build(&self) -> io::Result<StoredSnapshot> {
        // Serialize under the read lock: writers wait for the copy, never for the disk.
        let (bytes, meta) = {
            let g = rlock(&self.shared)?;
            let seq = self.snap_seq.fetch_add(1, Ordering::Relaxed);
            let meta = SnapshotMeta {
                last_log_id: g.last_applied,
                last_membership: g.membership.clone(),
                snapshot_id: match &g.last_applied {
                    Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
                    None => format!("0-0-{seq}"),
                },
            };
            // bincode needs an owned pair; serialize through a borrowed mirror of the file.
            #[derive(Serialize)]
            struct Ref<'a> {
                meta: &'a SnapshotMeta<NodeId, BasicNode>,
                state: &'a MetaState,
            }
            let payload = bincode::serialize(&Ref {
                meta: &meta,
                state: &g.state,
            })
            .map_err(|e| invalid(format!("encode snapshot: {e}")))?;
            (
                frame::single_record_file(SNAP_MAGIC, SNAP_VERSION, &payload),
                meta,
            )
        };
        frame::atomic_write(&self.dir.join(SNAP_FILE), &bytes)?;
        let snap = StoredSnapshot {
            meta,
            bytes: Arc::new(bytes),
        };
        *wlock(&self.current)? = Some(snap.clone());
        tracing::info!(id = %snap.meta.snapshot_id, bytes = snap.bytes.len(), "built snapshot");
        Ok(snap)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let s = self
            .build()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.bytes.as_ref().clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let g = rlock(&self.shared).map_err(|e| StorageIOError::read_state_machine(&e))?;
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut saw_init = false;
        let last = {
            let mut g = wlock(&self.shared).map_err(|e| StorageIOError::write_state_machine(&e))?;
            for e in entries {
                g.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => out.push(crate::raft_types::no_reply()),
                    EntryPayload::Normal(cmd) => {
                        saw_init |= crate::raft_types::is_init(&cmd);
                        out.push(apply_one(&mut g.state, &cmd));
                    }
                    EntryPayload::Membership(m) => {
                        g.membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(crate::raft_types::no_reply());
                    }
                }
            }
            if saw_init {
                self.learn_cluster_id(&g.state)
                    .map_err(|e| StorageIOError::write_state_machine(&e))?;
            }
            g.last_applied.map(|l| l.index).unwrap_or(0)
        };
        self.applied_tx.send_replace(last);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let sig = Some(meta.signature());
        let file =
            decode_snapshot(&bytes).map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        if file.meta.last_log_id != meta.last_log_id {
            let e = invalid(format!(
                "snapshot body is at {:?} but its meta says {:?}",
                file.meta.last_log_id, meta.last_log_id
            ));
            return Err(StorageIOError::read_snapshot(sig, &e).into());
        }
        frame::atomic_write(&self.dir.join(SNAP_FILE), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        self.learn_cluster_id(&file.state)
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        {
            let mut g = wlock(&self.shared).map_err(|e| StorageIOError::write_state_machine(&e))?;
            g.state = file.state;
            g.last_applied = meta.last_log_id;
            g.membership = meta.last_membership.clone();
        }
        *wlock(&self.current).map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))? =
            Some(StoredSnapshot {
                meta: meta.clone(),
                bytes: Arc::new(bytes),
            });
        self.applied_tx
            .send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        tracing::info!(id = %meta.snapshot_id, "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let cur = rlock(&self.current)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .clone();
        Ok(cur.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.bytes.as_ref().clone())),
        }))
    }
}

fn apply_one(state: &mut MetaState, cmd: &Command) -> Response {
    state.apply(cmd)
}
