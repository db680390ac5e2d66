//! Hostile-input generators for the decoder harnesses of proto, meta and data (issue 22),
//! on stable Rust with proptest (a dev-dependency only: nothing here reaches a binary): byte strings a peer could send, shaped so that they reach past the first
//! check of a decoder rather than failing it at byte 0.
//!
//! [`field_soup`] is a protobuf message built field by field: tags 1..=14, each a varint
//! or a length-delimited value, the values drawn from the edges a door must refuse or
//! survive (0, 1, all-ones, 2^63, inode 1, mode bits, names such as `""`, `"."`, `".."`,
//! `"a/b"`, a NUL, 255 and 256 bytes) and from plain random ones, a length-delimited value
//! being now and then a nested soup (a sub-message such as an `Attr` or a `ChainRef`).
//! Decoded as any message type it gives that type's fields strange but well-formed
//! values; a wrong wire type for a field gives a decode error, as from a real peer.
//! [`hostile_bytes`] is raw noise, a soup, or a valid encoding cut short or bit-flipped.
//!
//! Budgets: each harness runs proptest's `cases` (set in the test, a few hundred to a
//! few thousand, seconds in all); `PROPTEST_CASES=100000 cargo nextest run -E
//! 'test(/fuzz/)'` runs a longer campaign with the same code.

use proptest::prelude::*;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field's value.
#[derive(Clone, Debug)]
pub enum Value {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(3),
        Just(0o777),
        Just(0o40755),
        Just(0o100644),
        Just(1 << 20),
        Just(u32::MAX as u64),
        Just(1 << 63),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        (0u64..64),
        any::<u64>(),
    ]
}

fn edge_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b"a".to_vec()),
        Just(b"a/b".to_vec()),
        Just(b"f\0g".to_vec()),
        Just(b"user.x".to_vec()),
        Just(b"trusted.x".to_vec()),
        Just(vec![b'n'; 255]),
        Just(vec![b'n'; 256]),
        Just(b"00000000000000000000000000000000".to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn encode(fields: &[(u32, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, v) in fields {
        match v {
            Value::Varint(x) => {
                varint(&mut out, u64::from(*tag) << 3); // wire type 0: varint
                varint(&mut out, *x);
            }
            Value::Bytes(b) => {
                varint(&mut out, (u64::from(*tag) << 3) | 2);
                varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

fn flat_field() -> impl Strategy<Value = (u32, Value)> {
    (
        1u32..=14,
        prop_oneof![
            edge_u64().prop_map(Value::Varint),
            edge_bytes().prop_map(Value::Bytes),
        ],
    )
}

/// A protobuf message of up to 12 fields, some of them nested messages of their own.
pub fn field_soup() -> impl Strategy<Value = Vec<u8>> {
    let field = (
        1u32..=14,
        prop_oneof![
            4 => edge_u64().prop_map(Value::Varint),
            3 => edge_bytes().prop_map(Value::Bytes),
            2 => prop::collection::vec(flat_field(), 0..8)
                .prop_map(|f| Value::Bytes(encode(&f))),
        ],
    );
    prop::collection::vec(field, 0..12).prop_map(|f| encode(&f))
}

/// Noise, a field soup, or `valid` cut short or with bytes overwritten.
pub fn hostile_bytes(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len().max(1);
    let pick = move |i: usize| valid.get(i % n).cloned().unwrap_or_default();
    let (p1, p2) = (pick.clone(), pick);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        field_soup(),
        (any::<usize>(), any::<usize>()).prop_map(move |(i, cut)| {
            let v = p1(i);
            let keep = if v.is_empty() { 0 } else { cut % v.len() };
            v[..keep].to_vec()
        }),
        (
            any::<usize>(),
            prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)
        )
            .prop_map(move |(i, flips)| {
                let mut v = p2(i);
                if !v.is_empty() {
                    let len = v.len();
                    for (at, b) in flips {
                        v[at % len] = b;
                    }
                }
                v
            }),
    ]
}

/// A harness's case count: `PROPTEST_CASES` when set (a longer campaign), else `default`
/// (the suite's fixed budget). `ProptestConfig::with_cases` alone would ignore the variable.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
