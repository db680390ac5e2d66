//! The `Data` service, over gRPC and over the bulk protocol (`proto::bulk`, for Write and
//! Read): validates wire requests (cluster id, chain ref, object ref), converts them to
//! node calls, and maps errors with the one status mapping in proto. `pb::` types stop
//! here. A bulk write's payload arrives in a 4 KiB-aligned buffer read straight from the
//! socket, so the store writes it to disk without a copy.

use crate::node::{Node, WriteArgs};
use crate::peer::LOCAL_ONLY;
use crate::uring::AlignedBuf;
use bytes::Bytes;
use cirrus_proto::bulk::{BulkService, Handled};
use cirrus_proto::convert::{check_cluster, object_key};
use cirrus_proto::{pb, to_status};
use cirrus_types::{ChainId, ChainVersion, FsError, FsResult};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct DataService {
    node: Arc<Node>,
}

impl DataService {
    pub fn new(node: Arc<Node>) -> DataService {
        DataService { node }
    }

    /// The tonic server wrapper with the message limits set.
    pub fn into_server(self) -> pb::data_server::DataServer<DataService> {
        pb::data_server::DataServer::new(self)
            .max_decoding_message_size(cirrus_proto::net::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cirrus_proto::net::MAX_MESSAGE_BYTES)
    }

    fn cluster(&self, got: &str) -> FsResult<()> {
        check_cluster(self.node.cluster, got, false)
    }

    async fn handle_write(&self, r: pb::WriteRequest) -> FsResult<pb::WriteReply> {
        self.cluster(&r.cluster_id)?;
        let (chain, version) = chain_ref(r.chain.as_ref())?;
        let key = object_key(r.object.as_ref())?;
        let node = self.node.clone();
        let args = WriteArgs {
            chain,
            version,
            key,
            off: r.offset,
            data: r.data,
            crcs: r.crcs,
            sync: r.sync,
            hop: r.hop,
        };
        let size = to_completion(async move { node.write(args).await }).await?;
        Ok(pb::WriteReply { object_size: size })
    }

    async fn handle_read(&self, r: pb::ReadRequest, local_only: bool) -> FsResult<pb::ReadReply> {
        self.cluster(&r.cluster_id)?;
        let (chain, version) = chain_ref(r.chain.as_ref())?;
        let key = object_key(r.object.as_ref())?;
        // The store returns the piece crcs with the bytes (the verified block crcs where
        // pieces are whole blocks), so the reply costs no second crc pass.
        let out = self
            .node
            .read(chain, version, key, r.offset, r.len, local_only)
            .await?;
        Ok(pb::ReadReply {
            data: out.data,
            crcs: out.crcs,
            object_size: out.size,
        })
    }
}

impl BulkService for DataService {
    type Payload = AlignedBuf;

    fn payload(&self, len: usize) -> AlignedBuf {
        AlignedBuf::with_capacity(len)
    }

    fn write(
        self: Arc<Self>,
        mut req: pb::WriteRequest,
        payload: AlignedBuf,
    ) -> Handled<pb::WriteReply> {
        Box::pin(async move {
            req.data = Bytes::from_owner(payload);
            self.handle_write(req).await
        })
    }

    fn read(self: Arc<Self>, req: pb::ReadRequest) -> Handled<pb::ReadReply> {
        Box::pin(async move { self.handle_read(req, false).await })
    }
}

fn chain_ref(c: Option<&pb::ChainRef>) -> FsResult<(ChainId, ChainVersion)> {
    let c = c.ok_or_else(|| FsError::Invalid("missing chain".into()))?;
    Ok((ChainId(c.id), ChainVersion(c.version)))
}

/// Runs a mutation to completion even if its caller goes away. tonic drops a handler's
/// future when the client cancels the call (its deadline passed, e.g. while this server
/// was paused); a write dropped between its data and its crc sidecar left blocks that
/// failed their checksum on the next read.
async fn to_completion<T: Send + 'static>(
    f: impl std::future::Future<Output = FsResult<T>> + Send + 'static,
) -> FsResult<T> {
    tokio::spawn(f)
        .await
        .map_err(|e| FsError::Io(format!("data operation task failed: {e}")))?
}

fn st<T>(r: FsResult<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(|e| to_status(&e))
}

#[tonic::async_trait]
impl pb::data_server::Data for DataService {
    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        st(self.handle_write(req.into_inner()).await)
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Result<Response<pb::ReadReply>, Status> {
        let local_only = req.metadata().get(LOCAL_ONLY).is_some();
        st(self.handle_read(req.into_inner(), local_only).await)
    }

