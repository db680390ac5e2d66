//! Helpers shared by the `meta_*` tests: typed calls through `MetaConn` (which follows
//! the leader with deadlines), fake data-server registration so files get layouts, and
//! a convergence check over every node's `ClusterInfo`.

#![allow(dead_code)]

use anyhow::{anyhow, Result};
use cirrus_proto::{pb, MetaConn};
use cirrus_raft_tests::cluster::TestCluster;
use cirrus_types::{FsError, FsResult};
use std::ops::ControlFlow;

pub use crate::fixtures::HANG;
pub const ROOT: u64 = 1;

pub async fn create(conn: &MetaConn, parent: u64, name: &[u8]) -> FsResult<pb::CreateReply> {
    let cid = conn.cluster_id();
    let name = name.to_vec();
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
}

pub async fn mkdir(conn: &MetaConn, parent: u64, name: &[u8]) -> FsResult<pb::Attr> {
    let cid = conn.cluster_id();
    let name = name.to_vec();
    let r = conn
        .call("mkdir", move |mut c| {
            let req = pb::MkdirRequest {
                cluster_id: cid.clone(),
                parent,
                name: name.clone(),
                mode: 0o755,
                ..Default::default()
            };
            async move { c.mkdir(req).await }
        })
        .await?;
    r.attr
        .ok_or_else(|| FsError::Io("mkdir reply without attr".into()))
}

pub async fn rename(
    conn: &MetaConn,
    parent: u64,
    name: &[u8],
    new_parent: u64,
    new_name: &[u8],
    flags: u32,
) -> FsResult<()> {
    let cid = conn.cluster_id();
    let (name, new_name) = (name.to_vec(), new_name.to_vec());
    conn.call("rename", move |mut c| {
        let req = pb::RenameRequest {
            cluster_id: cid.clone(),
            parent,
            name: name.clone(),
            new_parent,
            new_name: new_name.clone(),
            flags,
        };
        async move { c.rename(req).await }
    })
    .await
    .map(|_| ())
}

pub async fn lookup(conn: &MetaConn, parent: u64, name: &[u8]) -> FsResult<pb::Attr> {
    let cid = conn.cluster_id();
    let name = name.to_vec();
    let r = conn
        .call("lookup", move |mut c| {
            let req = pb::LookupRequest {
                cluster_id: cid.clone(),
                parent,
                name: name.clone(),
            };
            async move { c.lookup(req).await }
        })
        .await?;
    r.attr
        .ok_or_else(|| FsError::Io("lookup reply without attr".into()))
}

/// Every entry of a directory as (name, ino), following cookies to the end.
pub async fn readdir_all(conn: &MetaConn, ino: u64) -> FsResult<Vec<(Vec<u8>, u64)>> {
    let cid = conn.cluster_id();
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let cid = cid.clone();
        let r = conn
            .call("readdir", move |mut c| {
                let req = pb::ReaddirRequest {
                    cluster_id: cid.clone(),
                    ino,
                    cookie,
                    limit: 100,
                    plus: false,
                };
                async move { c.readdir(req).await }
            })
            .await?;
        for e in &r.entries {
            out.push((e.name.to_vec(), e.ino));
            cookie = e.cookie;
        }
        if r.eof || r.entries.is_empty() {
            return Ok(out);
        }
    }
}

/// Registers `n` fake data servers (nothing listens at their addresses) so that files
/// can be placed on chains; tests using this set a long server timeout.
pub async fn register_fake_servers(conn: &MetaConn, n: usize) -> Result<()> {
    let cid = conn.cluster_id();
    for i in 0..n {
        let cid = cid.clone();
        conn.call("register", move |mut c| {
            let req = pb::RegisterServerRequest {
                cluster_id: cid.clone(),
                server_uuid: format!("fake-{i}"),
                address: format!("127.0.0.1:{}", 9 + i),
                capacity_bytes: 1 << 40,
                free_bytes: 1 << 40,
            };
            async move { c.register_server(req).await }
        })
        .await
        .map_err(|e| anyhow!("register fake server {i}: {e}"))?;
    }
    Ok(())
}

/// Waits until every node reports the same last_applied and the same state digest;
/// returns that (applied, digest).
pub async fn wait_converged(c: &TestCluster) -> Result<(u64, String)> {
    crate::fixtures::wait_until(
        "every meta node at one applied index and digest",
        HANG,
        || async {
            let mut infos = Vec::new();
            for i in 0..c.meta_count() {
                match c.info(i).await {
                    Ok(r) => infos.push((r.last_applied, r.state_digest)),
                    Err(e) => infos.push((0, format!("error: {e:#}"))),
                }
            }
            Ok(
                if infos.windows(2).all(|w| w[0] == w[1]) && infos[0].0 > 0 {
                    ControlFlow::Break(infos.swap_remove(0))
                } else {
                    ControlFlow::Continue(format!("{infos:?}"))
                },
            )
        },
    )
    .await
}
