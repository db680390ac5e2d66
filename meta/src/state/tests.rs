//! Unit tests of the state machine: bad inputs, determinism and serialization, cookies,
//! open-unlinked files and garbage, layouts, and chain placement.

use super::*;
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000_000_000;

fn init(replicas: u32) -> MetaState {
    let mut s = MetaState::new();
    s.apply(&Command::Init {
        cluster_id: ClusterId(0xc1),
        replicas,
        now_ns: T0,
    })
    .expect("init");
    s
}

fn register(s: &mut MetaState, uuid: &str) -> ServerId {
    match s.apply(&Command::RegisterServer {
        uuid: uuid.into(),
        address: format!("{uuid}.example:7101"),
        capacity: 1000,
        free: 600,
        now_ns: T0,
    }) {
        Ok(Reply::Server(id)) => id,
        other => panic!("register replied {other:?}"),
    }
}

/// A state with R=2 and `n` servers.
fn cluster(n: usize) -> MetaState {
    let mut s = init(2);
    for i in 0..n {
        register(&mut s, &format!("uuid-{i}"));
    }
    s
}

fn mkdir(s: &mut MetaState, parent: InodeId, name: &str) -> InodeId {
    match s.apply(&Command::Mkdir {
        parent,
        name: name.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        now_ns: T0 + 1,
    }) {
        Ok(Reply::Attr(a)) => a.ino,
        other => panic!("mkdir {name} replied {other:?}"),
    }
}

