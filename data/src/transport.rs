//! `ChainTransport`: what a data server asks of the other members of a chain, by address.
//! The node forwards writes, syncs, truncates and punches to the next member, reads
//! another member's copy to repair its own or to copy between objects, and rebuild lists
//! and reads a source member, all through this one seam. `Peers` (gRPC and bulk frames
//! over TCP) is the implementation a server runs; the unit tests run chains of nodes in
//! one process over `testing::Net`.
//!
//! Contract every implementation keeps, since the node relies on it: a call either
//! returns the remote node's own answer (its `FsError` unchanged, `StaleChain { current }`
//! included) or fails with `Unavailable`/`Timeout` naming the address; a read's bytes
//! have been checked against the crcs the remote sent, and never exceed `len`.

use crate::node::{Listed, WriteArgs};
use bytes::Bytes;
use cirrus_types::{Chain, ChainId, ChainVersion, FsResult, ObjectKey};
use futures::future::BoxFuture;

pub trait ChainTransport: Send + Sync + 'static {
    /// Forwards a chain write (its `hop` already the receiver's position); returns the
    /// object size the receiver reports.
    fn write<'a>(&'a self, addr: &'a str, w: &'a WriteArgs) -> BoxFuture<'a, FsResult<u64>>;

    /// Verified read of the copy at `addr`; returns (data, object size). `local_only`:
    /// the receiver serves its own copy and never repairs (so two bad copies never call
    /// each other).
    fn read<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        off: u64,
        len: u32,
        local_only: bool,
    ) -> BoxFuture<'a, FsResult<(Bytes, u64)>>;

    /// Forwards a sync of `keys`.
    fn sync<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        keys: &'a [ObjectKey],
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>>;

    /// Forwards a truncate.
    fn truncate<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        size: u64,
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>>;

    /// Forwards a punch of `[off, off + len)`.
    fn punch<'a>(
        &'a self,
        addr: &'a str,
        c: &'a Chain,
        key: ObjectKey,
        off: u64,
        len: u64,
        hop: u32,
    ) -> BoxFuture<'a, FsResult<()>>;

    /// Objects a member holds for `chain`, listed once that member is at `version` (it
    /// refuses an older one, refreshes to a newer one; 0: unchecked).
    fn list<'a>(
        &'a self,
        addr: &'a str,
        chain: ChainId,
        version: ChainVersion,
    ) -> BoxFuture<'a, FsResult<Vec<Listed>>>;
}
