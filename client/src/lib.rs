//! Cirrus client library and FUSE adapter.
//!
//! `meta` is the typed meta client, `data` the chain cache and data-server RPCs, `buffer`
//! the pure write-back buffer / flush plan / read assembly, `client` the filesystem as a
//! library (open files, striped parallel writer and reader, file locks), `locks` what a
//! mount must unlock at close, `fuse` the kernel adapter,
//! `mount` the mount lifecycle (checks, daemon, signals, unmount) and `cli` the
//! `cirrus mount` / `mount.cirrus` / `cirrus status` commands.
//!
//! Must not depend on: cirrus-meta, cirrus-data (the client talks to servers only
//! through the proto).

pub mod buffer;
pub mod cli;
pub mod client;
pub mod data;
pub mod fuse;
pub mod locks;
pub mod meta;
pub mod mount;

pub use client::{Client, ClientConfig, Fallocate};
