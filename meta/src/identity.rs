//! The node's knowledge of its cluster id: unknown before the group is initialised,
//! then learned from the applied Init entry (or a snapshot) and persisted in the file
//! `cluster-id` so that a restarted node refuses other clusters' traffic from its first
//! request on. Once set it never changes: a different id is refused, not adopted.

use crate::frame;
use cirrus_types::ClusterId;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

const MAGIC: &[u8; 8] = b"CIRRUSID";
const VERSION: u32 = 1;
const FILE: &str = "cluster-id";

pub struct Identity {
    path: PathBuf,
    id: RwLock<Option<ClusterId>>,
}

impl Identity {
    /// Loads the persisted id, if any, from `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(FILE);
        let id = match std::fs::read(&path) {
            Ok(buf) => {
                let p = frame::read_single_record_file(&buf, MAGIC, VERSION, "cluster id file")?;
                let bytes: [u8; 16] = p.try_into().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "cluster id file: not 16 bytes")
                })?;
                Some(ClusterId(u128::from_le_bytes(bytes)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Identity {
            path,
            id: RwLock::new(id),
        })
    }

    pub fn get(&self) -> Option<ClusterId> {
        *cirrus_types::sync::read(&self.id)
    }

    /// Records the id learned from the state machine. Persists it the first time;
    /// a conflicting id means this directory belongs to another cluster.
    pub fn learn(&self, id: ClusterId) -> io::Result<()> {
        if self.get() == Some(id) {
            return Ok(());
        }
        let mut g = cirrus_types::sync::write(&self.id);
        match *g {
            Some(old) if old == id => Ok(()),
            Some(old) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "state machine says cluster {id}, but this directory belongs to cluster {old}"
                ),
            )),
            None => {
                let bytes = frame::single_record_file(MAGIC, VERSION, &id.0.to_le_bytes());
                frame::atomic_write(&self.path, &bytes)?;
                tracing::info!(cluster_id = %id, "cluster id learned and persisted");
                *g = Some(id);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_persists_and_a_different_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::open(dir.path()).unwrap();
        assert_eq!(a.get(), None);
        a.learn(ClusterId(42)).unwrap();
        assert!(a.learn(ClusterId(43)).is_err());
        let b = Identity::open(dir.path()).unwrap();
        assert_eq!(b.get(), Some(ClusterId(42)));
        assert!(b.learn(ClusterId(7)).is_err());
        b.learn(ClusterId(42)).unwrap();
    }
}
