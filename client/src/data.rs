//! The data path: the chain table cache and the per-object RPCs against data servers
//! (write to the chain head, read from any member preferring the tail, sync, truncate),
//! each with checksums and with retries on `StaleChain`/`Unavailable` until a deadline.
//! Writes and reads travel over the bulk protocol (`proto::bulk`: the payload goes out
//! from the write-back buffer itself and comes back without a decode copy); sync and
//! truncate over gRPC.
//!
//! The cache is refreshed from meta (`GetChains`) only when a data server says the chain
//! moved on, a chain is unknown, or a server cannot be reached: clients never ask meta
//! per read or write. Refreshes are coalesced with an epoch counter so that a burst of
//! failures costs one `GetChains`, not one per request.

use crate::meta::{ChainTable, MetaClient};
use bytes::Bytes;
use cirrus_proto::backoff::Backoff;
use cirrus_proto::bulk::BulkClient;
use cirrus_proto::{net, pb};
use cirrus_types::checksum::{piece_crcs, verify_pieces};
use cirrus_types::sync::lock;
use cirrus_types::{Chain, ChainId, FsError, FsResult, ObjectKey, Retry, ServerId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Deadlines of the data path.
#[derive(Clone, Copy, Debug)]
pub struct DataPolicy {
    /// One attempt against one data server.
    pub per_try: Duration,
    /// Backoff cap between attempts.
    pub max_backoff: Duration,
}

impl Default for DataPolicy {
    fn default() -> Self {
        DataPolicy {
            per_try: Duration::from_secs(10),
            max_backoff: Duration::from_millis(500),
        }
    }
}

struct CacheState {
    table: Arc<ChainTable>,
    /// Bumped on every refresh; a caller that saw a failure under epoch `e` refreshes only
    /// if the epoch is still `e`.
    epoch: u64,
    channels: HashMap<String, Channel>,
    bulk: HashMap<String, Arc<BulkClient>>,
}

/// Chain table cache plus data-server channels.
pub struct DataPath {
    meta: MetaClient,
    cluster_id: String,
    policy: DataPolicy,
    state: Mutex<CacheState>,
    refresh_lock: tokio::sync::Mutex<()>,
}

/// What one attempt against the data servers needs: the chain and the addresses of its
/// members, as of cache epoch `epoch`.
struct Target {
    chain: Chain,
    addrs: Vec<Option<String>>,
    epoch: u64,
}

impl DataPath {
    pub fn new(meta: MetaClient, policy: DataPolicy) -> Self {
        let cluster_id = meta.conn().cluster_id();
        DataPath {
            meta,
            cluster_id,
            policy,
            state: Mutex::new(CacheState {
                table: Arc::new(ChainTable::default()),
                epoch: 0,
                channels: HashMap::new(),
                bulk: HashMap::new(),
            }),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached table (possibly empty before the first refresh).
    pub fn table(&self) -> Arc<ChainTable> {
        lock(&self.state).table.clone()
    }

    fn epoch(&self) -> u64 {
        lock(&self.state).epoch
    }

    /// Fetches the chain table from meta unless someone already did since `seen_epoch`.
    pub async fn refresh(&self, seen_epoch: u64) -> FsResult<()> {
        let _g = self.refresh_lock.lock().await;
        if self.epoch() != seen_epoch {
            return Ok(());
        }
        let table = self.meta.get_chains().await?;
        let mut st = lock(&self.state);
        st.table = Arc::new(table);
        st.epoch += 1;
        Ok(())
    }

    fn target(&self, id: ChainId) -> Option<Target> {
        let st = lock(&self.state);
        let chain = st.table.chains.get(&id)?.clone();
        let addrs = chain
            .members
            .iter()
            .map(|m| st.table.servers.get(m).map(|s| s.address.clone()))
            .collect();
        Some(Target {
            chain,
            addrs,
            epoch: st.epoch,
        })
    }

    fn client(&self, addr: &str) -> FsResult<pb::data_client::DataClient<Channel>> {
        let mut st = lock(&self.state);
        let ch = match st.channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = net::channel(addr)?;
                st.channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(net::data_client(ch))
    }

    fn bulk(&self, addr: &str) -> Arc<BulkClient> {
        let mut st = lock(&self.state);
        st.bulk
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(BulkClient::new(addr)))
            .clone()
    }

    /// Runs `attempt` against chain `id` until it succeeds, fails for good, or `deadline`
    /// passes. Refreshes the chain table when the chain is unknown, stale or unreachable.
    #[tracing::instrument(level = "debug", skip(self, deadline, attempt), fields(chain = %id))]
    async fn with_chain<T, F, Fut>(
        &self,
        what: &str,
        id: ChainId,
        deadline: Instant,
        mut attempt: F,
    ) -> FsResult<T>
    where
        F: FnMut(Chain, Vec<Option<String>>) -> Fut,
        Fut: std::future::Future<Output = FsResult<T>>,
    {
        let mut backoff = Backoff::new(self.policy.max_backoff);
        let mut last = FsError::Unavailable(format!("chain {id} unknown"));
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(FsError::Timeout(format!("{what} on chain {id}: {last}")));
            }
            let Some(t) = self.target(id) else {
                let epoch = self.epoch();
                match tokio::time::timeout(deadline - now, self.refresh(epoch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => last = e,
                    Err(_) => last = FsError::Timeout("get chains".into()),
                }
                if self.target(id).is_none() {
                    if epoch != self.epoch() && !matches!(last, FsError::Timeout(_)) {
                        // The fresh table really has no such chain: the layout is broken.
                        return Err(FsError::Io(format!(
                            "{what}: chain {id} is not in the chain table"
                        )));
                    }
                    backoff
                        .sleep(deadline.saturating_duration_since(Instant::now()))
                        .await;
                }
                continue;
            };
            if t.chain.members.is_empty() {
                last = FsError::Unavailable(format!("chain {id} has no members"));
            } else {
                let budget = self.policy.per_try.min(deadline - now);
                match tokio::time::timeout(budget, attempt(t.chain.clone(), t.addrs.clone())).await
                {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => {
                        if e.retry() == Retry::No {
                            return Err(e);
                        }
                        last = e;
                    }
                    Err(_) => {
                        last = FsError::Timeout(format!("{what} on chain {id} after {budget:?}"))
                    }
                }
            }
            tracing::debug!(chain = %id, err = %last, what, "refreshing chains and retrying");
            let stale = last.retry() == Retry::AfterRefresh;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Ok(Err(e)) = tokio::time::timeout(remaining, self.refresh(t.epoch)).await {
                tracing::debug!(err = %e, "refresh chains");
            }
            if !stale {
                // A dead server stays in its chain until meta notices (server timeout):
                // back off instead of spinning against it.
                backoff
                    .sleep(deadline.saturating_duration_since(Instant::now()))
                    .await;
            }
        }
    }

    fn chain_ref(c: &Chain) -> Option<pb::ChainRef> {
        Some(pb::ChainRef {
            id: c.id.0,
            version: c.version.0,
        })
    }

    fn addr_of(addrs: &[Option<String>], i: usize, c: &Chain) -> FsResult<String> {
        addrs.get(i).cloned().flatten().ok_or_else(|| {
            FsError::Unavailable(format!(
                "no address for server {:?} of chain {}",
                c.members.get(i),
                c.id
            ))
        })
    }

    /// Writes `data` at `offset` of object `key` through the head of `chain`; returns
    /// when every member has it.
    pub async fn write(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        data: Bytes,
        deadline: Instant,
    ) -> FsResult<()> {
        let crcs = piece_crcs(offset, &data);
        self.with_chain("write", chain, deadline, |c, addrs| {
            let data = data.clone();
            let crcs = crcs.clone();
            async move {
                let addr = Self::addr_of(&addrs, 0, &c)?;
                let req = pb::WriteRequest {
                    cluster_id: self.cluster_id.clone(),
                    chain: Self::chain_ref(&c),
                    object: Some(key.into()),
                    offset,
                    data,
                    crcs,
                    sync: false,
                    hop: 0,
                };
                self.bulk(&addr).write(req, self.policy.per_try).await?;
                Ok(())
            }
        })
        .await
    }

    /// Reads up to `len` bytes at `offset` of object `key`; shorter when the object ends
    /// first. Tries the tail first, then the other members; verifies every checksum.
    pub async fn read(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        len: u32,
        deadline: Instant,
    ) -> FsResult<Bytes> {
        self.with_chain("read", chain, deadline, |c, addrs| async move {
            let mut last = FsError::Unavailable("no member tried".into());
            for i in (0..c.members.len()).rev() {
                let addr = match Self::addr_of(&addrs, i, &c) {
                    Ok(a) => a,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                let req = pb::ReadRequest {
                    cluster_id: self.cluster_id.clone(),
                    chain: Self::chain_ref(&c),
                    object: Some(key.into()),
                    offset,
                    len,
                };
                match self.bulk(&addr).read(req, self.policy.per_try).await {
                    Ok(r) => {
                        if r.data.len() > len as usize {
                            last = FsError::Io(format!("{addr} returned {} bytes for a {len}-byte read", r.data.len()));
                            continue;
                        }
                        match verify_pieces(offset, &r.data, &r.crcs) {
                            Ok(()) => return Ok(r.data),
                            Err(e) => {
                                tracing::warn!(%addr, object = ?key, err = %e, "read: checksum mismatch, trying another member");
                                last = e;
                            }
                        }
                    }
                    Err(e) => {
                        if matches!(e, FsError::StaleChain { .. }) {
                            return Err(e);
                        }
                        last = e;
                    }
                }
            }
            // A checksum failure on every member is not retryable noise: surface it.
            Err(last)
        })
        .await
    }

    /// Makes every listed object of `chain` durable on every member.
    pub async fn sync(
        &self,
        chain: ChainId,
        keys: Vec<ObjectKey>,
        deadline: Instant,
    ) -> FsResult<()> {
        let objects: Vec<pb::ObjectRef> = keys.into_iter().map(Into::into).collect();
        self.with_chain("sync", chain, deadline, |c, addrs| {
            let objects = objects.clone();
            async move {
                let addr = Self::addr_of(&addrs, 0, &c)?;
                let mut cl = self.client(&addr)?;
                cl.sync(pb::SyncRequest {
                    cluster_id: self.cluster_id.clone(),
                    chain: Self::chain_ref(&c),
                    objects,
                    hop: 0,
                })
                .await
                .map_err(|s| cirrus_proto::from_status(&s))?;
                Ok(())
            }
        })
        .await
    }

    /// Sets object `key` to exactly `size` bytes on every member of `chain`.
    pub async fn truncate(
        &self,
        chain: ChainId,
        key: ObjectKey,
        size: u64,
        deadline: Instant,
    ) -> FsResult<()> {
        self.with_chain("truncate", chain, deadline, |c, addrs| async move {
            let addr = Self::addr_of(&addrs, 0, &c)?;
            let mut cl = self.client(&addr)?;
            match cl
                .truncate(pb::TruncateRequest {
                    cluster_id: self.cluster_id.clone(),
                    chain: Self::chain_ref(&c),
                    object: Some(key.into()),
                    size,
                    hop: 0,
                })
                .await
            {
                Ok(_) => Ok(()),
                Err(s) => match cirrus_proto::from_status(&s) {
                    // Never written: nothing to cut, and zeros read back either way.
                    FsError::NotFound if size == 0 => Ok(()),
                    e => Err(e),
                },
            }
        })
        .await
    }

    /// Makes `[offset, offset + length)` of object `key` read as zeros on every member of
    /// `chain`; its size does not change. A missing object has nothing to zero.
    pub async fn punch(
        &self,
        chain: ChainId,
        key: ObjectKey,
        offset: u64,
        length: u64,
        deadline: Instant,
    ) -> FsResult<()> {
        self.with_chain("punch", chain, deadline, |c, addrs| async move {
            let addr = Self::addr_of(&addrs, 0, &c)?;
            let mut cl = self.client(&addr)?;
            cl.punch(pb::PunchRequest {
                cluster_id: self.cluster_id.clone(),
                chain: Self::chain_ref(&c),
                object: Some(key.into()),
                offset,
                length,
                hop: 0,
            })
            .await
            .map_err(|s| cirrus_proto::from_status(&s))?;
            Ok(())
        })
        .await
    }

    /// Copies `len` bytes (at most `MAX_COPY`) of object `src` of `src_chain` at
    /// `src_off` to `dst_off` of object `dst` of `chain`, by the head of `chain`: the
    /// bytes go from data server to data server, not through this client. Both chains'
    /// versions are taken afresh on every attempt (a stale one refreshes the table).
    #[allow(clippy::too_many_arguments)]
    pub async fn copy(
        &self,
        chain: ChainId,
        dst: ObjectKey,
        dst_off: u64,
        src_chain: ChainId,
        src: ObjectKey,
        src_off: u64,
        len: u32,
        deadline: Instant,
    ) -> FsResult<()> {
        self.with_chain("copy", chain, deadline, |c, addrs| async move {
            let addr = Self::addr_of(&addrs, 0, &c)?;
            let sc = self
                .target(src_chain)
                .ok_or_else(|| FsError::Unavailable(format!("chain {src_chain} unknown")))?
                .chain;
            let mut cl = self.client(&addr)?;
            cl.copy(pb::CopyRequest {
                cluster_id: self.cluster_id.clone(),
                chain: Self::chain_ref(&c),
                object: Some(dst.into()),
                offset: dst_off,
                src_chain: Self::chain_ref(&sc),
                src_object: Some(src.into()),
                src_offset: src_off,
                len,
            })
            .await
            .map_err(|s| cirrus_proto::from_status(&s))?;
            Ok(())
        })
        .await
    }

    /// The member servers of a chain, for status output.
    pub fn members(&self, id: ChainId) -> Vec<ServerId> {
        self.target(id).map(|t| t.chain.members).unwrap_or_default()
    }
}
