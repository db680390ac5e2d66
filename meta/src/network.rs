//! The raft transport over tonic, both directions: `Network` (openraft's
//! `RaftNetworkFactory`) sends AppendEntries / Vote / InstallSnapshot as `RaftBytes`
//! (cluster id, sender id, bincode payload) with a deadline on every call, and
//! `RaftService` receives them, refuses another cluster's traffic and hands them to the
//! local `Raft`. A connection failure maps to openraft's `Unreachable` (backoff), an
//! expired deadline to `Timeout`, an error raised by the remote raft to `RemoteError`.

use crate::identity::Identity;
use crate::raft_types::{NodeId, Raft, TypeConfig};
use cirrus_proto::pb::raft_client::RaftClient;
use cirrus_proto::pb::RaftBytes;
use cirrus_proto::{net, to_status};
use cirrus_types::FsError;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Errors of one raft RPC at the transport level, before mapping to openraft's kinds.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to raft peer {addr}: {msg}")]
    Connect { addr: String, msg: String },
    #[error("raft peer {addr} refused the request: {status}")]
    Refused { addr: String, status: String },
    #[error("encode or decode a raft message: {0}")]
    Codec(String),
}

/// Creates `Peer`s for openraft. Peers to one address share one HTTP/2 connection:
/// openraft asks for a new client not only per replication stream but for *every*
/// leadership check of a linearizable read, and a fresh connection (TCP + HTTP/2
/// handshake) per read cost ~20 ms of the ~22 ms a read took before.
#[derive(Clone)]
pub struct Network {
    self_id: NodeId,
    identity: Arc<Identity>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Network {
    pub fn new(self_id: NodeId, identity: Arc<Identity>) -> Self {
        Network {
            self_id,
            identity,
            channels: Arc::default(),
        }
    }

    /// The shared channel to `addr` (tonic reconnects it by itself after failures).
    fn channel(&self, addr: &str) -> Option<Channel> {
        let mut g = cirrus_types::sync::lock(&self.channels);
        if let Some(ch) = g.get(addr) {
            return Some(ch.clone());
        }
        let ch = net::channel(addr).ok()?;
        g.insert(addr.to_string(), ch.clone());
        Some(ch)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            self_id: self.self_id,
            target,
            addr: node.addr.clone(),
            channel: self.channel(&node.addr),
            identity: self.identity.clone(),
        }
    }
}

/// The connection to one peer. The channel reconnects by itself after failures.
pub struct Peer {
    self_id: NodeId,
    target: NodeId,
    addr: String,
    channel: Option<Channel>,
    identity: Arc<Identity>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, TransportError> {
    bincode::serialize(v).map_err(|e| TransportError::Codec(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, TransportError> {
    bincode::deserialize(b).map_err(|e| TransportError::Codec(e.to_string()))
}

impl Peer {
    /// Sends one request and returns the decoded remote result, mapping failures to
    /// openraft's RPC error kinds.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(ch) = self.channel.clone() else {
            return Err(RPCError::Unreachable(Unreachable::new(
                &TransportError::Connect {
                    addr: self.addr.clone(),
                    msg: "bad address".into(),
                },
            )));
        };
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let msg = RaftBytes {
            cluster_id: self
                .identity
                .get()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            from: self.self_id,
            payload: payload.into(),
        };
        let mut client = RaftClient::new(ch)
            .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(net::MAX_MESSAGE_BYTES);
        let ttl = option.hard_ttl();
        let fut = async {
            match kind {
                RPCTypes::AppendEntries => client.append_entries(msg).await,
                RPCTypes::Vote => client.vote(msg).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(msg).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: kind,
                    id: self.self_id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => {
                // Transport failures (refused, reset, DNS) surface as Unavailable/Unknown
                // from tonic: back off. Anything else was a deliberate answer.
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                        RPCError::Unreachable(Unreachable::new(&TransportError::Connect {
                            addr: self.addr.clone(),
                            msg: status.message().to_string(),
                        }))
                    }
                    _ => RPCError::Network(NetworkError::new(&TransportError::Refused {
                        addr: self.addr.clone(),
                        status: status.to_string(),
                    })),
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

/// Receiving side of the raft transport.
pub struct RaftService {
    pub raft: Raft,
    pub identity: Arc<Identity>,
}

impl RaftService {
    /// Refuses a message from another cluster. An empty id is accepted: before init
    /// nobody knows it, and a node whose directory was wiped has forgotten it.
    fn check(&self, m: &RaftBytes) -> Result<(), Status> {
        if let Some(ours) = self.identity.get() {
            cirrus_proto::convert::check_cluster(ours, &m.cluster_id, true)
                .map_err(|e| to_status(&e))?;
        }
        Ok(())
    }

    fn reply<T: Serialize>(v: &T) -> Result<Response<RaftBytes>, Status> {
        let payload = encode(v).map_err(|e| to_status(&FsError::Io(e.to_string())))?;
        Ok(Response::new(RaftBytes {
            cluster_id: String::new(),
            from: 0,
            payload: payload.into(),
        }))
    }

    fn body<T: DeserializeOwned>(m: &RaftBytes) -> Result<T, Status> {
        decode(&m.payload).map_err(|e| {
            to_status(&FsError::Invalid(format!(
                "raft message from node {}: {e}",
                m.from
            )))
        })
    }
}

#[tonic::async_trait]
impl cirrus_proto::pb::raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let m = req.into_inner();
        self.check(&m)?;
        let rpc: AppendEntriesRequest<TypeConfig> = Self::body(&m)?;
        Self::reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let m = req.into_inner();
        self.check(&m)?;
        let rpc: VoteRequest<NodeId> = Self::body(&m)?;
        Self::reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let m = req.into_inner();
        self.check(&m)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = Self::body(&m)?;
        Self::reply(&self.raft.install_snapshot(rpc).await)
    }
}
