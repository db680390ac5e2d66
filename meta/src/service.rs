//! The gRPC `Meta` service: converts every request from wire to domain types at the
//! door (names validated, zero ids refused, flags checked), checks the cluster id, then
//! either proposes one `Command` (mutations, leader-stamped with `now_ns`) or runs a
//! linearizable read. A follower answers `NotLeader { leader_hint }` through the single
//! error mapping in `cirrus_proto::status`. `pb::` types stop here.

use crate::door::{self, ino, Proposal, Scoped};
use crate::heartbeat::{Heartbeat, Registration};
use crate::node::{now_ns, MetaNode};
use crate::raft_types::Command;
use crate::state::{ChainTable, Reply};
use cirrus_proto::leader::RequestTag;
use cirrus_proto::pb;
use cirrus_proto::to_status;
use cirrus_types::name::validate_name;
use cirrus_types::sync::lock;
use cirrus_types::{ChainId, ChainVersion, ClientId, FsError, FsResult, InodeId, ServerId};
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct MetaService {
    pub node: Arc<MetaNode>,
}

type Rpc<T> = Result<Response<T>, Status>;

fn done<T>(r: FsResult<T>) -> Rpc<T> {
    r.map(Response::new).map_err(|e| to_status(&e))
}

fn attr_reply(r: Reply) -> FsResult<pb::AttrReply> {
    match r {
        Reply::Attr(a) => Ok(pb::AttrReply {
            attr: Some(pb::Attr::from(&a)),
            parent: None,
        }),
        other => Err(unexpected(other)),
    }
}

/// A reply of another shape than its command's: a bug, said as one.
fn unexpected(r: Reply) -> FsError {
    FsError::Io(format!("unexpected apply result {r:?}"))
}

impl MetaService {
    /// The opening every read shares: the cluster id, then the request.
    fn scoped<Q: Scoped>(&self, req: Request<Q>) -> FsResult<Q> {
        let r = req.into_inner();
        self.node.check(r.cluster_id(), false)?;
        Ok(r)
    }

    /// The opening every mutation shares: the cluster id, the request converted into its
    /// command (`door::Proposal`, which validates and stamps the leader's clock), the
    /// caller's request id, one proposal.
    async fn propose<Q: Proposal>(&self, req: Request<Q>) -> FsResult<Reply> {
        let tag = request_tag(req.metadata());
        let r = req.into_inner();
        self.node.check(r.cluster_id(), false)?;
        let cmd = r.command(now_ns())?;
        self.node.write(once(tag?, cmd)).await
    }

    /// Renews the lease of the client a request of this cluster names (an open or a
    /// create counts as a sign of life); a request for another cluster renews nothing.
    fn touch_client(&self, cluster_id: &str, client_id: u64) {
        if self.node.check(cluster_id, false).is_ok() {
            if let Some(c) = door::client(client_id) {
                self.node.touch_client(c);
            }
        }
    }

    /// A call that makes a name under `parent`: its attributes, and the parent's right
    /// after the change.
    async fn new_entry<Q: Proposal>(
        &self,
        req: Request<Q>,
        parent: InodeId,
    ) -> FsResult<pb::AttrReply> {
        let mut a = attr_reply(self.propose(req).await?)?;
        a.parent = self.node.applied_attr(parent);
        Ok(a)
    }

    /// The reply of a call that removed or moved names: the directories right after.
    fn dirs_reply(&self, parent: InodeId, new_parent: Option<InodeId>) -> pb::DirsReply {
        pb::DirsReply {
            parent: self.node.applied_attr(parent),
            new_parent: new_parent.and_then(|p| self.node.applied_attr(p)),
        }
    }
}

/// The caller's request id (gRPC metadata, set by `MetaConn` on every attempt of one
/// call): a malformed one is `Invalid`, a missing one makes a plain call.
fn request_tag(md: &tonic::metadata::MetadataMap) -> FsResult<Option<RequestTag>> {
    cirrus_proto::leader::request_tag(md)
}

/// Wraps `cmd` in the caller's request id, if it sent one, so that a retry of a call
/// already applied answers the remembered result instead of applying again.
fn once(tag: Option<RequestTag>, cmd: Command) -> Command {
    match tag {
        Some(t) => Command::Once {
            id: t.id,
            done_below: t.done_below,
            cmd: Box::new(cmd),
        },
        None => cmd,
    }
}

