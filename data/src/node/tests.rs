//! Chain replication in one process: three nodes over memory stores joined by the
//! in-process network (`crate::testing`), so each property of the write, read, truncate
//! and punch paths is checked in milliseconds, and the races chaos runs found are staged
//! with a paused or failing member instead of hoped for.

use super::*;
use crate::testing::{chain, contents, write_args, Cluster, Fault};
use cirrus_types::InodeId;
use std::future::Future;

fn key() -> ObjectKey {
    ObjectKey {
        inode: InodeId(7),
        index: 0,
    }
}

/// `len` bytes that differ from block to block and from seed to seed.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i / 4096) as u8)
        .collect()
}

/// Applies a write to the model of an object's bytes.
fn apply(model: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[off as usize..end].copy_from_slice(data);
}

/// `f`, or a failure naming `what` if it takes over five seconds (a stuck chain).
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after 5 s"))
}

async fn assert_everywhere(cl: &Cluster, ids: &[u32], model: &[u8]) {
    for id in ids {
        let (data, size) = contents(cl.store(*id), key()).await;
        assert_eq!(size, model.len() as u64, "object size at member {id}");
        assert!(data == model, "bytes at member {id} differ from the model");
    }
}

#[tokio::test]
async fn an_acknowledged_write_is_on_every_member_byte_for_byte() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let mut model = Vec::new();
    // Aligned, unaligned across blocks, and past the end leaving a gap.
    for (off, len, seed) in [
        (0, 3 * BLOCK as usize, 1),
        (1000, 10_000, 2),
        (5 * BLOCK + 7, 300, 3),
    ] {
        let data = pattern(len, seed);
        let size = cl
            .node(1)
            .write(write_args(&c, key(), off, &data))
            .await
            .expect("the head acknowledges a write every member applied");
        apply(&mut model, off, &data);
        assert_eq!(size, model.len() as u64);
    }
    // `contents` reads under each member's own block crcs, so equal bytes read back
    // there mean the crcs agree with them too.
    assert_everywhere(&cl, &[1, 2, 3], &model).await;
    for id in 1..=3 {
        assert_eq!(cl.node(id).stats.writes.get(), 3, "writes applied at {id}");
    }
    let hop = |a: &str| (a.to_string(), "write");
    assert_eq!(
        cl.net.delivered(),
        [hop("s2"), hop("s3")]
            .iter()
            .cycle()
            .take(6)
            .cloned()
            .collect::<Vec<_>>(),
        "each write travels head, middle, tail"
    );
}

#[tokio::test]
async fn a_write_at_a_stale_chain_version_is_refused_with_the_current_one_and_changes_nothing() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let old = chain(1, 2, &[1, 2, 3], &[]);
    let r = cl
        .node(1)
        .write(write_args(&old, key(), 0, &pattern(8192, 1)))
        .await;
    assert_eq!(
        r,
        Err(FsError::StaleChain {
            current: ChainVersion(3)
        })
    );
    for id in 1..=3 {
        assert!(
            cl.store(id).list().is_empty(),
            "member {id} holds an object"
        );
    }
    assert!(
        cl.net.delivered().is_empty(),
        "a refused write was forwarded"
    );
    assert_eq!(cl.node(1).stats.stale_rejected.get(), 1);
}

#[tokio::test]
async fn a_forward_to_a_member_at_a_newer_version_is_refused_and_goes_no_further() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    // The bump reached the middle member before the head.
    cl.set_chain(&chain(1, 4, &[1, 2, 3], &[]), &[2]);
    let r = cl
        .node(1)
        .write(write_args(&c, key(), 0, &pattern(4096, 1)))
        .await;
    assert_eq!(
        r,
        Err(FsError::StaleChain {
            current: ChainVersion(4)
        })
    );
    assert!(
        cl.store(2).list().is_empty(),
        "the middle applied an old write"
    );
    assert!(
        cl.store(3).list().is_empty(),
        "the tail got a refused write"
    );
}

