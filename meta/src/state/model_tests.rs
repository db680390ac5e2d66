//! The state machine against a reference model written separately and kept obviously
//! correct: the namespace is a map from *path* to inode number, a rename moves every path
//! under one prefix to another, and link counts, liveness and garbage are *derived* (by
//! counting paths and handles) instead of maintained. Random operation sequences must
//! give the same result (value or errno) at every step, leave the digest untouched on
//! every error, and end in the same tree.

use super::*;
use cirrus_types::name::validate_name;
use proptest::prelude::*;

type Path = Vec<Vec<u8>>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum MKind {
    File,
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Clone, Debug)]
struct MNode {
    kind: MKind,
    mode: u32,
    size: u64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What an operation returned, reduced to what both sides can state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Out {
    ino: Option<u64>,
    handle: Option<u64>,
}

const NONE: Out = Out {
    ino: None,
    handle: None,
};

type MResult = Result<Out, i32>;

#[derive(Default)]
struct Model {
    /// Path -> inode; the root is the empty path.
    tree: BTreeMap<Path, u64>,
    nodes: BTreeMap<u64, MNode>,
    /// handle -> (ino, client)
    handles: BTreeMap<u64, (u64, u64)>,
    /// Files that lost their last path and handle.
    garbage: BTreeSet<u64>,
    next_ino: u64,
    next_handle: u64,
}

fn err(e: FsError) -> i32 {
    e.errno()
}

impl Model {
    fn new() -> Self {
        let mut m = Model {
            next_ino: 2,
            next_handle: 1,
            ..Default::default()
        };
        m.tree.insert(vec![], 1);
        m.nodes.insert(
            1,
            MNode {
                kind: MKind::Dir,
                mode: 0o755,
                size: 0,
                xattrs: BTreeMap::new(),
            },
        );
        m
    }

    fn kind_at(&self, p: &Path) -> Option<&MKind> {
        self.tree
            .get(p)
            .and_then(|i| self.nodes.get(i))
            .map(|n| &n.kind)
    }

    fn is_dir(&self, p: &Path) -> bool {
        self.kind_at(p) == Some(&MKind::Dir)
    }

    /// Walks `p` as successive lookups would: each component must be a valid name
    /// (EINVAL, ENAMETOOLONG), every proper prefix a directory (ENOTDIR), and each
    /// component must exist (ENOENT).
    fn resolve(&self, p: &Path) -> Result<u64, i32> {
        for i in 0..p.len() {
            validate_name(&p[i]).map_err(err)?;
            if !self.is_dir(&p[..i].to_vec()) {
                return Err(libc::ENOTDIR);
            }
            if !self.tree.contains_key(&p[..=i]) {
                return Err(libc::ENOENT);
            }
        }
        Ok(self.tree[p])
    }

    fn children(&self, p: &Path) -> usize {
        self.tree
            .keys()
            .filter(|k| k.len() == p.len() + 1 && k.starts_with(p))
            .count()
    }

    fn nlink(&self, ino: u64) -> u32 {
        match self.nodes[&ino].kind {
            MKind::Dir => {
                let p = self.tree.iter().find(|(_, i)| **i == ino).map(|(p, _)| p);
                let p = p.expect("live dir has a path");
                2 + self
                    .tree
                    .iter()
                    .filter(|(k, i)| {
                        k.len() == p.len() + 1
                            && k.starts_with(p)
                            && self.nodes[*i].kind == MKind::Dir
                    })
                    .count() as u32
            }
            _ => self.tree.values().filter(|i| **i == ino).count() as u32,
        }
    }

    /// Drops inodes that have neither a path nor a handle; files become garbage.
    fn collect(&mut self) {
        let live: BTreeSet<u64> = self
            .tree
            .values()
            .copied()
            .chain(self.handles.values().map(|(i, _)| *i))
            .collect();
        let dead: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|i| !live.contains(i))
            .collect();
        for i in dead {
            if let Some(n) = self.nodes.remove(&i) {
                if n.kind == MKind::File {
                    self.garbage.insert(i);
                }
            }
        }
    }

    fn split(p: &Path) -> (Path, Vec<u8>) {
        let mut parent = p.clone();
        let name = parent.pop().unwrap_or_default();
        (parent, name)
    }

