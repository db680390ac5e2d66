//! The namespace vocabulary (`cirrus_types::attr`) on the wire.

use super::{required, ProtocolError};
use crate::pb;
use cirrus_types::{Attr, CreateArgs, DirEntry, FileKind, InodeId, Statfs, TimeSet};

impl TryFrom<&pb::Attr> for Attr {
    type Error = ProtocolError;
    fn try_from(p: &pb::Attr) -> Result<Self, ProtocolError> {
        let kind = FileKind::from_code(p.kind, p.rdev).ok_or_else(|| {
            ProtocolError::Invalid("attr.kind", format!("unknown kind {}", p.kind))
        })?;
        if p.ino == 0 {
            return Err(ProtocolError::Invalid("attr.ino", "inode 0".into()));
        }
        Ok(Attr {
            ino: InodeId(p.ino),
            kind,
            mode: p.mode & 0o7777,
            uid: p.uid,
            gid: p.gid,
            size: p.size,
            nlink: p.nlink,
            atime_ns: p.atime_ns,
            mtime_ns: p.mtime_ns,
            ctime_ns: p.ctime_ns,
            crtime_ns: p.crtime_ns,
        })
    }
}

impl From<&Attr> for pb::Attr {
    fn from(a: &Attr) -> Self {
        pb::Attr {
            ino: a.ino.0,
            kind: a.kind.code(),
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            nlink: a.nlink,
            atime_ns: a.atime_ns,
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            crtime_ns: a.crtime_ns,
            rdev: a.kind.rdev(),
        }
    }
}

/// The attributes a reply must carry (`field` names it in the error).
pub fn attr(p: Option<&pb::Attr>, field: &'static str) -> Result<Attr, ProtocolError> {
    Attr::try_from(required(p, field)?)
}

impl From<pb::TimeSpec> for TimeSet {
    fn from(t: pb::TimeSpec) -> Self {
        if t.now {
            TimeSet::Now
        } else {
            TimeSet::Ns(t.ns)
        }
    }
}

impl From<TimeSet> for pb::TimeSpec {
    fn from(t: TimeSet) -> Self {
        match t {
            TimeSet::Now => pb::TimeSpec { now: true, ns: 0 },
            TimeSet::Ns(ns) => pb::TimeSpec { now: false, ns },
        }
    }
}

impl TryFrom<&pb::DirEntry> for DirEntry {
    type Error = ProtocolError;
    /// The entry's attributes are taken when the reply carries them (readdirplus).
    fn try_from(e: &pb::DirEntry) -> Result<Self, ProtocolError> {
        let kind = FileKind::from_code(e.kind, e.attr.as_ref().map_or(0, |a| a.rdev)).ok_or_else(
            || ProtocolError::Invalid("entry.kind", format!("unknown kind {}", e.kind)),
        )?;
        if e.ino == 0 {
            return Err(ProtocolError::Invalid("entry.ino", "inode 0".into()));
        }
        Ok(DirEntry {
            name: e.name.clone(),
            ino: InodeId(e.ino),
            kind,
            cookie: e.cookie,
            attr: e.attr.as_ref().map(Attr::try_from).transpose()?,
        })
    }
}

impl From<DirEntry> for pb::DirEntry {
    fn from(e: DirEntry) -> Self {
        pb::DirEntry {
            attr: e.attr.as_ref().map(pb::Attr::from),
            name: e.name,
            ino: e.ino.0,
            kind: e.kind.code(),
            cookie: e.cookie,
        }
    }
}

impl From<&pb::StatfsReply> for Statfs {
    fn from(r: &pb::StatfsReply) -> Self {
        Statfs {
            total_bytes: r.total_bytes,
            free_bytes: r.free_bytes,
            files: r.files,
            block_size: r.block_size,
        }
    }
}

impl From<Statfs> for pb::StatfsReply {
    fn from(s: Statfs) -> Self {
        pb::StatfsReply {
            total_bytes: s.total_bytes,
            free_bytes: s.free_bytes,
            files: s.files,
            block_size: s.block_size,
        }
    }
}

impl From<&CreateArgs> for pb::CreateRequest {
    /// The cluster id is filled in by `MetaConn`; the layout is the cluster default.
    fn from(a: &CreateArgs) -> Self {
        pb::CreateRequest {
            cluster_id: String::new(),
            parent: a.parent.0,
            name: a.name.clone(),
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            exclusive: a.exclusive,
            client_id: a.client.map_or(0, |c| c.0),
            stripe_unit: 0,
            stripe_count: 0,
            umask: a.umask,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attr {
        Attr {
            ino: InodeId(7),
            kind: FileKind::CharDevice { rdev: 0x0501 },
            mode: 0o640,
            uid: 1,
            gid: 2,
            size: 3,
            nlink: 1,
            atime_ns: 4,
            mtime_ns: 5,
            ctime_ns: 6,
            crtime_ns: 7,
        }
    }

    #[test]
    fn attr_and_entry_round_trip() {
        let a = sample();
        assert_eq!(Attr::try_from(&pb::Attr::from(&a)), Ok(a.clone()));
        let e = DirEntry {
            name: b"x".to_vec(),
            ino: a.ino,
            kind: a.kind,
            cookie: 9,
            attr: Some(a),
        };
        assert_eq!(DirEntry::try_from(&pb::DirEntry::from(e.clone())), Ok(e));
        for t in [TimeSet::Now, TimeSet::Ns(-3)] {
            assert_eq!(TimeSet::from(pb::TimeSpec::from(t)), t);
        }
    }

    #[test]
    fn a_missing_or_malformed_attr_names_its_field() {
        assert_eq!(
            attr(None, "reply.attr"),
            Err(ProtocolError::Missing("reply.attr"))
        );
        let mut p = pb::Attr::from(&sample());
        p.kind = 99;
        assert!(matches!(
            Attr::try_from(&p),
            Err(ProtocolError::Invalid("attr.kind", _))
        ));
        p.kind = 1;
        p.ino = 0;
        assert!(matches!(
            Attr::try_from(&p),
            Err(ProtocolError::Invalid("attr.ino", _))
        ));
    }
}
