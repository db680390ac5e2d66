//! `MetaConn`: the connection to the meta group that every caller uses (data servers,
//! clients, `cirrus status`, doctor, tests). It follows `NotLeader { leader_hint }`,
//! rotates through the known addresses when a node is unreachable, and bounds every call
//! by a per-try and a total deadline, so no caller waits forever on a dead group.
//!
//! Every logical call carries one `RequestId` (this connection's random client id and a
//! sequence number) in the gRPC metadata of every attempt, plus the connection's
//! "done below" mark (every seq below it has finished here). The meta state machine
//! remembers recent results by request id, so a mutation whose first attempt was applied
//! but whose answer was lost (timeout, leader change) answers the remembered result on
//! retry instead of applying again (EEXIST after a retried mkdir, ENOENT after a retried
//! rmdir). See docs/design/0002-meta-state-machine.md, "Exactly-once mutations".

use crate::backoff::Backoff;
use crate::net;
use crate::pb::meta_client::MetaClient;
use crate::status::from_status;
use cirrus_types::RequestId;
use cirrus_types::{ClusterId, FsError, FsResult, Retry};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// gRPC metadata key of the request id: `<32 hex client>/<decimal seq>`.
pub const REQUEST_ID_KEY: &str = "cirrus-request-id";
/// gRPC metadata key of the sender's mark: every seq below it has finished at the sender
/// (answered or given up), so the meta group may forget those results and refuse them.
pub const DONE_BELOW_KEY: &str = "cirrus-request-done-below";

/// The request id of one call and the sender's done-below mark, as sent in metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTag {
    pub id: RequestId,
    /// Every seq of `id.client` below this one has finished; at most `id.seq`.
    pub done_below: u64,
}

/// Puts `tag` into outgoing metadata.
pub fn stamp(md: &mut MetadataMap, tag: RequestTag) {
    // Both renderings are ASCII digits, hex and '/': always valid metadata values.
    if let Ok(v) = MetadataValue::try_from(tag.id.to_string()) {
        md.insert(REQUEST_ID_KEY, v);
    }
    md.insert(DONE_BELOW_KEY, MetadataValue::from(tag.done_below));
}

/// Reads the tag of an incoming request. No request id: `None` (a plain, at-least-once
/// call). A malformed id or mark, or a mark above the id's seq: `Invalid`.
pub fn request_tag(md: &MetadataMap) -> FsResult<Option<RequestTag>> {
    let Some(id) = md.get(REQUEST_ID_KEY) else {
        if md.contains_key(DONE_BELOW_KEY) {
            return Err(FsError::Invalid(format!(
                "{DONE_BELOW_KEY} without {REQUEST_ID_KEY}"
            )));
        }
        return Ok(None);
    };
    let id: RequestId = id
        .to_str()
        .map_err(|_| FsError::Invalid(format!("{REQUEST_ID_KEY} is not ASCII")))?
        .parse()?;
    let done_below = match md.get(DONE_BELOW_KEY) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                FsError::Invalid(format!("{DONE_BELOW_KEY} {v:?} is not a decimal u64"))
            })?,
    };
    if done_below > id.seq {
        return Err(FsError::Invalid(format!(
            "{DONE_BELOW_KEY} {done_below} is above the request's own seq {}",
            id.seq
        )));
    }
    Ok(Some(RequestTag { id, done_below }))
}

/// Adds one call's request tag to every request sent through it.
#[derive(Clone, Copy, Debug)]
pub struct Stamp(pub RequestTag);

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        stamp(req.metadata_mut(), self.0);
        Ok(req)
    }
}

/// The client handed to one attempt of `MetaConn::call`: stamps the call's request id.
pub type MetaRpc = MetaClient<InterceptedService<Channel, Stamp>>;

/// Deadlines of one logical call.
#[derive(Clone, Copy, Debug)]
pub struct CallPolicy {
    /// Deadline of one attempt against one node.
    pub per_try: Duration,
    /// Deadline of the whole call, retries included.
    pub total: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            per_try: Duration::from_secs(5),
            total: Duration::from_secs(30),
        }
    }
}

