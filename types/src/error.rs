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
    /// A lock held by another owner conflicts (EAGAIN for F_SETLK; a blocking wait
    /// answers it when its wait slice ends, and the client asks again).
    #[error("resource temporarily unavailable: {0}")]
    WouldBlock(String),
    /// Waiting for this lock would close a cycle of waiters (EDEADLK).
    #[error("resource deadlock avoided: {0}")]
    Deadlock(String),
    /// A blocking call was cancelled by a signal to its caller (EINTR).
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A per-client ceiling on lock records or lock waiters was reached (ENOLCK).
    #[error("no locks available: {0}")]
    NoLocks(String),
    /// A message lacked a field or carried a value no domain type has
    /// (`cirrus_proto::convert::ProtocolError`): a peer of another version or a bug, never
    /// retried.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// How a failed attempt may be retried ([`FsError::retry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The answer is final: the request itself is refused (bad input, not found, a
    /// failure on the request, a checksum that no member can fix).
    No,
    /// The node was not the right one or not reachable at that moment (not the leader,
    /// down, busy, too slow): try another node, or the same one after a pause.
    Elsewhere,
    /// The caller's view of a chain is older than the chain: the data path refreshes its
    /// chain table from meta and tries again. Not retried by the meta leader loop: from
    /// meta it answers a data server's report for an old chain version, final for it.
    AfterRefresh,
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
            WouldBlock(_) => libc::EAGAIN,
            Deadlock(_) => libc::EDEADLK,
            Interrupted(_) => libc::EINTR,
            NoLocks(_) => libc::ENOLCK,
            Protocol(_) => libc::EIO,
        }
    }

    /// Whether, and how, an attempt that failed this way may be tried again before the
    /// call's deadline: the one classification every retry loop follows.
    pub fn retry(&self) -> Retry {
        match self {
            FsError::NotLeader { .. } | FsError::Unavailable(_) | FsError::Timeout(_) => {
                Retry::Elsewhere
            }
            FsError::StaleChain { .. } => Retry::AfterRefresh,
            _ => Retry::No,
        }
    }

    /// True for errors a caller should retry (`retry()` is not `Retry::No`).
    pub fn is_retryable(&self) -> bool {
        self.retry() != Retry::No
    }
}
