//! Every bad input to the meta gRPC API is refused with its specific error and changes
//! nothing: the replicated state digest is the same before and after.

use crate::meta_common;

use anyhow::Result;
use cirrus_proto::{pb, MetaConn};
use cirrus_raft_tests::cluster::ClusterBuilder;
use cirrus_types::{ClusterId, FsError, FsResult};
use meta_common::*;
use std::time::Duration;

async fn create_raw(conn: &MetaConn, cluster_id: &str, parent: u64, name: &[u8]) -> FsResult<()> {
    let (cid, name) = (cluster_id.to_string(), name.to_vec());
    conn.call("create", move |mut c| {
        let req = pb::CreateRequest {
            cluster_id: cid.clone(),
            parent,
            name: name.clone(),
            mode: 0o644,
            exclusive: true,
            ..Default::default()
        };
        async move { c.create(req).await }
    })
    .await
    .map(|_| ())
}

async fn getattr(conn: &MetaConn, cluster_id: &str, ino: u64) -> FsResult<()> {
    let cid = cluster_id.to_string();
    conn.call("getattr", move |mut c| {
        let req = pb::GetattrRequest {
            cluster_id: cid.clone(),
            ino,
        };
        async move { c.getattr(req).await }
    })
    .await
    .map(|_| ())
}

async fn unlink(conn: &MetaConn, parent: u64, name: &[u8]) -> FsResult<()> {
    let (cid, name) = (conn.cluster_id(), name.to_vec());
    conn.call("unlink", move |mut c| {
        let req = pb::UnlinkRequest {
            cluster_id: cid.clone(),
            parent,
            name: name.clone(),
        };
        async move { c.unlink(req).await }
    })
    .await
    .map(|_| ())
}

async fn rmdir(conn: &MetaConn, parent: u64, name: &[u8]) -> FsResult<()> {
    let (cid, name) = (conn.cluster_id(), name.to_vec());
    conn.call("rmdir", move |mut c| {
        let req = pb::RmdirRequest {
            cluster_id: cid.clone(),
            parent,
            name: name.clone(),
        };
        async move { c.rmdir(req).await }
    })
    .await
    .map(|_| ())
}

async fn release_raw(conn: &MetaConn, handles: &[u64]) -> FsResult<()> {
    let cid = conn.cluster_id();
    let (first, more) = (handles[0], handles[1..].to_vec());
    conn.call("release", move |mut c| {
        let req = pb::ReleaseRequest {
            cluster_id: cid.clone(),
            handle: first,
            more: more.clone(),
        };
        async move { c.release(req).await }
    })
    .await
    .map(|_| ())
}

async fn mknod_raw(conn: &MetaConn, parent: u64, name: &[u8], kind: u32) -> FsResult<()> {
    let (cid, name) = (conn.cluster_id(), name.to_vec());
    conn.call("mknod", move |mut c| {
        let req = pb::MknodRequest {
            cluster_id: cid.clone(),
            parent,
            name: name.clone(),
            kind,
            mode: 0o644,
            ..Default::default()
        };
        async move { c.mknod(req).await }
    })
    .await
    .map(|_| ())
}

async fn setxattr_raw(conn: &MetaConn, ino: u64, value: Vec<u8>) -> FsResult<()> {
    let cid = conn.cluster_id();
    conn.call("setxattr", move |mut c| {
        let req = pb::SetXattrRequest {
            cluster_id: cid.clone(),
            ino,
            name: b"user.huge".to_vec(),
            value: value.clone(),
            flags: 0,
        };
        async move { c.set_xattr(req).await }
    })
    .await
    .map(|_| ())
}

