//! Calls from this data server to other data servers: forwarding along the chain (over
//! the bulk protocol, the payload passed on from the buffer it arrived in), repair reads
//! and rebuild copies (gRPC). One lazily connecting client of each kind per address;
//! every call bounded by a deadline, and every returned payload checked against its crcs.
//! `Peers` is the `ChainTransport` a server's node runs on.

use crate::node::WriteArgs;
use crate::transport::ChainTransport;
use bytes::Bytes;
use cirrus_proto::bulk::BulkClient;
use cirrus_proto::{from_status, net, pb};
use cirrus_types::checksum::verify_pieces;
use cirrus_types::Chain;
use cirrus_types::{ChainId, ChainVersion, ClusterId, FsError, FsResult, ObjectKey};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Request metadata key: serve from the local copy only, never repair (a member that is
/// itself repairing or rebuilding sets it, so two bad copies never call each other).
pub const LOCAL_ONLY: &str = "cirrus-local-only";

pub struct Peers {
    cluster: ClusterId,
    timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    bulk: Mutex<HashMap<String, Arc<BulkClient>>>,
}

type Client = pb::data_client::DataClient<Channel>;

impl Peers {
    pub fn new(cluster: ClusterId, timeout: Duration) -> Peers {
        Peers {
            cluster,
            timeout,
            channels: Mutex::new(HashMap::new()),
            bulk: Mutex::new(HashMap::new()),
        }
    }

    fn bulk(&self, addr: &str) -> Arc<BulkClient> {
        let mut g = cirrus_types::sync::lock(&self.bulk);
        g.entry(addr.to_string())
            .or_insert_with(|| Arc::new(BulkClient::new(addr)))
            .clone()
    }

    fn client(&self, addr: &str) -> FsResult<Client> {
        let mut g = cirrus_types::sync::lock(&self.channels);
        let ch = match g.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = net::channel(addr)?;
                g.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(net::data_client(ch))
    }

    async fn call<T, Fut>(&self, what: &str, addr: &str, fut: Fut) -> FsResult<T>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                let e = from_status(&s);
                Err(match e {
                    // Name the hop: the client sees which member failed.
                    FsError::Unavailable(m) => {
                        FsError::Unavailable(format!("{what} to data server {addr}: {m}"))
                    }
                    other => other,
                })
            }
            Err(_) => Err(FsError::Timeout(format!(
                "{what} to data server {addr} after {:?}",
                self.timeout
            ))),
        }
    }

    fn chain_ref(c: &Chain) -> Option<pb::ChainRef> {
        Some(pb::ChainRef {
            id: c.id.0,
            version: c.version.0,
        })
    }

    pub async fn write(&self, addr: &str, w: &WriteArgs) -> FsResult<u64> {
        let req = pb::WriteRequest {
            cluster_id: self.cluster.to_string(),
            chain: Some(pb::ChainRef {
                id: w.chain.0,
                version: w.version.0,
            }),
            object: Some(w.key.into()),
            offset: w.off,
            data: w.data.clone(),
            crcs: w.crcs.clone(),
            sync: w.sync,
            hop: w.hop,
        };
        match self.bulk(addr).write(req, self.timeout).await {
            Ok(r) => Ok(r.object_size),
            // Name the hop: the client sees which member failed.
            Err(FsError::Unavailable(m)) => Err(FsError::Unavailable(format!(
                "forward write to data server {addr}: {m}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Verified read of another member's copy; returns (data, object size).
    pub async fn read(
        &self,
        addr: &str,
        c: &Chain,
        key: ObjectKey,
        off: u64,
        len: u32,
        local_only: bool,
    ) -> FsResult<(Bytes, u64)> {
        let mut cl = self.client(addr)?;
        let mut req = tonic::Request::new(pb::ReadRequest {
            cluster_id: self.cluster.to_string(),
            chain: Self::chain_ref(c),
            object: Some(key.into()),
            offset: off,
            len,
        });
        if local_only {
            req.metadata_mut()
                .insert(LOCAL_ONLY, tonic::metadata::MetadataValue::from_static("1"));
        }
        let r = self.call("read", addr, cl.read(req)).await?;
        if r.data.len() > len as usize {
            return Err(FsError::Io(format!(
                "{addr} returned {} bytes for a {len}-byte read",
                r.data.len()
            )));
        }
        verify_pieces(off, &r.data, &r.crcs)?;
        Ok((r.data, r.object_size))
    }

    pub async fn sync(&self, addr: &str, c: &Chain, keys: &[ObjectKey], hop: u32) -> FsResult<()> {
        let mut cl = self.client(addr)?;
        let req = pb::SyncRequest {
            cluster_id: self.cluster.to_string(),
            chain: Self::chain_ref(c),
            objects: keys.iter().map(|k| (*k).into()).collect(),
            hop,
        };
        self.call("forward sync", addr, cl.sync(req)).await?;
        Ok(())
    }

    pub async fn truncate(
        &self,
        addr: &str,
        c: &Chain,
        key: ObjectKey,
        size: u64,
        hop: u32,
    ) -> FsResult<()> {
        let mut cl = self.client(addr)?;
        let req = pb::TruncateRequest {
            cluster_id: self.cluster.to_string(),
            chain: Self::chain_ref(c),
            object: Some(key.into()),
            size,
            hop,
        };
        self.call("forward truncate", addr, cl.truncate(req))
            .await?;
        Ok(())
    }

    pub async fn punch(
        &self,
        addr: &str,
        c: &Chain,
        key: ObjectKey,
        offset: u64,
        length: u64,
        hop: u32,
    ) -> FsResult<()> {
        let mut cl = self.client(addr)?;
        let req = pb::PunchRequest {
            cluster_id: self.cluster.to_string(),
            chain: Self::chain_ref(c),
            object: Some(key.into()),
            offset,
            length,
            hop,
        };
        self.call("forward punch", addr, cl.punch(req)).await?;
        Ok(())
    }

    /// Objects (key, size) a member holds for `chain`, listed once that member is at
    /// `version` (it refuses an older one, refreshes to a newer one).
    pub async fn list(
        &self,
        addr: &str,
        chain: ChainId,
        version: ChainVersion,
    ) -> FsResult<Vec<crate::node::Listed>> {
        let mut cl = self.client(addr)?;
        let req = pb::ListObjectsRequest {
            cluster_id: self.cluster.to_string(),
            chain_id: chain.0,
            chain_version: version.0,
        };
        let r = self
            .call("list objects", addr, cl.list_objects(req))
            .await?;
        r.objects
            .iter()
            .map(|o| {
                let key = cirrus_proto::convert::object_key(o.object.as_ref())?;
                let ranges = if o.ranges_known {
                    Some(listed_ranges(&o.ranges, o.size)?)
                } else {
                    None
                };
                Ok(crate::node::Listed {
                    key,
                    size: o.size,
                    ranges,
                })
            })
            .collect()
    }
}

/// The transport a server runs: each call goes to the inherent method of the same name.
impl ChainTransport for Peers {
    fn write<'a>(&'a self, addr: &'a str, w: &'a WriteArgs) -> BoxFuture<'a, FsResult<u64>> {
        Box::pin(Peers::write(self, addr, w))
    }

    fn read<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        off: u64,
        len: u32,
        local_only: bool,
    ) -> BoxFuture<'a, FsResult<(Bytes, u64)>> {
        Box::pin(Peers::read(self, addr, c, key, off, len, local_only))
    }

    fn sync<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        keys: &'a [ObjectKey],
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        Box::pin(Peers::sync(self, addr, c, keys, hop))
    }

    fn truncate<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        size: u64,
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        Box::pin(Peers::truncate(self, addr, c, key, size, hop))
    }

    fn punch<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        off: u64,
        len: u64,
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>> {
        Box::pin(Peers::punch(self, addr, c, key, off, len, hop))
    }

    fn list<'a>(
        &'a self,
        addr: &'a str,
        chain: ChainId,
        version: ChainVersion,
    ) -> BoxFuture<'a, FsResult<Vec<crate::node::Listed>>> {
        Box::pin(Peers::list(self, addr, chain, version))
    }
}

