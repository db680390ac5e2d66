//! The one error enum that crosses crate boundaries. Errors that drive a retry carry
//! what the caller needs (`NotLeader { leader_hint }`, `StaleChain { current }`).
//! `errno()` is the single mapping to POSIX errno, used by the FUSE adapter.

use crate::ids::{ChainVersion, ClusterId};
use thiserror::Error;

pub type FsResult<T> = Result<T, FsError>;

/// Serializable because the meta state machine's apply result (a raft response) carries it.
#[derive(Clone, Debug, Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("file name too long")]
    NameTooLong,
    #[error("no space left on device")]
    NoSpace,
    #[error("file too large")]
    TooBig,
    #[error("no such attribute")]
    NoAttr,
    #[error("result too large for the buffer")]
    Range,
    #[error("permission denied")]
    PermissionDenied,
    #[error("operation not supported: {0}")]
    NotSupported(String),
    #[error("stale handle")]
    StaleHandle,
    #[error("i/o error: {0}")]
    Io(String),
    #[error("checksum mismatch: {0}")]
    Checksum(String),
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<String> },
    #[error("stale chain version, current is {current}")]
    StaleChain { current: ChainVersion },
    #[error("wrong cluster: this is {expected}, request was for {got}")]
    WrongCluster { expected: ClusterId, got: String },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("deadline exceeded: {0}")]
    Timeout(String),
    /// A per-client ceiling on open files was reached (ENFILE). Last, so that the
    /// serialized indices of the variants before it stay what they were.
    #[error("too many open files: {0}")]
    TooManyOpen(String),
}

impl FsError {
    /// The errno a local filesystem would return for this error.
    pub fn errno(&self) -> i32 {
        use FsError::*;
        match self {
            NotFound => libc::ENOENT,
            Exists => libc::EEXIST,
            NotDir => libc::ENOTDIR,
            IsDir => libc::EISDIR,
            NotEmpty => libc::ENOTEMPTY,
            Invalid(_) => libc::EINVAL,
            NameTooLong => libc::ENAMETOOLONG,
            NoSpace => libc::ENOSPC,
            TooBig => libc::EFBIG,
            NoAttr => libc::ENODATA,
            Range => libc::ERANGE,
            PermissionDenied => libc::EACCES,
            NotSupported(_) => libc::EOPNOTSUPP,
            StaleHandle => libc::ESTALE,
            Io(_) | Checksum(_) | NotLeader { .. } | StaleChain { .. } | Unavailable(_) => {
                libc::EIO
            }
            WrongCluster { .. } => libc::EIO,
            Timeout(_) => libc::ETIMEDOUT,
            TooManyOpen(_) => libc::ENFILE,
        }
    }

    /// True for errors a caller should retry (after following a hint or refreshing a cache).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FsError::NotLeader { .. } | FsError::StaleChain { .. } | FsError::Unavailable(_)
        )
    }
}