    /// The checks every "make a name in a directory" op does, in the state machine's order.
    fn creatable(&self, p: &Path) -> Result<(), i32> {
        let (parent, name) = Self::split(p);
        self.resolve(&parent)?;
        validate_name(&name).map_err(err)?;
        if !self.is_dir(&parent) {
            return Err(libc::ENOTDIR);
        }
        Ok(())
    }

    fn new_node(&mut self, p: &Path, kind: MKind, mode: u32) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = match &kind {
            MKind::Symlink(t) => t.len() as u64,
            _ => 0,
        };
        self.nodes.insert(
            ino,
            MNode {
                kind,
                mode,
                size,
                xattrs: BTreeMap::new(),
            },
        );
        self.tree.insert(p.clone(), ino);
        ino
    }

    fn new_handle(&mut self, ino: u64, client: u64) -> u64 {
        let h = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(h, (ino, client));
        h
    }

    fn apply(&mut self, op: &Op) -> MResult {
        match op {
            Op::Create {
                path,
                exclusive,
                client,
            } => {
                self.creatable(path)?;
                if let Some(ino) = self.tree.get(path).copied() {
                    if *exclusive {
                        return Err(libc::EEXIST);
                    }
                    return match self.nodes[&ino].kind {
                        MKind::Dir => Err(libc::EISDIR),
                        MKind::Symlink(_) => Err(libc::EEXIST),
                        MKind::File => Ok(Out {
                            ino: Some(ino),
                            handle: client.map(|c| self.new_handle(ino, c)),
                        }),
                    };
                }
                let ino = self.new_node(path, MKind::File, 0o644);
                Ok(Out {
                    ino: Some(ino),
                    handle: client.map(|c| self.new_handle(ino, c)),
                })
            }
            Op::Mkdir { path } => {
                self.creatable(path)?;
                if self.tree.contains_key(path) {
                    return Err(libc::EEXIST);
                }
                Ok(Out {
                    ino: Some(self.new_node(path, MKind::Dir, 0o755)),
                    handle: None,
                })
            }
            Op::Symlink { path } => {
                self.creatable(path)?;
                if self.tree.contains_key(path) {
                    return Err(libc::EEXIST);
                }
                let target = b"some/target".to_vec();
                Ok(Out {
                    ino: Some(self.new_node(path, MKind::Symlink(target), 0o777)),
                    handle: None,
                })
            }
            Op::Link { from, to } => {
                let ino = self.resolve(from)?;
                let (parent, name) = Self::split(to);
                self.resolve(&parent)?;
                validate_name(&name).map_err(err)?;
                if self.nodes[&ino].kind == MKind::Dir {
                    return Err(libc::EACCES);
                }
                if !self.is_dir(&parent) {
                    return Err(libc::ENOTDIR);
                }
                if self.tree.contains_key(to) {
                    return Err(libc::EEXIST);
                }
                self.tree.insert(to.clone(), ino);
                Ok(Out {
                    ino: Some(ino),
                    handle: None,
                })
            }
            Op::Unlink { path } => {
                self.creatable(path)?;
                let ino = *self.tree.get(path).ok_or(libc::ENOENT)?;
                if self.nodes[&ino].kind == MKind::Dir {
                    return Err(libc::EISDIR);
                }
                self.tree.remove(path);
                self.collect();
                Ok(NONE)
            }
            Op::Rmdir { path } => {
                self.creatable(path)?;
                let ino = *self.tree.get(path).ok_or(libc::ENOENT)?;
                if self.nodes[&ino].kind != MKind::Dir {
                    return Err(libc::ENOTDIR);
                }
                if self.children(path) > 0 {
                    return Err(libc::ENOTEMPTY);
                }
                self.tree.remove(path);
                self.collect();
                Ok(NONE)
            }
            Op::Rename { from, to, flags } => self.rename(from, to, *flags),
            Op::Setattr { path, mode, size } => {
                let ino = self.resolve(path)?;
                if size.is_some() {
                    match self.nodes[&ino].kind {
                        MKind::Dir => return Err(libc::EISDIR),
                        MKind::Symlink(_) => return Err(libc::EINVAL),
                        MKind::File => {}
                    }
                }
                let n = self.nodes.get_mut(&ino).expect("resolved");
                if let Some(m) = mode {
                    n.mode = m & 0o7777;
                }
                if let Some(s) = size {
                    n.size = *s;
                }
                Ok(NONE)
            }
            Op::CommitWrite { path, size } => {
                let ino = self.resolve(path)?;
                match self.nodes[&ino].kind {
                    MKind::Dir => return Err(libc::EISDIR),
                    MKind::Symlink(_) => return Err(libc::EINVAL),
                    MKind::File => {}
                }
                let n = self.nodes.get_mut(&ino).expect("resolved");
                n.size = n.size.max(*size);
                Ok(NONE)
            }
            Op::SetXattr { path, name, flags } => {
                let ino = self.resolve(path)?;
                if *flags == 3 {
                    return Err(libc::EINVAL);
                }
                let n = self.nodes.get_mut(&ino).expect("resolved");
                let key = xattr_name(*name);
                let present = n.xattrs.contains_key(&key);
                if *flags == XATTR_CREATE && present {
                    return Err(libc::EEXIST);
                }
                if *flags == XATTR_REPLACE && !present {
                    return Err(libc::ENODATA);
                }
                n.xattrs.insert(key, vec![*name, *flags as u8]);
                Ok(NONE)
            }
            Op::RemoveXattr { path, name } => {
                let ino = self.resolve(path)?;
                let n = self.nodes.get_mut(&ino).expect("resolved");
                n.xattrs.remove(&xattr_name(*name)).ok_or(libc::ENODATA)?;
                Ok(NONE)
            }
            Op::Open {
                path,
                client,
                truncate,
            } => {
                let ino = self.resolve(path)?;
                match self.nodes[&ino].kind {
                    MKind::Dir => return Err(libc::EISDIR),
                    MKind::Symlink(_) => return Err(libc::EINVAL),
                    MKind::File => {}
                }
                if *truncate {
                    self.nodes.get_mut(&ino).expect("resolved").size = 0;
                }
                Ok(Out {
                    ino: Some(ino),
                    handle: Some(self.new_handle(ino, *client)),
                })
            }
            Op::Release { handle } => {
                self.handles.remove(handle);
                self.collect();
                Ok(NONE)
            }
            Op::ReleaseMany { handles } => {
                for h in handles {
                    self.handles.remove(h);
                }
                self.collect();
                Ok(NONE)
            }
            Op::ReleaseClient { client } => {
                self.handles.retain(|_, (_, c)| c != client);
                self.collect();
                Ok(NONE)
            }
        }
    }

    fn rename(&mut self, from: &Path, to: &Path, flags: u32) -> MResult {
        let (sp, sn) = Self::split(from);
        let (dp, dn) = Self::split(to);
        self.resolve(&sp)?;
        self.resolve(&dp)?;
        validate_name(&sn).map_err(err)?;
        validate_name(&dn).map_err(err)?;
        if flags > 2 {
            return Err(libc::EINVAL);
        }
        if !self.is_dir(&sp) {
            return Err(libc::ENOTDIR);
        }
        let src = *self.tree.get(from).ok_or(libc::ENOENT)?;
        if !self.is_dir(&dp) {
            return Err(libc::ENOTDIR);
        }
        let dst = self.tree.get(to).copied();
        if flags == RENAME_NOREPLACE && dst.is_some() {
            return Err(libc::EEXIST);
        }
        if flags == RENAME_EXCHANGE && dst.is_none() {
            return Err(libc::ENOENT);
        }
        if dst == Some(src) {
            return Ok(NONE);
        }
        let src_dir = self.is_dir(from);
        // A directory may not land inside itself: the destination's parent path starts
        // with the source path.
        if src_dir && dp.starts_with(from) {
            return Err(libc::EINVAL);
        }
        if flags == RENAME_EXCHANGE {
            if self.is_dir(to) && sp.starts_with(to) {
                return Err(libc::EINVAL);
            }
            // Neither path is inside the other now: swap the two subtrees.
            let moved: Vec<(Path, u64)> = std::mem::take(&mut self.tree).into_iter().collect();
            for (p, i) in moved {
                let np = if p.starts_with(from) {
                    [to.clone(), p[from.len()..].to_vec()].concat()
                } else if p.starts_with(to) {
                    [from.clone(), p[to.len()..].to_vec()].concat()
                } else {
                    p
                };
                self.tree.insert(np, i);
            }
            return Ok(NONE);
        }
        if dst.is_some() {
            match (src_dir, self.is_dir(to)) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if self.children(to) > 0 => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        self.tree.remove(to);
        let moved: Vec<(Path, u64)> = std::mem::take(&mut self.tree).into_iter().collect();
        for (p, i) in moved {
            let np = if p.starts_with(from) {
                [to.clone(), p[from.len()..].to_vec()].concat()
            } else {
                p
            };
            self.tree.insert(np, i);
        }
        self.collect();
        Ok(NONE)
    }
}

