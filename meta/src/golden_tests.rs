//! Pinned encodings. The raft log holds bincode of `Entry<TypeConfig>` (so of `Command`)
//! and snapshots hold bincode of the whole `MetaState`; bincode writes an enum variant as
//! its index and a struct as its fields in order, so reordering variants or fields, or
//! changing a field's type, silently changes what every existing log and snapshot means.
//! These tests decode files written by earlier versions (`meta/tests/golden/`) and
//! require today's values: a change that breaks them breaks every deployed cluster.
//!
//! The rule (docs/design/0008-encodings.md): a golden file is never rewritten. A new
//! `Command` variant goes last and gets a new golden file beside the old ones; a new
//! field of the state goes through a new snapshot version with a conversion from the
//! last (as `sm_store` does for version 1).
//!
//! To write a golden file that does not exist yet: `CIRRUS_BLESS_GOLDEN=1 cargo test -p
//! cirrus-meta golden`, then commit it. Existing files are never overwritten.

use crate::raft_types::TypeConfig;
use crate::state::{Command, MetaState, SetAttr, TimeSet};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cirrus_types::{
    ChainId, ChainVersion, ClientId, ClusterId, FileKind, HandleId, InodeId, LayoutSpec, LockKind,
    LockOwner, RequestId, ServerId,
};

const T0: i64 = 1_700_000_000_000_000_000;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// The committed bytes of golden file `name`; with `CIRRUS_BLESS_GOLDEN=1` a missing one
/// is written from `now` first (never an existing one).
fn pinned(name: &str, now: &[u8]) -> Vec<u8> {
    let p = golden(name);
    if !p.exists() && std::env::var_os("CIRRUS_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(p.parent().expect("golden dir")).expect("create golden dir");
        std::fs::write(&p, now).expect("write golden file");
    }
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "golden file {} ({e}): golden files are committed; a new one is written with \
             CIRRUS_BLESS_GOLDEN=1",
            p.display()
        )
    })
}