fn create_cmd(parent: InodeId, name: &[u8], client: Option<u64>) -> Command {
    Command::Create {
        parent,
        name: name.to_vec(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
        client: client.map(ClientId),
        spec: LayoutSpec::default(),
        now_ns: T0 + 2,
    }
}

fn create(
    s: &mut MetaState,
    parent: InodeId,
    name: &str,
    client: Option<u64>,
) -> (Attr, Layout, Option<HandleId>) {
    match s.apply(&create_cmd(parent, name.as_bytes(), client)) {
        Ok(Reply::Created {
            attr,
            layout,
            handle,
            created: true,
        }) => (attr, layout, handle),
        other => panic!("create {name} replied {other:?}"),
    }
}

fn rename(parent: InodeId, name: &str, new_parent: InodeId, new_name: &str, flags: u32) -> Command {
    Command::Rename {
        parent,
        name: name.into(),
        new_parent,
        new_name: new_name.into(),
        flags,
        now_ns: T0 + 3,
    }
}

/// Applies `cmd`, expects exactly `want`, and checks that nothing changed.
#[track_caller]
fn refused(s: &mut MetaState, cmd: Command, want: FsError) {
    let before = s.digest();
    let snapshot = s.clone();
    assert_eq!(s.apply(&cmd), Err(want), "{cmd:?}");
    assert_eq!(s.digest(), before, "failed {cmd:?} changed the digest");
    assert_eq!(*s, snapshot, "failed {cmd:?} changed the state");
}

fn invalid(s: &mut MetaState, cmd: Command) {
    let before = s.digest();
    assert!(matches!(s.apply(&cmd), Err(FsError::Invalid(_))), "{cmd:?}");
    assert_eq!(s.digest(), before, "failed {cmd:?} changed the digest");
}

#[test]
fn commands_before_init_are_refused_and_init_is_idempotent() {
    let mut s = MetaState::new();
    assert!(matches!(
        s.apply(&create_cmd(InodeId::ROOT, b"f", None)),
        Err(FsError::Unavailable(_))
    ));
    let mut s = init(2);
    assert_eq!(s.cluster_id(), Some(ClusterId(0xc1)));
    assert_eq!(s.getattr(InodeId::ROOT).expect("root").kind, FileKind::Dir);
    assert_eq!(s.getattr(InodeId::ROOT).expect("root").nlink, 2);
    let again = Command::Init {
        cluster_id: ClusterId(0xc1),
        replicas: 2,
        now_ns: T0,
    };
    assert_eq!(s.apply(&again), Ok(Reply::Done));
    invalid(
        &mut s,
        Command::Init {
            cluster_id: ClusterId(0xc2),
            replicas: 2,
            now_ns: T0,
        },
    );
    let mut fresh = MetaState::new();
    invalid(
        &mut fresh,
        Command::Init {
            cluster_id: ClusterId(1),
            replicas: 4,
            now_ns: T0,
        },
    );
}

#[test]
fn bad_names_and_missing_inodes_are_refused_without_change() {
    let mut s = cluster(2);
    let d = mkdir(&mut s, InodeId::ROOT, "d");
    let (f, _, _) = create(&mut s, d, "f", None);
    mkdir(&mut s, d, "sub");
    for bad in [&b""[..], b"a/b", b"nul\0", b".", b".."] {
        invalid(&mut s, create_cmd(d, bad, None));
        invalid(
            &mut s,
            Command::Mkdir {
                parent: d,
                name: bad.to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
                now_ns: T0,
            },
        );
        invalid(
            &mut s,
            rename(d, "f", d, std::str::from_utf8(bad).expect("ascii"), 0),
        );
        assert!(matches!(s.lookup(d, bad), Err(FsError::Invalid(_))));
    }
    let long = vec![b'x'; 256];
    refused(&mut s, create_cmd(d, &long, None), FsError::NameTooLong);
    assert!(s.apply(&create_cmd(d, &[b'x'; 255], None)).is_ok());
    // Unknown inodes.
    refused(
        &mut s,
        create_cmd(InodeId(999), b"x", None),
        FsError::NotFound,
    );
    refused(
        &mut s,
        Command::Setattr {
            ino: InodeId(999),
            set: SetAttr::default(),
            now_ns: T0,
        },
        FsError::NotFound,
    );
    refused(
        &mut s,
        Command::Open {
            ino: InodeId(999),
            client: ClientId(1),
            truncate: false,
            now_ns: T0,
        },
        FsError::NotFound,
    );
    assert_eq!(s.getattr(InodeId(999)), Err(FsError::NotFound));
    // ENOTDIR: a file as parent; EEXIST; EISDIR; ENOTEMPTY.
    refused(&mut s, create_cmd(f.ino, b"x", None), FsError::NotDir);
    refused(&mut s, create_cmd(d, b"f", None), FsError::Exists);
    refused(
        &mut s,
        Command::Unlink {
            parent: d,
            name: b"sub".to_vec(),
            now_ns: T0,
        },
        FsError::IsDir,
    );
    refused(
        &mut s,
        Command::Rmdir {
            parent: d,
            name: b"f".to_vec(),
            now_ns: T0,
        },
        FsError::NotDir,
    );
    refused(
        &mut s,
        Command::Rmdir {
            parent: InodeId::ROOT,
            name: b"d".to_vec(),
            now_ns: T0,
        },
        FsError::NotEmpty,
    );
    refused(
        &mut s,
        Command::Unlink {
            parent: d,
            name: b"nope".to_vec(),
            now_ns: T0,
        },
        FsError::NotFound,
    );
    refused(
        &mut s,
        Command::Setattr {
            ino: d,
            set: SetAttr {
                size: Some(1),
                ..Default::default()
            },
            now_ns: T0,
        },
        FsError::IsDir,
    );
    refused(
        &mut s,
        Command::Setattr {
            ino: f.ino,
            set: SetAttr {
                size: Some(MAX_FILE_SIZE + 1),
                ..Default::default()
            },
            now_ns: T0,
        },
        FsError::TooBig,
    );
    refused(
        &mut s,
        Command::Link {
            ino: d,
            new_parent: InodeId::ROOT,
            new_name: b"dl".to_vec(),
            now_ns: T0,
        },
        FsError::PermissionDenied,
    );
    refused(
        &mut s,
        Command::Symlink {
            parent: d,
            name: b"s".to_vec(),
            target: vec![b'a'; SYMLINK_MAX + 1],
            uid: 0,
            gid: 0,
            now_ns: T0,
        },
        FsError::NameTooLong,
    );
}

#[test]
fn rename_follows_posix_rules() {
    let mut s = cluster(1);
    let a = mkdir(&mut s, InodeId::ROOT, "a");
    let b = mkdir(&mut s, a, "b");
    let c = mkdir(&mut s, b, "c");
    let (f, _, _) = create(&mut s, InodeId::ROOT, "f", None);
    create(&mut s, InodeId::ROOT, "g", None);
    create(&mut s, c, "inner", None);
    mkdir(&mut s, InodeId::ROOT, "empty");
    // A directory into itself or its own subtree.
    invalid(&mut s, rename(InodeId::ROOT, "a", a, "x", 0));
    invalid(&mut s, rename(InodeId::ROOT, "a", c, "x", 0));
    invalid(&mut s, rename(a, "b", c, "x", RENAME_NOREPLACE));
    // Exchange in the other direction: the destination dir would land in itself.
    invalid(
        &mut s,
        rename(c, "inner", InodeId::ROOT, "a", RENAME_EXCHANGE),
    );
    // Type rules.
    refused(
        &mut s,
        rename(InodeId::ROOT, "f", InodeId::ROOT, "empty", 0),
        FsError::IsDir,
    );
    refused(
        &mut s,
        rename(InodeId::ROOT, "empty", InodeId::ROOT, "f", 0),
        FsError::NotDir,
    );
    refused(
        &mut s,
        rename(InodeId::ROOT, "empty", InodeId::ROOT, "a", 0),
        FsError::NotEmpty,
    );
    refused(
        &mut s,
        rename(InodeId::ROOT, "f", InodeId::ROOT, "g", RENAME_NOREPLACE),
        FsError::Exists,
    );
    refused(
        &mut s,
        rename(InodeId::ROOT, "f", InodeId::ROOT, "zz", RENAME_EXCHANGE),
        FsError::NotFound,
    );
    refused(
        &mut s,
        rename(InodeId::ROOT, "zz", InodeId::ROOT, "f", 0),
        FsError::NotFound,
    );
    invalid(&mut s, rename(InodeId::ROOT, "f", InodeId::ROOT, "g", 3));
    invalid(&mut s, rename(InodeId::ROOT, "f", InodeId::ROOT, "g", 4));
    // Same inode (two hard links): success, and both names stay.
    s.apply(&Command::Link {
        ino: f.ino,
        new_parent: InodeId::ROOT,
        new_name: b"f2".to_vec(),
        now_ns: T0,
    })
    .expect("link");
    assert_eq!(
        s.apply(&rename(InodeId::ROOT, "f", InodeId::ROOT, "f2", 0)),
        Ok(Reply::Done)
    );
    assert_eq!(s.lookup(InodeId::ROOT, b"f").expect("f").ino, f.ino);
    assert_eq!(s.lookup(InodeId::ROOT, b"f2").expect("f2").ino, f.ino);
    assert_eq!(s.getattr(f.ino).expect("f").nlink, 2);
    // Overwrite a file: the old one loses a link and, unopened, becomes garbage.
    let g = s.lookup(InodeId::ROOT, b"g").expect("g").ino;
    s.apply(&rename(InodeId::ROOT, "f2", InodeId::ROOT, "g", 0))
        .expect("overwrite");
    assert_eq!(s.lookup(InodeId::ROOT, b"g").expect("g").ino, f.ino);
    assert_eq!(s.getattr(g), Err(FsError::NotFound));
    assert_eq!(
        s.garbage(10).iter().map(|x| x.ino).collect::<Vec<_>>(),
        vec![g]
    );
    // Move a dir across parents: link counts follow.
    s.apply(&rename(b, "c", InodeId::ROOT, "c", 0))
        .expect("move c");
    assert_eq!(s.getattr(b).expect("b").nlink, 2);
    assert_eq!(s.getattr(InodeId::ROOT).expect("root").nlink, 2 + 3);
    // Now a/b is empty: it can be replaced by a dir, and a by c is refused (not empty).
    s.apply(&rename(InodeId::ROOT, "empty", a, "b", 0))
        .expect("dir over empty dir");
    assert_eq!(s.getattr(b), Err(FsError::NotFound));
    assert_eq!(s.getattr(a).expect("a").nlink, 3);
    // Exchange a file and a directory in different parents.
    s.apply(&rename(InodeId::ROOT, "g", c, "inner", RENAME_EXCHANGE))
        .expect("exchange");
    assert_eq!(s.lookup(c, b"inner").expect("inner").ino, f.ino);
    assert_eq!(
        s.lookup(InodeId::ROOT, b"g").expect("g").kind,
        FileKind::File
    );
}

#[test]
fn readdir_cookies_are_stable_across_inserts_and_removals() {
    let mut s = cluster(1);
    let d = mkdir(&mut s, InodeId::ROOT, "d");
    for i in 0..10 {
        create(&mut s, d, &format!("f{i}"), None);
    }
    let (page, eof) = s.readdir(d, 0, 4).expect("readdir");
    assert!(!eof);
    assert_eq!(page.len(), 4);
    assert_eq!(page[0].cookie, FIRST_COOKIE);
    let resume = page[3].cookie;
    // Between pages: remove an entry already returned and one not yet returned, add one.
    for name in ["f1", "f6"] {
        s.apply(&Command::Unlink {
            parent: d,
            name: name.into(),
            now_ns: T0,
        })
        .expect("unlink");
    }
    create(&mut s, d, "new", None);
    let (rest, eof) = s.readdir(d, resume, 0).expect("readdir");
    assert!(eof);
    let names: Vec<String> = rest
        .iter()
        .map(|e| String::from_utf8(e.name.clone()).expect("utf8"))
        .collect();
    assert_eq!(names, ["f4", "f5", "f7", "f8", "f9", "new"]);
    // Cookies never change while an entry exists.
    let (all, _) = s.readdir(d, 0, 0).expect("readdir");
    let f0 = all.iter().find(|e| e.name == b"f0").expect("f0");
    assert_eq!(f0.cookie, page[0].cookie);
    // Exact-fit page reports eof; a file is not a directory.
    let (_, eof) = s.readdir(d, 0, all.len() as u32).expect("readdir");
    assert!(eof);
    let f = s.lookup(d, b"f0").expect("f0").ino;
    assert_eq!(s.readdir(f, 0, 0).map(|_| ()), Err(FsError::NotDir));
}

#[test]
fn one_release_many_entry_releases_every_handle_and_an_oversized_one_changes_nothing() {
    let mut s = cluster(2);
    let mut files = Vec::new();
    for n in ["a", "b", "c"] {
        let (f, _, h) = create(&mut s, InodeId::ROOT, n, Some(7));
        s.apply(&Command::Unlink {
            parent: InodeId::ROOT,
            name: n.as_bytes().to_vec(),
            now_ns: T0,
        })
        .expect("unlink");
        files.push((f.ino, h.expect("create opened a handle")));
    }
    // Unlinked but open: all three still there, none garbage yet.
    assert_eq!(s.garbage_len(), 0);
    let too_many = vec![files[0].1; cirrus_types::MAX_RELEASE_BATCH + 1];
    refused(
        &mut s,
        Command::ReleaseMany {
            handles: too_many,
            now_ns: T0,
        },
        FsError::Invalid(format!(
            "{} handles in one release (at most {})",
            cirrus_types::MAX_RELEASE_BATCH + 1,
            cirrus_types::MAX_RELEASE_BATCH
        )),
    );
    assert!(
        s.handle(files[0].1).is_some(),
        "a refused batch released nothing"
    );
    // Two of the three in one entry, plus an unknown handle (a retried batch): both go.
    s.apply(&Command::ReleaseMany {
        handles: vec![files[0].1, HandleId(999_999), files[2].1],
        now_ns: T0,
    })
    .expect("release many");
    assert!(s.handle(files[0].1).is_none() && s.handle(files[2].1).is_none());
    assert!(
        s.handle(files[1].1).is_some(),
        "a handle not in the batch stays"
    );
    assert_eq!(s.getattr(files[0].0), Err(FsError::NotFound));
    assert!(s.getattr(files[1].0).is_ok());
    assert_eq!(s.garbage_len(), 2);
}

#[test]
fn unlinked_open_file_survives_until_last_release_then_is_garbage() {
    let mut s = cluster(2);
    let (f, layout, h1) = create(&mut s, InodeId::ROOT, "f", Some(7));
    let h1 = h1.expect("create opened a handle");
    let h2 = match s.apply(&Command::Open {
        ino: f.ino,
        client: ClientId(8),
        truncate: false,
        now_ns: T0,
    }) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("open replied {other:?}"),
    };
    s.apply(&Command::Unlink {
        parent: InodeId::ROOT,
        name: b"f".to_vec(),
        now_ns: T0,
    })
    .expect("unlink");
    assert_eq!(s.lookup(InodeId::ROOT, b"f"), Err(FsError::NotFound));
    let a = s.getattr(f.ino).expect("still there by inode");
    assert_eq!(a.nlink, 0);
    // Still writable through its handle.
    s.apply(&Command::CommitWrite {
        ino: f.ino,
        handle: Some(h1),
        size: 4096,
        mtime_ns: T0 + 9,
        now_ns: T0 + 9,
    })
    .expect("commit");
    assert_eq!(s.getattr(f.ino).expect("f").size, 4096);
    assert_eq!(s.garbage_len(), 0);
    s.apply(&Command::Release {
        handle: h1,
        now_ns: T0,
    })
    .expect("release");
    assert!(s.getattr(f.ino).is_ok());
    // Releasing twice is fine (a retried proposal).
    s.apply(&Command::Release {
        handle: h1,
        now_ns: T0,
    })
    .expect("release again");
    assert!(s.getattr(f.ino).is_ok());
    // Client 8's lease lapses: its handle goes, and with it the file.
    assert_eq!(s.leased_clients(), vec![ClientId(8)]);
    s.apply(&Command::ReleaseClient {
        client: ClientId(8),
        now_ns: T0,
    })
    .expect("release client");
    assert!(s.handle(h2).is_none());
    assert_eq!(s.getattr(f.ino), Err(FsError::NotFound));
    let g = s.garbage(10);
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].ino, &g[0].layout), (f.ino, &layout));
    // Commit through a released handle is stale.
    let (f2, _, _) = create(&mut s, InodeId::ROOT, "f2", None);
    refused(
        &mut s,
        Command::CommitWrite {
            ino: f2.ino,
            handle: Some(h1),
            size: 1,
            mtime_ns: T0,
            now_ns: T0,
        },
        FsError::StaleHandle,
    );
    s.apply(&Command::AckGarbage { inos: vec![f.ino] })
        .expect("ack");
    assert_eq!(s.garbage_len(), 0);
}

