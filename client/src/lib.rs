//! Cirrus client library and FUSE adapter.
//!
//! `meta` is the typed meta client, `data` the chain cache and data-server RPCs, `api`
//! the two seams of `Client` over them (`MetaApi`, `DataApi`), `buffer` the pure
//! write-back buffer / flush plan / read assembly, `client` the filesystem as a library
//! (open files, striped parallel writer and reader, file locks), `locks` what a mount
//! must unlock at close, `fuse` the kernel adapter, `mount` the mount lifecycle (checks,
//! daemon, signals, unmount) and `cli` the `cirrus mount` / `mount.cirrus` / `cirrus
//! status` commands; `testing` (tests only) in-memory meta and data servers behind the
//! seams.
//!
//! Must not depend on: cirrus-meta, cirrus-data (the client talks to servers only
//! through the proto). Its unit tests run meta's pure state machine
//! (`cirrus_meta::state`) behind `MetaApi`: a dev-dependency, which cirrus-meta does not
//! depend on back.

pub mod api;
pub mod buffer;
pub mod cli;
pub mod client;
pub mod data;
pub mod fuse;
pub mod locks;
pub mod meta;
pub mod mount;
#[cfg(test)]
mod testing;

pub use client::{Client, ClientConfig, Fallocate};
