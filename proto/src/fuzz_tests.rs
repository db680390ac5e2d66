//! Decoder harnesses of the wire protocol (issue 22, "hostile input"): every message a
//! port receives, decoded from hostile bytes ((`cirrus_fuzz`)) and handed to the
//! conversion its receiver runs, must come out as a value or an error, never a panic;
//! the bulk frame head is checked rule by rule over arbitrary heads; the status a peer
//! sends (its error tag, leader hint and chain version metadata) always decodes to some
//! error. Budgets are set per harness; `PROPTEST_CASES` raises them all.

use crate::bulk::{Head, HEAD_LEN, MAX_HEADER, MAX_PAYLOAD};
use crate::convert;
use crate::pb;
use cirrus_fuzz::{field_soup, hostile_bytes};
use cirrus_types::{ChainTable, DataInfo, FsError, Layout, MetaInfo};
use proptest::prelude::*;
use prost::Message;

/// Decodes `bytes` as `T`; when it decodes, re-encoding and decoding again gives the
/// same message (nothing a peer sends is half-understood).
fn decodes_stably<T: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    let m = T::decode(bytes).ok()?;
    let again = T::decode(m.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
    assert_eq!(m, again);
    Some(m)
}

/// Every request type of the meta, raft and data services, and the replies a client or
/// server decodes from a peer, with the conversions their receivers apply.
fn every_receiver(bytes: &[u8]) {
    macro_rules! plain {
        ($($t:ty),* $(,)?) => { $( let _ = decodes_stably::<$t>(bytes); )* };
    }
    plain!(
        pb::LookupRequest,
        pb::GetattrRequest,
        pb::SetattrRequest,
        pb::CreateRequest,
        pb::MkdirRequest,
        pb::MknodRequest,
        pb::SymlinkRequest,
        pb::ReadlinkRequest,
        pb::LinkRequest,
        pb::UnlinkRequest,
        pb::RmdirRequest,
        pb::RenameRequest,
        pb::ReaddirRequest,
        pb::GetXattrRequest,
        pb::SetXattrRequest,
        pb::ListXattrRequest,
        pb::RemoveXattrRequest,
        pb::StatfsRequest,
        pb::OpenRequest,
        pb::ReleaseRequest,
        pb::CommitWriteRequest,
        pb::GetLayoutRequest,
        pb::GetChainsRequest,
        pb::RenewLeaseRequest,
        pb::CancelLockWaitRequest,
        pb::RegisterServerRequest,
        pb::HeartbeatRequest,
        pb::ClusterInfoRequest,
        pb::RaftBytes,
        pb::WriteRequest,
        pb::ReadRequest,
        pb::SyncRequest,
        pb::TruncateRequest,
        pb::PunchRequest,
        pb::CopyRequest,
        pb::DeleteRequest,
        pb::ListObjectsRequest,
        pb::DataInfoRequest,
        pb::WireError,
        pb::CreateReply,
        pb::OpenReply,
        pb::DirsReply,
        pb::ReaddirReply,
        pb::StatfsReply,
        pb::StatusReply,
    );
    if let Some(r) = decodes_stably::<pb::AttrReply>(bytes) {
        let _ = convert::attr(r.attr.as_ref(), "attr");
    }
    if let Some(a) = decodes_stably::<pb::Attr>(bytes) {
        let _ = convert::attr(Some(&a), "attr");
    }
    if let Some(d) = decodes_stably::<pb::DirEntry>(bytes) {
        let _ = cirrus_types::DirEntry::try_from(&d);
    }
    if let Some(l) = decodes_stably::<pb::Layout>(bytes) {
        let _ = Layout::try_from(&l);
    }
    if let Some(r) = decodes_stably::<pb::LayoutReply>(bytes) {
        if let Some(l) = r.layout.as_ref() {
            let _ = Layout::try_from(l);
        }
    }
    if let Some(o) = decodes_stably::<pb::ObjectRef>(bytes) {
        let _ = convert::object_key(Some(&o));
    }
    if let Some(l) = decodes_stably::<pb::LockRequest>(bytes) {
        let _ = convert::lock_call(&l);
        let _ = convert::lock_kind(l.kind);
    }
    if let Some(t) = decodes_stably::<pb::ChainTable>(bytes) {
        let _ = ChainTable::from(&t);
    }
    if let Some(i) = decodes_stably::<pb::ClusterInfoReply>(bytes) {
        let _ = MetaInfo::from(&i);
        let _ = convert::check_cluster(cirrus_types::ClusterId(7), &i.cluster_id, false);
    }
    if let Some(i) = decodes_stably::<pb::DataInfoReply>(bytes) {
        let _ = DataInfo::from(&i);
    }
    if let Some(w) = decodes_stably::<pb::WireError>(bytes) {
        let _ = crate::status::from_wire(&w);
    }
}

