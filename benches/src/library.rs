//! The library job: the founding setup's sequential 1 MiB writes then reads, through
//! the Cirrus client library (`cirrus_client::Client`) instead of the FUSE mount. It is
//! the same code the mount runs, without the kernel round trips, so the gap between this
//! row and the FUSE row is what FUSE costs.
//!
//! Each thread writes its own file with 1 MiB writes and fsyncs it (the time includes
//! the fsync: every byte is on every chain member's disk when the clock stops), then
//! reads it back with 1 MiB reads and checks every byte.

use anyhow::{bail, Context, Result};
use cirrus_client::{Client, ClientConfig};
use cirrus_types::InodeId;
use std::sync::Arc;
use std::time::Instant;

const MIB: usize = 1 << 20;

/// One run of the library job.
#[derive(Debug, Clone)]
pub struct LibraryJob {
    pub threads: u32,
    pub bytes_per_thread: u64,
}

/// Aggregate throughput in bytes per second.
#[derive(Debug, Clone, Copy)]
pub struct LibraryResult {
    pub write_bps: f64,
    pub read_bps: f64,
}

/// The byte thread `t` of run `tag` fills its file with: different per thread, so a
/// read served from the wrong file or stripe is caught.
fn pattern(tag: u32, t: u32) -> u8 {
    ((tag as u64 * 31 + t as u64 * 7) % 251) as u8 + 1
}

impl LibraryJob {
    /// Runs the job against the meta group at `meta_addrs` on `rt`. The files are
    /// created in the root directory under names unique to this run and removed after.
    pub fn run(&self, rt: &tokio::runtime::Runtime, meta_addrs: &str) -> Result<LibraryResult> {
        if self.threads == 0 || self.bytes_per_thread < MIB as u64 {
            bail!("the library job needs at least one thread and 1 MiB per thread");
        }
        rt.block_on(self.run_async(meta_addrs))
    }

    async fn run_async(&self, meta_addrs: &str) -> Result<LibraryResult> {
        let client = Client::connect(meta_addrs, ClientConfig::default())
            .await
            .with_context(|| format!("connect the client library to {meta_addrs}"))?;
        let renew = client.spawn_lease_renewal();
        let r = self.measure(&client).await;
        renew.abort();
        client.release_all().await;
        r
    }

    async fn measure(&self, client: &Arc<Client>) -> Result<LibraryResult> {
        let tag: u32 = rand::random();
        let blocks = self.bytes_per_thread / MIB as u64;
        let total = (blocks * MIB as u64 * self.threads as u64) as f64;
        let name = |t: u32| format!("library-{tag:08x}-{t}");

        let start = Instant::now();
        let mut writers = Vec::new();
        for t in 0..self.threads {
            let c = client.clone();
            let file = name(t);
            writers.push(tokio::spawn(async move {
                let buf = vec![pattern(tag, t); MIB];
                let (fh, attr) = c
                    .create(InodeId::ROOT, file.as_bytes(), 0o644, 0, 0, true)
                    .await
                    .with_context(|| format!("create {file}"))?;
                for b in 0..blocks {
                    let n = c
                        .write(fh, b * MIB as u64, &buf)
                        .await
                        .with_context(|| format!("write block {b} of {file}"))?;
                    if n != MIB {
                        bail!("short write of block {b} of {file}: {n} bytes");
                    }
                }
                c.fsync(fh).await.with_context(|| format!("fsync {file}"))?;
                c.release(fh)
                    .await
                    .with_context(|| format!("close {file}"))?;
                Ok(attr.ino)
            }));
        }
        let mut inodes = Vec::new();
        for w in writers {
            inodes.push(w.await.context("a writer task panicked")??);
        }
        let write_secs = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let mut readers = Vec::new();
        for (t, ino) in inodes.iter().copied().enumerate() {
            let c = client.clone();
            let t = t as u32;
            let file = name(t);
            readers.push(tokio::spawn(async move {
                let want = pattern(tag, t);
                let (fh, attr) = c.open(ino).await.with_context(|| format!("open {file}"))?;
                if attr.size != blocks * MIB as u64 {
                    bail!(
                        "{file} has {} bytes after fsync, wrote {}",
                        attr.size,
                        blocks * MIB as u64
                    );
                }
                for b in 0..blocks {
                    let got = c
                        .read(fh, b * MIB as u64, MIB as u32)
                        .await
                        .with_context(|| format!("read block {b} of {file}"))?;
                    if got.len() != MIB {
                        bail!("short read of block {b} of {file}: {} bytes", got.len());
                    }
                    if let Some(i) = got.iter().position(|&x| x != want) {
                        bail!(
                            "block {b} of {file} reads {:#04x} at byte {i}, wrote {want:#04x}",
                            got[i]
                        );
                    }
                }
                c.release(fh)
                    .await
                    .with_context(|| format!("close {file}"))?;
                Ok(())
            }));
        }
        for r in readers {
            r.await.context("a reader task panicked")??;
        }
        let read_secs = start.elapsed().as_secs_f64();

        for t in 0..self.threads {
            let file = name(t);
            client
                .unlink(InodeId::ROOT, file.as_bytes())
                .await
                .with_context(|| format!("unlink {file}"))?;
        }
        Ok(LibraryResult {
            write_bps: total / write_secs.max(1e-9),
            read_bps: total / read_secs.max(1e-9),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_of_a_run_writes_a_different_nonzero_byte() {
        for tag in [0u32, 1, 0xdead_beef, u32::MAX] {
            let bytes: Vec<u8> = (0..16).map(|t| pattern(tag, t)).collect();
            assert!(bytes.iter().all(|&b| b != 0), "{bytes:?}");
            let mut dedup = bytes.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), bytes.len(), "{bytes:?}");
        }
    }

    #[test]
    fn a_job_with_nothing_to_do_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let job = LibraryJob {
            threads: 0,
            bytes_per_thread: 1 << 20,
        };
        assert!(job.run(&rt, "127.0.0.1:1").is_err());
    }
}
