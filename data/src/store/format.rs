//! On-disk format of an object's checksum sidecar (`<ino>_<index>.crc`), which also holds
//! the object's header: the data file (`<ino>_<index>.dat`) is raw object bytes from
//! offset 0, so an O_DIRECT block of the object is an aligned block of the file. Layout
//! drawn in docs/design/0003-data-objects.md.
//!
//! ```text
//! 0   magic  "CIRRUSCK"          8
//! 8   version u32 = 2            4
//! 12  block size u32 = 4096      4
//! 16  chain id u32               4
//! 20  flags u32 = 0              4
//! 24  inode u64                  8
//! 32  object index u32           4
//! 36  reserved u32 = 0           4
//! 40  logical size u64           8
//! 48  crc32c of bytes 0..48 u32  4
//! 52  reserved, zero            12
//! 64  crc32c u32 of block 0, block 1, ... (little endian), one per block of the size,
//!     stored XOR the crc of a zero block (version 2)
//! ```
//!
//! Version 2 stores each crc XOR the crc of a zero block, so an entry never written (a
//! hole in the sparse sidecar, or past its end) reads as 0 and means "a zero block": the
//! sidecar of an object extended by truncate or by a far write holds only the crcs of
//! the blocks written. Version 1 stored raw crcs (a missing entry meant "unknown"); it is
//! read and rewritten as version 2 when the store loads it.

use super::{StoreError, StoreResult, BLOCK};
use cirrus_types::{ChainId, InodeId, ObjectKey};

pub const MAGIC: &[u8; 8] = b"CIRRUSCK";
pub const VERSION: u32 = 2;
/// The raw-crc layout of the first releases, converted on load.
pub const VERSION_RAW: u32 = 1;
pub const HEADER_LEN: u64 = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub chain: ChainId,
    pub key: ObjectKey,
    pub size: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.chain.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.key.inode.0.to_le_bytes());
        b[32..36].copy_from_slice(&self.key.index.to_le_bytes());
        b[40..48].copy_from_slice(&self.size.to_le_bytes());
        let c = cirrus_types::checksum::crc32c(&b[0..48]);
        b[48..52].copy_from_slice(&c.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> StoreResult<Header> {
        Self::decode_versioned(b).map(|(h, _)| h)
    }

    /// The header and the layout version of the crcs after it.
    pub fn decode_versioned(b: &[u8]) -> StoreResult<(Header, u32)> {
        let bad = |m: &str| StoreError::Invalid(format!("checksum sidecar header: {m}"));
        if b.len() < HEADER_LEN as usize {
            return Err(bad("short"));
        }
        if &b[0..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let version = u32_at(8);
        if version != VERSION && version != VERSION_RAW {
            return Err(bad(&format!("unknown version {version}")));
        }
        if u32_at(12) as u64 != BLOCK {
            return Err(bad(&format!("block size {}", u32_at(12))));
        }
        if cirrus_types::checksum::crc32c(&b[0..48]) != u32_at(48) {
            return Err(bad("header crc mismatch"));
        }
        Ok((
            Header {
                chain: ChainId(u32_at(16)),
                key: ObjectKey {
                    inode: InodeId(u64_at(24)),
                    index: u32_at(32),
                },
                size: u64_at(40),
            },
            version,
        ))
    }

    /// A version-1 header (tests of the conversion write old sidecars with it).
    pub fn encode_raw_v1(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = self.encode();
        b[8..12].copy_from_slice(&VERSION_RAW.to_le_bytes());
        let c = cirrus_types::checksum::crc32c(&b[0..48]);
        b[48..52].copy_from_slice(&c.to_le_bytes());
        b
    }
}

/// A block's crc as version 2 stores it (0 for a zero block).
pub fn stored_crc(crc: u32) -> u32 {
    crc ^ super::zero_block_crc()
}

/// A version-2 stored entry back to the block's crc.
pub fn loaded_crc(stored: u32) -> u32 {
    stored ^ super::zero_block_crc()
}

/// Byte offset of block `b`'s crc in the sidecar.
pub fn crc_offset(b: u64) -> u64 {
    HEADER_LEN + 4 * b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_damage_is_refused() {
        let h = Header {
            chain: ChainId(7),
            key: ObjectKey {
                inode: InodeId(42),
                index: 3,
            },
            size: 123_456,
        };
        let mut b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        b[41] ^= 1;
        assert!(Header::decode(&b).is_err());
        let mut m = h.encode();
        m[0] = b'X';
        assert!(Header::decode(&m).is_err());
    }
}
