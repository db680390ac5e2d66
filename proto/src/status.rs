//! The one mapping between `FsError` and `tonic::Status`. The exact error travels in the
//! `cirrus-error` metadata key (plus `cirrus-leader` / `cirrus-chain-version` for the
//! retry-driving variants); the gRPC code is chosen so that generic tools read it right.

use cirrus_types::{ChainVersion, ClusterId, FsError};
use tonic::{Code, Status};

const KEY_ERROR: &str = "cirrus-error";
const KEY_LEADER: &str = "cirrus-leader";
const KEY_CHAIN_VERSION: &str = "cirrus-chain-version";

fn tag(e: &FsError) -> (&'static str, Code) {
    use FsError::*;
    match e {
        NotFound => ("not_found", Code::NotFound),
        Exists => ("exists", Code::AlreadyExists),
        NotDir => ("not_dir", Code::FailedPrecondition),
        IsDir => ("is_dir", Code::FailedPrecondition),
        NotEmpty => ("not_empty", Code::FailedPrecondition),
        Invalid(_) => ("invalid", Code::InvalidArgument),
        NameTooLong => ("name_too_long", Code::InvalidArgument),
        NoSpace => ("no_space", Code::ResourceExhausted),
        TooBig => ("too_big", Code::OutOfRange),
        NoAttr => ("no_attr", Code::NotFound),
        Range => ("range", Code::OutOfRange),
        PermissionDenied => ("permission_denied", Code::PermissionDenied),
        NotSupported(_) => ("not_supported", Code::Unimplemented),
        StaleHandle => ("stale_handle", Code::NotFound),
        Io(_) => ("io", Code::Internal),
        Checksum(_) => ("checksum", Code::DataLoss),
        NotLeader { .. } => ("not_leader", Code::Unavailable),
        StaleChain { .. } => ("stale_chain", Code::FailedPrecondition),
        WrongCluster { .. } => ("wrong_cluster", Code::PermissionDenied),
        Unavailable(_) => ("unavailable", Code::Unavailable),
        Timeout(_) => ("timeout", Code::DeadlineExceeded),
        TooManyOpen(_) => ("too_many_open", Code::ResourceExhausted),
        WouldBlock(_) => ("would_block", Code::FailedPrecondition),
        Deadlock(_) => ("deadlock", Code::Aborted),
        Interrupted(_) => ("interrupted", Code::Cancelled),
        NoLocks(_) => ("no_locks", Code::ResourceExhausted),
        Protocol(_) => ("protocol", Code::InvalidArgument),
    }
}

/// Encodes an error for the wire.
pub fn to_status(e: &FsError) -> Status {
    let (t, code) = tag(e);
    let mut s = Status::new(code, e.to_string());
    let md = s.metadata_mut();
    md.insert(KEY_ERROR, t.parse().expect("static ascii tag"));
    match e {
        FsError::NotLeader {
            leader_hint: Some(h),
        } => {
            if let Ok(v) = h.parse() {
                md.insert(KEY_LEADER, v);
            }
        }
        FsError::StaleChain { current } => {
            md.insert(
                KEY_CHAIN_VERSION,
                current.0.to_string().parse().expect("digits"),
            );
        }
        _ => {}
    }
    s
}

/// The gRPC code name an error is sent with (`"Unavailable"`, ...), for metrics of
/// protocols that are not gRPC.
pub fn code_name(e: &FsError) -> String {
    format!("{:?}", tag(e).1)
}

/// Encodes an error for the bulk protocol: the gRPC mapping's tag and message, plus the
/// retry-driving fields.
pub fn to_wire(e: &FsError) -> crate::pb::WireError {
    let mut w = crate::pb::WireError {
        tag: tag(e).0.to_string(),
        message: e.to_string(),
        ..Default::default()
    };
    match e {
        FsError::NotLeader {
            leader_hint: Some(h),
        } => w.leader_hint = h.clone(),
        FsError::StaleChain { current } => w.chain_version = current.0,
        _ => {}
    }
    w
}

/// Decodes a bulk-protocol error; an unknown tag is an I/O error naming it.
pub fn from_wire(w: &crate::pb::WireError) -> FsError {
    let leader = (!w.leader_hint.is_empty()).then(|| w.leader_hint.clone());
    from_tag(&w.tag, &w.message, leader, Some(w.chain_version))
        .unwrap_or_else(|| FsError::Io(format!("{} (error tag {:?})", w.message, w.tag)))
}

