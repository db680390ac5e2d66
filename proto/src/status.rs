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

/// Decodes a status received from a peer (or produced by the transport) into an error.
pub fn from_status(s: &Status) -> FsError {
    let md = s.metadata();
    let msg = s.message().to_string();
    let detail = |prefix: &str| msg.strip_prefix(prefix).unwrap_or(&msg).to_string();
    match md.get(KEY_ERROR).and_then(|v| v.to_str().ok()) {
        Some("not_found") => FsError::NotFound,
        Some("exists") => FsError::Exists,
        Some("not_dir") => FsError::NotDir,
        Some("is_dir") => FsError::IsDir,
        Some("not_empty") => FsError::NotEmpty,
        Some("invalid") => FsError::Invalid(detail("invalid argument: ")),
        Some("name_too_long") => FsError::NameTooLong,
        Some("no_space") => FsError::NoSpace,
        Some("too_big") => FsError::TooBig,
        Some("no_attr") => FsError::NoAttr,
        Some("range") => FsError::Range,
        Some("permission_denied") => FsError::PermissionDenied,
        Some("not_supported") => FsError::NotSupported(detail("operation not supported: ")),
        Some("stale_handle") => FsError::StaleHandle,
        Some("io") => FsError::Io(detail("i/o error: ")),
        Some("checksum") => FsError::Checksum(detail("checksum mismatch: ")),
        Some("not_leader") => FsError::NotLeader {
            leader_hint: md
                .get(KEY_LEADER)
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        },
        Some("stale_chain") => FsError::StaleChain {
            current: ChainVersion(
                md.get(KEY_CHAIN_VERSION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
        },
        Some("wrong_cluster") => FsError::WrongCluster {
            expected: ClusterId(0),
            got: msg,
        },
        Some("unavailable") => FsError::Unavailable(detail("unavailable: ")),
        Some("timeout") => FsError::Timeout(detail("deadline exceeded: ")),
        _ => match s.code() {
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
            FsError::Timeout("slow".into()),
        ];
        for e in all {
            assert_eq!(from_status(&to_status(&e)), e, "{e:?}");
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
