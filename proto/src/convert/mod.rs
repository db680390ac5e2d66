//! Conversions between wire (`pb::`) and domain (`cirrus_types`) types, for every crate:
//! receivers use the `TryFrom`s, which validate; senders use the `From`s. A message that
//! lacks a field or carries one no domain value has is a [`ProtocolError`] naming the
//! field, mapped once to `FsError::Protocol` (and from there, by `status`, to one gRPC
//! status). Neon's page_api model.rs is the model.

mod attr;
mod chain;
mod info;

pub use attr::attr;

use crate::pb;
use cirrus_types::{
    ChainId, ClientId, ClusterId, FsError, FsResult, InodeId, Layout, LockCall, LockKind,
    LockOwner, ObjectKey,
};

/// A message that does not say what its type promises.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A field the message must carry is absent (proto3 messages are all optional).
    #[error("message without {0}")]
    Missing(&'static str),
    /// A field's value is no value of its domain type.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
}

impl From<ProtocolError> for FsError {
    fn from(e: ProtocolError) -> Self {
        FsError::Protocol(e.to_string())
    }
}

/// The value of a field the message must carry.
pub fn required<T>(v: Option<T>, field: &'static str) -> Result<T, ProtocolError> {
    v.ok_or(ProtocolError::Missing(field))
}

impl TryFrom<&pb::Layout> for Layout {
    type Error = FsError;
    fn try_from(p: &pb::Layout) -> FsResult<Self> {
        let l = Layout {
            fn_version: p.fn_version,
            stripe_unit: p.stripe_unit,
            chains: p.chains.iter().copied().map(ChainId).collect(),
        };
        l.validate()?;
        Ok(l)
    }
}

impl From<&Layout> for pb::Layout {
    fn from(l: &Layout) -> Self {
        pb::Layout {
            fn_version: l.fn_version,
            stripe_unit: l.stripe_unit,
            chains: l.chains.iter().map(|c| c.0).collect(),
        }
    }
}

impl From<ObjectKey> for pb::ObjectRef {
    fn from(k: ObjectKey) -> Self {
        pb::ObjectRef {
            ino: k.inode.0,
            index: k.index,
        }
    }
}

/// Validates an (optional, as proto3 messages are) object reference from the wire.
pub fn object_key(p: Option<&pb::ObjectRef>) -> FsResult<ObjectKey> {
    let p = p.ok_or_else(|| FsError::Invalid("missing object".into()))?;
    if p.ino == 0 {
        return Err(FsError::Invalid("object inode 0".into()));
    }
    Ok(ObjectKey {
        inode: InodeId(p.ino),
        index: p.index,
    })
}

/// Checks a request's cluster id against the server's own. `allow_empty` is for the few
/// calls that may come before the caller knows the id (first registration, doctor).
pub fn check_cluster(ours: ClusterId, theirs: &str, allow_empty: bool) -> FsResult<()> {
    if theirs.is_empty() && allow_empty {
        return Ok(());
    }
    if theirs == ours.to_string() {
        return Ok(());
    }
    Err(FsError::WrongCluster {
        expected: ours,
        got: if theirs.is_empty() {
            "<none>".into()
        } else {
            theirs.to_string()
        },
    })
}

/// The wire code of a lock kind: 0 unlock, 1 shared, 2 exclusive.
pub fn lock_kind_code(k: Option<LockKind>) -> u32 {
    match k {
        None => 0,
        Some(LockKind::Read) => 1,
        Some(LockKind::Write) => 2,
    }
}

/// The lock kind of a wire code (`Invalid` for an unknown one).
pub fn lock_kind(code: u32) -> FsResult<Option<LockKind>> {
    match code {
        0 => Ok(None),
        1 => Ok(Some(LockKind::Read)),
        2 => Ok(Some(LockKind::Write)),
        k => Err(FsError::Invalid(format!("lock kind {k} (0, 1 or 2)"))),
    }
}

/// The wire request of a lock call (wait fields unset).
pub fn lock_request(c: &LockCall) -> pb::LockRequest {
    pb::LockRequest {
        cluster_id: String::new(),
        client_id: c.owner.client.0,
        ino: c.ino.0,
        owner: c.owner.owner,
        kind: lock_kind_code(c.kind),
        start: c.start,
        end: c.end,
        pid: c.pid,
        ..Default::default()
    }
}

/// The lock call of a wire request: client and inode nonzero, a known kind, a range that
/// does not end before it starts.
pub fn lock_call(r: &pb::LockRequest) -> FsResult<LockCall> {
    if r.client_id == 0 {
        return Err(FsError::Invalid("lock without a client id".into()));
    }
    if r.ino == 0 {
        return Err(FsError::Invalid("lock: inode 0".into()));
    }
    cirrus_types::lock::check_lock_range(r.start, r.end)?;
    Ok(LockCall {
        ino: InodeId(r.ino),
        owner: LockOwner {
            client: ClientId(r.client_id),
            owner: r.owner,
        },
        kind: lock_kind(r.kind)?,
        start: r.start,
        end: r.end,
        pid: r.pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_and_invalid_is_refused() {
        let l = Layout {
            fn_version: 1,
            stripe_unit: 1 << 20,
            chains: vec![ChainId(3), ChainId(1)],
        };
        assert_eq!(Layout::try_from(&pb::Layout::from(&l)).unwrap(), l);
        let bad = pb::Layout {
            fn_version: 1,
            stripe_unit: 1000,
            chains: vec![1],
        };
        assert!(Layout::try_from(&bad).is_err());
        let none = pb::Layout {
            fn_version: 1,
            stripe_unit: 4096,
            chains: vec![],
        };
        assert!(Layout::try_from(&none).is_err());
    }

    #[test]
    fn another_clusters_id_is_refused() {
        let ours = ClusterId(0xabc);
        assert!(check_cluster(ours, &ours.to_string(), false).is_ok());
        assert!(check_cluster(ours, "", true).is_ok());
        assert!(matches!(
            check_cluster(ours, "", false),
            Err(FsError::WrongCluster { .. })
        ));
        assert!(matches!(
            check_cluster(ours, &ClusterId(1).to_string(), true),
            Err(FsError::WrongCluster { .. })
        ));
    }
}