/// A few valid encodings to cut and flip.
fn valid_encodings() -> Vec<Vec<u8>> {
    vec![
        pb::CreateRequest {
            parent: 1,
            name: b"file".to_vec(),
            mode: 0o644,
            stripe_unit: 1 << 20,
            stripe_count: 2,
            umask: Some(0o022),
            ..Default::default()
        }
        .encode_to_vec(),
        pb::WriteRequest {
            object: Some(pb::ObjectRef { ino: 9, index: 1 }),
            offset: 4096,
            crcs: vec![1, 2, 3],
            ..Default::default()
        }
        .encode_to_vec(),
        pb::ChainTable {
            replicas: 2,
            chains: vec![pb::Chain {
                id: 1,
                version: 3,
                members: vec![1, 2],
                syncing: vec![],
            }],
            ..Default::default()
        }
        .encode_to_vec(),
        pb::LockRequest {
            ino: 5,
            start: 0,
            end: u64::MAX,
            kind: 1,
            ..Default::default()
        }
        .encode_to_vec(),
    ]
}

/// Heads near the rules' edges: kinds known and not, reserved bytes zero or not, lengths
/// at, under and over their limits; and fully random ones.
fn bulk_head() -> impl Strategy<Value = [u8; HEAD_LEN]> {
    let len = |max: u32| prop_oneof![Just(0u32), 0..=max, Just(max), Just(max + 1), any::<u32>()];
    let shaped = (
        prop_oneof![Just(1u8), Just(2), Just(128), Just(129), any::<u8>()],
        prop_oneof![Just([0u8; 3]), any::<[u8; 3]>()],
        len(MAX_HEADER),
        len(MAX_PAYLOAD),
        any::<u64>(),
    )
        .prop_map(|(kind, reserved, h, p, call)| {
            let mut b = [0u8; HEAD_LEN];
            b[0] = kind;
            b[1..4].copy_from_slice(&reserved);
            b[4..8].copy_from_slice(&h.to_le_bytes());
            b[8..12].copy_from_slice(&p.to_le_bytes());
            b[12..20].copy_from_slice(&call.to_le_bytes());
            b
        });
    prop_oneof![4 => shaped, 1 => any::<[u8; HEAD_LEN]>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cirrus_fuzz::cases(2000)))]

    #[test]
    fn fuzz_every_message_a_port_receives_decodes_or_fails_without_panic(
        bytes in hostile_bytes(valid_encodings())
    ) {
        every_receiver(&bytes);
    }

    #[test]
    fn fuzz_a_bulk_head_is_accepted_exactly_when_every_rule_holds(b in bulk_head()) {
        let header_len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let payload_len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let call = u64::from_le_bytes(b[12..20].try_into().unwrap());
        let valid = matches!(b[0], 1 | 2 | 128 | 129)
            && b[1..4] == [0, 0, 0]
            && header_len <= MAX_HEADER
            && payload_len <= MAX_PAYLOAD;
        match Head::decode(&b) {
            Ok(h) => {
                prop_assert!(valid, "accepted a head that breaks a rule: {b:?}");
                prop_assert_eq!(h.encode(), b);
            }
            Err((c, e)) => {
                prop_assert!(!valid, "refused a good head {b:?}: {e}");
                prop_assert_eq!(c, call, "the refusal names the call");
                prop_assert!(matches!(e, FsError::Invalid(_)));
            }
        }
    }

    #[test]
    fn fuzz_a_peer_status_always_decodes_to_an_error(
        code in 0i32..20,
        msg in ".{0,40}",
        tag in prop_oneof![Just("stale_chain".to_string()), Just("not_leader".to_string()), Just("protocol".to_string()), "[a-z_]{0,12}"],
        leader in "[ -~]{0,30}",
        version in prop_oneof![Just("7".to_string()), Just("-1".to_string()), Just("18446744073709551616".to_string()), "[ -~]{0,12}"],
    ) {
        let mut s = tonic::Status::new(tonic::Code::from(code), msg);
        let md = s.metadata_mut();
        for (k, v) in [("cirrus-error", &tag), ("cirrus-leader", &leader), ("cirrus-chain-version", &version)] {
            if let Ok(v) = v.parse() {
                md.insert(k, v);
            }
        }
        let _ = crate::status::from_status(&s);
    }

    #[test]
    fn fuzz_field_soup_reaches_the_conversions(bytes in field_soup()) {
        every_receiver(&bytes);
    }
}