    async fn sync(&self, req: Request<pb::SyncRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        st(async {
            self.cluster(&r.cluster_id)?;
            let (chain, version) = chain_ref(r.chain.as_ref())?;
            let keys = r
                .objects
                .iter()
                .map(|o| object_key(Some(o)))
                .collect::<FsResult<Vec<_>>>()?;
            self.node.sync(chain, version, &keys, r.hop).await?;
            Ok(pb::Empty {})
        }
        .await)
    }

    async fn truncate(
        &self,
        req: Request<pb::TruncateRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        st(async {
            self.cluster(&r.cluster_id)?;
            let (chain, version) = chain_ref(r.chain.as_ref())?;
            let key = object_key(r.object.as_ref())?;
            let node = self.node.clone();
            let (size, hop) = (r.size, r.hop);
            to_completion(async move { node.truncate(chain, version, key, size, hop).await })
                .await?;
            Ok(pb::Empty {})
        }
        .await)
    }

    async fn punch(&self, req: Request<pb::PunchRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        st(async {
            self.cluster(&r.cluster_id)?;
            let (chain, version) = chain_ref(r.chain.as_ref())?;
            let key = object_key(r.object.as_ref())?;
            let node = self.node.clone();
            let (off, len, hop) = (r.offset, r.length, r.hop);
            to_completion(async move { node.punch(chain, version, key, off, len, hop).await })
                .await?;
            Ok(pb::Empty {})
        }
        .await)
    }

    async fn copy(&self, req: Request<pb::CopyRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        st(async {
            self.cluster(&r.cluster_id)?;
            let (chain, version) = chain_ref(r.chain.as_ref())?;
            let key = object_key(r.object.as_ref())?;
            let (src_chain, src_version) = chain_ref(r.src_chain.as_ref())?;
            let src = object_key(r.src_object.as_ref())?;
            let w = WriteArgs {
                chain,
                version,
                key,
                off: r.offset,
                data: Bytes::new(),
                crcs: Vec::new(),
                sync: false,
                hop: 0,
            };
            let node = self.node.clone();
            let (src_off, len) = (r.src_offset, r.len);
            to_completion(async move {
                node.copy(w, src_chain, src_version, src, src_off, len)
                    .await
            })
            .await?;
            Ok(pb::Empty {})
        }
        .await)
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        st(async {
            self.cluster(&r.cluster_id)?;
            let keys = r
                .objects
                .iter()
                .map(|o| object_key(Some(o)))
                .collect::<FsResult<Vec<_>>>()?;
            let node = self.node.clone();
            to_completion(async move { node.delete(&keys).await }).await?;
            Ok(pb::Empty {})
        }
        .await)
    }

    async fn list_objects(
        &self,
        req: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsReply>, Status> {
        let r = req.into_inner();
        st(async {
            self.cluster(&r.cluster_id)?;
            let objects = self
                .node
                .list_objects(ChainId(r.chain_id), ChainVersion(r.chain_version))
                .await?
                .into_iter()
                .map(|l| pb::ObjectMeta {
                    object: Some(l.key.into()),
                    size: l.size,
                    ranges_known: l.ranges.is_some(),
                    ranges: l
                        .ranges
                        .unwrap_or_default()
                        .into_iter()
                        .flat_map(|(s, e)| [s, e])
                        .collect(),
                })
                .collect();
            Ok(pb::ListObjectsReply { objects })
        }
        .await)
    }

    async fn info(
        &self,
        _req: Request<pb::DataInfoRequest>,
    ) -> Result<Response<pb::DataInfoReply>, Status> {
        let n = &self.node;
        let (capacity, free) = n.store.space();
        let (rebuilding, caught_up) = n.rebuild_view.lock().map(|g| g.clone()).unwrap_or_default();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Ok(Response::new(pb::DataInfoReply {
            cluster_id: n.cluster.to_string(),
            server_id: n.me.0,
            address: n.address.clone(),
            direct_io: n.store.direct_io(),
            capacity_bytes: capacity,
            free_bytes: free,
            objects: n.store.list().len() as u64,
            scrub_done_bytes: n.stats.scrub_done_bytes.get(),
            scrub_errors: n.stats.scrub_errors.get(),
            repaired_blocks: n.stats.repaired_blocks.get(),
            now_ms,
            corrupt_blocks: n.stats.corrupt_blocks.get(),
            rebuild_copied_bytes: n.stats.rebuild_copied_bytes.get(),
            rebuilding_chains: rebuilding,
            caught_up_chains: caught_up,
            scrub_passes: n.stats.scrub_passes.get(),
        }))
    }
}
