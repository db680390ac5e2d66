//! Workloads: clients that drive a running cluster and record what they saw.
//!
//! - `meta`: random namespace operations over the wire, exact outcome classes.
//! - `data`: writes acknowledged by fsync through the client library, read back later.

pub mod data;
pub mod meta;
