//! Validation of directory entry names, done on the server for every request.

use crate::{FsError, FsResult};

/// Longest name in bytes, as on ext4/XFS.
pub const NAME_MAX: usize = 255;

/// A name is non-empty, at most 255 bytes, has no `/` or NUL and is not `.` or `..`.
pub fn validate_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() {
        return Err(FsError::Invalid("empty name".into()));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.contains(&b'/') {
        return Err(FsError::Invalid("name contains '/'".into()));
    }
    if name.contains(&0) {
        return Err(FsError::Invalid("name contains NUL".into()));
    }
    if name == b"." || name == b".." {
        return Err(FsError::Invalid("name is '.' or '..'".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_with_specific_errors() {
        assert!(matches!(validate_name(b""), Err(FsError::Invalid(_))));
        assert!(matches!(validate_name(b"a/b"), Err(FsError::Invalid(_))));
        assert!(matches!(validate_name(b"a\0b"), Err(FsError::Invalid(_))));
        assert!(matches!(validate_name(b".."), Err(FsError::Invalid(_))));
        assert_eq!(validate_name(&[b'x'; 256]), Err(FsError::NameTooLong));
        assert_eq!(validate_name(&[b'x'; 255]), Ok(()));
        assert_eq!(validate_name("ünïcode name".as_bytes()), Ok(()));
    }
}
