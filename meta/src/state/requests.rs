//! Exactly-once mutations: per client, the results of its recent request ids.
//!
//! A `MetaConn` retries a call after a timeout or a leader change with the same
//! `RequestId`. If the first attempt was applied, the table answers the remembered
//! result instead of applying again (a retried mkdir would otherwise answer EEXIST, a
//! retried rmdir ENOENT, a retried create-and-open would open a second handle).
//!
//! Bounds, all applied deterministically from the replicated commands:
//! - a client's results below its *done-below* mark (every seq below it has finished at
//!   the client) are dropped, and a request below the mark that is not remembered is a
//!   late duplicate of a finished call: it is refused, never applied again;
//! - at most `MAX_RESULTS_PER_CLIENT` results per client (the oldest go first);
//! - a client idle for `CLIENT_IDLE_NS` of leader time is forgotten, and at most
//!   `MAX_CLIENTS` clients are kept (the least recently seen goes first).

use super::Response;
use cirrus_types::{FsError, FsResult, RequestId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Results kept per client beyond its done-below mark.
pub const MAX_RESULTS_PER_CLIENT: usize = 1024;
/// Clients remembered at once.
pub const MAX_CLIENTS: usize = 4096;
/// Leader time after which an idle client is forgotten: far above any call's total
/// deadline (`CallPolicy::total`, 30 s by default), so a retry never outlives its entry.
pub const CLIENT_IDLE_NS: i64 = 10 * 60 * 1_000_000_000;

/// What one client's recent calls answered.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRequests {
    /// Largest done-below mark received: every seq below it has finished at the client.
    pub done_below: u64,
    /// Leader time of the last request recorded.
    pub last_seen_ns: i64,
    /// seq -> the response the first application gave (successes only: a failed
    /// command changed nothing, so its retry may simply apply again).
    pub results: BTreeMap<u64, Response>,
}

/// The replicated table (part of `MetaState`: in snapshots and in the digest).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestTable {
    clients: BTreeMap<u128, ClientRequests>,
    /// (last_seen_ns, client), for idle expiry and least-recently-seen eviction.
    by_last_seen: BTreeSet<(i64, u128)>,
}

impl RequestTable {
    /// The remembered response of `id`, `Ok(None)` if it must be applied, or an error if
    /// it is a late duplicate below the client's done-below mark. Read-only.
    pub fn lookup(&self, id: RequestId) -> FsResult<Option<Response>> {
        let Some(c) = self.clients.get(&id.client) else {
            return Ok(None);
        };
        if let Some(r) = c.results.get(&id.seq) {
            return Ok(Some(r.clone()));
        }
        if id.seq < c.done_below {
            return Err(FsError::Invalid(format!(
                "request {id} is below its client's done-below mark {}: a late retry of a \
                 call that already finished, not applied again",
                c.done_below
            )));
        }
        Ok(None)
    }

    /// Records the response of a request that was just applied at leader time `now`.
    /// Expires idle clients first, so the recording client is never the one evicted.
    pub fn record(&mut self, id: RequestId, done_below: u64, now: i64, resp: Response) {
        self.expire(now);
        if !self.clients.contains_key(&id.client) && self.clients.len() >= MAX_CLIENTS {
            if let Some(&(_, oldest)) = self.by_last_seen.first() {
                self.forget(oldest);
            }
        }
        let c = self.clients.entry(id.client).or_default();
        self.by_last_seen.remove(&(c.last_seen_ns, id.client));
        c.last_seen_ns = c.last_seen_ns.max(now);
        self.by_last_seen.insert((c.last_seen_ns, id.client));
        c.done_below = c.done_below.max(done_below.min(id.seq));
        c.results.insert(id.seq, resp);
        c.results = c.results.split_off(&c.done_below);
        while c.results.len() > MAX_RESULTS_PER_CLIENT {
            c.results.pop_first();
        }
    }

    /// Forgets every client idle since before `now - CLIENT_IDLE_NS`.
    pub fn expire(&mut self, now: i64) {
        let cutoff = now.saturating_sub(CLIENT_IDLE_NS);
        while let Some(&(seen, client)) = self.by_last_seen.first() {
            if seen >= cutoff {
                break;
            }
            self.forget(client);
        }
    }

    fn forget(&mut self, client: u128) {
        if let Some(c) = self.clients.remove(&client) {
            self.by_last_seen.remove(&(c.last_seen_ns, client));
        }
    }

    /// Number of clients remembered.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Results remembered for one client.
    pub fn client(&self, client: u128) -> Option<&ClientRequests> {
        self.clients.get(&client)
    }
}
