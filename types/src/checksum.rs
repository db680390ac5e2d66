//! crc32c per block. The block is 4 KiB: the O_DIRECT alignment and the server's
//! read-modify-write unit, so a small aligned write never rewrites a neighbour's checksum
//! range, and the sidecar costs 4 bytes per 4 KiB (0.1 %).
//!
//! On the wire a payload carries one crc per *piece*: the payload split at multiples of
//! `CRC_BLOCK` in object-offset space (so an unaligned payload has a short first and/or
//! last piece). Every receiver recomputes and compares before it persists or returns.

use crate::{FsError, FsResult};

/// Checksum block size in bytes.
pub const CRC_BLOCK: u64 = 4096;

/// Piece lengths of a payload that starts at `object_offset` and is `len` bytes long.
pub fn pieces(object_offset: u64, len: usize) -> impl Iterator<Item = (u64, usize)> {
    let mut pos = object_offset;
    let end = object_offset + len as u64;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let block_end = (pos / CRC_BLOCK + 1) * CRC_BLOCK;
        let n = (block_end.min(end) - pos) as usize;
        let item = (pos, n);
        pos += n as u64;
        Some(item)
    })
}

/// crc32c of each piece of `data`, which starts at `object_offset`.
pub fn piece_crcs(object_offset: u64, data: &[u8]) -> Vec<u32> {
    let mut at = 0usize;
    pieces(object_offset, data.len())
        .map(|(_, n)| {
            let c = crc32c::crc32c(&data[at..at + n]);
            at += n;
            c
        })
        .collect()
}

/// Checks `crcs` against `data`; names the first bad piece's object offset on mismatch.
pub fn verify_pieces(object_offset: u64, data: &[u8], crcs: &[u32]) -> FsResult<()> {
    let mut at = 0usize;
    let mut count = 0usize;
    for ((pos, n), i) in pieces(object_offset, data.len()).zip(0..) {
        count += 1;
        let Some(expected) = crcs.get(i) else {
            return Err(FsError::Checksum(format!(
                "missing crc for piece at offset {pos}"
            )));
        };
        let got = crc32c::crc32c(&data[at..at + n]);
        if got != *expected {
            return Err(FsError::Checksum(format!(
                "piece at object offset {pos} (+{n}): crc {got:08x}, expected {expected:08x}"
            )));
        }
        at += n;
    }
    if count != crcs.len() {
        return Err(FsError::Checksum(format!(
            "{} crcs for {count} pieces",
            crcs.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_payload_splits_at_block_boundaries() {
        let p: Vec<_> = pieces(4000, 5000).collect();
        assert_eq!(p, vec![(4000, 96), (4096, 4096), (8192, 808)]);
        assert_eq!(pieces(0, 0).count(), 0);
    }

    #[test]
    fn corrupted_byte_is_detected() {
        let mut data = vec![7u8; 10000];
        let crcs = piece_crcs(123, &data);
        verify_pieces(123, &data, &crcs).unwrap();
        data[5000] ^= 1;
        assert!(matches!(
            verify_pieces(123, &data, &crcs),
            Err(FsError::Checksum(_))
        ));
        assert!(verify_pieces(123, &data, &crcs[..1]).is_err());
    }
}
