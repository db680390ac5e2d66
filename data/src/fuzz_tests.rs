//! Decoder harness of the data server's doors (issue 22, "hostile input"): requests
//! decoded from a field soup (`cirrus_fuzz`) reach `DataService`, the gRPC door of
//! a real `Node`, the head of a three-member chain of the in-process test network
//! (`testing::Cluster`, memory stores). Half of them carry the right cluster id, chain
//! and an existing object, so they reach past the first checks into the node. Every call
//! must answer (a value or an error, no panic), and a refused call must leave every
//! member's objects exactly as they were.
//!
//! The memory store is dense, so offsets and sizes a soup names between 8 MiB and the
//! largest object (4 PiB) are folded below 8 MiB; beyond the largest object they are kept,
//! so the refusal of an oversized request is exercised.

use crate::service::DataService;
use crate::testing::{chain, contents, write_args, Cluster};
use cirrus_fuzz::{cases, field_soup};
use cirrus_proto::pb;
use cirrus_proto::pb::data_server::Data;
use cirrus_types::{ChainId, InodeId, ObjectKey};
use proptest::prelude::*;
use prost::Message;
use std::sync::Arc;
use tonic::Request;

const FOLD: u64 = 8 << 20;

fn tame(v: u64) -> u64 {
    if v > cirrus_types::MAX_FILE_SIZE {
        v
    } else {
        v % FOLD
    }
}

fn key(ino: u64, index: u32) -> ObjectKey {
    ObjectKey {
        inode: InodeId(ino),
        index,
    }
}

type Snapshot = Vec<Vec<(ObjectKey, ChainId, Vec<u8>, u64)>>;

async fn snapshot(c: &Cluster) -> Snapshot {
    let mut out = Vec::new();
    for s in &c.stores {
        let mut objs = Vec::new();
        let mut infos = crate::store::ChunkStore::list(s.as_ref());
        infos.sort_by_key(|o| (o.key.inode, o.key.index));
        for o in infos {
            let (data, size) = contents(s, o.key).await;
            objs.push((o.key, o.chain, data, size));
        }
        out.push(objs);
    }
    out
}

fn chain_ref() -> Option<pb::ChainRef> {
    Some(pb::ChainRef { id: 1, version: 1 })
}

fn object(o: Option<pb::ObjectRef>) -> Option<pb::ObjectRef> {
    let index = o.map_or(0, |o| o.index % 3);
    Some(pb::ObjectRef { ino: 5, index })
}

async fn one_case(bytes: Vec<u8>, aim: bool, kind: u8) -> Result<(), TestCaseError> {
    let c1 = chain(1, 1, &[1, 2, 3], &[]);
    let c = Cluster::new(3, std::slice::from_ref(&c1));
    let head = c.node(1).clone();
    for (k, len) in [
        (key(5, 0), 3 * 4096 + 100),
        (key(5, 1), 5000),
        (key(6, 0), 4096),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        head.write(write_args(&c1, k, 0, &data))
            .await
            .expect("seed write");
    }
    let svc = Arc::new(DataService::new(head));
    let cluster = c.node(1).cluster.to_string();
    // Decodes the soup as `$t`; when aimed, gives it the right cluster and runs `$fix`
    // (right chain and object, sizes folded); calls `$method` on the door.
    macro_rules! door {
        ($t:ty, $method:ident, |$r:ident| $fix:block) => {{
            let Ok(mut $r) = <$t>::decode(bytes.as_slice()) else {
                return Ok(());
            };
            if aim {
                $r.cluster_id = cluster.clone();
                $fix
            }
            (
                stringify!($method),
                svc.$method(Request::new($r)).await.map(|_| ()),
            )
        }};
    }
    let before = snapshot(&c).await;
    let (what, result) = match kind {
        0 => door!(pb::WriteRequest, write, |r| {
            r.chain = chain_ref();
            r.object = object(r.object);
            r.offset = tame(r.offset);
        }),
        1 => door!(pb::ReadRequest, read, |r| {
            r.chain = chain_ref();
            r.object = object(r.object);
            r.offset = tame(r.offset);
        }),
        2 => door!(pb::TruncateRequest, truncate, |r| {
            r.chain = chain_ref();
            r.object = object(r.object);
            r.size = tame(r.size);
        }),
        3 => door!(pb::PunchRequest, punch, |r| {
            r.chain = chain_ref();
            r.object = object(r.object);
            r.offset = tame(r.offset);
            r.length = tame(r.length);
        }),
        4 => door!(pb::CopyRequest, copy, |r| {
            r.chain = chain_ref();
            r.src_chain = chain_ref();
            r.object = object(r.object);
            r.src_object = object(r.src_object);
            r.offset = tame(r.offset);
            r.src_offset = tame(r.src_offset);
        }),
        5 => door!(pb::SyncRequest, sync, |r| {
            r.chain = chain_ref();
        }),
        _ => door!(pb::DeleteRequest, delete, |r| {}),
    };
    if let Err(e) = result {
        let after = snapshot(&c).await;
        prop_assert!(
            before == after,
            "{what} was refused ({e}) but a member's objects changed"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(300)))]

    #[test]
    fn fuzz_data_doors_answer_and_refusals_change_nothing(bytes in field_soup(), aim in any::<bool>(), kind in 0u8..7) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(one_case(bytes, aim, kind))?;
    }
}
