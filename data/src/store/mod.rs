//! The chunk store: objects named by `ObjectKey`, each belonging to one chain, with a
//! crc32c per 4 KiB block kept beside the data and checked on every read. The trait is
//! what replication, rebuild and scrub use; [`file::FileStore`] is the O_DIRECT +
//! io_uring implementation, [`mem::MemStore`] the in-memory one for fast unit tests.
//!
//! Invariants every implementation keeps:
//! - bytes of an object past its logical size read as zeros, also after a truncate down
//!   and a later extension (the tail of the last block is zeroed on truncate);
//! - a block's stored crc covers the whole 4 KiB block (zeros past the size included);
//! - `read` never returns bytes whose block fails its crc: it reports the bad blocks.

pub mod crcmap;
pub mod file;
pub mod format;
pub mod mem;
pub mod segments;

use bytes::Bytes;
use cirrus_types::{ChainId, FsError, ObjectKey};
use futures::future::BoxFuture;

pub use cirrus_types::checksum::CRC_BLOCK;
pub const BLOCK: u64 = CRC_BLOCK;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("no space left on device")]
    NoSpace,
    #[error("i/o error: {0}")]
    Io(String),
    #[error("checksum mismatch in blocks {blocks:?} of {key:?}")]
    Corrupt { key: ObjectKey, blocks: Vec<u64> },
    #[error("invalid: {0}")]
    Invalid(String),
    /// A range or size past the largest object (`cirrus_types::MAX_FILE_SIZE`): EFBIG.
    #[error("file too large")]
    TooBig,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The store's door: a range `[off, off + len)` of an object must end at or below the
/// largest object (`cirrus_types::MAX_FILE_SIZE`), else `TooBig` and nothing changes.
pub fn check_range(off: u64, len: u64) -> StoreResult<u64> {
    cirrus_types::limits::check_file_range(off, len).map_err(|_| StoreError::TooBig)
}

impl StoreError {
    /// Maps an OS error from `what` (a verb phrase) to the store's error.
    pub fn from_io(what: &str, e: std::io::Error) -> StoreError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace,
            Some(libc::EFBIG) => StoreError::TooBig,
            _ => StoreError::Io(format!("{what}: {e}")),
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> FsError {
        match e {
            StoreError::NoSpace => FsError::NoSpace,
            StoreError::Io(m) => FsError::Io(m),
            StoreError::Corrupt { .. } => FsError::Checksum(e.to_string()),
            StoreError::Invalid(m) => FsError::Invalid(m),
            StoreError::TooBig => FsError::TooBig,
        }
    }
}

/// One object as listed by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub chain: ChainId,
    pub key: ObjectKey,
    pub size: u64,
}

/// Result of a read: the bytes (short when the object ends first), their wire piece
/// crcs (`cirrus_types::checksum::piece_crcs` of `data` at the read offset; for whole
/// blocks these are the stored crcs the read just verified, so no second crc pass) and
/// the object's size.
#[derive(Clone, Debug, Default)]
pub struct ReadOut {
    pub data: Bytes,
    pub crcs: Vec<u32>,
    pub size: u64,
}

