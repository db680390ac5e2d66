//! The durable raft log (`RaftLogStorage`): one append-only file `raft-log` of framed
//! records (entry, truncate, purge, committed) plus a `raft-vote` file replaced
//! atomically. Every append is fdatasynced before openraft's callback fires, so an entry
//! counts toward a quorum only once it is on disk. The fdatasync runs on a flusher thread,
//! not in `append`: openraft hands over one client write per `append` call, so an inline
//! sync would cost one fdatasync per entry and stall the raft core (and replication to
//! the followers) behind the disk. The flusher takes every append queued while it synced,
//! syncs once for all of them (group commit) and then fires their callbacks in order. Recovery replays the records into an
//! in-memory index and stops cleanly at a torn tail (a crash mid-append), cutting it off.
//! When purged records make up most of the file, it is rewritten (temp, fsync, rename).
//!
//! Byte layouts: docs/design/0001-meta-raft-storage.md.

use crate::frame;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError,
    StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

pub const LOG_MAGIC: &[u8; 8] = b"CIRRUSLG";
pub const LOG_VERSION: u32 = 1;
pub const VOTE_MAGIC: &[u8; 8] = b"CIRRUSVT";
pub const VOTE_VERSION: u32 = 1;

const LOG_FILE: &str = "raft-log";
const VOTE_FILE: &str = "raft-vote";

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_COMMITTED: u8 = 4;

/// Rewrite the log file once it is at least this big and mostly dead records.
const COMPACT_MIN_BYTES: u64 = 8 << 20;

type NodeIdOf<C> = <C as RaftTypeConfig>::NodeId;

struct Inner<C: RaftTypeConfig> {
    dir: PathBuf,
    file: File,
    /// Current length of the log file (where the next record goes).
    len: u64,
    /// Bytes of live entry records; the rest of `len` is dead (purged, truncated, meta).
    live_bytes: u64,
    entries: BTreeMap<u64, (C::Entry, u64)>,
    last_purged: Option<LogId<NodeIdOf<C>>>,
    committed: Option<LogId<NodeIdOf<C>>>,
    vote: Option<Vote<NodeIdOf<C>>>,
}

/// The log store handed to openraft; clones share one file, index and flusher.
pub struct LogStore<C: RaftTypeConfig> {
    inner: Arc<Mutex<Inner<C>>>,
    /// Callbacks of written-but-not-yet-synced appends, in append order. The flusher
    /// thread exits when the last clone (and so the last sender) is dropped.
    flush_tx: mpsc::Sender<LogFlushed<C>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            inner: self.inner.clone(),
            flush_tx: self.flush_tx.clone(),
        }
    }
}

/// Group commit: waits for queued appends, fdatasyncs the log file once for everything
/// queued so far, then acknowledges each append in order.
fn flusher<C: RaftTypeConfig>(inner: Arc<Mutex<Inner<C>>>, rx: mpsc::Receiver<LogFlushed<C>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // Sync a dup of the current file without holding the lock, so appends go on
        // while the disk works. Everything queued was written before it was queued, into
        // this file or into an older one that compaction copied here (and synced).
        let res = lock(&inner)
            .and_then(|g| g.file.try_clone())
            .and_then(|f| f.sync_data());
        tracing::trace!(entries = batch.len(), "raft log group commit");
        for cb in batch {
            cb.log_io_completed(match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn encode<T: Serialize>(kind: u8, v: &T) -> io::Result<Vec<u8>> {
    let mut p = vec![kind];
    bincode::serialize_into(&mut p, v).map_err(|e| invalid(format!("encode record: {e}")))?;
    Ok(p)
}

fn decode<T: DeserializeOwned>(b: &[u8], at: u64) -> io::Result<T> {
    bincode::deserialize(b).map_err(|e| {
        invalid(format!(
            "raft log record at offset {at} does not decode: {e}"
        ))
    })
}

fn lock<C: RaftTypeConfig>(m: &Mutex<Inner<C>>) -> io::Result<std::sync::MutexGuard<'_, Inner<C>>> {
    m.lock()
        .map_err(|_| io::Error::other("raft log lock poisoned by an earlier panic"))
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
{
    /// Opens (or creates) the log in `dir`, replaying it. A torn tail record is cut off
    /// and reported in the log; a wrong magic or version is an error.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut inner = Inner::<C> {
            dir: dir.to_path_buf(),
            file: OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?,
            len: 0,
            live_bytes: 0,
            entries: BTreeMap::new(),
            last_purged: None,
            committed: None,
            vote: None,
        };
        let buf = std::fs::read(&path)?;
        if buf.is_empty() {
            inner
                .file
                .write_all(&frame::header(LOG_MAGIC, LOG_VERSION))?;
            inner.file.sync_all()?;
            frame::fsync_dir(dir)?;
            inner.len = frame::HEADER_LEN as u64;
        } else {
            frame::check_header(&buf, LOG_MAGIC, LOG_VERSION, "raft log")?;
            let mut pos = frame::HEADER_LEN;
            while let Some((payload, next)) = frame::read_record(&buf, pos) {
                inner.replay(payload, pos as u64, (next - pos) as u64)?;
                pos = next;
            }
            if pos < buf.len() {
                // A crash during an append leaves a partial record. Its entries were never
                // acknowledged (the callback fires after fdatasync), so dropping it is safe.
                tracing::warn!(
                    file = %path.display(),
                    offset = pos,
                    dropped_bytes = buf.len() - pos,
                    "raft log ends in a torn record; cutting it off"
                );
                inner.file.set_len(pos as u64)?;
                inner.file.sync_all()?;
            }
            inner.len = pos as u64;
        }
        inner.vote = read_vote_file::<C>(dir)?;
        let inner = Arc::new(Mutex::new(inner));
        let (flush_tx, rx) = mpsc::channel();
        let fi = inner.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(fi, rx))?;
        Ok(LogStore { inner, flush_tx })
    }
}