fn is_invalid<T: std::fmt::Debug>(r: FsResult<T>, what: &str) {
    assert!(matches!(r, Err(FsError::Invalid(_))), "{what}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_is_refused_with_its_error_and_changes_nothing() -> Result<()> {
    let c = ClusterBuilder::new()
        .server_timeout(Duration::from_secs(3600))
        .start()
        .await?;
    let conn = c.conn().await?;
    register_fake_servers(&conn, 1).await?;
    let cid = conn.cluster_id();
    let dir = mkdir(&conn, ROOT, b"dir").await?;
    let sub = mkdir(&conn, dir.ino, b"sub").await?;
    let file = create(&conn, ROOT, b"file").await?.attr.expect("attr");
    let (_, digest_before) = wait_converged(&c).await?;

    is_invalid(create_raw(&conn, &cid, ROOT, b"").await, "empty name");
    is_invalid(create_raw(&conn, &cid, ROOT, b"a/b").await, "name with '/'");
    is_invalid(
        create_raw(&conn, &cid, ROOT, b"a\0b").await,
        "name with NUL",
    );
    is_invalid(create_raw(&conn, &cid, ROOT, b"..").await, "name '..'");
    assert_eq!(
        create_raw(&conn, &cid, ROOT, &[b'x'; 256]).await,
        Err(FsError::NameTooLong)
    );
    is_invalid(create_raw(&conn, &cid, 0, b"x").await, "parent inode 0");
    assert_eq!(getattr(&conn, &cid, 987_654).await, Err(FsError::NotFound));
    assert_eq!(
        create_raw(&conn, &cid, 987_654, b"x").await,
        Err(FsError::NotFound),
        "unknown parent"
    );
    assert_eq!(
        create_raw(&conn, &cid, file.ino, b"x").await,
        Err(FsError::NotDir),
        "create under a file"
    );
    assert_eq!(rmdir(&conn, ROOT, b"file").await, Err(FsError::NotDir));
    assert_eq!(unlink(&conn, ROOT, b"dir").await, Err(FsError::IsDir));
    assert_eq!(rmdir(&conn, ROOT, b"dir").await, Err(FsError::NotEmpty));
    assert_eq!(
        mkdir(&conn, ROOT, b"dir").await.err(),
        Some(FsError::Exists)
    );
    assert_eq!(
        create_raw(&conn, &cid, ROOT, b"file").await,
        Err(FsError::Exists),
        "exclusive create of an existing name"
    );
    is_invalid(
        rename(&conn, ROOT, b"dir", sub.ino, b"inside", 0).await,
        "directory into its own subtree",
    );
    is_invalid(
        rename(&conn, ROOT, b"file", ROOT, b"other", 0x80).await,
        "unknown rename flags",
    );
    assert_eq!(
        rename(&conn, ROOT, b"file", ROOT, b"dir", 1).await,
        Err(FsError::Exists),
        "RENAME_NOREPLACE onto an existing name"
    );
    // A release batch over the limit, even of unknown handles, is refused before it is
    // proposed.
    let oversized: Vec<u64> = (1..=cirrus_types::MAX_RELEASE_BATCH as u64 + 1).collect();
    is_invalid(
        release_raw(&conn, &oversized).await,
        "oversized release batch",
    );
    // mknod makes only FIFOs, sockets and device nodes.
    for kind in [0, 1, 2, 3, 8, u32::MAX] {
        is_invalid(
            mknod_raw(&conn, ROOT, b"node", kind).await,
            "mknod of a non-special kind",
        );
    }
    // A request past the meta API's size limit is refused by the decoder, before any
    // handler holds it.
    let huge = setxattr_raw(&conn, file.ino, vec![0; cirrus_meta::META_REQUEST_MAX + 1]).await;
    assert!(
        matches!(&huge, Err(FsError::Io(m)) if m.contains("message length too large")),
        "a request of more than {} bytes: {huge:?}",
        cirrus_meta::META_REQUEST_MAX
    );
    let other = ClusterId(0x1234).to_string();
    assert!(matches!(
        getattr(&conn, &other, ROOT).await,
        Err(FsError::WrongCluster { .. })
    ));
    assert!(matches!(
        create_raw(&conn, &other, ROOT, b"intruder").await,
        Err(FsError::WrongCluster { .. })
    ));
    assert!(
        matches!(
            getattr(&conn, "", ROOT).await,
            Err(FsError::WrongCluster { .. })
        ),
        "a client API call without a cluster id is refused"
    );

    let (_, digest_after) = wait_converged(&c).await?;
    assert_eq!(
        digest_after, digest_before,
        "a refused request changed the state"
    );
    assert_eq!(
        lookup(&conn, ROOT, b"intruder").await.err(),
        Some(FsError::NotFound)
    );
    Ok(())
}

/// Connections that never open properly (silent, stalled inside the HTTP/2 preface, or
/// another protocol) are closed by the meta port and by a data server's shared port
/// within the opening deadline, while a real client keeps being served: silent sockets
/// cannot hold a listener's connection ceiling (issue 22).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_connections_are_closed_while_clients_are_served() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = ClusterBuilder::new().data_servers(1).start().await?;
    let conn = c.conn().await?;
    let mut socks = Vec::new();
    for addr in [c.meta_addr(0), c.data_addr(0)] {
        for opening in [
            &b""[..],
            b"PRI * HTTP/2.0\r\n",
            b"GET / HTTP/1.0\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n",
        ] {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.write_all(opening).await?;
            socks.push((addr.clone(), opening, s));
        }
    }
    // Served meanwhile.
    mkdir(&conn, ROOT, b"served").await?;
    for (addr, opening, mut s) in socks {
        let mut got = Vec::new();
        let r = tokio::time::timeout(
            cirrus_proto::net::OPENING_DEADLINE + crate::fixtures::HANG,
            s.read_to_end(&mut got),
        )
        .await
        .unwrap_or_else(|_| panic!("{addr} {opening:?}: still open past the opening deadline"));
        assert!(
            r.is_err() || got.is_empty(),
            "{addr} {opening:?}: answered {got:?}"
        );
    }
    assert!(lookup(&conn, ROOT, b"served").await.is_ok());
    Ok(())
}
