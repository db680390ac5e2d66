//! Recorded histories: what each client process invoked, when, and how it ended.
//!
//! An operation ends in one of three ways (Jepsen's vocabulary):
//! - `ok`: the system answered definitely (a success *or* a definite error like ENOENT,
//!   which is an observation the checker must explain);
//! - `fail`: the request certainly had no effect (it was never sent: no node accepted
//!   the connection, or the node answered "not leader" and we gave up);
//! - `info`: unknown (timeout, connection lost after sending, "unavailable"): the
//!   operation may or may not have taken effect, at any time after its invocation. A
//!   process whose op ended in `info` is retired and a fresh process id takes its place,
//!   because its request may still be in flight.
//!
//! Times are nanoseconds since the start of the run, from one monotonic clock.

use serde::{Deserialize, Serialize};

/// Index of a test directory created before the history starts (its inode is known).
pub type DirIx = u8;

/// A metadata operation, with inputs only. Inode numbers in inputs (`Link`, `Setattr`,
/// `Getattr`) were learned by the same process from earlier completed operations.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum MetaOp {
    Create {
        dir: DirIx,
        name: String,
        mode: u32,
    },
    Mkdir {
        dir: DirIx,
        name: String,
        mode: u32,
    },
    Unlink {
        dir: DirIx,
        name: String,
    },
    Rmdir {
        dir: DirIx,
        name: String,
    },
    Rename {
        dir: DirIx,
        name: String,
        to_dir: DirIx,
        to_name: String,
    },
    Link {
        ino: u64,
        dir: DirIx,
        name: String,
    },
    Setattr {
        ino: u64,
        mode: u32,
    },
    Getattr {
        ino: u64,
    },
    Lookup {
        dir: DirIx,
        name: String,
    },
    Readdir {
        dir: DirIx,
    },
}

impl MetaOp {
    /// Short name for tables and the timeline.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaOp::Create { .. } => "create",
            MetaOp::Mkdir { .. } => "mkdir",
            MetaOp::Unlink { .. } => "unlink",
            MetaOp::Rmdir { .. } => "rmdir",
            MetaOp::Rename { .. } => "rename",
            MetaOp::Link { .. } => "link",
            MetaOp::Setattr { .. } => "setattr",
            MetaOp::Getattr { .. } => "getattr",
            MetaOp::Lookup { .. } => "lookup",
            MetaOp::Readdir { .. } => "readdir",
        }
    }

    /// True for operations that never change the namespace.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            MetaOp::Getattr { .. } | MetaOp::Lookup { .. } | MetaOp::Readdir { .. }
        )
    }
}

/// The error classes the namespace model distinguishes. Anything else a server says
/// definitely is `Other` and must not happen in a valid history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrKind {
    NotFound,
    Exists,
    IsDir,
    NotDir,
    NotEmpty,
    /// ENOSPC: a create with no chain that has a live member (no layout can be chosen).
    NoSpace,
    Other,
}

/// Attributes as observed (only the fields the model predicts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeenAttr {
    pub ino: u64,
    pub dir: bool,
    pub mode: u32,
    pub nlink: u32,
}

/// A definite answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum MetaRet {
    /// Success without a value (unlink, rmdir, rename).
    Done,
    /// Success with attributes (create, mkdir, link, setattr, getattr, lookup).
    Attr { attr: SeenAttr },
    /// Sorted names of a complete readdir.
    Names { names: Vec<String> },
    /// A definite error.
    Err { err: ErrKind, msg: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    Ok { ret: MetaRet },
    Fail { why: String },
    Info { why: String },
}

/// One operation of the history, invocation and completion together.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpRecord {
    /// Position in the history (unique).
    pub id: usize,
    /// Logical client process (a new one after each `info`).
    pub process: u64,
    pub op: MetaOp,
    pub invoke_ns: u64,
    /// When the call returned (for `info` too: when we stopped waiting).
    pub complete_ns: u64,
    pub outcome: Outcome,
    /// The meta node that answered (or was last tried), for the timeline.
    #[serde(default)]
    pub node: String,
}

impl OpRecord {
    pub fn outcome_name(&self) -> &'static str {
        match self.outcome {
            Outcome::Ok { .. } => "ok",
            Outcome::Fail { .. } => "fail",
            Outcome::Info { .. } => "info",
        }
    }
}

/// A fault as it happened, for the report and the timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: String,
    pub target: String,
    pub start_ns: u64,
    /// When the fault was healed (None: instantaneous, or healed only at the heal phase).
    pub end_ns: Option<u64>,
    pub note: String,
}