struct Inner {
    leader: Option<String>,
    next: usize,
    channels: HashMap<String, Channel>,
}

pub struct MetaConn {
    addrs: Vec<String>,
    inner: Mutex<Inner>,
    cluster_id: RwLock<String>,
    policy: CallPolicy,
    /// Random, nonzero: the client half of every request id sent from here.
    client: u128,
    /// Next request seq (starts at 1).
    next_seq: AtomicU64,
    /// Seqs of calls still running here; the smallest is the done-below mark.
    in_flight: Mutex<BTreeSet<u64>>,
}

/// Removes a call's seq from the in-flight set when the call ends or is dropped.
struct InFlight<'a> {
    set: &'a Mutex<BTreeSet<u64>>,
    seq: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.seq);
    }
}

/// Parses `H1:7001,H2:7001,H3:7001` (whitespace tolerated, duplicates dropped).
pub fn parse_addrs(s: &str) -> FsResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for a in s.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let (host, port) = a
            .rsplit_once(':')
            .ok_or_else(|| FsError::Invalid(format!("address {a:?} has no :port")))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(FsError::Invalid(format!("address {a:?} is not host:port")));
        }
        if !out.iter().any(|x| x == a) {
            out.push(a.to_string());
        }
    }
    if out.is_empty() {
        return Err(FsError::Invalid("no meta addresses given".into()));
    }
    Ok(out)
}

impl MetaConn {
    pub fn new(addrs: Vec<String>, policy: CallPolicy) -> FsResult<Self> {
        if addrs.is_empty() {
            return Err(FsError::Invalid("no meta addresses given".into()));
        }
        Ok(MetaConn {
            addrs,
            inner: Mutex::new(Inner {
                leader: None,
                next: 0,
                channels: HashMap::new(),
            }),
            cluster_id: RwLock::new(String::new()),
            policy,
            client: rand::random::<u128>().max(1),
            next_seq: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
        })
    }

    /// The client half of this connection's request ids.
    pub fn client_id(&self) -> u128 {
        self.client
    }

    /// Starts a logical call: a fresh seq, in flight until the guard drops.
    fn begin(&self) -> (RequestId, InFlight<'_>) {
        // Taken and registered under one lock: a seq taken but not yet in the set would
        // let a concurrent call's mark pass it, and meta would then refuse this call as
        // a late duplicate. A poisoned set is still the truth (inserts and removes do not
        // panic half way), so it is used anyway.
        let seq = {
            let mut g = cirrus_types::sync::lock(&self.in_flight);
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            g.insert(seq);
            seq
        };
        let id = RequestId {
            client: self.client,
            seq,
        };
        (
            id,
            InFlight {
                set: &self.in_flight,
                seq,
            },
        )
    }

    /// The tag of one attempt of call `id`: the mark is the oldest call still running.
    fn tag(&self, id: RequestId) -> RequestTag {
        let oldest = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .copied()
            .unwrap_or(id.seq);
        RequestTag {
            id,
            done_below: oldest.min(id.seq),
        }
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    pub fn policy(&self) -> CallPolicy {
        self.policy
    }

    /// The cluster id to put in requests (empty until `connect` or `set_cluster_id`).
    pub fn cluster_id(&self) -> String {
        self.cluster_id
            .read()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    pub fn set_cluster_id(&self, id: ClusterId) {
        *cirrus_types::sync::write(&self.cluster_id) = id.to_string();
    }

    /// The address currently believed to be the leader, if any.
    pub fn leader(&self) -> Option<String> {
        cirrus_types::sync::lock(&self.inner).leader.clone()
    }

    /// Asks the group for its cluster id (any node that knows it) and remembers it.
    pub async fn connect(&self) -> FsResult<ClusterId> {
        let reply = self
            .call("cluster info", |mut c| async move {
                let r = c.cluster_info(crate::pb::ClusterInfoRequest {}).await?;
                if r.get_ref().cluster_id.is_empty() {
                    // Not initialised yet: treat like an unavailable node and keep trying.
                    return Err(tonic::Status::unavailable("meta group not initialised yet"));
                }
                Ok(r)
            })
            .await?;
        let id: ClusterId = reply.cluster_id.parse()?;
        self.set_cluster_id(id);
        Ok(id)
    }

    fn pick(&self) -> FsResult<(String, Channel)> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| FsError::Io("meta conn lock poisoned".into()))?;
        let addr = match &g.leader {
            Some(l) => l.clone(),
            None => {
                let a = self.addrs[g.next % self.addrs.len()].clone();
                g.next = g.next.wrapping_add(1);
                a
            }
        };
        if let Some(ch) = g.channels.get(&addr) {
            return Ok((addr, ch.clone()));
        }
        let ch = net::channel(&addr)?;
        g.channels.insert(addr.clone(), ch.clone());
        Ok((addr, ch))
    }

