//! Workloads: clients that drive a running cluster and record what they saw.
//!
//! - `meta`: random namespace operations over the wire, exact outcome classes.
//! - `data`: writes acknowledged by fsync through the client library, read back later.
//! - `locks`: blocking exclusive and shared locks on shared files, holds recorded.

pub mod data;
pub mod locks;
pub mod meta;