/// Object storage with per-block checksums. All offsets are object offsets.
pub trait ChunkStore: Send + Sync + 'static {
    /// Writes `data` at `off` (any alignment), creating the object in `chain` if needed;
    /// edge blocks are read (and verified) and rewritten. Returns the new object size.
    fn write<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &'a [u8],
    ) -> BoxFuture<'a, StoreResult<u64>>;

    /// [`ChunkStore::write`] of a payload whose wire piece crcs (`crcs`, split as
    /// `cirrus_types::checksum::pieces(off, data.len())`) the caller has just verified
    /// against `data`: a piece that is a whole block is that block's crc, so a store may
    /// keep it instead of computing it again (edge blocks merged with old bytes are
    /// always computed). Crcs that do not line up with the pieces are ignored.
    fn write_verified<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &'a [u8],
        crcs: &'a [u32],
    ) -> BoxFuture<'a, StoreResult<u64>> {
        let _ = crcs;
        self.write(chain, key, off, data)
    }

    /// [`ChunkStore::write_verified`] of a payload the store may keep: an O_DIRECT store
    /// writes whole blocks (`off` and the length multiples of `BLOCK`) that lie at a
    /// 4 KiB-aligned address (a bulk-protocol payload) from where they are, without a
    /// copy. Anything else is written as `write_verified` would.
    fn write_owned<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: Bytes,
        crcs: &'a [u32],
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move { self.write_verified(chain, key, off, &data, crcs).await })
    }

    /// Writes whole blocks (`off` and `data.len()` multiples of `BLOCK`) without reading
    /// the old ones, for repair and rebuild; the size becomes max(size, `logical_end`).
    fn put_blocks<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &'a [u8],
        logical_end: u64,
    ) -> BoxFuture<'a, StoreResult<u64>>;

    /// Writes block `block` as lost (rebuild found no good copy anywhere): zeros under a
    /// crc that can never match them, so every read of it fails with `Corrupt` (EIO)
    /// until a write replaces the whole block; the size becomes max(size, `logical_end`).
    fn put_lost_block(
        &self,
        chain: ChainId,
        key: ObjectKey,
        block: u64,
        logical_end: u64,
    ) -> BoxFuture<'_, StoreResult<u64>>;

    /// Reads up to `len` bytes at `off`, each covering block verified.
    fn read(&self, key: ObjectKey, off: u64, len: usize) -> BoxFuture<'_, StoreResult<ReadOut>>;

    /// Sets the size; creates the object in `chain` if needed.
    fn truncate(&self, chain: ChainId, key: ObjectKey, size: u64)
        -> BoxFuture<'_, StoreResult<()>>;

    /// Makes `[off, off + len)` read as zeros without changing the size (fallocate
    /// PUNCH_HOLE and ZERO_RANGE): whole blocks become holes again (crcs implicit, disk
    /// space given back), the partial blocks at the edges are rewritten with zeros under
    /// fresh crcs (verified first, like a write's edges), bytes past the size are left
    /// alone (they read as zeros already). Costs the blocks written in the range, never
    /// its length. Missing: Ok.
    fn punch(
        &self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        len: u64,
    ) -> BoxFuture<'_, StoreResult<()>>;

    /// Makes the object's data and checksums durable (fdatasync). Missing: Ok.
    fn sync(&self, key: ObjectKey) -> BoxFuture<'_, StoreResult<()>>;

    /// Removes the object. Missing: Ok.
    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, StoreResult<()>>;

    /// Size of the object, if present.
    fn size(&self, key: ObjectKey) -> Option<u64>;

    /// Every object.
    fn list(&self) -> Vec<ObjectInfo>;

    /// Byte ranges of the object that may hold data (sorted, disjoint, at most
    /// `crcmap::MAX_RANGES`); everything else below its size is a hole that reads as
    /// zeros. Rebuild and scrub walk these instead of the size. Missing: empty.
    fn data_ranges(&self, key: ObjectKey) -> BoxFuture<'_, Vec<(u64, u64)>>;

    /// False when a buffered fallback is in use.
    fn direct_io(&self) -> bool;

    /// (capacity, free) bytes of the underlying filesystem.
    fn space(&self) -> (u64, u64);
}

/// Block index range `[first, end)` covering bytes `[off, off + len)`.
pub fn block_range(off: u64, len: u64) -> (u64, u64) {
    if len == 0 {
        return (off / BLOCK, off / BLOCK);
    }
    (off / BLOCK, (off + len).div_ceil(BLOCK))
}

/// The crc stored for a lost block: never the crc of the zeros written there.
pub fn lost_block_crc() -> u32 {
    !zero_block_crc()
}

/// crc32c of one all-zero block (a hole).
pub fn zero_block_crc() -> u32 {
    static ZERO: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| cirrus_types::checksum::crc32c(&[0u8; BLOCK as usize]))
}

/// Wire piece crcs of `data`, which starts at object offset `off`, given `blocks[i]`, the
/// verified crc of block `off / BLOCK + i`: a piece that is a whole block takes its block
/// crc, a partial piece (unaligned start or end) is computed.
pub fn piece_crcs_from_blocks(off: u64, data: &[u8], blocks: &[u32]) -> Vec<u32> {
    let mut at = 0usize;
    cirrus_types::checksum::pieces(off, data.len())
        .enumerate()
        .map(|(i, (_, n))| {
            let piece = &data[at..at + n];
            at += n;
            match blocks.get(i) {
                Some(c) if n == BLOCK as usize => *c,
                _ => cirrus_types::checksum::crc32c(piece),
            }
        })
        .collect()
}

/// Checks `buf` (which starts at block `first`) against `crcs` (indexed by block number);
/// returns bad block indexes.
pub fn bad_blocks(first: u64, buf: &[u8], crcs: &[u32]) -> Vec<u64> {
    bad_blocks_in(first, buf, crcs.get(first as usize..).unwrap_or(&[]))
}

/// Like [`bad_blocks`], with `window[i]` the crc of block `first + i` (missing: a hole).
pub fn bad_blocks_in(first: u64, buf: &[u8], window: &[u32]) -> Vec<u64> {
    buf.chunks(BLOCK as usize)
        .enumerate()
        .filter_map(|(i, chunk)| {
            let b = first + i as u64;
            let want = window.get(i).copied().unwrap_or_else(zero_block_crc);
            let got = if chunk.len() == BLOCK as usize {
                cirrus_types::checksum::crc32c(chunk)
            } else {
                let mut full = chunk.to_vec();
                full.resize(BLOCK as usize, 0);
                cirrus_types::checksum::crc32c(&full)
            };
            (got != want).then_some(b)
        })
        .collect()
}
