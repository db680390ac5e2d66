//! criterion micro-benches for the pure code on every byte's path: stripe mapping
//! (`Layout::extents`), crc32c of a 1 MiB payload (`checksum::piece_crcs` and
//! `verify_pieces`), and protobuf encode/decode of a 1 MiB `WriteRequest`.
//!
//! Run: `cargo bench -p cirrus-benches --bench micro`. These bound what the client and a
//! data server can do per core before any IO; compare them with the disk's ~0.6 GB/s.

use bytes::Bytes;
use cirrus_proto::pb;
use cirrus_types::checksum::{piece_crcs, verify_pieces};
use cirrus_types::{ChainId, Layout, LAYOUT_FN_VERSION};
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

criterion_group!(benches, stripe_mapping, crc32c, protobuf);
criterion_main!(benches);
