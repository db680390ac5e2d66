//! The sequential model of the namespace that metadata histories are checked against.
//!
//! It covers what the workload touches: a few test directories made before the history
//! starts (`DirIx` 0..n, their inodes known), files and empty leaf directories inside
//! them, hard links, renames, and the mode bit. Server-allocated inode numbers are taken
//! from the observed outputs (a successful create says which inode it made, and the model
//! requires it to be fresh); an operation with an unknown outcome gets a placeholder inode
//! that any fresh observed inode number matches, which weakens the check only around such
//! ops; the first observation binds the placeholder to the real number.

use crate::history::{DirIx, ErrKind, MetaOp, MetaRet, SeenAttr};
use crate::wgl;
use std::collections::BTreeMap;

/// Placeholder inode numbers start here (real ones are far below).
pub const PLACEHOLDER_BASE: u64 = 1 << 62;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Inode {
    pub dir: bool,
    pub mode: u32,
    pub nlink: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NsState {
    pub entries: BTreeMap<(DirIx, String), u64>,
    pub inodes: BTreeMap<u64, Inode>,
}

pub struct NsModel;

fn err(e: ErrKind) -> Result<MetaRet, ()> {
    Ok(MetaRet::Err {
        err: e,
        msg: String::new(),
    })
}

/// Whether the model's answer `want` explains the observed `got`.
fn matches(want: &MetaRet, got: &MetaRet) -> bool {
    match (want, got) {
        (MetaRet::Done, MetaRet::Done) => true,
        (MetaRet::Err { err: a, .. }, MetaRet::Err { err: b, .. }) => a == b,
        (MetaRet::Names { names: a }, MetaRet::Names { names: b }) => a == b,
        (MetaRet::Attr { attr: a }, MetaRet::Attr { attr: b }) => attr_matches(a, b),
        _ => false,
    }
}

fn attr_matches(want: &SeenAttr, got: &SeenAttr) -> bool {
    let ino_ok = want.ino >= PLACEHOLDER_BASE || want.ino == got.ino;
    // Directory link counts depend on the server's convention (2 + subdirs, or 1);
    // only file link counts are predicted.
    let nlink_ok = want.dir || want.nlink == got.nlink;
    ino_ok && want.dir == got.dir && (want.mode & 0o7777) == (got.mode & 0o7777) && nlink_ok
}

impl NsState {
    fn attr(&self, ino: u64) -> Option<SeenAttr> {
        self.inodes.get(&ino).map(|i| SeenAttr {
            ino,
            dir: i.dir,
            mode: i.mode,
            nlink: i.nlink,
        })
    }

    /// Renames placeholder inode `from` to the real number `to`.
    fn rebind(&mut self, from: u64, to: u64) {
        if let Some(i) = self.inodes.remove(&from) {
            self.inodes.insert(to, i);
        }
        for v in self.entries.values_mut() {
            if *v == from {
                *v = to;
            }
        }
    }

    fn drop_link(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.nlink = i.nlink.saturating_sub(1);
            if i.nlink == 0 || i.dir {
                self.inodes.remove(&ino);
            }
        }
    }

    /// Applies `op`; `new_ino` is the inode a create/mkdir would make. Returns the
    /// model's answer, or Err(()) when the model has no answer (e.g. an op on an inode
    /// the workload could not have known).
    fn apply(&mut self, op: &MetaOp, new_ino: u64) -> Result<MetaRet, ()> {
        match op {
            MetaOp::Create { dir, name, mode } | MetaOp::Mkdir { dir, name, mode } => {
                let key = (*dir, name.clone());
                if self.entries.contains_key(&key) {
                    return err(ErrKind::Exists);
                }
                let is_dir = matches!(op, MetaOp::Mkdir { .. });
                if new_ino < PLACEHOLDER_BASE && self.inodes.contains_key(&new_ino) {
                    // A "fresh" inode that is still in use: the model cannot produce this.
                    return Err(());
                }
                self.entries.insert(key, new_ino);
                let nlink = if is_dir { 2 } else { 1 };
                self.inodes.insert(
                    new_ino,
                    Inode {
                        dir: is_dir,
                        mode: mode & 0o7777,
                        nlink,
                    },
                );
                Ok(MetaRet::Attr {
                    attr: SeenAttr {
                        ino: new_ino,
                        dir: is_dir,
                        mode: mode & 0o7777,
                        nlink,
                    },
                })
            }
            MetaOp::Unlink { dir, name } => {
                let key = (*dir, name.clone());
                let Some(&ino) = self.entries.get(&key) else {
                    return err(ErrKind::NotFound);
                };
                if self.inodes.get(&ino).is_some_and(|i| i.dir) {
                    return err(ErrKind::IsDir);
                }
                self.entries.remove(&key);
                self.drop_link(ino);
                Ok(MetaRet::Done)
            }
            MetaOp::Rmdir { dir, name } => {
                let key = (*dir, name.clone());
                let Some(&ino) = self.entries.get(&key) else {
                    return err(ErrKind::NotFound);
                };
                if !self.inodes.get(&ino).is_some_and(|i| i.dir) {
                    return err(ErrKind::NotDir);
                }
                self.entries.remove(&key);
                self.drop_link(ino);
                Ok(MetaRet::Done)
            }
            MetaOp::Rename {
                dir,
                name,
                to_dir,
                to_name,
            } => {
                let src = (*dir, name.clone());
                let dst = (*to_dir, to_name.clone());
                let Some(&sino) = self.entries.get(&src) else {
                    return err(ErrKind::NotFound);
                };
                let sdir = self.inodes.get(&sino).is_some_and(|i| i.dir);
                if let Some(&dino) = self.entries.get(&dst) {
                    if dino == sino {
                        // Same inode (hard links, or the same name): POSIX says do nothing.
                        return Ok(MetaRet::Done);
                    }
                    let ddir = self.inodes.get(&dino).is_some_and(|i| i.dir);
                    match (sdir, ddir) {
                        (false, true) => return err(ErrKind::IsDir),
                        (true, false) => return err(ErrKind::NotDir),
                        // Leaf directories made by the workload are always empty.
                        _ => {}
                    }
                    self.entries.remove(&dst);
                    self.drop_link(dino);
                }
                self.entries.remove(&src);
                self.entries.insert(dst, sino);
                Ok(MetaRet::Done)
            }
            MetaOp::Link { ino, dir, name } => {
                let key = (*dir, name.clone());
                let Some(i) = self.inodes.get(ino) else {
                    // The file lost its last name since the client learned the number.
                    return err(ErrKind::NotFound);
                };
                if i.dir {
                    return Err(());
                }
                if self.entries.contains_key(&key) {
                    return err(ErrKind::Exists);
                }
                self.entries.insert(key, *ino);
                if let Some(i) = self.inodes.get_mut(ino) {
                    i.nlink += 1;
                }
                self.attr(*ino).map(|attr| MetaRet::Attr { attr }).ok_or(())
            }
            MetaOp::Setattr { ino, mode } => {
                let Some(i) = self.inodes.get_mut(ino) else {
                    return err(ErrKind::NotFound);
                };
                i.mode = mode & 0o7777;
                self.attr(*ino).map(|attr| MetaRet::Attr { attr }).ok_or(())
            }
            MetaOp::Getattr { ino } => match self.attr(*ino) {
                Some(attr) => Ok(MetaRet::Attr { attr }),
                None => err(ErrKind::NotFound),
            },
            MetaOp::Lookup { dir, name } => match self.entries.get(&(*dir, name.clone())) {
                Some(&ino) => self.attr(ino).map(|attr| MetaRet::Attr { attr }).ok_or(()),
                None => err(ErrKind::NotFound),
            },
            MetaOp::Readdir { dir } => {
                let names = self
                    .entries
                    .keys()
                    .filter(|(d, _)| d == dir)
                    .map(|(_, n)| n.clone())
                    .collect();
                Ok(MetaRet::Names { names })
            }
        }
    }
}