/// The race behind d31de90: a member that learns a new version while its forward is
/// downstream may already have served a rebuild listing at that version, so answering
/// would acknowledge bytes the new syncing member never gets.
#[tokio::test]
async fn a_member_that_learns_a_new_version_while_a_write_is_downstream_does_not_acknowledge_it() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let tail = cl.net.pause("s3");
    let head = cl.node(1).clone();
    let w = write_args(&c, key(), 0, &pattern(4096, 1));
    let call = tokio::spawn(async move { head.write(w).await });
    within("the forward to the tail", tail.arrived(1)).await;
    cl.set_chain(&chain(1, 4, &[1, 2, 3], &[4]), &[2]);
    tail.resume();
    let r = within("the write", call).await.expect("write task");
    assert_eq!(
        r,
        Err(FsError::StaleChain {
            current: ChainVersion(4)
        })
    );
}

#[tokio::test]
async fn a_write_a_member_cannot_forward_is_not_acknowledged_and_a_retry_on_the_new_table_is() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    cl.net.fault("s3", Fault::Unreachable);
    let data = pattern(3 * 4096, 1);
    let r = cl.node(1).write(write_args(&c, key(), 0, &data)).await;
    assert!(
        matches!(r, Err(FsError::Unavailable(_))),
        "a write missing at the tail was answered {r:?}"
    );
    // Meta drops the tail; the client retries at the new version.
    let c4 = chain(1, 4, &[1, 2], &[]);
    cl.set_chain_everywhere(&c4);
    let size = cl
        .node(1)
        .write(write_args(&c4, key(), 0, &data))
        .await
        .expect("the retry through the new chain");
    assert_eq!(size, data.len() as u64);
    assert_everywhere(&cl, &[1, 2], &data).await;
}

#[tokio::test]
async fn a_write_whose_reply_from_the_tail_is_lost_is_not_acknowledged() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    cl.net.fault("s3", Fault::ReplyLost);
    let data = pattern(4096, 1);
    let r = cl.node(1).write(write_args(&c, key(), 0, &data)).await;
    assert!(
        matches!(r, Err(FsError::Timeout(_))),
        "a write whose tail never answered was answered {r:?}"
    );
    // The tail did apply it: the client's retry rewrites the same bytes.
    assert_everywhere(&cl, &[1, 2, 3], &data).await;
}

#[tokio::test]
async fn a_read_of_a_corrupt_or_lost_block_is_repaired_from_another_member() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let data = pattern(3 * 4096, 1);
    cl.node(1)
        .write(write_args(&c, key(), 0, &data))
        .await
        .expect("write");
    assert!(cl.store(2).corrupt(key(), 4096 + 5));
    let r = cl
        .node(2)
        .read(c.id, c.version, key(), 0, data.len() as u32, false)
        .await
        .expect("a read at a member with a bad block");
    assert!(r.data[..] == data[..], "the read returned other bytes");
    assert_eq!(cl.node(2).stats.repaired_blocks.get(), 1);
    // Repaired on disk, not only in the reply.
    assert_everywhere(&cl, &[2], &data).await;

    // A block rebuild kept as lost (no good copy found then) is repaired the same way.
    cl.store(2)
        .put_lost_block(c.id, key(), 2, data.len() as u64)
        .await
        .expect("lost block");
    let r = cl
        .node(2)
        .read(c.id, c.version, key(), 2 * 4096, 4096, false)
        .await
        .expect("a read of a lost block");
    assert!(r.data[..] == data[2 * 4096..]);
    assert_everywhere(&cl, &[2], &data).await;
}

#[tokio::test]
async fn a_local_only_read_of_a_corrupt_block_fails_and_repairs_nothing() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let data = pattern(2 * 4096, 1);
    cl.node(1)
        .write(write_args(&c, key(), 0, &data))
        .await
        .expect("write");
    assert!(cl.store(3).corrupt(key(), 10));
    let r = cl.node(3).read(c.id, c.version, key(), 0, 4096, true).await;
    assert!(matches!(r, Err(FsError::Checksum(_))), "got {r:?}");
    assert!(cl.net.delivered().iter().all(|(_, op)| *op != "read"));
    assert!(cl.store(3).read(key(), 0, 4096).await.is_err());
}