fn read_vote_file<C: RaftTypeConfig>(dir: &Path) -> io::Result<Option<Vote<NodeIdOf<C>>>> {
    let path = dir.join(VOTE_FILE);
    match std::fs::read(&path) {
        Ok(buf) => {
            let p = frame::read_single_record_file(&buf, VOTE_MAGIC, VOTE_VERSION, "raft vote")?;
            Ok(Some(decode(p, 0)?))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl<C> Inner<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
{
    fn replay(&mut self, payload: &[u8], at: u64, size: u64) -> io::Result<()> {
        let (kind, body) = payload
            .split_first()
            .ok_or_else(|| invalid(format!("empty raft log record at offset {at}")))?;
        match *kind {
            KIND_ENTRY => {
                let e: C::Entry = decode(body, at)?;
                let idx = e.get_log_id().index;
                // Appends after a truncate overwrite; keep the byte count honest.
                if let Some((_, old)) = self.entries.insert(idx, (e, size)) {
                    self.live_bytes -= old;
                }
                self.live_bytes += size;
            }
            KIND_TRUNCATE => {
                let since: u64 = decode(body, at)?;
                self.drop_since(since);
            }
            KIND_PURGE => {
                let upto: LogId<NodeIdOf<C>> = decode(body, at)?;
                self.drop_upto(&upto);
            }
            KIND_COMMITTED => {
                self.committed = decode(body, at)?;
            }
            k => {
                return Err(invalid(format!(
                    "unknown raft log record kind {k} at offset {at}"
                )))
            }
        }
        Ok(())
    }

    fn drop_since(&mut self, since: u64) {
        for (_, (_, size)) in self.entries.split_off(&since) {
            self.live_bytes -= size;
        }
    }

    fn drop_upto(&mut self, upto: &LogId<NodeIdOf<C>>) {
        let keep = self.entries.split_off(&(upto.index + 1));
        for (_, (_, size)) in std::mem::replace(&mut self.entries, keep) {
            self.live_bytes -= size;
        }
        if self
            .last_purged
            .as_ref()
            .is_none_or(|p| p.index < upto.index)
        {
            self.last_purged = Some(upto.clone());
        }
    }

    /// Appends framed records and, if `sync`, fdatasyncs them.
    fn write_records(&mut self, payloads: &[Vec<u8>], sync: bool) -> io::Result<Vec<u64>> {
        let mut buf = Vec::new();
        let mut sizes = Vec::with_capacity(payloads.len());
        for p in payloads {
            let before = buf.len();
            frame::push_record(&mut buf, p);
            sizes.push((buf.len() - before) as u64);
        }
        if let Err(e) = self.file.write_all(&buf) {
            // A partial write would otherwise sit in front of the next record: cut it off.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        if sync {
            self.file.sync_data()?;
        }
        self.len += buf.len() as u64;
        Ok(sizes)
    }

    /// Rewrites the file with only the live records once it is mostly dead, so purges
    /// reclaim disk space.
    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.len < COMPACT_MIN_BYTES || self.live_bytes * 2 > self.len {
            return Ok(());
        }
        let mut buf = frame::header(LOG_MAGIC, LOG_VERSION).to_vec();
        if let Some(p) = &self.last_purged {
            frame::push_record(&mut buf, &encode(KIND_PURGE, p)?);
        }
        if self.committed.is_some() {
            frame::push_record(&mut buf, &encode(KIND_COMMITTED, &self.committed)?);
        }
        let mut live = 0;
        for (e, size) in self.entries.values_mut() {
            let before = buf.len();
            frame::push_record(&mut buf, &encode(KIND_ENTRY, e)?);
            *size = (buf.len() - before) as u64;
            live += *size;
        }
        let path = self.dir.join(LOG_FILE);
        frame::atomic_write(&path, &buf)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        tracing::info!(
            from = self.len,
            to = buf.len(),
            "compacted the raft log file"
        );
        self.len = buf.len() as u64;
        self.live_bytes = live;
        Ok(())
    }

    fn range<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<C::Entry> {
        self.entries
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect()
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let g = lock(&self.inner).map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(g.range(range))
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let g = lock(&self.inner).map_err(|e| StorageIOError::read_logs(&e))?;
        let last = g
            .entries
            .values()
            .next_back()
            .map(|(e, _)| e.get_log_id().clone())
            .or_else(|| g.last_purged.clone());
        Ok(LogState {
            last_purged_log_id: g.last_purged.clone(),
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut g = lock(&self.inner).map_err(|e| StorageIOError::write_vote(&e))?;
        let payload = bincode::serialize(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let bytes = frame::single_record_file(VOTE_MAGIC, VOTE_VERSION, &payload);
        frame::atomic_write(&g.dir.join(VOTE_FILE), &bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        g.vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        let g = lock(&self.inner).map_err(|e| StorageIOError::read_vote(&e))?;
        Ok(g.vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        // Not fsynced: committed entries are durable on a quorum already; this record only
        // lets a restarted node apply them before it hears from a leader.
        let mut g = lock(&self.inner).map_err(|e| StorageIOError::write(&e))?;
        let p = encode(KIND_COMMITTED, &committed).map_err(|e| StorageIOError::write(&e))?;
        g.write_records(&[p], false)
            .map_err(|e| StorageIOError::write(&e))?;
        g.committed = committed;
        Ok(())
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        let g = lock(&self.inner).map_err(|e| StorageIOError::read(&e))?;
        Ok(g.committed.clone())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let result = (|| -> io::Result<()> {
            let mut g = lock(&self.inner)?;
            let payloads = entries
                .iter()
                .map(|e| encode(KIND_ENTRY, e))
                .collect::<io::Result<Vec<_>>>()?;
            // Written to the page cache here; the flusher makes it durable.
            let sizes = g.write_records(&payloads, false)?;
            for (e, size) in entries.into_iter().zip(sizes) {
                let idx = e.get_log_id().index;
                if let Some((_, old)) = g.entries.insert(idx, (e, size)) {
                    g.live_bytes -= old;
                }
                g.live_bytes += size;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if let Err(mpsc::SendError(cb)) = self.flush_tx.send(callback) {
                    // The flusher is gone (it cannot be while a clone lives): sync here.
                    let r = lock(&self.inner).and_then(|g| g.file.sync_data());
                    cb.log_io_completed(r);
                }
                Ok(())
            }
            Err(e) => {
                let se = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                Err(se.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        // Durable before returning: a truncated entry must never come back after a crash
        // while a newer entry at the same index was acknowledged.
        let mut g = lock(&self.inner).map_err(|e| StorageIOError::write_logs(&e))?;
        let p = encode(KIND_TRUNCATE, &log_id.index).map_err(|e| StorageIOError::write_logs(&e))?;
        g.write_records(&[p], true)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        g.drop_since(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut g = lock(&self.inner).map_err(|e| StorageIOError::write_logs(&e))?;
        let p = encode(KIND_PURGE, &log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        // Losing a purge record in a crash only brings back entries the snapshot covers.
        g.write_records(&[p], false)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        g.drop_upto(&log_id);
        g.maybe_compact()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