impl wgl::Model for NsModel {
    type State = NsState;
    type Op = MetaOp;
    type Out = MetaRet;

    fn init(&self) -> NsState {
        NsState::default()
    }

    fn step(
        &self,
        state: &NsState,
        id: usize,
        op: &MetaOp,
        out: Option<&MetaRet>,
    ) -> Option<NsState> {
        // The inode a create/mkdir makes: the observed one, or a placeholder.
        let new_ino = match out {
            Some(MetaRet::Attr { attr }) => attr.ino,
            _ => PLACEHOLDER_BASE + id as u64,
        };
        // A create may be refused with ENOSPC when no chain has a live data server (its
        // layout is fixed at create): no effect, and only where the name is free, since
        // the server checks the name first.
        if let (
            MetaOp::Create { dir, name, .. },
            Some(MetaRet::Err {
                err: ErrKind::NoSpace,
                ..
            }),
        ) = (op, out)
        {
            return (!state.entries.contains_key(&(*dir, name.clone()))).then(|| state.clone());
        }
        let mut next = state.clone();
        let want = next.apply(op, new_ino).ok()?;
        match out {
            None => Some(next),
            Some(got) if matches(&want, got) => {
                // An observation of an inode the model only knows by placeholder (made by
                // an op with an unknown outcome) reveals its real number: from here on the
                // client may use that number (getattr, link, setattr), so bind it.
                if let (MetaRet::Attr { attr: w }, MetaRet::Attr { attr: g }) = (&want, got) {
                    if w.ino >= PLACEHOLDER_BASE && g.ino < PLACEHOLDER_BASE {
                        if next.inodes.contains_key(&g.ino) {
                            // That number belongs to another live inode.
                            return None;
                        }
                        next.rebind(w.ino, g.ino);
                    }
                }
                Some(next)
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wgl::{check, Operation, Verdict};
    use std::time::Duration;

    fn attr(ino: u64, dir: bool, mode: u32, nlink: u32) -> MetaRet {
        MetaRet::Attr {
            attr: SeenAttr {
                ino,
                dir,
                mode,
                nlink,
            },
        }
    }
    fn e(k: ErrKind) -> MetaRet {
        MetaRet::Err {
            err: k,
            msg: String::new(),
        }
    }
    fn o(
        id: usize,
        call: u64,
        ret: Option<u64>,
        op: MetaOp,
        out: Option<MetaRet>,
    ) -> Operation<MetaOp, MetaRet> {
        Operation {
            id,
            call,
            ret,
            op,
            out,
        }
    }
    fn create(name: &str) -> MetaOp {
        MetaOp::Create {
            dir: 0,
            name: name.into(),
            mode: 0o644,
        }
    }
    const B: Duration = Duration::from_secs(10);

    #[test]
    fn create_rename_link_unlink_sequence_is_linearizable() {
        let h = vec![
            o(0, 0, Some(1), create("a"), Some(attr(10, false, 0o644, 1))),
            o(
                1,
                2,
                Some(3),
                MetaOp::Link {
                    ino: 10,
                    dir: 1,
                    name: "b".into(),
                },
                Some(attr(10, false, 0o644, 2)),
            ),
            o(
                2,
                4,
                Some(5),
                MetaOp::Rename {
                    dir: 0,
                    name: "a".into(),
                    to_dir: 1,
                    to_name: "c".into(),
                },
                Some(MetaRet::Done),
            ),
            o(
                3,
                6,
                Some(7),
                MetaOp::Readdir { dir: 1 },
                Some(MetaRet::Names {
                    names: vec!["b".into(), "c".into()],
                }),
            ),
            o(
                4,
                8,
                Some(9),
                MetaOp::Unlink {
                    dir: 1,
                    name: "b".into(),
                },
                Some(MetaRet::Done),
            ),
            o(
                5,
                10,
                Some(11),
                MetaOp::Getattr { ino: 10 },
                Some(attr(10, false, 0o644, 1)),
            ),
            o(
                6,
                12,
                Some(13),
                MetaOp::Setattr {
                    ino: 10,
                    mode: 0o600,
                },
                Some(attr(10, false, 0o600, 1)),
            ),
            o(
                7,
                14,
                Some(15),
                MetaOp::Lookup {
                    dir: 0,
                    name: "a".into(),
                },
                Some(e(ErrKind::NotFound)),
            ),
        ];
        assert_eq!(check(&NsModel, &h, B), Verdict::Linearizable);
    }

    #[test]
    fn two_racing_exclusive_creates_cannot_both_succeed() {
        let h = vec![
            o(0, 0, Some(10), create("a"), Some(attr(10, false, 0o644, 1))),
            o(1, 1, Some(11), create("a"), Some(attr(11, false, 0o644, 1))),
        ];
        assert!(matches!(check(&NsModel, &h, B), Verdict::Violation { .. }));
        let ok = vec![
            o(0, 0, Some(10), create("a"), Some(attr(10, false, 0o644, 1))),
            o(1, 1, Some(11), create("a"), Some(e(ErrKind::Exists))),
        ];
        assert_eq!(check(&NsModel, &ok, B), Verdict::Linearizable);
    }

    #[test]
    fn stale_lookup_after_acknowledged_unlink_is_a_violation() {
        let h = vec![
            o(0, 0, Some(1), create("a"), Some(attr(10, false, 0o644, 1))),
            o(
                1,
                2,
                Some(3),
                MetaOp::Unlink {
                    dir: 0,
                    name: "a".into(),
                },
                Some(MetaRet::Done),
            ),
            // A follower serving a read from before the unlink would say this:
            o(
                2,
                4,
                Some(5),
                MetaOp::Lookup {
                    dir: 0,
                    name: "a".into(),
                },
                Some(attr(10, false, 0o644, 1)),
            ),
        ];
        assert!(matches!(
            check(&NsModel, &h, B),
            Verdict::Violation { stuck_at: 2, .. }
        ));
    }

    #[test]
    fn lost_acknowledged_create_is_a_violation() {
        let h = vec![
            o(0, 0, Some(1), create("a"), Some(attr(10, false, 0o644, 1))),
            o(
                1,
                5,
                Some(6),
                MetaOp::Readdir { dir: 0 },
                Some(MetaRet::Names { names: vec![] }),
            ),
        ];
        assert!(matches!(check(&NsModel, &h, B), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_create_may_appear_later_with_any_inode() {
        let h = vec![
            o(0, 0, None, create("a"), None),
            o(
                1,
                5,
                Some(6),
                MetaOp::Lookup {
                    dir: 0,
                    name: "a".into(),
                },
                Some(e(ErrKind::NotFound)),
            ),
            o(
                2,
                7,
                Some(8),
                MetaOp::Lookup {
                    dir: 0,
                    name: "a".into(),
                },
                Some(attr(99, false, 0o644, 1)),
            ),
        ];
        assert_eq!(check(&NsModel, &h, B), Verdict::Linearizable);
    }

    #[test]
    fn rename_over_a_directory_with_a_file_is_refused() {
        let h = vec![
            o(
                0,
                0,
                Some(1),
                MetaOp::Mkdir {
                    dir: 0,
                    name: "d".into(),
                    mode: 0o755,
                },
                Some(attr(5, true, 0o755, 2)),
            ),
            o(1, 2, Some(3), create("f"), Some(attr(6, false, 0o644, 1))),
            o(
                2,
                4,
                Some(5),
                MetaOp::Rename {
                    dir: 0,
                    name: "f".into(),
                    to_dir: 0,
                    to_name: "d".into(),
                },
                Some(e(ErrKind::IsDir)),
            ),
            o(
                3,
                6,
                Some(7),
                MetaOp::Rename {
                    dir: 0,
                    name: "d".into(),
                    to_dir: 0,
                    to_name: "f".into(),
                },
                Some(e(ErrKind::NotDir)),
            ),
        ];
        assert_eq!(check(&NsModel, &h, B), Verdict::Linearizable);
        let wrong = vec![
            o(
                0,
                0,
                Some(1),
                MetaOp::Mkdir {
                    dir: 0,
                    name: "d".into(),
                    mode: 0o755,
                },
                Some(attr(5, true, 0o755, 2)),
            ),
            o(1, 2, Some(3), create("f"), Some(attr(6, false, 0o644, 1))),
            o(
                2,
                4,
                Some(5),
                MetaOp::Rename {
                    dir: 0,
                    name: "f".into(),
                    to_dir: 0,
                    to_name: "d".into(),
                },
                Some(MetaRet::Done),
            ),
        ];
        assert!(matches!(
            check(&NsModel, &wrong, B),
            Verdict::Violation { .. }
        ));
    }

    /// Found by cirrus-chaos seed 2: a split put every data server on the far side of the
    /// meta leader, meta dropped them all, and a create answered ENOSPC (no chain with a
    /// live member to lay the file out on). That is a definite refusal with no effect.
    #[test]
    fn create_refused_with_enospc_while_no_data_server_is_alive_changes_nothing() {
        let nospc = MetaRet::Err {
            err: ErrKind::NoSpace,
            msg: "no space left on device".into(),
        };
        let h = vec![
            o(0, 0, Some(1), create("a"), Some(nospc.clone())),
            o(
                1,
                2,
                Some(3),
                MetaOp::Readdir { dir: 0 },
                Some(MetaRet::Names { names: vec![] }),
            ),
            o(2, 4, Some(5), create("a"), Some(attr(7, false, 0o644, 1))),
        ];
        assert_eq!(check(&NsModel, &h, B), Verdict::Linearizable);
        // Where the name is taken the server says Exists first, so ENOSPC is not possible.
        let bad = vec![
            o(0, 0, Some(1), create("a"), Some(attr(7, false, 0o644, 1))),
            o(1, 2, Some(3), create("a"), Some(nospc)),
        ];
        assert!(matches!(
            check(&NsModel, &bad, B),
            Verdict::Violation { .. }
        ));
    }

    /// Found by cirrus-chaos seed 3: a create whose outcome was unknown (timeout during a
    /// partition) made inode 28; a lookup revealed 28, the client then called getattr(28)
    /// and the model, still knowing the inode only by its placeholder, said NotFound.
    #[test]
    fn inode_of_an_unknown_create_learned_by_lookup_is_then_known_by_number() {
        let lookup = MetaOp::Lookup {
            dir: 0,
            name: "b".into(),
        };
        let h = vec![
            o(0, 0, None, create("b"), None),
            o(
                1,
                2,
                Some(3),
                lookup.clone(),
                Some(attr(28, false, 0o644, 1)),
            ),
            o(
                2,
                4,
                Some(5),
                MetaOp::Getattr { ino: 28 },
                Some(attr(28, false, 0o644, 1)),
            ),
            o(
                3,
                6,
                Some(7),
                MetaOp::Link {
                    ino: 28,
                    dir: 1,
                    name: "l".into(),
                },
                Some(attr(28, false, 0o644, 2)),
            ),
        ];
        assert_eq!(check(&NsModel, &h, B), Verdict::Linearizable);
        // The revealed number must still be fresh: another live file's inode is not.
        let taken = vec![
            o(0, 0, Some(1), create("a"), Some(attr(10, false, 0o644, 1))),
            o(1, 2, None, create("b"), None),
            o(2, 4, Some(5), lookup, Some(attr(10, false, 0o644, 1))),
        ];
        assert!(matches!(
            check(&NsModel, &taken, B),
            Verdict::Violation { .. }
        ));
    }
}