/// One of every `Command` variant as of encoding version 1, in declaration order.
fn every_command_v1() -> Vec<Command> {
    let ino = InodeId(42);
    vec![
        Command::Init {
            cluster_id: ClusterId(0xc1),
            replicas: 2,
            now_ns: T0,
        },
        Command::Create {
            parent: InodeId::ROOT,
            name: b"file".to_vec(),
            mode: 0o644,
            uid: 1000,
            gid: 100,
            exclusive: true,
            client: Some(ClientId(7)),
            spec: LayoutSpec {
                stripe_unit: 1 << 20,
                stripe_count: 4,
            },
            now_ns: T0 + 1,
        },
        Command::Mkdir {
            parent: InodeId::ROOT,
            name: b"dir".to_vec(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            now_ns: T0 + 2,
        },
        Command::Symlink {
            parent: InodeId::ROOT,
            name: b"sym".to_vec(),
            target: b"file".to_vec(),
            uid: 1,
            gid: 2,
            now_ns: T0 + 3,
        },
        Command::Link {
            ino,
            new_parent: InodeId(3),
            new_name: b"hard".to_vec(),
            now_ns: T0 + 4,
        },
        Command::Unlink {
            parent: InodeId::ROOT,
            name: b"gone".to_vec(),
            now_ns: T0 + 5,
        },
        Command::Rmdir {
            parent: InodeId::ROOT,
            name: b"old".to_vec(),
            now_ns: T0 + 6,
        },
        Command::Rename {
            parent: InodeId::ROOT,
            name: b"a".to_vec(),
            new_parent: InodeId(3),
            new_name: b"b".to_vec(),
            flags: 2,
            now_ns: T0 + 7,
        },
        Command::Setattr {
            ino,
            set: SetAttr {
                mode: Some(0o600),
                uid: None,
                gid: Some(5),
                size: Some(1 << 40),
                atime: Some(TimeSet::Now),
                mtime: Some(TimeSet::Ns(T0 - 1)),
            },
            now_ns: T0 + 8,
        },
        Command::SetXattr {
            ino,
            name: b"user.k".to_vec(),
            value: vec![0, 1, 2, 255],
            flags: 1,
            now_ns: T0 + 9,
        },
        Command::RemoveXattr {
            ino,
            name: b"user.k".to_vec(),
            now_ns: T0 + 10,
        },
        Command::Open {
            ino,
            client: ClientId(7),
            truncate: true,
            now_ns: T0 + 11,
        },
        Command::Release {
            handle: HandleId(9),
            now_ns: T0 + 12,
        },
        Command::ReleaseClient {
            client: ClientId(7),
            now_ns: T0 + 13,
        },
        Command::CommitWrite {
            ino,
            handle: Some(HandleId(9)),
            size: 4096,
            mtime_ns: T0 + 14,
            now_ns: T0 + 15,
        },
        Command::AckGarbage {
            inos: vec![InodeId(5), InodeId(6)],
        },
        Command::RegisterServer {
            uuid: "uuid-1".into(),
            address: "10.0.0.1:7101".into(),
            capacity: 1 << 40,
            free: 1 << 39,
            now_ns: T0 + 16,
        },
        Command::UpdateCapacity {
            server: ServerId(1),
            capacity: 1 << 40,
            free: 1 << 38,
        },
        Command::ServerDown {
            server: ServerId(2),
            now_ns: T0 + 17,
        },
        Command::ServerUp {
            server: ServerId(2),
            now_ns: T0 + 18,
        },
        Command::ServerCaughtUp {
            server: ServerId(2),
            chain: ChainId(3),
        },
        Command::ServerCaughtUpAt {
            server: ServerId(2),
            chain: ChainId(3),
            version: ChainVersion(11),
        },
        Command::Once {
            id: RequestId {
                client: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                seq: 17,
            },
            done_below: 15,
            cmd: Box::new(Command::Mkdir {
                parent: InodeId::ROOT,
                name: b"once".to_vec(),
                mode: 0o700,
                uid: 0,
                gid: 0,
                now_ns: T0 + 19,
            }),
        },
        Command::ReleaseMany {
            handles: vec![HandleId(10), HandleId(11), HandleId(12)],
            now_ns: T0 + 20,
        },
    ]
}

/// Version 2: version 1 and `Mknod` (with the special `FileKind`s it brought).
fn every_command_v2() -> Vec<Command> {
    let mut v = every_command_v1();
    for (i, kind) in [
        FileKind::Fifo,
        FileKind::Socket,
        FileKind::CharDevice { rdev: 0x0103 },
        FileKind::BlockDevice { rdev: 0x0801 },
    ]
    .into_iter()
    .enumerate()
    {
        v.push(Command::Mknod {
            parent: InodeId(3),
            name: format!("n{i}").into_bytes(),
            kind,
            mode: 0o640,
            uid: 5,
            gid: 6,
            now_ns: T0 + 21 + i as i64,
        });
    }
    v
}

/// Version 3: version 2 and `SetLock` (unlock, shared, exclusive).
fn every_command_v3() -> Vec<Command> {
    let mut v = every_command_v2();
    for (i, kind) in [None, Some(LockKind::Read), Some(LockKind::Write)]
        .into_iter()
        .enumerate()
    {
        v.push(Command::SetLock {
            ino: InodeId(9),
            owner: LockOwner {
                client: ClientId(7),
                owner: 0xfeed_0000 + i as u64,
            },
            kind,
            start: 10 * i as u64,
            end: u64::MAX - i as u64,
            pid: 4242,
        });
    }
    v
}

/// Version 4: version 3 and `Umasked` (a create under the caller's umask).
fn every_command_v4() -> Vec<Command> {
    let mut v = every_command_v3();
    v.push(Command::Umasked {
        umask: 0o022,
        cmd: Box::new(Command::Mkdir {
            parent: InodeId::ROOT,
            name: b"masked".to_vec(),
            mode: 0o777,
            uid: 1,
            gid: 2,
            now_ns: T0 + 30,
        }),
    });
    v
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn membership() -> Membership<u64, BasicNode> {
    let voters: BTreeSet<u64> = [1, 2, 3].into();
    let nodes: BTreeMap<u64, BasicNode> = voters
        .iter()
        .map(|v| (*v, BasicNode::new(format!("10.0.0.{v}:7001"))))
        .collect();
    Membership::new(vec![voters], nodes)
}

/// Raft log entries as the log store writes them: a blank, a membership, and every
/// command.
fn log_entries_v1() -> Vec<Entry<TypeConfig>> {
    let mut v = vec![
        Entry {
            log_id: log_id(1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    for (i, c) in every_command_v1().into_iter().enumerate() {
        v.push(Entry {
            log_id: log_id(3 + i as u64),
            payload: EntryPayload::Normal(c),
        });
    }
    v
}

/// A history that leaves every part of the state non-empty: servers and chains, files,
/// directories, links, xattrs, open handles, garbage, remembered request results.
fn history() -> Vec<Command> {
    let mut h = vec![Command::Init {
        cluster_id: ClusterId(0xc1),
        replicas: 2,
        now_ns: T0,
    }];
    for i in 0..3 {
        h.push(Command::RegisterServer {
            uuid: format!("uuid-{i}"),
            address: format!("10.0.1.{i}:7101"),
            capacity: 1 << 40,
            free: 1 << 39,
            now_ns: T0 + 1,
        });
    }
    let mkdir = |name: &[u8], now| Command::Mkdir {
        parent: InodeId::ROOT,
        name: name.to_vec(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        now_ns: now,
    };
    let create = |parent, name: &[u8], client, now| Command::Create {
        parent,
        name: name.to_vec(),
        mode: 0o644,
        uid: 1000,
        gid: 100,
        exclusive: true,
        client,
        spec: LayoutSpec::default(),
        now_ns: now,
    };
    h.push(mkdir(b"d", T0 + 2));
    // Inodes: root 1, d 2, then the files in order.
    h.push(create(InodeId(2), b"a", Some(ClientId(7)), T0 + 3));
    h.push(create(InodeId::ROOT, b"b", Some(ClientId(8)), T0 + 4));
    h.push(create(InodeId::ROOT, b"c", None, T0 + 5));
    h.push(Command::SetXattr {
        ino: InodeId(3),
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        flags: 0,
        now_ns: T0 + 6,
    });
    h.push(Command::CommitWrite {
        ino: InodeId(3),
        handle: None,
        size: 1 << 30,
        mtime_ns: T0 + 7,
        now_ns: T0 + 7,
    });
    h.push(Command::Link {
        ino: InodeId(5),
        new_parent: InodeId(2),
        new_name: b"c2".to_vec(),
        now_ns: T0 + 8,
    });
    h.push(Command::Symlink {
        parent: InodeId(2),
        name: b"s".to_vec(),
        target: b"../b".to_vec(),
        uid: 0,
        gid: 0,
        now_ns: T0 + 9,
    });
    // b is unlinked while client 8 holds it open: it stays until released.
    h.push(Command::Unlink {
        parent: InodeId::ROOT,
        name: b"b".to_vec(),
        now_ns: T0 + 10,
    });
    h.push(Command::Rename {
        parent: InodeId::ROOT,
        name: b"c".to_vec(),
        new_parent: InodeId(2),
        new_name: b"c3".to_vec(),
        flags: 0,
        now_ns: T0 + 11,
    });
    h.push(Command::Once {
        id: RequestId { client: 99, seq: 1 },
        done_below: 0,
        cmd: Box::new(mkdir(b"e", T0 + 12)),
    });
    h.push(Command::ServerDown {
        server: ServerId(2),
        now_ns: T0 + 13,
    });
    h
}

/// `history` and then locks held on the files it left open (version 3 of the state).
fn history_v3() -> Vec<Command> {
    let mut h = history();
    let lock = |ino, client, owner, kind, start, end| Command::SetLock {
        ino: InodeId(ino),
        owner: LockOwner {
            client: ClientId(client),
            owner,
        },
        kind: Some(kind),
        start,
        end,
        pid: 100 + owner as u32,
    };
    h.push(lock(3, 7, 1, LockKind::Write, 0, 99));
    h.push(lock(3, 8, 2, LockKind::Read, 100, i64::MAX as u64));
    h.push(lock(4, 8, 2, LockKind::Write, 0, 0));
    h
}

fn state_after(history: Vec<Command>) -> MetaState {
    let mut s = MetaState::new();
    for c in history {
        s.apply(&c)
            .unwrap_or_else(|e| panic!("history entry {c:?}: {e}"));
    }
    s
}

#[test]
fn commands_written_by_version_1_decode_to_the_same_values_and_encode_the_same() {
    let now = bincode::serialize(&every_command_v1()).expect("encode");
    let old = pinned("commands-v1.bin", &now);
    let decoded: Vec<Command> = bincode::deserialize(&old).expect("golden commands decode");
    assert_eq!(decoded, every_command_v1());
    assert!(
        now == old,
        "today's encoding of the version-1 commands differs from the committed one"
    );
}

#[test]
fn commands_written_by_version_2_decode_to_the_same_values_and_encode_the_same() {
    let now = bincode::serialize(&every_command_v2()).expect("encode");
    let old = pinned("commands-v2.bin", &now);
    let decoded: Vec<Command> = bincode::deserialize(&old).expect("golden commands decode");
    assert_eq!(decoded, every_command_v2());
    assert!(
        now == old,
        "today's encoding of the version-2 commands differs from the committed one"
    );
}

#[test]
fn commands_written_by_version_4_decode_to_the_same_values_and_encode_the_same() {
    let now = bincode::serialize(&every_command_v4()).expect("encode");
    let old = pinned("commands-v4.bin", &now);
    let decoded: Vec<Command> = bincode::deserialize(&old).expect("golden commands decode");
    assert_eq!(decoded, every_command_v4());
    assert!(
        now == old,
        "today's encoding of the version-4 commands differs from the committed one"
    );
}

#[test]
fn commands_written_by_version_3_decode_to_the_same_values_and_encode_the_same() {
    let now = bincode::serialize(&every_command_v3()).expect("encode");
    let old = pinned("commands-v3.bin", &now);
    let decoded: Vec<Command> = bincode::deserialize(&old).expect("golden commands decode");
    assert_eq!(decoded, every_command_v3());
    assert!(
        now == old,
        "today's encoding of the version-3 commands differs from the committed one"
    );
}

#[test]
fn raft_log_entries_written_by_version_1_decode_to_the_same_entries() {
    let now = bincode::serialize(&log_entries_v1()).expect("encode");
    let old = pinned("log-entries-v1.bin", &now);
    let decoded: Vec<Entry<TypeConfig>> =
        bincode::deserialize(&old).expect("golden log entries decode");
    assert_eq!(decoded, log_entries_v1());
    assert!(
        now == old,
        "today's encoding of log entries differs from the committed one"
    );
}

#[test]
fn a_snapshot_written_by_version_2_decodes_to_the_state_its_history_builds() {
    let state = state_after(history());
    let meta = SnapshotMeta::<u64, BasicNode> {
        last_log_id: Some(log_id(history().len() as u64)),
        last_membership: StoredMembership::new(Some(log_id(1)), membership()),
        snapshot_id: "3-16-0".into(),
    };
    let payload = bincode::serialize(&(&meta, &state)).expect("encode snapshot");
    let now = crate::frame::single_record_file(
        crate::sm_store::SNAP_MAGIC,
        crate::sm_store::SNAP_VERSION,
        &payload,
    );
    let old = pinned("snapshot-v2.bin", &now);
    let decoded = crate::sm_store::decode_snapshot_state(&old).expect("golden snapshot decodes");
    assert_eq!(decoded.digest(), state.digest());
    assert!(
        decoded == state,
        "the golden snapshot's state differs from its history's"
    );
}

#[test]
fn a_snapshot_written_by_version_3_decodes_to_the_state_its_history_builds() {
    let state = state_after(history_v3());
    assert_eq!(
        state.locks_on(InodeId(3)).len(),
        2,
        "the history holds locks"
    );
    let meta = SnapshotMeta::<u64, BasicNode> {
        last_log_id: Some(log_id(history_v3().len() as u64)),
        last_membership: StoredMembership::new(Some(log_id(1)), membership()),
        snapshot_id: "3-19-0".into(),
    };
    let payload = bincode::serialize(&(&meta, &state)).expect("encode snapshot");
    let now = crate::frame::single_record_file(
        crate::sm_store::SNAP_MAGIC,
        crate::sm_store::SNAP_VERSION,
        &payload,
    );
    let old = pinned("snapshot-v3.bin", &now);
    let decoded = crate::sm_store::decode_snapshot_state(&old).expect("golden snapshot decodes");
    assert!(
        decoded == state,
        "the golden snapshot's state differs from its history's"
    );
    assert!(
        now == old,
        "today's snapshot encoding differs from the committed one"
    );
}