#[test]
fn xattrs_honour_create_and_replace_flags() {
    let mut s = cluster(1);
    let (f, _, _) = create(&mut s, InodeId::ROOT, "f", None);
    let set = |name: &[u8], value: &[u8], flags: u32| Command::SetXattr {
        ino: f.ino,
        name: name.to_vec(),
        value: value.to_vec(),
        flags,
        now_ns: T0,
    };
    refused(&mut s, set(b"user.a", b"1", XATTR_REPLACE), FsError::NoAttr);
    s.apply(&set(b"user.a", b"1", XATTR_CREATE))
        .expect("create");
    refused(&mut s, set(b"user.a", b"2", XATTR_CREATE), FsError::Exists);
    s.apply(&set(b"user.a", b"3", XATTR_REPLACE))
        .expect("replace");
    assert_eq!(s.getxattr(f.ino, b"user.a"), Ok(b"3".to_vec()));
    assert_eq!(s.getxattr(f.ino, b"user.b"), Err(FsError::NoAttr));
    refused(&mut s, set(b"", b"1", 0), FsError::Range);
    refused(&mut s, set(&[b'n'; 256], b"1", 0), FsError::Range);
    refused(
        &mut s,
        set(b"user.big", &vec![0; XATTR_VALUE_MAX + 1], 0),
        FsError::Range,
    );
    invalid(&mut s, set(b"user.a", b"1", 3));
    // The layout xattr is for directories, and must parse.
    invalid(&mut s, set(LAYOUT_XATTR, b"stripe_count=2", 0));
    assert_eq!(s.listxattr(f.ino), Ok(vec![b"user.a".to_vec()]));
    refused(
        &mut s,
        Command::RemoveXattr {
            ino: f.ino,
            name: b"user.zz".to_vec(),
            now_ns: T0,
        },
        FsError::NoAttr,
    );
    s.apply(&Command::RemoveXattr {
        ino: f.ino,
        name: b"user.a".to_vec(),
        now_ns: T0,
    })
    .expect("remove");
    assert_eq!(s.listxattr(f.ino), Ok(vec![]));
}