    fn note(&self, leader: Option<String>) {
        cirrus_types::sync::lock(&self.inner).leader = leader;
    }

    /// Runs `f` against the leader, following hints and retrying within the policy's
    /// deadlines. `what` names the call in errors ("create", "heartbeat"). Every attempt
    /// carries the same request id, so a retried mutation is applied at most once.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> FsResult<T>
    where
        F: FnMut(MetaRpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (id, _in_flight) = self.begin();
        self.call_as(id, what, f).await
    }

    /// `call` with a request id chosen by the caller (tests replay one id on purpose).
    #[tracing::instrument(level = "debug", name = "meta_call", skip(self, f), fields(req = ?id))]
    pub async fn call_as<T, F, Fut>(&self, id: RequestId, what: &str, mut f: F) -> FsResult<T>
    where
        F: FnMut(MetaRpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(500));
        let mut last_err = FsError::Unavailable("no attempt made".into());
        let mut hops_without_sleep = 0;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= self.policy.total {
                return Err(FsError::Timeout(format!(
                    "{what}: no answer from the meta group {:?} within {:?} (last error: {last_err})",
                    self.addrs, self.policy.total
                )));
            }
            let (addr, ch) = self.pick()?;
            let budget = self.policy.per_try.min(self.policy.total - elapsed);
            let client = net::meta_client_stamped(ch, Stamp(self.tag(id)));
            let result = tokio::time::timeout(budget, f(client)).await;
            let err = match result {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => from_status(&status),
                Err(_) => FsError::Timeout(format!("{what} on {addr} after {budget:?}")),
            };
            match &err {
                FsError::NotLeader {
                    leader_hint: Some(h),
                } if *h != addr && hops_without_sleep < 3 => {
                    self.note(Some(h.clone()));
                    hops_without_sleep += 1;
                    last_err = err;
                    continue;
                }
                e if e.retry() == Retry::Elsewhere => {
                    self.note(None);
                }
                _ => return Err(err),
            }
            tracing::debug!(%addr, %err, what, "retrying against the meta group");
            last_err = err;
            hops_without_sleep = 0;
            backoff
                .sleep(self.policy.total.saturating_sub(start.elapsed()))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_addrs("a:1, b:2,a:1").unwrap(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert!(parse_addrs("").is_err());
        assert!(parse_addrs("host").is_err());
        assert!(parse_addrs("host:notaport").is_err());
    }

