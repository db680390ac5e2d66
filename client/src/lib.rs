//! Cirrus client library and FUSE adapter.
//!
//! Must not depend on: cirrus-meta, cirrus-data.

pub mod cli;