#[test]
fn sizes_past_the_shared_limit_are_efbig_and_the_limit_itself_is_accepted() {
    assert_eq!(MAX_FILE_SIZE, cirrus_types::MAX_FILE_SIZE);
    let mut s = cluster(1);
    let (f, _, h) = create(&mut s, InodeId::ROOT, "f", Some(7));
    let setsize = |size: u64| Command::Setattr {
        ino: f.ino,
        set: SetAttr {
            size: Some(size),
            ..Default::default()
        },
        now_ns: T0,
    };
    let commit = |size: u64| Command::CommitWrite {
        ino: f.ino,
        handle: h,
        size,
        mtime_ns: T0,
        now_ns: T0,
    };
    // One byte past the limit changes nothing; the ~1 PB truncate of issue 19 is inside it.
    refused(&mut s, setsize(MAX_FILE_SIZE + 1), FsError::TooBig);
    s.apply(&setsize(999_999_999_999_999))
        .expect("the issue's truncate");
    assert_eq!(s.getattr(f.ino).map(|a| a.size), Ok(999_999_999_999_999));
    refused(&mut s, commit(MAX_FILE_SIZE + 1), FsError::TooBig);
    refused(&mut s, commit(u64::MAX), FsError::TooBig);
    s.apply(&commit(MAX_FILE_SIZE))
        .expect("commit at the limit");
    s.apply(&setsize(MAX_FILE_SIZE))
        .expect("setattr at the limit");
    assert_eq!(s.getattr(f.ino).map(|a| a.size), Ok(MAX_FILE_SIZE));
}

#[test]
fn xattrs_per_inode_stop_at_their_count_and_byte_ceilings_with_enospc() {
    let mut s = cluster(1);
    let (f, _, _) = create(&mut s, InodeId::ROOT, "f", None);
    let set = |name: &[u8], value: &[u8], flags: u32| Command::SetXattr {
        ino: f.ino,
        name: name.to_vec(),
        value: value.to_vec(),
        flags,
        now_ns: T0,
    };
    // A value at exactly the size limit is kept whole; one byte more is ERANGE.
    let full = vec![0xa5; XATTR_VALUE_MAX];
    s.apply(&set(b"user.full", &full, 0))
        .expect("value at the limit");
    assert_eq!(s.getxattr(f.ino, b"user.full"), Ok(full.clone()));
    s.apply(&Command::RemoveXattr {
        ino: f.ino,
        name: b"user.full".to_vec(),
        now_ns: T0,
    })
    .expect("remove");
    // Count: the ceiling-th xattr fits, one more is ENOSPC; replacing one still works.
    for i in 0..XATTRS_MAX_PER_INODE {
        s.apply(&set(format!("user.{i}").as_bytes(), b"v", 0))
            .expect("xattr under the count ceiling");
    }
    refused(&mut s, set(b"user.one-more", b"v", 0), FsError::NoSpace);
    s.apply(&set(b"user.0", b"w", XATTR_REPLACE))
        .expect("replace at the count ceiling");
    assert_eq!(
        s.listxattr(f.ino).map(|l| l.len()),
        Ok(XATTRS_MAX_PER_INODE)
    );

    // Bytes: full-size values up to the byte ceiling, then ENOSPC; shrinking one frees room.
    let (g, _, _) = create(&mut s, InodeId::ROOT, "g", None);
    let setg = |name: &[u8], value: &[u8]| Command::SetXattr {
        ino: g.ino,
        name: name.to_vec(),
        value: value.to_vec(),
        flags: 0,
        now_ns: T0,
    };
    let mut held = 0;
    let mut i = 0;
    loop {
        let name = format!("user.big{i}");
        if held + name.len() + XATTR_VALUE_MAX > XATTR_BYTES_MAX_PER_INODE {
            refused(&mut s, setg(name.as_bytes(), &full), FsError::NoSpace);
            break;
        }
        s.apply(&setg(name.as_bytes(), &full))
            .expect("under the byte ceiling");
        held += name.len() + XATTR_VALUE_MAX;
        i += 1;
    }
    s.apply(&setg(b"user.big0", b"small")).expect("shrink one");
    s.apply(&setg(format!("user.big{i}").as_bytes(), &full))
        .expect("room freed by the shrink");
}

#[test]
fn a_client_at_its_handle_ceiling_is_refused_and_others_are_not() {
    let mut s = cluster(1);
    let (f, _, _) = create(&mut s, InodeId::ROOT, "f", Some(1));
    // Fill client 1's handle set to the ceiling directly: a million applies would only
    // slow the test, and the check reads this set.
    let set = s.client_handles.entry(ClientId(1)).or_default();
    for h in 0..MAX_HANDLES_PER_CLIENT as u64 {
        set.insert(HandleId(1 << 40 | h));
    }
    let open = |client: u64| Command::Open {
        ino: f.ino,
        client: ClientId(client),
        truncate: false,
        now_ns: T0,
    };
    let before = s.digest();
    for cmd in [
        open(1),
        create_cmd(InodeId::ROOT, b"g", Some(1)),
        match create_cmd(InodeId::ROOT, b"f", Some(1)) {
            Command::Create {
                parent,
                name,
                mode,
                uid,
                gid,
                client,
                spec,
                now_ns,
                ..
            } => Command::Create {
                parent,
                name,
                mode,
                uid,
                gid,
                exclusive: false,
                client,
                spec,
                now_ns,
            },
            other => other,
        },
    ] {
        match s.apply(&cmd) {
            Err(e @ FsError::TooManyOpen(_)) => {
                assert_eq!(e.errno(), libc::ENFILE);
                assert!(e.to_string().contains("too many open files"), "{e}");
            }
            other => panic!("{cmd:?} at the handle ceiling replied {other:?}"),
        }
        assert_eq!(s.digest(), before, "a refused {cmd:?} changed the state");
    }
    assert!(matches!(s.apply(&open(2)), Ok(Reply::Opened { .. })));
}

#[test]
fn layouts_default_spread_and_follow_directory_xattr() {
    let mut s = init(2);
    refused(
        &mut s,
        create_cmd(InodeId::ROOT, b"early", None),
        FsError::NoSpace,
    );
    for i in 0..6 {
        register(&mut s, &format!("s{i}"));
    }
    let (a, la, _) = create(&mut s, InodeId::ROOT, "a", None);
    let (_, lb, _) = create(&mut s, InodeId::ROOT, "b", None);
    assert_eq!(la.stripe_unit, 1 << 20);
    assert_eq!(la.chains.len(), 4, "default stripe count is min(4, chains)");
    assert_ne!(
        la.chains[0], lb.chains[0],
        "consecutive files start on different chains"
    );
    let distinct: BTreeSet<_> = la.chains.iter().collect();
    assert_eq!(distinct.len(), 4);
    assert_eq!(s.layout(a.ino), Ok(la));
    // Directory default.
    let d = mkdir(&mut s, InodeId::ROOT, "d");
    invalid(
        &mut s,
        Command::SetXattr {
            ino: d,
            name: LAYOUT_XATTR.to_vec(),
            value: b"stripe_unit=1000".to_vec(),
            flags: 0,
            now_ns: T0,
        },
    );
    s.apply(&Command::SetXattr {
        ino: d,
        name: LAYOUT_XATTR.to_vec(),
        value: b"stripe_unit=65536,stripe_count=2".to_vec(),
        flags: 0,
        now_ns: T0,
    })
    .expect("set layout");
    let (_, l, _) = create(&mut s, d, "f", None);
    assert_eq!((l.stripe_unit, l.chains.len()), (65536, 2));
    // Inherited by subdirectories; the request overrides per field; count capped by chains.
    let sub = mkdir(&mut s, d, "sub");
    let mut cmd = create_cmd(sub, b"g", None);
    if let Command::Create { spec, .. } = &mut cmd {
        spec.stripe_count = 100;
    }
    match s.apply(&cmd) {
        Ok(Reply::Created { layout, .. }) => {
            assert_eq!((layout.stripe_unit, layout.chains.len()), (65536, 6))
        }
        other => panic!("create replied {other:?}"),
    }
    let mut bad = create_cmd(sub, b"h", None);
    if let Command::Create { spec, .. } = &mut bad {
        spec.stripe_unit = 1000;
    }
    invalid(&mut s, bad);
}