    #[test]
    fn request_tags_round_trip_and_malformed_ones_are_invalid() {
        let tag = RequestTag {
            id: RequestId {
                client: u128::MAX,
                seq: u64::MAX,
            },
            done_below: 7,
        };
        let mut md = MetadataMap::new();
        stamp(&mut md, tag);
        assert_eq!(request_tag(&md).unwrap(), Some(tag));
        assert_eq!(request_tag(&MetadataMap::new()).unwrap(), None);
        let bad_ids = [
            "",
            "1/1",
            "00000000000000000000000000000000/1",
            "0000000000000000000000000000000g/1",
            "00000000000000000000000000000001/0",
            "00000000000000000000000000000001/18446744073709551616",
            "00000000000000000000000000000001/-1",
            "00000000000000000000000000000001/99999999999999999999999",
            "000000000000000000000000000000001/1",
        ];
        for id in bad_ids {
            let mut md = MetadataMap::new();
            md.insert(REQUEST_ID_KEY, id.parse().unwrap());
            assert!(
                matches!(request_tag(&md), Err(FsError::Invalid(_))),
                "{id:?}"
            );
        }
        for below in ["", "x", "-1", "18446744073709551616", "8"] {
            let mut md = MetadataMap::new();
            md.insert(
                REQUEST_ID_KEY,
                "00000000000000000000000000000001/7".parse().unwrap(),
            );
            md.insert(DONE_BELOW_KEY, below.parse().unwrap());
            assert!(
                matches!(request_tag(&md), Err(FsError::Invalid(_))),
                "{below:?}"
            );
        }
        let mut md = MetadataMap::new();
        md.insert(DONE_BELOW_KEY, "1".parse().unwrap());
        assert!(matches!(request_tag(&md), Err(FsError::Invalid(_))));
    }

    #[test]
    fn every_call_gets_a_new_seq_and_the_mark_is_the_oldest_call_running() {
        let conn = MetaConn::new(vec!["127.0.0.1:1".into()], CallPolicy::default()).unwrap();
        let (a, ga) = conn.begin();
        let (b, gb) = conn.begin();
        assert_eq!(a.client, b.client);
        assert_ne!(a.client, 0);
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(conn.tag(b).done_below, a.seq);
        drop(ga);
        assert_eq!(conn.tag(b).done_below, b.seq);
        drop(gb);
        let other = MetaConn::new(vec!["127.0.0.1:1".into()], CallPolicy::default()).unwrap();
        assert_ne!(other.client_id(), conn.client_id());
    }

    /// The mark a call sends must never pass a call that is still running: meta refuses
    /// a request below its client's mark as a late duplicate (EINVAL through the mount).
    /// A seq taken but not yet in the in-flight set let a concurrent call's mark pass it
    /// (found by 100,000 opens through one mount, 16 at a time: two opens got EINVAL).
    #[test]
    fn a_mark_never_passes_a_call_still_running_under_concurrent_calls() {
        use std::sync::atomic::AtomicBool;
        let conn = std::sync::Arc::new(
            MetaConn::new(vec!["127.0.0.1:1".into()], CallPolicy::default()).unwrap(),
        );
        const THREADS: usize = 8;
        const CALLS: usize = 20_000;
        // finished[seq]: the call of that seq has ended (set before its guard drops).
        let finished: std::sync::Arc<Vec<AtomicBool>> = std::sync::Arc::new(
            (0..=THREADS * CALLS + 1)
                .map(|_| AtomicBool::new(false))
                .collect(),
        );
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (conn, finished) = (conn.clone(), finished.clone());
                std::thread::spawn(move || {
                    for _ in 0..CALLS {
                        let (id, guard) = conn.begin();
                        let mark = conn.tag(id).done_below;
                        assert!(mark <= id.seq);
                        // Every seq below the mark is taken (seqs are handed out in
                        // order) and must have finished.
                        if let Some(s) = (1..mark)
                            .rev()
                            .take(64)
                            .find(|s| !finished[*s as usize].load(Ordering::SeqCst))
                        {
                            panic!(
                                "call {} sent mark {mark} while call {s} was running",
                                id.seq
                            );
                        }
                        finished[id.seq as usize].store(true, Ordering::SeqCst);
                        drop(guard);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a mark passed a running call");
        }
    }

    #[tokio::test]
    async fn call_against_dead_group_ends_within_its_deadline() {
        // Port 1 on loopback refuses; the call must end with Timeout, not hang.
        let conn = MetaConn::new(
            vec!["127.0.0.1:1".into()],
            CallPolicy {
                per_try: Duration::from_millis(200),
                total: Duration::from_secs(1),
            },
        )
        .unwrap();
        let t = Instant::now();
        let r = conn.connect().await;
        assert!(matches!(r, Err(FsError::Timeout(_))), "{r:?}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "hang-catching deadline"
        );
    }
}
