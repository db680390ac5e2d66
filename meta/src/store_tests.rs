//! Tests of the durable stores: openraft's own storage suite, and crash recovery of the
//! log file (torn tail, truncate and purge surviving a reopen).

use crate::identity::Identity;
use crate::log_store::LogStore;
use crate::raft_types::{Command, NodeId, TypeConfig};
use crate::sm_store::SmStore;
use cirrus_types::ClusterId;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};
use std::sync::Arc;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore<TypeConfig>, SmStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<TypeConfig>, SmStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let log = LogStore::open(dir.path()).expect("open log store");
        let id = Arc::new(Identity::open(dir.path()).expect("open identity"));
        let sm = SmStore::open(dir.path(), id).expect("open sm store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Init {
            cluster_id: ClusterId(7),
            replicas: 2,
            now_ns: index as i64,
        }),
    }
}

/// Appends through the real callback path and waits for the flush notification.
async fn append(log: &mut LogStore<TypeConfig>, entries: Vec<Entry<TypeConfig>>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.unwrap();
}

async fn indexes(log: &mut LogStore<TypeConfig>) -> Vec<u64> {
    log.try_get_log_entries(0..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test]
async fn reopened_log_keeps_entries_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        append(&mut log, (1..=5).map(|i| entry(1, i)).collect()).await;
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
    }
    // A crash in the middle of an append: half a record at the end of the file.
    let path = dir.path().join("raft-log");
    let len_before = std::fs::metadata(&path).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    }
    let mut log = LogStore::<TypeConfig>::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len_before);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    // The log stays appendable after the cut.
    append(&mut log, vec![entry(2, 6)]).await;
    drop(log);
    let mut log = LogStore::<TypeConfig>::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn truncate_and_purge_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
        log.truncate(log_id(1, 8)).await.unwrap();
        append(&mut log, vec![entry(2, 8)]).await;
        log.purge(log_id(1, 3)).await.unwrap();
    }
    let mut log = LogStore::<TypeConfig>::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut log).await, vec![4, 5, 6, 7, 8]);
    let e = log.try_get_log_entries(8..9).await.unwrap();
    assert_eq!(
        e[0].log_id,
        log_id(2, 8),
        "the entry appended after truncate wins"
    );
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(st.last_log_id, Some(log_id(2, 8)));
}

#[tokio::test]
async fn a_corrupt_header_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("raft-log"), b"NOTALOG!xxxxxxxxxxxxxxxx").unwrap();
    let err = LogStore::<TypeConfig>::open(dir.path())
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("magic"), "{err}");
}

#[tokio::test]
async fn snapshot_restores_state_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let digest;
    {
        let id = Arc::new(Identity::open(dir.path()).unwrap());
        let mut sm = SmStore::open(dir.path(), id).unwrap();
        sm.apply(vec![entry(1, 1)]).await.unwrap();
        digest = sm.shared().read().unwrap().state.digest();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1)));
    }
    let id = Arc::new(Identity::open(dir.path()).unwrap());
    assert_eq!(
        id.get(),
        Some(ClusterId(7)),
        "cluster id persisted at apply"
    );
    let mut sm = SmStore::open(dir.path(), id).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1)));
    assert_eq!(sm.shared().read().unwrap().state.digest(), digest);
    // A corrupted snapshot file is refused at open, never half-loaded.
    let p = dir.path().join("snapshot");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 3] ^= 0xff;
    std::fs::write(&p, b).unwrap();
    let id = Arc::new(Identity::open(dir.path()).unwrap());
    assert!(SmStore::open(dir.path(), id).is_err());
}

fn mkdir_once(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Command::Once {
            id: cirrus_types::RequestId {
                client: 0xabc,
                seq: 1,
            },
            done_below: 1,
            cmd: Box::new(Command::Mkdir {
                parent: cirrus_types::InodeId::ROOT,
                name: b"d".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
                now_ns: 10,
            }),
        }),
    }
}

#[tokio::test]
async fn a_retried_request_after_a_snapshot_reopen_answers_the_remembered_result() {
    let dir = tempfile::tempdir().unwrap();
    let first;
    {
        let id = Arc::new(Identity::open(dir.path()).unwrap());
        let mut sm = SmStore::open(dir.path(), id).unwrap();
        let r = sm.apply(vec![entry(1, 1), mkdir_once(2)]).await.unwrap();
        first = r[1].clone();
        assert!(first.is_ok(), "{first:?}");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    let id = Arc::new(Identity::open(dir.path()).unwrap());
    let mut sm = SmStore::open(dir.path(), id).unwrap();
    let again = sm.apply(vec![mkdir_once(3)]).await.unwrap();
    assert_eq!(again[0], first, "the retry after restart is not EEXIST");
}

#[tokio::test]
async fn version_1_and_2_snapshots_still_open_with_empty_request_and_lock_tables() {
    // The payload of today's snapshot ends with the request table and then the lock
    // table, each two empty maps here (two zero u64 lengths, 16 bytes): without the last
    // 16 bytes it is a version-2 payload, without the last 32 a version-1 one.
    for (version, cut) in [
        (crate::sm_store::SNAP_VERSION_V2, 16),
        (crate::sm_store::SNAP_VERSION_V1, 32),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let digest;
        {
            let id = Arc::new(Identity::open(dir.path()).unwrap());
            let mut sm = SmStore::open(dir.path(), id).unwrap();
            sm.apply(vec![entry(1, 1)]).await.unwrap();
            digest = sm.shared().read().unwrap().state.digest();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        }
        let p = dir.path().join("snapshot");
        let now = std::fs::read(&p).unwrap();
        let payload = crate::frame::read_single_record_file(
            &now,
            crate::sm_store::SNAP_MAGIC,
            crate::sm_store::SNAP_VERSION,
            "snapshot",
        )
        .unwrap();
        assert_eq!(&payload[payload.len() - 32..], &[0u8; 32]);
        let old = crate::frame::single_record_file(
            crate::sm_store::SNAP_MAGIC,
            version,
            &payload[..payload.len() - cut],
        );
        std::fs::write(&p, old).unwrap();
        let id = Arc::new(Identity::open(dir.path()).unwrap());
        let mut sm = SmStore::open(dir.path(), id).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 1)), "version {version}");
        assert_eq!(
            sm.shared().read().unwrap().state.digest(),
            digest,
            "version {version}"
        );
    }
}