#[test]
fn time_comes_from_commands_and_never_runs_backwards() {
    let mut s = cluster(1);
    let (f, _, _) = create(&mut s, InodeId::ROOT, "f", None);
    assert_eq!(f.mtime_ns, T0 + 2);
    // A new leader with a clock behind the old one: stamps are clamped.
    let a = match s.apply(&Command::Setattr {
        ino: f.ino,
        set: SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
        now_ns: T0 - 1_000,
    }) {
        Ok(Reply::Attr(a)) => a,
        other => panic!("setattr replied {other:?}"),
    };
    assert_eq!(a.ctime_ns, T0 + 2);
    assert_eq!(a.mode, 0o600);
    let a = match s.apply(&Command::Setattr {
        ino: f.ino,
        set: SetAttr {
            atime: Some(TimeSet::Ns(5)),
            mtime: Some(TimeSet::Now),
            ..Default::default()
        },
        now_ns: T0 + 50,
    }) {
        Ok(Reply::Attr(a)) => a,
        other => panic!("setattr replied {other:?}"),
    };
    assert_eq!((a.atime_ns, a.mtime_ns, a.ctime_ns), (5, T0 + 50, T0 + 50));
}

// ------------------------------------------------------------ chains

fn members(s: &MetaState, c: u32) -> (Vec<u64>, Vec<u64>, u64) {
    let c = s.chain(ChainId(c)).expect("chain");
    (
        c.members.iter().map(|m| m.0).collect(),
        c.syncing.iter().map(|m| m.0).collect(),
        c.version.0,
    )
}

#[test]
fn empty_chains_follow_the_ideal_placement() {
    let mut s = init(2);
    assert_eq!(register(&mut s, "a"), ServerId(1));
    assert_eq!(members(&s, 1).0, vec![1], "one server: R is 1 for now");
    register(&mut s, "b");
    register(&mut s, "c");
    // Same uuid => same id; the address may change.
    s.apply(&Command::RegisterServer {
        uuid: "b".into(),
        address: "moved:7101".into(),
        capacity: 1,
        free: 1,
        now_ns: T0,
    })
    .expect("re-register");
    assert_eq!(s.server_by_uuid("b").expect("b").address, "moved:7101");
    let t = s.chain_table();
    assert_eq!(t.servers.len(), 3);
    assert_eq!(t.replicas, 2);
    let got: Vec<Vec<u64>> = t
        .chains
        .values()
        .map(|c| c.members.iter().map(|m| m.0).collect())
        .collect();
    assert_eq!(got, vec![vec![1, 2], vec![2, 3], vec![3, 1]]);
    assert_eq!(
        ideal_members(4, &[ServerId(1), ServerId(2), ServerId(3)], 3),
        vec![ServerId(2), ServerId(3), ServerId(1)]
    );
    invalid(
        &mut s,
        Command::RegisterServer {
            uuid: String::new(),
            address: "x:1".into(),
            capacity: 0,
            free: 0,
            now_ns: T0,
        },
    );
}

#[test]
fn server_down_keeps_r_with_syncing_replacement_and_bumps_versions() {
    let mut s = cluster(3);
    // Put data on every chain so they change only incrementally.
    for i in 0..3 {
        create(&mut s, InodeId::ROOT, &format!("f{i}"), None);
    }
    let before: Vec<_> = (1..=3).map(|c| members(&s, c)).collect();
    assert_eq!(before[0].0, vec![1, 2]);
    s.apply(&Command::ServerDown {
        server: ServerId(2),
        now_ns: T0,
    })
    .expect("down");
    // Chain 1 [1,2]: 2 leaves, 3 (the only other live server) joins as syncing.
    let (m1, s1, v1) = members(&s, 1);
    assert_eq!((m1, s1), (vec![1], vec![3]));
    assert_eq!(
        v1,
        before[0].2 + 2,
        "one bump for the removal, one for the replacement"
    );
    let (m2, s2, v2) = members(&s, 2);
    assert_eq!((m2, s2), (vec![3], vec![1]));
    assert!(v2 > before[1].2);
    // Chain 3 [3,1] did not contain 2: untouched.
    assert_eq!(members(&s, 3), before[2]);
    assert!(!s.server(ServerId(2)).expect("2").alive);
    // Idempotent.
    let d = s.digest();
    s.apply(&Command::ServerDown {
        server: ServerId(2),
        now_ns: T0,
    })
    .expect("down again");
    assert_eq!(s.digest(), d);
    // Caught up: syncing -> tail, version bump; repeated report is harmless.
    s.apply(&Command::ServerCaughtUp {
        server: ServerId(3),
        chain: ChainId(1),
    })
    .expect("caught up");
    let (m1b, s1b, v1b) = members(&s, 1);
    assert_eq!((m1b, s1b, v1b), (vec![1, 3], vec![], v1 + 1));
    s.apply(&Command::ServerCaughtUp {
        server: ServerId(3),
        chain: ChainId(1),
    })
    .expect("repeat");
    assert_eq!(members(&s, 1).2, v1 + 1);
    invalid(
        &mut s,
        Command::ServerCaughtUp {
            server: ServerId(2),
            chain: ChainId(1),
        },
    );
    refused(
        &mut s,
        Command::ServerCaughtUp {
            server: ServerId(1),
            chain: ChainId(99),
        },
        FsError::NotFound,
    );
    refused(
        &mut s,
        Command::ServerDown {
            server: ServerId(99),
            now_ns: T0,
        },
        FsError::NotFound,
    );
    // The server comes back with the same uuid: same id, alive, and re-added as syncing
    // wherever a chain is short (none is now except chain 2, still syncing 1).
    assert_eq!(register(&mut s, "uuid-1"), ServerId(2));
    assert!(s.server(ServerId(2)).expect("2").alive);
}

