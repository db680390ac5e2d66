//! `MetaConn`: the connection to the meta group that every caller uses (data servers,
//! clients, `cirrus status`, doctor, tests). It follows `NotLeader { leader_hint }`,
//! rotates through the known addresses when a node is unreachable, and bounds every call
//! by a per-try and a total deadline, so no caller waits forever on a dead group.
//!
//! Retries are at-least-once: a mutation whose reply was lost may be applied and then
//! retried; callers of non-idempotent calls must treat e.g. `Exists` after a retry with
//! that in mind (see docs/design for how the client does).

use crate::net;
use crate::pb::meta_client::MetaClient;
use crate::status::from_status;
use cirrus_types::{ClusterId, FsError, FsResult};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

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
        })
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
        if let Ok(mut g) = self.cluster_id.write() {
            *g = id.to_string();
        }
    }

    /// The address currently believed to be the leader, if any.
    pub fn leader(&self) -> Option<String> {
        self.inner.lock().ok().and_then(|g| g.leader.clone())
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
        if let Ok(mut g) = self.inner.lock() {
            g.leader = leader;
        }
    }

    /// Runs `f` against the leader, following hints and retrying within the policy's
    /// deadlines. `what` names the call in errors ("create", "heartbeat").
    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> FsResult<T>
    where
        F: FnMut(MetaClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
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
            let result = tokio::time::timeout(budget, f(net::meta_client(ch))).await;
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
                FsError::NotLeader { .. } | FsError::Unavailable(_) | FsError::Timeout(_) => {
                    self.note(None);
                }
                _ => return Err(err),
            }
            tracing::debug!(%addr, %err, "{what}: retrying against the meta group");
            last_err = err;
            hops_without_sleep = 0;
            let jitter = Duration::from_millis(rand::random::<u64>() % 20);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
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