fn xattr_name(i: u8) -> Vec<u8> {
    format!("user.x{i}").into_bytes()
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        path: Path,
        exclusive: bool,
        client: Option<u64>,
    },
    Mkdir {
        path: Path,
    },
    Symlink {
        path: Path,
    },
    Link {
        from: Path,
        to: Path,
    },
    Unlink {
        path: Path,
    },
    Rmdir {
        path: Path,
    },
    Rename {
        from: Path,
        to: Path,
        flags: u32,
    },
    Setattr {
        path: Path,
        mode: Option<u32>,
        size: Option<u64>,
    },
    CommitWrite {
        path: Path,
        size: u64,
    },
    SetXattr {
        path: Path,
        name: u8,
        flags: u32,
    },
    RemoveXattr {
        path: Path,
        name: u8,
    },
    Open {
        path: Path,
        client: u64,
        truncate: bool,
    },
    Release {
        handle: u64,
    },
    ReleaseMany {
        handles: Vec<u64>,
    },
    ReleaseClient {
        client: u64,
    },
}

/// Paths of depth 1..=3 (mostly short) over three names, plus now and then a bad name,
/// so that most operations hit something that exists and collisions are common.
fn path() -> impl Strategy<Value = Path> {
    let name = || {
        prop_oneof![
            30 => prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
            1 => prop::sample::select(vec![
                Vec::new(),
                b"x/y".to_vec(),
                b"n\0ul".to_vec(),
                vec![b'L'; 256],
                b"..".to_vec(),
            ]),
        ]
    };
    prop_oneof![
        5 => prop::collection::vec(name(), 1..=1),
        4 => prop::collection::vec(name(), 2..=2),
        1 => prop::collection::vec(name(), 3..=3),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (path(), any::<bool>(), prop::option::of(1u64..=3))
            .prop_map(|(path, exclusive, client)| Op::Create { path, exclusive, client }),
        4 => path().prop_map(|path| Op::Mkdir { path }),
        1 => path().prop_map(|path| Op::Symlink { path }),
        2 => (path(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        3 => path().prop_map(|path| Op::Unlink { path }),
        2 => path().prop_map(|path| Op::Rmdir { path }),
        5 => (path(), path(), 0u32..=3).prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        1 => (path(), prop::option::of(0u32..0o20000), prop::option::of(0u64..1 << 20))
            .prop_map(|(path, mode, size)| Op::Setattr { path, mode, size }),
        1 => (path(), 0u64..1 << 20).prop_map(|(path, size)| Op::CommitWrite { path, size }),
        1 => (path(), 0u8..2, 0u32..=3).prop_map(|(path, name, flags)| Op::SetXattr { path, name, flags }),
        1 => (path(), 0u8..2).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        2 => (path(), 1u64..=3, any::<bool>())
            .prop_map(|(path, client, truncate)| Op::Open { path, client, truncate }),
        2 => (1u64..12).prop_map(|handle| Op::Release { handle }),
        1 => prop::collection::vec(1u64..12, 1..5).prop_map(|handles| Op::ReleaseMany { handles }),
        1 => (1u64..=3).prop_map(|client| Op::ReleaseClient { client }),
    ]
}

/// Walks `p` in the real state by lookups, as the kernel would before calling us.
fn resolve(s: &MetaState, p: &[Vec<u8>]) -> Result<InodeId, i32> {
    let mut cur = InodeId::ROOT;
    for c in p {
        cur = s.lookup(cur, c).map_err(err)?.ino;
    }
    Ok(cur)
}

fn resolve_parent(s: &MetaState, p: &Path) -> Result<(InodeId, Vec<u8>), i32> {
    let (parent, name) = Model::split(p);
    Ok((resolve(s, &parent)?, name))
}

fn ap(s: &mut MetaState, cmd: Command) -> Result<Reply, i32> {
    s.apply(&cmd).map_err(err)
}

fn run(s: &mut MetaState, op: &Op, now: i64) -> MResult {
    let r = match op {
        Op::Create {
            path,
            exclusive,
            client,
        } => {
            let (parent, name) = resolve_parent(s, path)?;
            match ap(
                s,
                Command::Create {
                    parent,
                    name,
                    mode: 0o100644,
                    uid: 1,
                    gid: 1,
                    exclusive: *exclusive,
                    client: client.map(ClientId),
                    spec: LayoutSpec::default(),
                    now_ns: now,
                },
            )? {
                Reply::Created { attr, handle, .. } => Out {
                    ino: Some(attr.ino.0),
                    handle: handle.map(|h| h.0),
                },
                other => panic!("create replied {other:?}"),
            }
        }
        Op::Mkdir { path } => {
            let (parent, name) = resolve_parent(s, path)?;
            attr_out(ap(
                s,
                Command::Mkdir {
                    parent,
                    name,
                    mode: 0o755,
                    uid: 1,
                    gid: 1,
                    now_ns: now,
                },
            )?)
        }
        Op::Symlink { path } => {
            let (parent, name) = resolve_parent(s, path)?;
            attr_out(ap(
                s,
                Command::Symlink {
                    parent,
                    name,
                    target: b"some/target".to_vec(),
                    uid: 1,
                    gid: 1,
                    now_ns: now,
                },
            )?)
        }
        Op::Link { from, to } => {
            let ino = resolve(s, from)?;
            let (new_parent, new_name) = resolve_parent(s, to)?;
            attr_out(ap(
                s,
                Command::Link {
                    ino,
                    new_parent,
                    new_name,
                    now_ns: now,
                },
            )?)
        }
        Op::Unlink { path } => {
            let (parent, name) = resolve_parent(s, path)?;
            done(ap(
                s,
                Command::Unlink {
                    parent,
                    name,
                    now_ns: now,
                },
            )?)
        }
        Op::Rmdir { path } => {
            let (parent, name) = resolve_parent(s, path)?;
            done(ap(
                s,
                Command::Rmdir {
                    parent,
                    name,
                    now_ns: now,
                },
            )?)
        }
        Op::Rename { from, to, flags } => {
            let (parent, name) = resolve_parent(s, from)?;
            let (new_parent, new_name) = resolve_parent(s, to)?;
            done(ap(
                s,
                Command::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    flags: *flags,
                    now_ns: now,
                },
            )?)
        }
        Op::Setattr { path, mode, size } => {
            let ino = resolve(s, path)?;
            let set = SetAttr {
                mode: *mode,
                size: *size,
                ..Default::default()
            };
            ap(
                s,
                Command::Setattr {
                    ino,
                    set,
                    now_ns: now,
                },
            )?;
            NONE
        }
        Op::CommitWrite { path, size } => {
            let ino = resolve(s, path)?;
            ap(
                s,
                Command::CommitWrite {
                    ino,
                    handle: None,
                    size: *size,
                    mtime_ns: now,
                    now_ns: now,
                },
            )?;
            NONE
        }
        Op::SetXattr { path, name, flags } => {
            let ino = resolve(s, path)?;
            done(ap(
                s,
                Command::SetXattr {
                    ino,
                    name: xattr_name(*name),
                    value: vec![*name, *flags as u8],
                    flags: *flags,
                    now_ns: now,
                },
            )?)
        }
        Op::RemoveXattr { path, name } => {
            let ino = resolve(s, path)?;
            done(ap(
                s,
                Command::RemoveXattr {
                    ino,
                    name: xattr_name(*name),
                    now_ns: now,
                },
            )?)
        }
        Op::Open {
            path,
            client,
            truncate,
        } => {
            let ino = resolve(s, path)?;
            match ap(
                s,
                Command::Open {
                    ino,
                    client: ClientId(*client),
                    truncate: *truncate,
                    now_ns: now,
                },
            )? {
                Reply::Opened { handle, attr, .. } => Out {
                    ino: Some(attr.ino.0),
                    handle: Some(handle.0),
                },
                other => panic!("open replied {other:?}"),
            }
        }
        Op::Release { handle } => done(ap(
            s,
            Command::Release {
                handle: HandleId(*handle),
                now_ns: now,
            },
        )?),
        Op::ReleaseMany { handles } => done(ap(
            s,
            Command::ReleaseMany {
                handles: handles.iter().copied().map(HandleId).collect(),
                now_ns: now,
            },
        )?),
        Op::ReleaseClient { client } => done(ap(
            s,
            Command::ReleaseClient {
                client: ClientId(*client),
                now_ns: now,
            },
        )?),
    };
    Ok(r)
}

fn attr_out(r: Reply) -> Out {
    match r {
        Reply::Attr(a) => Out {
            ino: Some(a.ino.0),
            handle: None,
        },
        other => panic!("expected an attr reply, got {other:?}"),
    }
}

fn done(r: Reply) -> Out {
    assert_eq!(r, Reply::Done);
    NONE
}

/// The real tree, walked through readdir (small pages, to exercise cookies).
fn real_tree(s: &MetaState) -> BTreeMap<Path, u64> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(Vec::new(), InodeId::ROOT)];
    while let Some((p, ino)) = todo.pop() {
        out.insert(p.clone(), ino.0);
        let mut cookie = 0;
        loop {
            let (entries, eof) = s.readdir(ino, cookie, 2).expect("readdir of a live dir");
            for e in &entries {
                assert!(e.cookie > cookie, "cookies increase");
                cookie = e.cookie;
                let child: Path = [p.clone(), vec![e.name.clone()]].concat();
                if e.kind == FileKind::Dir {
                    todo.push((child, e.ino));
                } else {
                    out.insert(child, e.ino.0);
                }
            }
            if eof {
                break;
            }
        }
    }
    out
}