#[tokio::test]
async fn repair_takes_the_block_from_the_next_member_when_the_first_is_bad_or_unreachable() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let data = pattern(2 * 4096, 1);
    cl.node(1)
        .write(write_args(&c, key(), 0, &data))
        .await
        .expect("write");
    // Block 0: bad at the tail and at the head too; the middle has it.
    assert!(cl.store(3).corrupt(key(), 1));
    assert!(cl.store(1).corrupt(key(), 2));
    let r = cl
        .node(3)
        .read(c.id, c.version, key(), 0, 4096, false)
        .await
        .expect("block 0 from the middle");
    assert!(r.data[..] == data[..4096]);
    // Block 1: bad at the tail, the head unreachable.
    assert!(cl.store(3).corrupt(key(), 4096 + 1));
    cl.net.fault("s1", Fault::Unreachable);
    let r = cl
        .node(3)
        .read(c.id, c.version, key(), 4096, 4096, false)
        .await
        .expect("block 1 from the middle");
    assert!(r.data[..] == data[4096..]);
    assert_everywhere(&cl, &[3], &data).await;
}

#[tokio::test]
async fn truncate_punch_and_sync_travel_the_whole_chain() {
    let c = chain(1, 3, &[1, 2, 3], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let mut model = pattern(5 * 4096, 1);
    cl.node(1)
        .write(write_args(&c, key(), 0, &model))
        .await
        .expect("write");

    let size = 3 * BLOCK + 100;
    cl.node(1)
        .truncate(c.id, c.version, key(), size, 0)
        .await
        .expect("truncate");
    model.truncate(size as usize);
    assert_everywhere(&cl, &[1, 2, 3], &model).await;

    let (off, len) = (BLOCK + 10, BLOCK + 40);
    cl.node(1)
        .punch(c.id, c.version, key(), off, len, 0)
        .await
        .expect("punch");
    model[off as usize..(off + len) as usize].fill(0);
    assert_everywhere(&cl, &[1, 2, 3], &model).await;

    cl.node(1)
        .sync(c.id, c.version, &[key()], 0)
        .await
        .expect("sync");
    let ops: Vec<_> = cl
        .net
        .delivered()
        .into_iter()
        .filter(|(_, op)| *op != "write")
        .collect();
    let at = |a: &str, op| (a.to_string(), op);
    assert_eq!(
        ops,
        [
            at("s2", "truncate"),
            at("s3", "truncate"),
            at("s2", "punch"),
            at("s3", "punch"),
            at("s2", "sync"),
            at("s3", "sync"),
        ]
    );
}

#[tokio::test]
async fn a_syncing_member_gets_a_write_only_after_every_serving_member_has_persisted_it() {
    let c = chain(1, 3, &[1, 2], &[3]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let syncing = cl.net.pause("s3");
    let data = pattern(2 * 4096, 1);
    let head = cl.node(1).clone();
    let w = write_args(&c, key(), 0, &data);
    let call = tokio::spawn(async move { head.write(w).await });
    within("the forward to the syncing member", syncing.arrived(1)).await;
    assert_everywhere(&cl, &[1, 2], &data).await;
    assert!(
        cl.store(3).list().is_empty(),
        "reached the syncing member first"
    );
    syncing.resume();
    let size = within("the write", call)
        .await
        .expect("write task")
        .expect("write");
    assert_eq!(size, data.len() as u64);
    assert_everywhere(&cl, &[1, 2, 3], &data).await;
    let hop = |a: &str| (a.to_string(), "write");
    assert_eq!(cl.net.delivered(), [hop("s2"), hop("s3")]);
}

/// The race behind e3f513d: an unaligned write's edge block on a syncing member may
/// hold bytes rebuild has not copied yet; a local read-modify-write there persisted a
/// block right only where the write covered it.
#[tokio::test]
async fn an_unaligned_write_gives_a_syncing_member_whole_blocks_from_the_tail() {
    let c = chain(1, 3, &[1, 2], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let mut model = pattern(2 * 4096, 1);
    cl.node(1)
        .write(write_args(&c, key(), 0, &model))
        .await
        .expect("write before server 3 joins");
    // Server 3 joins as syncing; rebuild has copied nothing yet.
    let c4 = chain(1, 4, &[1, 2], &[3]);
    cl.set_chain_everywhere(&c4);
    let (off, data) = (100, pattern(50, 9));
    cl.node(1)
        .write(write_args(&c4, key(), off, &data))
        .await
        .expect("unaligned write through the syncing member");
    apply(&mut model, off, &data);
    assert_everywhere(&cl, &[1, 2], &model).await;
    let (got, _) = contents(cl.store(3), key()).await;
    let end = off as usize + data.len();
    assert!(
        got[..end] == model[..end],
        "the syncing member holds other bytes around the write than the tail"
    );
}

/// The same race for truncate and punch: the kept bytes of a partial edge block on a
/// syncing member come from the tail, which has applied the operation.
#[tokio::test]
async fn an_unaligned_truncate_or_punch_gives_a_syncing_member_its_edge_blocks_from_the_tail() {
    let c = chain(1, 3, &[1, 2], &[]);
    let cl = Cluster::new(3, std::slice::from_ref(&c));
    let (tk, pk) = (key(), ObjectKey { index: 1, ..key() });
    for k in [tk, pk] {
        cl.node(1)
            .write(write_args(&c, k, 0, &pattern(3 * 4096, 1)))
            .await
            .expect("write before server 3 joins");
    }
    let c4 = chain(1, 4, &[1, 2], &[3]);
    cl.set_chain_everywhere(&c4);
    let size = BLOCK + 100;
    cl.node(1)
        .truncate(c4.id, c4.version, tk, size, 0)
        .await
        .expect("truncate through the syncing member");
    let (got, got_size) = contents(cl.store(3), tk).await;
    let (want, _) = contents(cl.store(2), tk).await;
    assert_eq!(got_size, size);
    assert!(
        got[BLOCK as usize..] == want[BLOCK as usize..],
        "the kept head of the last block differs from the tail's"
    );
    // Both edges partial: [100, 8100) in blocks 0 and 1.
    cl.node(1)
        .punch(c4.id, c4.version, pk, 100, 8000, 0)
        .await
        .expect("punch through the syncing member");
    let (got, _) = contents(cl.store(3), pk).await;
    let (want, _) = contents(cl.store(2), pk).await;
    assert!(
        got.len() >= 2 * 4096 && got[..2 * 4096] == want[..2 * 4096],
        "the punched edge blocks differ from the tail's"
    );
}

#[tokio::test]
async fn a_copy_reads_the_source_chain_tail_first_and_writes_through_the_destination_chain() {
    let dst = chain(1, 3, &[1, 2, 3], &[]);
    // Server 1, the destination head, holds no copy of the source chain.
    let src = chain(2, 5, &[2, 3], &[]);
    let cl = Cluster::new(3, &[dst.clone(), src.clone()]);
    let from = ObjectKey {
        inode: InodeId(8),
        index: 0,
    };
    let data = pattern(3 * 4096, 4);
    cl.node(2)
        .write(write_args(&src, from, 0, &data))
        .await
        .expect("source write");
    // The source tail is unreachable: the copy reads the source head instead.
    cl.net.fault("s3", Fault::Unreachable);
    let before = cl.net.delivered().len();
    // 2 blocks from 2.5 blocks in: half of it past the source's end, copied as zeros.
    let (src_off, len) = (2 * BLOCK + BLOCK / 2, 2 * BLOCK as u32);
    let w = write_args(&dst, key(), 0, &[]);
    let r = cl
        .node(1)
        .copy(w.clone(), src.id, src.version, from, src_off, len)
        .await;
    assert!(
        matches!(r, Err(FsError::Unavailable(_))),
        "a copy the destination tail never got was answered {r:?}"
    );
    let reads: Vec<_> = cl.net.delivered()[before..]
        .iter()
        .filter(|(_, op)| *op == "read")
        .cloned()
        .collect();
    assert_eq!(reads, [("s2".to_string(), "read")], "source read from s2");
    cl.net.heal("s3");
    let before = cl.net.delivered().len();
    cl.node(1)
        .copy(w, src.id, src.version, from, src_off, len)
        .await
        .expect("copy");
    assert_eq!(
        cl.net.delivered()[before],
        ("s3".to_string(), "read"),
        "source read from its tail first"
    );
    let mut model = data[src_off as usize..].to_vec();
    model.resize(len as usize, 0);
    assert_everywhere(&cl, &[1, 2, 3], &model).await;
}
