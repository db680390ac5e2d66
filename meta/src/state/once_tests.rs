//! Unit tests of exactly-once mutations (`Command::Once` and the request table): a
//! repeated request answers the first response and changes nothing, late duplicates are
//! refused, bounds and idle expiry act identically on every replica, and the table
//! survives a snapshot round trip.

use super::requests::{CLIENT_IDLE_NS, MAX_CLIENTS, MAX_RESULTS_PER_CLIENT};
use super::*;
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000_000_000;
const C1: u128 = 0x1111_2222_3333_4444_5555_6666_7777_8888;
const C2: u128 = 0x9999_aaaa_bbbb_cccc_dddd_eeee_ffff_0001;

/// An initialised state with two data servers (so files get layouts).
fn state() -> MetaState {
    let mut s = MetaState::new();
    s.apply(&Command::Init {
        cluster_id: ClusterId(0xc1),
        replicas: 2,
        now_ns: T0,
    })
    .expect("init");
    for i in 0..2 {
        s.apply(&Command::RegisterServer {
            uuid: format!("uuid-{i}"),
            address: format!("d{i}.example:7101"),
            capacity: 1 << 40,
            free: 1 << 40,
            now_ns: T0,
        })
        .expect("register");
    }
    s
}

fn once(client: u128, seq: u64, done_below: u64, cmd: Command) -> Command {
    Command::Once {
        id: RequestId { client, seq },
        done_below,
        cmd: Box::new(cmd),
    }
}

fn mkdir(name: &str, now_ns: i64) -> Command {
    Command::Mkdir {
        parent: InodeId::ROOT,
        name: name.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        now_ns,
    }
}

fn rmdir(name: &str, now_ns: i64) -> Command {
    Command::Rmdir {
        parent: InodeId::ROOT,
        name: name.into(),
        now_ns,
    }
}

fn rename(from: &str, to: &str, now_ns: i64) -> Command {
    Command::Rename {
        parent: InodeId::ROOT,
        name: from.into(),
        new_parent: InodeId::ROOT,
        new_name: to.into(),
        flags: 0,
        now_ns,
    }
}

fn create(name: &str, exclusive: bool, client: Option<u64>, now_ns: i64) -> Command {
    Command::Create {
        parent: InodeId::ROOT,
        name: name.into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive,
        client: client.map(ClientId),
        spec: LayoutSpec::default(),
        now_ns,
    }
}

fn names(s: &MetaState) -> Vec<Vec<u8>> {
    let (entries, _) = s.readdir(InodeId::ROOT, 0, 0).expect("readdir root");
    entries.into_iter().map(|e| e.name).collect()
}

/// Applies `cmd` under one request id twice: the second answer equals the first, and the
/// second application changes nothing at all (state and digest).
#[track_caller]
fn applied_once(s: &mut MetaState, client: u128, seq: u64, cmd: Command) -> Response {
    let c = once(client, seq, seq, cmd);
    let first = s.apply(&c);
    let after_first = s.clone();
    let digest = s.digest();
    let second = s.apply(&c);
    assert_eq!(second, first, "repeated {c:?}");
    assert_eq!(s.digest(), digest, "repeated {c:?} changed the digest");
    assert_eq!(*s, after_first, "repeated {c:?} changed the state");
    first
}

#[test]
fn repeated_mkdir_answers_the_first_attr_not_eexist_and_makes_one_directory() {
    let mut s = state();
    let r = applied_once(&mut s, C1, 1, mkdir("d", T0 + 1));
    assert!(matches!(r, Ok(Reply::Attr(_))), "{r:?}");
    assert_eq!(names(&s), vec![b"d".to_vec()]);
    // The same mkdir under a new id is a new call and answers EEXIST, as POSIX says.
    assert_eq!(
        s.apply(&once(C1, 2, 2, mkdir("d", T0 + 2))),
        Err(FsError::Exists)
    );
}

#[test]
fn repeated_rmdir_and_rename_answer_ok_not_enoent_and_apply_once() {
    let mut s = state();
    s.apply(&mkdir("gone", T0 + 1)).expect("mkdir");
    s.apply(&create("a", true, None, T0 + 1)).expect("create");
    assert_eq!(
        applied_once(&mut s, C1, 1, rmdir("gone", T0 + 2)),
        Ok(Reply::Done)
    );
    assert_eq!(
        applied_once(&mut s, C1, 2, rename("a", "b", T0 + 3)),
        Ok(Reply::Done)
    );
    assert_eq!(names(&s), vec![b"b".to_vec()]);
}

