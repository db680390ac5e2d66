//! Cirrus domain types shared by every crate: ids as newtypes, the error enum that
//! drives retries and errno mapping, the namespace vocabulary
//! (attributes, directory entries), the layout (stripe) math, chains and checksums.
//!
//! Must not depend on: tokio, tonic, prost, any IO. Everything here is a pure function
//! of its inputs, so client and servers compute identical answers and proptest is cheap.

pub mod acl;
pub mod attr;
pub mod chain;
pub mod checksum;
pub mod error;
pub mod ids;
pub mod info;
pub mod layout;
pub mod limits;
pub mod lock;
pub mod name;
pub mod sync;

pub use attr::{Attr, CreateArgs, DirEntry, SetAttr, Statfs, TimeSet};
pub use chain::{Chain, ChainTable, ServerEntry};
pub use error::{FsError, FsResult, Retry};
pub use ids::*;
pub use info::{DataInfo, MetaInfo, MetaMember};
pub use layout::{Extent, Layout, LayoutSpec, ObjectKey, LAYOUT_FN_VERSION};
pub use limits::MAX_FILE_SIZE;
pub use lock::{HeldLock, LockCall, LockKind, LockOwner};