#[test]
fn last_member_is_kept_and_short_chains_grow_when_servers_join() {
    let mut s = init(2);
    register(&mut s, "a");
    create(&mut s, InodeId::ROOT, "f", None);
    assert_eq!(members(&s, 1).0, vec![1]);
    // A second server: the used chain 1 gains it as syncing; new chain 2 is empty and
    // placed directly.
    register(&mut s, "b");
    assert_eq!(members(&s, 1), (vec![1], vec![2], 2));
    assert_eq!(members(&s, 2).0, vec![2, 1]);
    // Server 1 dies: it is chain 1's only serving member, so it stays (the chain waits
    // for it), and syncing 2 has no source any more but remains to be resumed.
    s.apply(&Command::ServerDown {
        server: ServerId(1),
        now_ns: T0,
    })
    .expect("down");
    assert_eq!(members(&s, 1).0, vec![1]);
    assert_eq!(
        members(&s, 2).0,
        vec![2],
        "empty chain re-placed on the live server"
    );
    // New files avoid chain 1 (no live member).
    let (_, l, _) = create(&mut s, InodeId::ROOT, "g", None);
    assert_eq!(l.chains, vec![ChainId(2)]);
    // statfs counts live servers only, divided by R.
    let st = s.statfs();
    assert_eq!((st.total_bytes, st.free_bytes), (500, 300));
    s.apply(&Command::ServerUp {
        server: ServerId(1),
        now_ns: T0,
    })
    .expect("up");
    assert_eq!(s.statfs().total_bytes, 1000);
    s.apply(&Command::UpdateCapacity {
        server: ServerId(1),
        capacity: 3000,
        free: 3000,
    })
    .expect("capacity");
    assert_eq!(s.statfs().total_bytes, 2000);
}

// ------------------------------------------------------------ determinism

fn any_command() -> impl Strategy<Value = Command> {
    let ino = (1u64..12).prop_map(InodeId);
    let name = prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    prop_oneof![
        (
            ino.clone(),
            name.clone(),
            any::<bool>(),
            prop::option::of(1u64..3)
        )
            .prop_map(|(parent, name, exclusive, client)| Command::Create {
                parent,
                name,
                mode: 0o644,
                uid: 0,
                gid: 0,
                exclusive,
                client: client.map(ClientId),
                spec: LayoutSpec::default(),
                now_ns: T0,
            }),
        (ino.clone(), name.clone()).prop_map(|(parent, name)| Command::Mkdir {
            parent,
            name,
            mode: 0o755,
            uid: 0,
            gid: 0,
            now_ns: T0,
        }),
        (
            ino.clone(),
            name.clone(),
            ino.clone(),
            name.clone(),
            0u32..3
        )
            .prop_map(
                |(parent, name, new_parent, new_name, flags)| Command::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    flags,
                    now_ns: T0,
                }
            ),
        (ino.clone(), name.clone()).prop_map(|(parent, name)| Command::Unlink {
            parent,
            name,
            now_ns: T0
        }),
        (1u64..6).prop_map(|h| Command::Release {
            handle: HandleId(h),
            now_ns: T0
        }),
        prop::collection::vec(1u64..6, 0..4).prop_map(|hs| Command::ReleaseMany {
            handles: hs.into_iter().map(HandleId).collect(),
            now_ns: T0
        }),
        (0u8..4).prop_map(|u| Command::RegisterServer {
            uuid: format!("u{u}"),
            address: format!("h{u}:1"),
            capacity: 10,
            free: 5,
            now_ns: T0,
        }),
        (1u64..5).prop_map(|s| Command::ServerDown {
            server: ServerId(s),
            now_ns: T0
        }),
        (1u64..5, 1u32..5).prop_map(|(s, c)| Command::ServerCaughtUp {
            server: ServerId(s),
            chain: ChainId(c)
        }),
    ]
}

proptest! {
    #[test]
    fn apply_is_deterministic_and_survives_serialization(cmds in prop::collection::vec(any_command(), 0..60)) {
        let mut a = init(2);
        let mut b = init(2);
        for (i, c) in cmds.iter().enumerate() {
            let ra = a.apply(c);
            let rb = b.apply(c);
            prop_assert_eq!(ra, rb);
            // Halfway, replace b by its own snapshot: a restored replica goes on identically.
            if i == cmds.len() / 2 {
                let bytes = bincode::serialize(&b).expect("serialize");
                let restored: MetaState = bincode::deserialize(&bytes).expect("deserialize");
                prop_assert_eq!(restored.digest(), b.digest());
                b = restored;
            }
        }
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(&a, &b);
    }
}

#[test]
fn digest_differs_when_state_differs() {
    let mut a = cluster(1);
    let b = a.clone();
    assert_eq!(a.digest(), b.digest());
    create(&mut a, InodeId::ROOT, "f", None);
    assert_ne!(a.digest(), b.digest());
}

#[test]
fn a_directory_of_a_million_entries_lists_in_bounded_pages_each_name_once() {
    const N: u32 = 1_000_000;
    const PAGE: u32 = 4096;
    let mut s = cluster(1);
    let d = mkdir(&mut s, InodeId::ROOT, "big");
    for i in 0..N {
        let name = format!("f{i:07}");
        match s.apply(&create_cmd(d, name.as_bytes(), None)) {
            Ok(Reply::Created { created: true, .. }) => {}
            other => panic!("create {name} replied {other:?}"),
        }
    }
    // Paged by cookie as the FUSE adapter and the service do: every reply at most one
    // page (the service caps a request at 4096), every name exactly once.
    let mut seen = vec![false; N as usize];
    let (mut cookie, mut pages) = (0u64, 0u32);
    loop {
        let (page, eof) = s.readdir(d, cookie, PAGE).expect("readdir");
        assert!(page.len() <= PAGE as usize, "a page of {}", page.len());
        pages += 1;
        for e in &page {
            let i: usize = std::str::from_utf8(&e.name[1..]).unwrap().parse().unwrap();
            assert!(!seen[i], "{:?} listed twice", e.name);
            seen[i] = true;
        }
        match page.last() {
            Some(e) if !eof => cookie = e.cookie,
            _ => break,
        }
    }
    assert!(seen.iter().all(|x| *x), "a name was never listed");
    assert!(pages >= N / PAGE, "{pages} pages");
}

fn mknod_cmd(parent: InodeId, name: &str, kind: FileKind) -> Command {
    Command::Mknod {
        parent,
        name: name.into(),
        kind,
        mode: 0o640,
        uid: 5,
        gid: 6,
        now_ns: T0 + 3,
    }
}