impl MetaNode {
    /// Attributes of `ino` in this node's applied state, without a read barrier: right
    /// after a write was applied here they are as of that write or later (the applied
    /// state only holds committed entries). For the parent attributes of a reply.
    fn applied_attr(&self, ino: InodeId) -> Option<pb::Attr> {
        let g = self.shared.read().ok()?;
        g.state.getattr(ino).ok().map(|a| pb::Attr::from(&a))
    }

    /// The wire chain table, with each server's last heartbeat as this leader saw it.
    fn pb_table(&self, mut t: ChainTable) -> pb::ChainTable {
        {
            let g = lock(&self.leader);
            for (id, s) in t.servers.iter_mut() {
                s.last_heartbeat_ms = g.server_seen_ms.get(id).copied().unwrap_or(0);
            }
        }
        pb::ChainTable::from(&t)
    }

    /// Node-local view, answered without asking the leader.
    pub fn cluster_info(&self) -> pb::ClusterInfoReply {
        let m = self.raft.metrics().borrow().clone();
        let (last_applied, digest) = match self.shared.read() {
            // Both under one lock: the digest is exactly the state at `last_applied`.
            Ok(g) => (
                g.last_applied.map(|l| l.index).unwrap_or(0),
                g.state.digest(),
            ),
            Err(_) => (0, String::new()),
        };
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let members = m
            .membership_config
            .nodes()
            .map(|(id, n)| pb::MetaMember {
                id: *id,
                address: n.addr.clone(),
            })
            .collect();
        pb::ClusterInfoReply {
            cluster_id: self
                .identity
                .get()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            node_id: self.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_address: self.addr_of(m.current_leader).unwrap_or_default(),
            term: m.current_term,
            last_applied,
            // openraft 0.9 does not publish the commit index; applied <= committed.
            commit_index: last_applied,
            members,
            state_digest: digest,
            now_ms: now_ns() / 1_000_000,
            role: role.into(),
        }
    }
}

#[tonic::async_trait]
impl pb::meta_server::Meta for MetaService {
    #[tracing::instrument(level = "debug", name = "meta.lookup", skip_all, fields(parent = req.get_ref().parent))]
    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Rpc<pb::AttrReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let parent = ino(r.parent, "lookup parent")?;
                validate_name(&r.name)?;
                let a = n.read(|s| s.lookup(parent, &r.name)).await?;
                Ok(pb::AttrReply {
                    attr: Some(pb::Attr::from(&a)),
                    parent: None,
                })
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.getattr", skip_all, fields(ino = req.get_ref().ino))]
    async fn getattr(&self, req: Request<pb::GetattrRequest>) -> Rpc<pb::AttrReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let i = ino(r.ino, "getattr")?;
                let a = n.read(|s| s.getattr(i)).await?;
                Ok(pb::AttrReply {
                    attr: Some(pb::Attr::from(&a)),
                    parent: None,
                })
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.setattr", skip_all, fields(ino = req.get_ref().ino))]
    async fn setattr(&self, req: Request<pb::SetattrRequest>) -> Rpc<pb::AttrReply> {
        done(async { attr_reply(self.propose(req).await?) }.await)
    }