#[test]
fn repeated_create_and_open_gives_the_same_handle_and_opens_one() {
    let mut s = state();
    for exclusive in [true, false] {
        let name = format!("f{exclusive}");
        let seq = if exclusive { 1 } else { 2 };
        let r = applied_once(&mut s, C1, seq, create(&name, exclusive, Some(7), T0 + 1));
        assert!(
            matches!(
                r,
                Ok(Reply::Created {
                    handle: Some(_),
                    created: true,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    assert_eq!(s.open_handle_count(), 2);
}

#[test]
fn a_failed_attempt_is_not_remembered_and_its_retry_applies_afresh() {
    // The failure changed nothing, so applying the retry later is a valid linearization
    // of the call; remembering it would make every refused command change the state.
    let mut s = state();
    let c = once(C1, 1, 1, rename("src", "dst", T0 + 1));
    let before = s.clone();
    assert_eq!(s.apply(&c), Err(FsError::NotFound));
    assert_eq!(s, before, "a failed tagged command changed the state");
    s.apply(&create("src", true, None, T0 + 2)).expect("create");
    assert_eq!(s.apply(&c), Ok(Reply::Done));
    assert_eq!(names(&s), vec![b"dst".to_vec()]);
}

#[test]
fn a_late_duplicate_below_the_done_below_mark_is_refused_and_changes_nothing() {
    let mut s = state();
    s.apply(&once(C1, 1, 1, mkdir("a", T0 + 1)))
        .expect("mkdir a");
    // Seq 2 says every seq below 2 has finished: seq 1's result can be forgotten.
    s.apply(&once(C1, 2, 2, mkdir("b", T0 + 2)))
        .expect("mkdir b");
    assert!(!s
        .requests()
        .client(C1)
        .expect("client")
        .results
        .contains_key(&1));
    let before = s.clone();
    let r = s.apply(&once(C1, 1, 1, rmdir("a", T0 + 3)));
    assert!(matches!(r, Err(FsError::Invalid(_))), "{r:?}");
    assert_eq!(s, before);
}

#[test]
fn malformed_request_ids_are_invalid_and_change_nothing() {
    let mut s = state();
    let before = s.clone();
    let bad = [
        once(0, 1, 0, mkdir("x", T0)),
        once(C1, 0, 0, mkdir("x", T0)),
        once(C1, 5, 6, mkdir("x", T0)),
        once(C1, 1, 0, once(C1, 2, 0, mkdir("x", T0))),
        once(
            C1,
            1,
            0,
            Command::Init {
                cluster_id: ClusterId(0xc1),
                replicas: 2,
                now_ns: T0,
            },
        ),
    ];
    for c in bad {
        let r = s.apply(&c);
        assert!(matches!(r, Err(FsError::Invalid(_))), "{c:?}: {r:?}");
        assert_eq!(s, before, "{c:?} changed the state");
    }
    // Before Init, a request id changes nothing either.
    let mut fresh = MetaState::new();
    assert!(matches!(
        fresh.apply(&once(C1, 1, 1, mkdir("x", T0))),
        Err(FsError::Unavailable(_))
    ));
    assert_eq!(fresh, MetaState::new());
}

#[test]
fn results_per_client_are_bounded_to_the_most_recent() {
    let mut s = state();
    let n = MAX_RESULTS_PER_CLIENT as u64 + 10;
    for seq in 1..=n {
        // done_below stays 1: as if call 1 never finished at the client.
        let r = s.apply(&once(C1, seq, 1, mkdir(&format!("d{seq}"), T0 + 1)));
        assert!(r.is_ok(), "{r:?}");
    }
    let c = s.requests().client(C1).expect("client");
    assert_eq!(c.results.len(), MAX_RESULTS_PER_CLIENT);
    assert_eq!(c.results.keys().next(), Some(&11));
}

#[test]
fn idle_clients_are_forgotten_by_leader_time_and_clients_are_bounded() {
    let mut s = state();
    s.apply(&once(C1, 1, 1, mkdir("a", T0 + 1)))
        .expect("mkdir a");
    s.apply(&once(C2, 1, 1, mkdir("b", T0 + CLIENT_IDLE_NS)))
        .expect("mkdir b");
    assert_eq!(s.requests().client_count(), 2, "not idle long enough yet");
    s.apply(&once(C2, 2, 2, mkdir("c", T0 + CLIENT_IDLE_NS + 2)))
        .expect("mkdir c");
    assert!(s.requests().client(C1).is_none(), "C1 idle past the limit");
    assert!(s.requests().client(C2).is_some());

    let mut s = state();
    for c in 1..=MAX_CLIENTS as u128 + 1 {
        s.apply(&once(c, 1, 1, mkdir(&format!("d{c}"), T0 + c as i64)))
            .expect("mkdir");
    }
    assert_eq!(s.requests().client_count(), MAX_CLIENTS);
    assert!(s.requests().client(1).is_none(), "least recently seen goes");
    assert!(s.requests().client(2).is_some());
}

#[test]
fn the_request_table_survives_a_snapshot_round_trip() {
    let mut s = state();
    let c = once(C1, 1, 1, mkdir("d", T0 + 1));
    let first = s.apply(&c);
    let bytes = bincode::serialize(&s).expect("serialize");
    let mut restored: MetaState = bincode::deserialize(&bytes).expect("deserialize");
    assert_eq!(restored.digest(), s.digest());
    assert_eq!(restored, s);
    assert_eq!(restored.apply(&c), first, "the retry after a restore");
    assert_eq!(names(&restored), vec![b"d".to_vec()]);
}

#[test]
fn the_request_table_is_part_of_the_digest() {
    let mut a = state();
    let mut b = state();
    a.apply(&once(C1, 1, 1, mkdir("d", T0 + 1))).expect("a");
    b.apply(&mkdir("d", T0 + 1)).expect("b");
    assert_eq!(names(&a), names(&b));
    assert_ne!(a.digest(), b.digest());
}

/// One step of a random history: which client, which seq offset, which op, how far the
/// leader clock moves (sometimes past the idle limit), and whether this is a retry.
#[derive(Clone, Debug)]
struct Step {
    client: u8,
    op: u8,
    name: u8,
    advance_ns: i64,
    retry: bool,
    finish_older: bool,
}

fn any_step() -> impl Strategy<Value = Step> {
    (
        0u8..3,
        0u8..4,
        0u8..4,
        prop_oneof![
            4 => 0i64..1_000_000,
            1 => Just(CLIENT_IDLE_NS / 2 + 1),
        ],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(client, op, name, advance_ns, retry, finish_older)| Step {
            client,
            op,
            name,
            advance_ns,
            retry,
            finish_older,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Two replicas applying the same tagged history (one of them restored from its own
    /// snapshot halfway) answer the same, evict the same and hold the same state; a retry
    /// of a remembered request never changes the state.
    #[test]
    fn tagged_histories_are_identical_on_every_replica(steps in prop::collection::vec(any_step(), 1..80)) {
        let mut a = state();
        let mut b = state();
        let mut now = T0;
        let mut next_seq = [1u64; 3];
        let mut done_below = [1u64; 3];
        let mut last: [Option<Command>; 3] = [None, None, None];
        for (i, st) in steps.iter().enumerate() {
            now += st.advance_ns;
            let k = st.client as usize;
            let client = 0x1000 + st.client as u128;
            let cmd = match (&last[k], st.retry) {
                (Some(prev), true) => prev.clone(),
                _ => {
                    let seq = next_seq[k];
                    next_seq[k] += 1;
                    if st.finish_older {
                        done_below[k] = seq;
                    }
                    let name = format!("n{}", st.name);
                    let other = format!("n{}", (st.name + 1) % 4);
                    let inner = match st.op {
                        0 => mkdir(&name, now),
                        1 => rmdir(&name, now),
                        2 => rename(&name, &other, now),
                        _ => create(&name, false, Some(u64::from(st.client) + 1), now),
                    };
                    let c = once(client, seq, done_below[k], inner);
                    last[k] = Some(c.clone());
                    c
                }
            };
            let before = a.clone();
            let ra = a.apply(&cmd);
            let rb = b.apply(&cmd);
            prop_assert_eq!(&ra, &rb);
            if st.retry && last[k].is_some() {
                if let Command::Once { id, .. } = &cmd {
                    if before.requests().lookup(*id).ok().flatten().is_some() {
                        prop_assert_eq!(&a, &before, "a remembered retry changed the state");
                    }
                }
            }
            if i == steps.len() / 2 {
                let bytes = bincode::serialize(&b).expect("serialize");
                let restored: MetaState = bincode::deserialize(&bytes).expect("deserialize");
                prop_assert_eq!(restored.digest(), b.digest());
                b = restored;
            }
            prop_assert!(a.requests().client_count() <= 3);
        }
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(&a, &b);
    }
}