/// The error a tag stands for; `None` for a tag this version does not know.
fn from_tag(
    tag: &str,
    msg: &str,
    leader: Option<String>,
    chain_version: Option<u64>,
) -> Option<FsError> {
    let detail = |prefix: &str| msg.strip_prefix(prefix).unwrap_or(msg).to_string();
    Some(match tag {
        "not_found" => FsError::NotFound,
        "exists" => FsError::Exists,
        "not_dir" => FsError::NotDir,
        "is_dir" => FsError::IsDir,
        "not_empty" => FsError::NotEmpty,
        "invalid" => FsError::Invalid(detail("invalid argument: ")),
        "name_too_long" => FsError::NameTooLong,
        "no_space" => FsError::NoSpace,
        "too_big" => FsError::TooBig,
        "no_attr" => FsError::NoAttr,
        "range" => FsError::Range,
        "permission_denied" => FsError::PermissionDenied,
        "not_supported" => FsError::NotSupported(detail("operation not supported: ")),
        "stale_handle" => FsError::StaleHandle,
        "io" => FsError::Io(detail("i/o error: ")),
        "checksum" => FsError::Checksum(detail("checksum mismatch: ")),
        "not_leader" => FsError::NotLeader {
            leader_hint: leader,
        },
        "stale_chain" => FsError::StaleChain {
            current: ChainVersion(chain_version.unwrap_or(0)),
        },
        "wrong_cluster" => FsError::WrongCluster {
            expected: ClusterId(0),
            got: msg.to_string(),
        },
        "unavailable" => FsError::Unavailable(detail("unavailable: ")),
        "too_many_open" => FsError::TooManyOpen(detail("too many open files: ")),
        "timeout" => FsError::Timeout(detail("deadline exceeded: ")),
        "would_block" => FsError::WouldBlock(detail("resource temporarily unavailable: ")),
        "deadlock" => FsError::Deadlock(detail("resource deadlock avoided: ")),
        "interrupted" => FsError::Interrupted(detail("interrupted: ")),
        "no_locks" => FsError::NoLocks(detail("no locks available: ")),
        "protocol" => FsError::Protocol(detail("protocol error: ")),
        _ => return None,
    })
}

/// Decodes a status received from a peer (or produced by the transport) into an error.
pub fn from_status(s: &Status) -> FsError {
    let md = s.metadata();
    let msg = s.message().to_string();
    let known = md
        .get(KEY_ERROR)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| {
            from_tag(
                t,
                &msg,
                md.get(KEY_LEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
                md.get(KEY_CHAIN_VERSION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            )
        });
    match known {
        Some(e) => e,
        None => match s.code() {
            // Produced by the transport itself, not by a Cirrus server.
            Code::Unavailable | Code::Cancelled | Code::Aborted | Code::Unknown => {
                FsError::Unavailable(msg)
            }
            Code::DeadlineExceeded => FsError::Timeout(msg),
            Code::ResourceExhausted => FsError::Invalid(format!("message too large: {msg}")),
            Code::Unimplemented => FsError::NotSupported(msg),
            _ => FsError::Io(format!("{:?}: {msg}", s.code())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_wire() {
        let all = vec![
            FsError::NotFound,
            FsError::Exists,
            FsError::NotDir,
            FsError::IsDir,
            FsError::NotEmpty,
            FsError::Invalid("bad offset".into()),
            FsError::NameTooLong,
            FsError::NoSpace,
            FsError::TooBig,
            FsError::NoAttr,
            FsError::Range,
            FsError::PermissionDenied,
            FsError::NotSupported("fallocate mode 8".into()),
            FsError::StaleHandle,
            FsError::Io("disk".into()),
            FsError::Checksum("block 3".into()),
            FsError::NotLeader {
                leader_hint: Some("127.0.0.1:7001".into()),
            },
            FsError::NotLeader { leader_hint: None },
            FsError::StaleChain {
                current: ChainVersion(7),
            },
            FsError::Unavailable("down".into()),
            FsError::TooManyOpen("client 3 holds 1048576".into()),
            FsError::Timeout("slow".into()),
            FsError::WouldBlock("held by client 2".into()),
            FsError::Deadlock("cycle of 2 waiters".into()),
            FsError::Interrupted("signal".into()),
            FsError::NoLocks("client 3 holds 16384".into()),
            FsError::Protocol("message without attr".into()),
        ];
        for e in all {
            assert_eq!(from_status(&to_status(&e)), e, "{e:?}");
            assert_eq!(from_wire(&to_wire(&e)), e, "bulk: {e:?}");
        }
        let wc = from_status(&to_status(&FsError::WrongCluster {
            expected: ClusterId(1),
            got: "x".into(),
        }));
        assert!(matches!(wc, FsError::WrongCluster { .. }));
        assert_eq!(wc.errno(), libc_eio());
    }

    fn libc_eio() -> i32 {
        5
    }
}