    #[tracing::instrument(level = "debug", name = "meta.create", skip_all, fields(parent = req.get_ref().parent))]
    async fn create(&self, req: Request<pb::CreateRequest>) -> Rpc<pb::CreateReply> {
        let n = &self.node;
        let parent = InodeId(req.get_ref().parent);
        self.touch_client(&req.get_ref().cluster_id, req.get_ref().client_id);
        done(
            async {
                match self.propose(req).await? {
                    Reply::Created {
                        attr,
                        layout,
                        handle,
                        ..
                    } => Ok(pb::CreateReply {
                        attr: Some(pb::Attr::from(&attr)),
                        handle: handle.map(|h| h.0).unwrap_or(0),
                        layout: Some((&layout).into()),
                        parent: n.applied_attr(parent),
                    }),
                    other => Err(unexpected(other)),
                }
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.mkdir", skip_all, fields(parent = req.get_ref().parent))]
    async fn mkdir(&self, req: Request<pb::MkdirRequest>) -> Rpc<pb::AttrReply> {
        let parent = InodeId(req.get_ref().parent);
        done(self.new_entry(req, parent).await)
    }

    #[tracing::instrument(level = "debug", name = "meta.mknod", skip_all, fields(parent = req.get_ref().parent))]
    async fn mknod(&self, req: Request<pb::MknodRequest>) -> Rpc<pb::AttrReply> {
        let parent = InodeId(req.get_ref().parent);
        done(self.new_entry(req, parent).await)
    }

    #[tracing::instrument(level = "debug", name = "meta.symlink", skip_all, fields(parent = req.get_ref().parent))]
    async fn symlink(&self, req: Request<pb::SymlinkRequest>) -> Rpc<pb::AttrReply> {
        let parent = InodeId(req.get_ref().parent);
        done(self.new_entry(req, parent).await)
    }

    #[tracing::instrument(level = "debug", name = "meta.readlink", skip_all, fields(ino = req.get_ref().ino))]
    async fn readlink(&self, req: Request<pb::ReadlinkRequest>) -> Rpc<pb::ReadlinkReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let i = ino(r.ino, "readlink")?;
                let target = n.read(|s| s.readlink(i)).await?;
                Ok(pb::ReadlinkReply { target })
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.link", skip_all, fields(ino = req.get_ref().ino))]
    async fn link(&self, req: Request<pb::LinkRequest>) -> Rpc<pb::AttrReply> {
        let parent = InodeId(req.get_ref().new_parent);
        done(self.new_entry(req, parent).await)
    }

    #[tracing::instrument(level = "debug", name = "meta.unlink", skip_all, fields(parent = req.get_ref().parent))]
    async fn unlink(&self, req: Request<pb::UnlinkRequest>) -> Rpc<pb::DirsReply> {
        let parent = InodeId(req.get_ref().parent);
        done(
            self.propose(req)
                .await
                .map(|_| self.dirs_reply(parent, None)),
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.rmdir", skip_all, fields(parent = req.get_ref().parent))]
    async fn rmdir(&self, req: Request<pb::RmdirRequest>) -> Rpc<pb::DirsReply> {
        let parent = InodeId(req.get_ref().parent);
        done(
            self.propose(req)
                .await
                .map(|_| self.dirs_reply(parent, None)),
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.rename", skip_all, fields(parent = req.get_ref().parent))]
    async fn rename(&self, req: Request<pb::RenameRequest>) -> Rpc<pb::DirsReply> {
        let r = req.get_ref();
        let (parent, new_parent) = (InodeId(r.parent), InodeId(r.new_parent));
        done(
            self.propose(req)
                .await
                .map(|_| self.dirs_reply(parent, Some(new_parent))),
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.readdir", skip_all, fields(ino = req.get_ref().ino))]
    async fn readdir(&self, req: Request<pb::ReaddirRequest>) -> Rpc<pb::ReaddirReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let i = ino(r.ino, "readdir")?;
                // Bound one reply so a huge directory never builds a giant message.
                let limit = if r.limit == 0 {
                    4096
                } else {
                    r.limit.min(4096)
                };
                n.read(|s| {
                    let (entries, eof) = s.readdir(i, r.cookie, limit)?;
                    let entries = entries
                        .into_iter()
                        .map(|mut e| {
                            if r.plus {
                                e.attr = s.getattr(e.ino).ok();
                            }
                            pb::DirEntry::from(e)
                        })
                        .collect();
                    Ok(pb::ReaddirReply { entries, eof })
                })
                .await
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.get_xattr", skip_all, fields(ino = req.get_ref().ino))]
    async fn get_xattr(&self, req: Request<pb::GetXattrRequest>) -> Rpc<pb::GetXattrReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let i = ino(r.ino, "getxattr")?;
                let v = n.read(|s| s.getxattr(i, &r.name)).await?;
                Ok(pb::GetXattrReply { value: v })
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.set_xattr", skip_all, fields(ino = req.get_ref().ino))]
    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> Rpc<pb::Empty> {
        done(self.propose(req).await.map(|_| pb::Empty {}))
    }

    #[tracing::instrument(level = "debug", name = "meta.list_xattr", skip_all, fields(ino = req.get_ref().ino))]
    async fn list_xattr(&self, req: Request<pb::ListXattrRequest>) -> Rpc<pb::ListXattrReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let i = ino(r.ino, "listxattr")?;
                let names = n.read(|s| s.listxattr(i)).await?;
                Ok(pb::ListXattrReply { names })
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.remove_xattr", skip_all, fields(ino = req.get_ref().ino))]
    async fn remove_xattr(&self, req: Request<pb::RemoveXattrRequest>) -> Rpc<pb::Empty> {
        done(self.propose(req).await.map(|_| pb::Empty {}))
    }

    #[tracing::instrument(level = "debug", name = "meta.statfs", skip_all)]
    async fn statfs(&self, req: Request<pb::StatfsRequest>) -> Rpc<pb::StatfsReply> {
        let n = &self.node;
        done(
            async {
                self.scoped(req)?;
                Ok(n.read(|s| Ok(s.statfs())).await?.into())
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.open", skip_all, fields(ino = req.get_ref().ino))]
    async fn open(&self, req: Request<pb::OpenRequest>) -> Rpc<pb::OpenReply> {
        self.touch_client(&req.get_ref().cluster_id, req.get_ref().client_id);
        done(
            async {
                match self.propose(req).await? {
                    Reply::Opened {
                        handle,
                        attr,
                        layout,
                    } => Ok(pb::OpenReply {
                        handle: handle.0,
                        attr: Some(pb::Attr::from(&attr)),
                        layout: Some((&layout).into()),
                    }),
                    other => Err(unexpected(other)),
                }
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.release", skip_all, fields(handle = req.get_ref().handle))]
    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Rpc<pb::Empty> {
        done(self.propose(req).await.map(|_| pb::Empty {}))
    }

    #[tracing::instrument(level = "debug", name = "meta.commit_write", skip_all, fields(ino = req.get_ref().ino))]
    async fn commit_write(&self, req: Request<pb::CommitWriteRequest>) -> Rpc<pb::AttrReply> {
        done(async { attr_reply(self.propose(req).await?) }.await)
    }

    #[tracing::instrument(level = "debug", name = "meta.get_layout", skip_all, fields(ino = req.get_ref().ino))]
    async fn get_layout(&self, req: Request<pb::GetLayoutRequest>) -> Rpc<pb::LayoutReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let i = ino(r.ino, "get layout")?;
                let l = n.read(|s| s.layout(i)).await?;
                Ok(pb::LayoutReply {
                    layout: Some((&l).into()),
                })
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.get_chains", skip_all)]
    async fn get_chains(&self, req: Request<pb::GetChainsRequest>) -> Rpc<pb::ChainTable> {
        let n = &self.node;
        done(
            async {
                self.scoped(req)?;
                let t = n.read(|s| Ok(s.chain_table())).await?;
                Ok(n.pb_table(t))
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.renew_lease", skip_all, fields(client_id = req.get_ref().client_id))]
    async fn renew_lease(&self, req: Request<pb::RenewLeaseRequest>) -> Rpc<pb::Empty> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                if r.client_id == 0 {
                    return Err(FsError::Invalid("lease for client id 0".into()));
                }
                // Only the leader keeps leases: the read barrier sends others to it.
                n.read(|_| Ok(())).await?;
                n.touch_client(ClientId(r.client_id));
                Ok(pb::Empty {})
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.set_lock", skip_all, fields(ino = req.get_ref().ino))]
    async fn set_lock(&self, req: Request<pb::LockRequest>) -> Rpc<pb::Empty> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let call = cirrus_proto::convert::lock_call(&r)?;
                n.touch_client(call.owner.client);
                if r.wait {
                    n.wait_for_lock(call, r.wait_id, Duration::from_millis(r.wait_ms))
                        .await?;
                } else {
                    n.set_lock(call).await?;
                }
                Ok(pb::Empty {})
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.get_lock", skip_all, fields(ino = req.get_ref().ino))]
    async fn get_lock(&self, req: Request<pb::LockRequest>) -> Rpc<pb::GetLockReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                let c = cirrus_proto::convert::lock_call(&r)?;
                let kind = c
                    .kind
                    .ok_or_else(|| FsError::Invalid("F_GETLK of an unlock".into()))?;
                let held = n
                    .read(move |s| Ok(s.lock_conflict(c.ino, c.owner, kind, c.start, c.end)))
                    .await?;
                Ok(
                    held.map_or(pb::GetLockReply::default(), |h| pb::GetLockReply {
                        kind: cirrus_proto::convert::lock_kind_code(Some(h.kind)),
                        start: h.start,
                        end: h.end,
                        pid: h.pid,
                    }),
                )
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.cancel_lock_wait", skip_all, fields(client_id = req.get_ref().client_id))]
    async fn cancel_lock_wait(&self, req: Request<pb::CancelLockWaitRequest>) -> Rpc<pb::Empty> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                if r.client_id == 0 {
                    return Err(FsError::Invalid("lock wait cancel for client id 0".into()));
                }
                // Waits live at the leader only: the read barrier sends others to it.
                n.read(|_| Ok(())).await?;
                n.lock_waits.cancel(ClientId(r.client_id), r.wait_id)?;
                Ok(pb::Empty {})
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.register_server", skip_all)]
    async fn register_server(
        &self,
        req: Request<pb::RegisterServerRequest>,
    ) -> Rpc<pb::RegisterServerReply> {
        let tag = request_tag(req.metadata());
        let r = req.into_inner();
        let n = &self.node;
        done(
            async {
                n.check(&r.cluster_id, true)?;
                if r.server_uuid.is_empty() {
                    return Err(FsError::Invalid("register without a server uuid".into()));
                }
                match r.address.rsplit_once(':') {
                    Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                    _ => {
                        return Err(FsError::Invalid(format!(
                            "advertised address {:?} is not host:port",
                            r.address
                        )))
                    }
                }
                let reg = Registration {
                    uuid: r.server_uuid,
                    address: r.address,
                    capacity_bytes: r.capacity_bytes,
                    free_bytes: r.free_bytes,
                };
                let tag = tag?;
                let id = n.register_server(reg, |c| once(tag, c)).await?;
                Ok(pb::RegisterServerReply {
                    server_id: id.0,
                    cluster_id: n.cluster_id()?.to_string(),
                })
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.heartbeat", skip_all, fields(server_id = req.get_ref().server_id))]
    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Rpc<pb::HeartbeatReply> {
        let n = &self.node;
        done(
            async {
                let r = self.scoped(req)?;
                // Only reports for a version promote (the legacy `caught_up_chains`
                // carries none and is ignored).
                let beat = Heartbeat {
                    server: ServerId(r.server_id),
                    capacity_bytes: r.capacity_bytes,
                    free_bytes: r.free_bytes,
                    caught_up: r
                        .caught_up
                        .iter()
                        .map(|c| (ChainId(c.id), ChainVersion(c.version)))
                        .collect(),
                };
                let answer = n.heartbeat(beat).await?;
                Ok(pb::HeartbeatReply {
                    table: Some(n.pb_table(answer.table)),
                    garbage: answer
                        .garbage
                        .into_iter()
                        .map(pb::ObjectRef::from)
                        .collect(),
                })
            }
            .await,
        )
    }

    #[tracing::instrument(level = "debug", name = "meta.cluster_info", skip_all)]
    async fn cluster_info(
        &self,
        _req: Request<pb::ClusterInfoRequest>,
    ) -> Rpc<pb::ClusterInfoReply> {
        Ok(Response::new(self.node.cluster_info()))
    }

    #[tracing::instrument(level = "debug", name = "meta.status", skip_all)]
    async fn status(&self, _req: Request<pb::ClusterInfoRequest>) -> Rpc<pb::StatusReply> {
        let n = &self.node;
        done(
            async {
                let (t, inodes, handles) = n
                    .read(|s| Ok((s.chain_table(), s.inode_count(), s.open_handle_count())))
                    .await?;
                Ok(pb::StatusReply {
                    leader: Some(n.cluster_info()),
                    table: Some(n.pb_table(t)),
                    inodes,
                    open_handles: handles,
                })
            }
            .await,
        )
    }
}
