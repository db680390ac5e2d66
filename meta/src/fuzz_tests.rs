//! Decoder harnesses of the meta node (issue 22, "hostile input"), on the generators of
//! `cirrus_fuzz`:
//!
//! * raft payloads (`RaftBytes.payload`, bincode of openraft's requests) from hostile
//!   bytes decode or fail, never panic: noise, and valid append-entries, vote and
//!   snapshot requests cut short or with bytes overwritten;
//! * every mutating door: a request decoded from a field soup goes through its
//!   `Proposal::command` (the validation the leader runs before proposing) and, when it
//!   becomes a command, through `MetaState::apply` on a small tree. A refused command
//!   must change nothing (the state's digest is unchanged), and two replicas applying it
//!   must agree.

use crate::door::Proposal;
use crate::network::decode;
use crate::raft_types::{NodeId, TypeConfig};
use crate::state::{Command, MetaState, Reply};
use cirrus_fuzz::{field_soup, hostile_bytes};
use cirrus_proto::pb;
use cirrus_types::{ClusterId, InodeId};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proptest::prelude::*;
use prost::Message;

const T0: i64 = 1_700_000_000_000_000_000;

fn valid_raft_payloads() -> Vec<Vec<u8>> {
    let vote = openraft::Vote::new(3, 1);
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 7);
    let entries = vec![
        openraft::Entry::<TypeConfig> {
            log_id,
            payload: openraft::EntryPayload::Normal(Command::Mkdir {
                parent: InodeId(1),
                name: b"d".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
                now_ns: T0,
            }),
        },
        openraft::Entry::<TypeConfig> {
            log_id,
            payload: openraft::EntryPayload::Blank,
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id),
        entries,
        leader_commit: Some(log_id),
    };
    let snap = InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: openraft::SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: Default::default(),
            snapshot_id: "s-1".into(),
        },
        offset: 0,
        data: vec![1, 2, 3, 4],
        done: true,
    };
    let v: VoteRequest<NodeId> = VoteRequest::new(vote, Some(log_id));
    vec![
        bincode::serialize(&append).unwrap(),
        bincode::serialize(&snap).unwrap(),
        bincode::serialize(&v).unwrap(),
    ]
}

/// Init, three data servers, /d and /d/f.
fn tree() -> MetaState {
    let mut s = MetaState::new();
    s.apply(&Command::Init {
        cluster_id: ClusterId(0xc1),
        replicas: 2,
        now_ns: T0,
    })
    .expect("init");
    for i in 0..3 {
        s.apply(&Command::RegisterServer {
            uuid: format!("u{i}"),
            address: format!("h{i}:7101"),
            capacity: 1 << 40,
            free: 1 << 39,
            now_ns: T0,
        })
        .expect("register");
    }
    let d = match s.apply(&Command::Mkdir {
        parent: InodeId(1),
        name: b"d".to_vec(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        now_ns: T0,
    }) {
        Ok(Reply::Attr(a)) => a.ino,
        other => panic!("mkdir: {other:?}"),
    };
    let f = pb::CreateRequest {
        parent: d.0,
        name: b"f".to_vec(),
        mode: 0o644,
        stripe_unit: 1 << 20,
        stripe_count: 1,
        ..Default::default()
    };
    s.apply(&f.command(T0).expect("create command"))
        .expect("create");
    s
}

/// Decodes `bytes` as door request `T`, proposes and applies it on `base`.
fn through_door<T: Message + Default + Proposal>(
    base: &MetaState,
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let Ok(req) = T::decode(bytes) else {
        return Ok(());
    };
    let Ok(cmd) = req.command(T0 + 1) else {
        return Ok(());
    };
    let (mut a, mut b) = (base.clone(), base.clone());
    let before = a.digest();
    let ra = a.apply(&cmd);
    let rb = b.apply(&cmd);
    prop_assert_eq!(&ra, &rb, "two replicas disagree on {:?}", cmd);
    prop_assert_eq!(a.digest(), b.digest());
    if ra.is_err() {
        prop_assert_eq!(
            a.digest(),
            before,
            "refused {:?} ({:?}) but changed the state",
            cmd,
            ra
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cirrus_fuzz::cases(1000)))]

    #[test]
    fn fuzz_raft_payloads_decode_or_fail_without_panic(bytes in hostile_bytes(valid_raft_payloads())) {
        let _ = decode::<AppendEntriesRequest<TypeConfig>>(&bytes);
        let _ = decode::<VoteRequest<NodeId>>(&bytes);
        let _ = decode::<InstallSnapshotRequest<TypeConfig>>(&bytes);
        let _ = decode::<Command>(&bytes);
    }

    #[test]
    fn fuzz_door_requests_are_refused_without_change_or_applied_alike(bytes in field_soup()) {
        let base = tree();
        through_door::<pb::SetattrRequest>(&base, &bytes)?;
        through_door::<pb::CreateRequest>(&base, &bytes)?;
        through_door::<pb::MkdirRequest>(&base, &bytes)?;
        through_door::<pb::MknodRequest>(&base, &bytes)?;
        through_door::<pb::SymlinkRequest>(&base, &bytes)?;
        through_door::<pb::LinkRequest>(&base, &bytes)?;
        through_door::<pb::UnlinkRequest>(&base, &bytes)?;
        through_door::<pb::RmdirRequest>(&base, &bytes)?;
        through_door::<pb::RenameRequest>(&base, &bytes)?;
        through_door::<pb::SetXattrRequest>(&base, &bytes)?;
        through_door::<pb::RemoveXattrRequest>(&base, &bytes)?;
        through_door::<pb::OpenRequest>(&base, &bytes)?;
        through_door::<pb::ReleaseRequest>(&base, &bytes)?;
        through_door::<pb::CommitWriteRequest>(&base, &bytes)?;
    }
}

/// The door harness is not vacuous: over a fixed run of soups, some requests become
/// commands that apply, and some become commands that apply refuses.
#[test]
fn fuzz_soups_reach_apply_both_ways() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let base = tree();
    let (mut applied, mut refused, mut invalid) = (0, 0, 0);
    for _ in 0..3000 {
        let bytes = field_soup().new_tree(&mut runner).unwrap().current();
        macro_rules! count {
            ($($t:ty),*) => {$(
                if let Ok(req) = <$t>::decode(bytes.as_slice()) {
                    match req.command(T0 + 1) {
                        Err(_) => invalid += 1,
                        Ok(cmd) => match base.clone().apply(&cmd) {
                            Ok(_) => applied += 1,
                            Err(_) => refused += 1,
                        },
                    }
                }
            )*};
        }
        count!(
            pb::SetattrRequest,
            pb::CreateRequest,
            pb::MkdirRequest,
            pb::MknodRequest,
            pb::SymlinkRequest,
            pb::LinkRequest,
            pb::UnlinkRequest,
            pb::RmdirRequest,
            pb::RenameRequest,
            pb::SetXattrRequest,
            pb::RemoveXattrRequest,
            pb::OpenRequest,
            pb::ReleaseRequest,
            pb::CommitWriteRequest
        );
    }
    eprintln!("3000 soups x 14 doors: {invalid} refused at the door, {refused} refused by apply, {applied} applied");
    assert!(
        applied >= 100 && refused >= 100 && invalid >= 100,
        "{invalid} / {refused} / {applied}"
    );
}
