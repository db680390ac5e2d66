//! criterion micro-benches for the pure code on every byte's path: stripe mapping
//! (`Layout::extents`), crc32c of a 1 MiB payload (`checksum::piece_crcs` and
//! `verify_pieces`), protobuf encode/decode of a 1 MiB `WriteRequest`, and the meta state
//! machine's apply of one raft entry (create, rename, unlink, setattr in a directory that
//! already holds 10k entries) plus the whole-state snapshot serialization.
//!
//! Run: `cargo bench -p cirrus-benches --bench micro`. These bound what the client and a
//! data server can do per core before any IO; compare them with the disk's ~0.6 GB/s.

use bytes::Bytes;
use cirrus_meta::state::{Command, MetaState, SetAttr};
use cirrus_proto::pb;
use cirrus_types::checksum::{piece_crcs, verify_pieces};
use cirrus_types::{ChainId, ClusterId, InodeId, Layout, LayoutSpec, LAYOUT_FN_VERSION};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;
use std::hint::black_box;

const MIB: usize = 1 << 20;

fn layout(stripe_count: u32) -> Layout {
    Layout {
        fn_version: LAYOUT_FN_VERSION,
        stripe_unit: MIB as u32,
        chains: (0..stripe_count).map(ChainId).collect(),
    }
}

/// A payload that is not all zeroes, so nothing can shortcut on it.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect()
}

fn stripe_mapping(c: &mut Criterion) {
    let mut g = c.benchmark_group("stripe_mapping");
    let l = layout(4);
    // One 1 MiB write aligned to a unit: the common case, one extent.
    g.bench_function("extents_1MiB_aligned", |b| {
        b.iter(|| black_box(&l).extents(black_box(64 * MIB as u64), black_box(MIB as u64)))
    });
    // An unaligned 1 MiB write straddles two units: two extents.
    g.bench_function("extents_1MiB_unaligned", |b| {
        b.iter(|| black_box(&l).extents(black_box(64 * MIB as u64 + 4096), black_box(MIB as u64)))
    });
    // A 64 MiB read-ahead window over 4 objects: 64 extents.
    g.bench_function("extents_64MiB_window", |b| {
        b.iter(|| black_box(&l).extents(black_box(0), black_box(64 * MIB as u64)))
    });
    g.bench_function("locate", |b| {
        b.iter(|| black_box(&l).locate(black_box(123_456_789)))
    });
    g.finish();
}

fn crc32c(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for len in [4096usize, MIB] {
        let data = payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("piece_crcs", len), &data, |b, d| {
            b.iter(|| piece_crcs(black_box(0), black_box(d)))
        });
        let crcs = piece_crcs(0, &data);
        g.bench_with_input(BenchmarkId::new("verify_pieces", len), &data, |b, d| {
            b.iter(|| verify_pieces(black_box(0), black_box(d), black_box(&crcs)))
        });
    }
    g.finish();
}

fn write_request(data: Bytes) -> pb::WriteRequest {
    let crcs = piece_crcs(0, &data);
    pb::WriteRequest {
        cluster_id: "bench-cluster-0000".to_string(),
        chain: Some(pb::ChainRef { id: 3, version: 7 }),
        object: Some(pb::ObjectRef { ino: 42, index: 1 }),
        offset: 0,
        data,
        crcs,
        sync: false,
        hop: 0,
    }
}

fn protobuf(c: &mut Criterion) {
    let mut g = c.benchmark_group("protobuf_write_1MiB");
    g.throughput(Throughput::Bytes(MIB as u64));
    let req = write_request(Bytes::from(payload(MIB)));
    let mut buf = Vec::with_capacity(req.encoded_len());
    g.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            // Encoding into a reserved Vec cannot fail; the Result is for short buffers.
            let r = black_box(&req).encode(&mut buf);
            black_box(r.is_ok())
        })
    });
    let encoded = Bytes::from(req.encode_to_vec());
    // Decoding from `Bytes` lets prost slice the payload instead of copying it: this is
    // what tonic hands the server.
    g.bench_function("decode_from_bytes", |b| {
        b.iter(|| pb::WriteRequest::decode(black_box(encoded.clone())).map(|r| r.data.len()))
    });
    g.finish();
}

