//! The Cirrus wire protocol: generated gRPC code (`pb`), the single mapping between
//! `FsError` and `tonic::Status` (`status`), conversions between wire and domain types
//! (`convert`), tuned channels and servers (`net`), the leader-following meta
//! connection every client of the meta group uses (`leader`), and the bulk protocol
//! that carries object bytes beside gRPC on the data port (`bulk`).
//!
//! Must not depend on: cirrus-meta, cirrus-data, cirrus-client. `pb::` types must not
//! travel past a service module: convert at the receiver with the `TryFrom`s here.

pub mod backoff;
pub mod bulk;
pub mod codec;
pub mod convert;
#[cfg(test)]
mod fuzz_tests;
pub mod leader;
pub mod metrics;
pub mod net;
pub mod status;

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("cirrus.v1");
}

pub use leader::{CallPolicy, MetaConn, MetaRpc, RequestTag};
pub use status::{from_status, to_status};