#[test]
fn fifos_sockets_and_device_nodes_are_inodes_with_their_kind_and_no_data() {
    let mut s = cluster(2);
    let d = mkdir(&mut s, InodeId::ROOT, "d");
    let kinds = [
        ("p", FileKind::Fifo),
        ("s", FileKind::Socket),
        ("c", FileKind::CharDevice { rdev: 0x0103 }),
        ("b", FileKind::BlockDevice { rdev: 0x0700 }),
    ];
    for (name, kind) in kinds {
        let a = match s.apply(&mknod_cmd(d, name, kind)) {
            Ok(Reply::Attr(a)) => a,
            other => panic!("mknod {name} replied {other:?}"),
        };
        assert_eq!(
            (a.kind, a.mode, a.uid, a.gid, a.size, a.nlink),
            (kind, 0o640, 5, 6, 0, 1)
        );
        assert_eq!(s.lookup(d, name.as_bytes()).unwrap(), a);
    }
    let (listed, _) = s.readdir(d, 0, 0).unwrap();
    let got: Vec<(Vec<u8>, FileKind)> = listed.iter().map(|e| (e.name.clone(), e.kind)).collect();
    assert_eq!(
        got,
        kinds
            .iter()
            .map(|(n, k)| (n.as_bytes().to_vec(), *k))
            .collect::<Vec<_>>()
    );

    // Not a file: no layout, no open, no resize; the name is taken.
    let p = s.lookup(d, b"p").unwrap().ino;
    invalid(
        &mut s,
        Command::Open {
            ino: p,
            client: ClientId(1),
            truncate: false,
            now_ns: T0 + 4,
        },
    );
    invalid(
        &mut s,
        Command::Setattr {
            ino: p,
            set: SetAttr {
                size: Some(1),
                ..Default::default()
            },
            now_ns: T0 + 4,
        },
    );
    refused(&mut s, mknod_cmd(d, "p", FileKind::Fifo), FsError::Exists);
    refused(&mut s, create_cmd(d, b"p", None), FsError::Exists);
    // mknod makes only special kinds, and checks names as every create does.
    invalid(&mut s, mknod_cmd(d, "f", FileKind::File));
    invalid(&mut s, mknod_cmd(d, "x", FileKind::Dir));
    invalid(&mut s, mknod_cmd(d, "a/b", FileKind::Fifo));

    // chmod, link, rename and unlink as for any non-directory; nothing becomes garbage.
    s.apply(&Command::Setattr {
        ino: p,
        set: SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
        now_ns: T0 + 5,
    })
    .unwrap();
    assert_eq!(s.getattr(p).unwrap().mode, 0o600);
    s.apply(&Command::Link {
        ino: p,
        new_parent: InodeId::ROOT,
        new_name: b"p2".to_vec(),
        now_ns: T0 + 6,
    })
    .unwrap();
    assert_eq!(s.getattr(p).unwrap().nlink, 2);
    s.apply(&rename(d, "c", InodeId::ROOT, "c2", 0)).unwrap();
    assert_eq!(
        s.lookup(InodeId::ROOT, b"c2").unwrap().kind,
        FileKind::CharDevice { rdev: 0x0103 }
    );
    let garbage = s.garbage_len();
    for (parent, name) in [
        (d, "p"),
        (InodeId::ROOT, "p2"),
        (d, "s"),
        (InodeId::ROOT, "c2"),
        (d, "b"),
    ] {
        s.apply(&Command::Unlink {
            parent,
            name: name.into(),
            now_ns: T0 + 7,
        })
        .unwrap_or_else(|e| panic!("unlink {name}: {e}"));
    }
    assert_eq!(s.getattr(p), Err(FsError::NotFound));
    assert_eq!(s.garbage_len(), garbage);
    assert!(s.readdir(d, 0, 0).unwrap().0.is_empty());

    // A snapshot keeps them.
    s.apply(&mknod_cmd(d, "q", FileKind::BlockDevice { rdev: 0x0801 }))
        .unwrap();
    let restored: MetaState = bincode::deserialize(&bincode::serialize(&s).unwrap()).unwrap();
    assert_eq!(restored, s);
    assert_eq!(restored.lookup(d, b"q").unwrap().kind.rdev(), 0x0801);
}

fn set_lock(
    s: &mut MetaState,
    ino: InodeId,
    client: u64,
    owner: u64,
    kind: Option<LockKind>,
    start: u64,
    end: u64,
) -> Response {
    s.apply(&Command::SetLock {
        ino,
        owner: LockOwner {
            client: ClientId(client),
            owner,
        },
        kind,
        start,
        end,
        pid: 1000 + owner as u32,
    })
}

#[test]
fn a_conflicting_lock_is_would_block_and_changes_nothing_and_readers_share() {
    let mut s = cluster(2);
    let (f, _, _) = create(&mut s, InodeId::ROOT, "f", Some(7));
    set_lock(&mut s, f.ino, 7, 1, Some(LockKind::Write), 0, 99).unwrap();
    let before = s.digest();
    for (kind, start, end) in [(LockKind::Read, 0, 0), (LockKind::Write, 99, 200)] {
        assert!(matches!(
            set_lock(&mut s, f.ino, 8, 1, Some(kind), start, end),
            Err(FsError::WouldBlock(_))
        ));
        // The same owner number on another client is another owner.
        assert!(matches!(
            set_lock(&mut s, f.ino, 8, 1, Some(kind), start, end),
            Err(FsError::WouldBlock(_))
        ));
    }
    assert_eq!(s.digest(), before, "a refused lock changed the state");
    let held = s
        .lock_conflict(
            f.ino,
            LockOwner {
                client: ClientId(8),
                owner: 1,
            },
            LockKind::Read,
            50,
            50,
        )
        .expect("F_GETLK sees the holder");
    assert_eq!((held.start, held.end, held.pid), (0, 99, 1001));
    // Past the range is free; readers share once the writer downgrades.
    set_lock(&mut s, f.ino, 8, 1, Some(LockKind::Write), 100, 100).unwrap();
    set_lock(&mut s, f.ino, 7, 1, Some(LockKind::Read), 0, 99).unwrap();
    set_lock(&mut s, f.ino, 8, 2, Some(LockKind::Read), 0, 99).unwrap();
    assert_eq!(s.locks_on(f.ino).len(), 3);
    // Bad input: a backwards range, a directory, a missing inode; nothing changes.
    let before = s.digest();
    assert!(matches!(
        set_lock(&mut s, f.ino, 7, 1, Some(LockKind::Read), 5, 4),
        Err(FsError::Invalid(_))
    ));
    assert_eq!(
        set_lock(&mut s, InodeId::ROOT, 7, 1, Some(LockKind::Read), 0, 0),
        Err(FsError::IsDir)
    );
    assert_eq!(
        set_lock(&mut s, InodeId(999), 7, 1, Some(LockKind::Read), 0, 0),
        Err(FsError::NotFound)
    );
    assert_eq!(s.digest(), before);
}

