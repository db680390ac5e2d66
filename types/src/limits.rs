//! The size limits of the contract, in one place: every door (the FUSE adapter and the
//! client library, the meta service and state machine, the data service and object
//! store) checks against these same numbers, so a size refused at one door is refused at
//! all of them (`EFBIG`, `FsError::TooBig`) and none of them sizes a structure by a number
//! a caller named. Why these values: `docs/design/0007-limits.md`.

use crate::{FsError, FsResult};

/// Largest file size: 4 PiB (2^52). A file's objects are never longer than the file, so
/// this is also the largest object size. A data server keeps an object's bytes in 4 TiB
/// segment files (ext4 with 4 KiB blocks stops one file at 16 TiB) and its crcs in one
/// sparse sidecar of 4 bytes per 4 KiB block, at most 4 TiB long: the sidecar is what
/// bounds this value below ext4's per-file limit. Every offset and block index fits a
/// `u64` with room (no sum of two offsets of this size overflows).
pub const MAX_FILE_SIZE: u64 = 1 << 52;

/// Refuses a file (or object) range `[off, off + len)` that ends past [`MAX_FILE_SIZE`]
/// (or overflows): `EFBIG`, as a local filesystem answers a write or truncate past its
/// `s_maxbytes`.
pub fn check_file_range(off: u64, len: u64) -> FsResult<u64> {
    match off.checked_add(len) {
        Some(end) if end <= MAX_FILE_SIZE => Ok(end),
        _ => Err(FsError::TooBig),
    }
}

/// The most bytes one data-server copy call (`copy_file_range` done by the data servers)
/// moves: the server holds them in memory between reading the source and writing the
/// destination, so a caller cannot make it hold more.
pub const MAX_COPY: u32 = 1 << 20;

/// Refuses a file size past [`MAX_FILE_SIZE`].
pub fn check_file_size(size: u64) -> FsResult<()> {
    check_file_range(size, 0).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_ending_at_the_limit_pass_and_past_it_are_efbig() {
        assert_eq!(check_file_range(MAX_FILE_SIZE - 1, 1), Ok(MAX_FILE_SIZE));
        assert_eq!(check_file_range(0, MAX_FILE_SIZE), Ok(MAX_FILE_SIZE));
        assert_eq!(check_file_range(MAX_FILE_SIZE, 1), Err(FsError::TooBig));
        assert_eq!(check_file_range(u64::MAX, 1), Err(FsError::TooBig));
        assert_eq!(check_file_size(MAX_FILE_SIZE), Ok(()));
        assert_eq!(check_file_size(MAX_FILE_SIZE + 1), Err(FsError::TooBig));
    }
}