/// A state with Init, two data servers (so files get layouts) and `files` files in
/// directory `d`; returns the state and `d`'s inode.
fn meta_state(files: usize) -> (MetaState, InodeId) {
    let mut s = MetaState::default();
    let now_ns = 1_700_000_000_000_000_000;
    let ok = |r: cirrus_meta::state::Response| r.expect("setup command applies");
    ok(s.apply(&Command::Init {
        cluster_id: ClusterId(7),
        replicas: 2,
        now_ns,
    }));
    for i in 0..2 {
        ok(s.apply(&Command::RegisterServer {
            uuid: format!("uuid-{i}"),
            address: format!("127.0.0.1:{}", 7100 + i),
            capacity: 1 << 40,
            free: 1 << 40,
            now_ns,
        }));
    }
    ok(s.apply(&Command::Mkdir {
        parent: InodeId::ROOT,
        name: b"d".to_vec(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        now_ns,
    }));
    let d = s.lookup(InodeId::ROOT, b"d").expect("lookup d").ino;
    for i in 0..files {
        ok(s.apply(&create(d, format!("f{i}"), now_ns)));
    }
    (s, d)
}

fn create(parent: InodeId, name: String, now_ns: i64) -> Command {
    Command::Create {
        parent,
        name: name.into_bytes(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
        client: None,
        spec: LayoutSpec::default(),
        now_ns,
    }
}

fn meta_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("meta_apply");
    g.throughput(Throughput::Elements(1));
    let (mut s, d) = meta_state(10_000);
    let mut n = 0u64;
    // Each iteration is one raft entry; create + unlink keeps the directory at 10k.
    g.bench_function("create_then_unlink_in_10k_dir", |b| {
        b.iter(|| {
            n += 1;
            let name = format!("new{n}");
            let r = s.apply(&create(d, name.clone(), 1_700_000_000_000_000_000));
            black_box(r.is_ok());
            let r = s.apply(&Command::Unlink {
                parent: d,
                name: name.into_bytes(),
                now_ns: 1_700_000_000_000_000_000,
            });
            black_box(r.is_ok())
        })
    });
    let ino = s.lookup(d, b"f0").expect("f0").ino;
    g.bench_function("setattr_mtime", |b| {
        b.iter(|| {
            n += 1;
            s.apply(&Command::Setattr {
                ino,
                set: SetAttr {
                    mtime: Some(cirrus_meta::state::TimeSet::Ns(n as i64)),
                    ..SetAttr::default()
                },
                now_ns: 1_700_000_000_000_000_000,
            })
            .is_ok()
        })
    });
    g.bench_function("rename_back_and_forth", |b| {
        let mut flip = false;
        b.iter(|| {
            let (from, to): (&[u8], &[u8]) = if flip { (b"g1", b"f1") } else { (b"f1", b"g1") };
            flip = !flip;
            s.apply(&Command::Rename {
                parent: d,
                name: from.to_vec(),
                new_parent: d,
                new_name: to.to_vec(),
                flags: 0,
                now_ns: 1_700_000_000_000_000_000,
            })
            .is_ok()
        })
    });
    g.bench_function("getattr_query", |b| {
        b.iter(|| s.getattr(black_box(ino)).is_ok())
    });
    g.finish();
    let mut g = c.benchmark_group("meta_snapshot");
    g.sample_size(10);
    g.bench_function("bincode_serialize_10k_files", |b| {
        b.iter(|| bincode::serialize(&s).map(|v| v.len()).unwrap_or(0))
    });
    g.finish();
}

criterion_group!(benches, stripe_mapping, crc32c, protobuf, meta_apply);
criterion_main!(benches);
