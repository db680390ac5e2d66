//! Conversions between wire (`pb::`) and domain (`cirrus_types`) types. Receivers use the
//! `TryFrom`s, which validate; senders use the `From`s.

use crate::pb;
use cirrus_types::{
    Chain, ChainId, ChainVersion, ClusterId, FsError, FsResult, InodeId, Layout, ObjectKey,
    ServerId,
};

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

impl From<&pb::Chain> for Chain {
    fn from(p: &pb::Chain) -> Self {
        Chain {
            id: ChainId(p.id),
            version: ChainVersion(p.version),
            members: p.members.iter().copied().map(ServerId).collect(),
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