fn check_same(s: &MetaState, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(real_tree(s), m.tree.clone());
    let real_inos: BTreeSet<u64> = s.inodes().map(|i| i.ino.0).collect();
    let model_inos: BTreeSet<u64> = m.nodes.keys().copied().collect();
    prop_assert_eq!(real_inos, model_inos);
    for (ino, n) in &m.nodes {
        let a = s.getattr(InodeId(*ino)).expect("live inode");
        let nlink = if m.tree.values().any(|i| i == ino) {
            m.nlink(*ino)
        } else {
            0
        };
        prop_assert_eq!(a.nlink, nlink, "nlink of {}", ino);
        prop_assert_eq!(a.size, n.size, "size of {}", ino);
        prop_assert_eq!(a.mode, n.mode, "mode of {}", ino);
        let kind = match &n.kind {
            MKind::File => FileKind::File,
            MKind::Dir => FileKind::Dir,
            MKind::Symlink(t) => {
                prop_assert_eq!(&s.readlink(InodeId(*ino)).expect("symlink"), t);
                FileKind::Symlink
            }
        };
        prop_assert_eq!(a.kind, kind);
        for (k, v) in &n.xattrs {
            prop_assert_eq!(&s.getxattr(InodeId(*ino), k).expect("xattr"), v);
        }
        prop_assert_eq!(
            s.listxattr(InodeId(*ino)).expect("listxattr"),
            n.xattrs.keys().cloned().collect::<Vec<_>>()
        );
    }
    let garbage: BTreeSet<u64> = s.garbage(usize::MAX).iter().map(|g| g.ino.0).collect();
    prop_assert_eq!(&garbage, &m.garbage);
    prop_assert_eq!(s.open_handle_count(), m.handles.len() as u64);
    Ok(())
}

/// A state with two data servers (so creates get layouts).
fn fresh_state() -> MetaState {
    let mut s = MetaState::new();
    s.apply(&Command::Init {
        cluster_id: ClusterId(7),
        replicas: 2,
        now_ns: 1,
    })
    .expect("init");
    for u in ["u1", "u2"] {
        s.apply(&Command::RegisterServer {
            uuid: u.into(),
            address: format!("{u}:7101"),
            capacity: 1 << 30,
            free: 1 << 29,
            now_ns: 1,
        })
        .expect("register");
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn namespace_matches_reference_model(ops in prop::collection::vec(op(), 1..150)) {
        let mut s = fresh_state();
        let mut m = Model::new();
        for (i, op) in ops.iter().enumerate() {
            let before = s.digest();
            let real = run(&mut s, op, 10 + i as i64);
            let want = m.apply(op);
            prop_assert_eq!(&real, &want, "step {}: {:?}", i, op);
            if real.is_err() {
                prop_assert_eq!(s.digest(), before, "step {} failed but changed state: {:?}", i, op);
            }
            if i % 8 == 7 {
                check_same(&s, &m)?;
            }
        }
        check_same(&s, &m)?;
    }
}