/// A listing's ranges (start,end pairs) checked: whole pairs, each non-empty, sorted and
/// disjoint, within the size and at most `MAX_RANGES`. A peer's reply is input like any
/// other; a bad one fails the listing rather than steering a rebuild.
fn listed_ranges(flat: &[u64], size: u64) -> FsResult<Vec<(u64, u64)>> {
    let bad = |m: &str| FsError::Invalid(format!("object listing ranges: {m}"));
    if !flat.len().is_multiple_of(2) {
        return Err(bad("odd number of bounds"));
    }
    if flat.len() / 2 > crate::store::crcmap::MAX_RANGES {
        return Err(bad("too many ranges"));
    }
    let v: Vec<(u64, u64)> = flat.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let mut prev = 0u64;
    for (s, e) in &v {
        if s >= e || *s < prev || *e > size {
            return Err(bad("not sorted, empty or past the size"));
        }
        prev = *e;
    }
    Ok(v)
}

#[cfg(test)]
mod listing_tests {
    use super::*;

    #[test]
    fn listing_ranges_are_checked_before_a_rebuild_trusts_them() {
        assert_eq!(listed_ranges(&[0, 4, 8, 12], 12), Ok(vec![(0, 4), (8, 12)]));
        assert_eq!(listed_ranges(&[], 12), Ok(vec![]));
        assert!(listed_ranges(&[0], 12).is_err());
        assert!(listed_ranges(&[4, 4], 12).is_err());
        assert!(listed_ranges(&[8, 12, 0, 4], 12).is_err());
        assert!(listed_ranges(&[0, 13], 12).is_err());
        let many: Vec<u64> = (0..600).flat_map(|i| [i * 2, i * 2 + 1]).collect();
        assert!(listed_ranges(&many, 10_000).is_err());
    }
}
