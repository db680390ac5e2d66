//! Data-server registry and chain table: registration, liveness, capacity, and the
//! placement rules that keep chains at R members.

use super::*;

/// Ideal members of chain number `index` over the live servers (sorted by id): headed by
/// `live[index % n]`, followed by the next `r - 1` live servers in id order, wrapping.
pub fn ideal_members(index: usize, live: &[ServerId], r: usize) -> Vec<ServerId> {
    let n = live.len();
    if n == 0 {
        return Vec::new();
    }
    (0..r.min(n)).map(|j| live[(index + j) % n]).collect()
}

impl MetaState {
    pub(super) fn register_server(&mut self, _u: &str, _a: &str, _c: u64, _f: u64, _now: i64) -> Response {
        Err(FsError::NotSupported("register".into()))
    }
    pub(super) fn update_capacity(&mut self, _s: ServerId, _c: u64, _f: u64) -> Response {
        Err(FsError::NotSupported("capacity".into()))
    }
    pub(super) fn server_down(&mut self, _s: ServerId) -> Response {
        Err(FsError::NotSupported("down".into()))
    }
    pub(super) fn server_up(&mut self, _s: ServerId) -> Response {
        Err(FsError::NotSupported("up".into()))
    }
    pub(super) fn server_caught_up(&mut self, _s: ServerId, _c: ChainId) -> Response {
        Err(FsError::NotSupported("caught up".into()))
    }
}