#[test]
fn a_lapsed_client_loses_its_locks_and_a_collected_file_forgets_them() {
    let mut s = cluster(2);
    let (f, _, _) = create(&mut s, InodeId::ROOT, "f", Some(7));
    let (g, _, hg) = create(&mut s, InodeId::ROOT, "g", Some(8));
    set_lock(&mut s, f.ino, 7, 1, Some(LockKind::Write), 0, u64::MAX).unwrap();
    set_lock(&mut s, g.ino, 9, 1, Some(LockKind::Write), 0, 0).unwrap();
    // Client 9 holds a lock but no handle: its lease is watched all the same.
    assert_eq!(
        s.leased_clients(),
        vec![ClientId(7), ClientId(8), ClientId(9)]
    );
    s.apply(&Command::ReleaseClient {
        client: ClientId(7),
        now_ns: T0,
    })
    .unwrap();
    assert!(
        s.locks_on(f.ino).is_empty(),
        "the lapsed client's lock stayed"
    );
    set_lock(&mut s, f.ino, 8, 1, Some(LockKind::Write), 0, 0).unwrap();
    // g is unlinked and its last handle released: the file and its locks go.
    s.apply(&Command::Unlink {
        parent: InodeId::ROOT,
        name: b"g".to_vec(),
        now_ns: T0,
    })
    .unwrap();
    s.apply(&Command::Release {
        handle: hg.unwrap(),
        now_ns: T0,
    })
    .unwrap();
    assert!(s.locks_on(g.ino).is_empty());
    assert_eq!(s.leased_clients(), vec![ClientId(8)]);
}

#[test]
fn lock_records_per_client_stop_at_the_ceiling_with_nothing_changed() {
    use cirrus_types::lock::MAX_LOCKS_PER_CLIENT;
    let mut s = cluster(2);
    let (f, _, _) = create(&mut s, InodeId::ROOT, "f", Some(7));
    // Every other byte: records that cannot merge.
    for i in 0..MAX_LOCKS_PER_CLIENT as u64 {
        set_lock(&mut s, f.ino, 7, 1, Some(LockKind::Read), 2 * i, 2 * i).unwrap();
    }
    let before = s.digest();
    let next = 2 * MAX_LOCKS_PER_CLIENT as u64;
    assert!(matches!(
        set_lock(&mut s, f.ino, 7, 1, Some(LockKind::Read), next, next),
        Err(FsError::NoLocks(_))
    ));
    assert_eq!(s.digest(), before);
    // A lock that merges records is always allowed, and so is another client's.
    set_lock(&mut s, f.ino, 7, 1, Some(LockKind::Read), 0, 10).unwrap();
    set_lock(&mut s, f.ino, 8, 1, Some(LockKind::Read), next, next).unwrap();
    // And an unlock that splits nothing.
    set_lock(&mut s, f.ino, 7, 1, None, 0, u64::MAX).unwrap();
    assert_eq!(s.locks_on(f.ino).len(), 1);
}

#[test]
fn acls_are_inherited_kept_in_step_with_the_mode_and_a_malformed_one_changes_nothing() {
    use cirrus_types::acl::{
        Acl, Entry, ACCESS_XATTR, DEFAULT_XATTR, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ,
    };
    let acl = |e: &[(u16, u16, u32)]| {
        Acl(e
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
        .encode()
    };
    let named = acl(&[
        (USER_OBJ, 7, 0),
        (USER, 7, 1000),
        (GROUP_OBJ, 5, 0),
        (MASK, 7, 0),
        (OTHER, 5, 0),
    ]);
    let mut s = cluster(1);
    let d = mkdir(&mut s, InodeId::ROOT, "d");
    let set = |ino: InodeId, name: &[u8], value: &[u8]| Command::SetXattr {
        ino,
        name: name.to_vec(),
        value: value.to_vec(),
        flags: 0,
        now_ns: T0 + 3,
    };
    // Malformed (version 1; a named entry without a mask) and a default ACL on a file:
    // refused, nothing changed.
    let mut v1 = named.clone();
    v1[0] = 1;
    invalid(&mut s, set(d, ACCESS_XATTR, &v1));
    invalid(
        &mut s,
        set(
            d,
            ACCESS_XATTR,
            &acl(&[
                (USER_OBJ, 7, 0),
                (USER, 4, 9),
                (GROUP_OBJ, 5, 0),
                (OTHER, 5, 0),
            ]),
        ),
    );
    s.apply(&set(d, DEFAULT_XATTR, &named))
        .expect("default ACL");
    // A file created under it with 0666 and umask 077: the default ACL wins over the
    // umask, cut to the create mode (the kernel's posix_acl_create).
    let f = match s.apply(&Command::Umasked {
        umask: 0o077,
        cmd: Box::new(create_cmd(d, b"f", None)),
    }) {
        Ok(Reply::Created { attr, .. }) => attr,
        other => panic!("create replied {other:?}"),
    };
    assert_eq!(f.mode & 0o777, 0o644, "{:o}", f.mode);
    let got = Acl::parse(
        &s.getxattr(f.ino, ACCESS_XATTR)
            .expect("inherited access ACL"),
    )
    .unwrap();
    assert_eq!(got.mode_bits().0, f.mode & 0o777);
    assert_eq!(
        s.getxattr(f.ino, DEFAULT_XATTR),
        Err(FsError::NoAttr),
        "files get no default ACL"
    );
    refused(
        &mut s,
        set(f.ino, DEFAULT_XATTR, &named),
        FsError::PermissionDenied,
    );
    // A subdirectory inherits both.
    let sub = match s.apply(&Command::Umasked {
        umask: 0o077,
        cmd: Box::new(Command::Mkdir {
            parent: d,
            name: b"sub".to_vec(),
            mode: 0o777,
            uid: 0,
            gid: 0,
            now_ns: T0 + 4,
        }),
    }) {
        Ok(Reply::Attr(a)) => a,
        other => panic!("mkdir replied {other:?}"),
    };
    assert_eq!(sub.mode & 0o777, 0o775);
    assert_eq!(s.getxattr(sub.ino, DEFAULT_XATTR), Ok(named.clone()));
    // Without a default ACL the umask applies.
    let plain = match s.apply(&Command::Umasked {
        umask: 0o027,
        cmd: Box::new(create_cmd(InodeId::ROOT, b"plain", None)),
    }) {
        Ok(Reply::Created { attr, .. }) => attr,
        other => panic!("create replied {other:?}"),
    };
    assert_eq!(plain.mode & 0o777, 0o640);
    // chmod rewrites the mask (not the group entry); setting an ACL sets the mode.
    s.apply(&Command::Setattr {
        ino: f.ino,
        set: SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
        now_ns: T0 + 5,
    })
    .expect("chmod");
    let after = Acl::parse(&s.getxattr(f.ino, ACCESS_XATTR).unwrap()).unwrap();
    assert_eq!(after.mode_bits(), (0o600, false));
    assert!(
        after.0.iter().any(|e| e.tag == GROUP_OBJ && e.perm == 5),
        "group entry kept"
    );
    s.apply(&set(f.ino, ACCESS_XATTR, &named))
        .expect("set access ACL");
    assert_eq!(s.getattr(f.ino).unwrap().mode & 0o777, 0o775);
    // An ACL of the three base entries is the mode alone: no xattr is kept.
    s.apply(&set(
        f.ino,
        ACCESS_XATTR,
        &acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 0, 0)]),
    ))
    .expect("base ACL");
    assert_eq!(s.getattr(f.ino).unwrap().mode & 0o777, 0o640);
    assert_eq!(s.getxattr(f.ino, ACCESS_XATTR), Err(FsError::NoAttr));
}
