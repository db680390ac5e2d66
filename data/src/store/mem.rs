//! `MemStore`: the chunk store in memory, with the same checksum behaviour as the file
//! store (crc per 4 KiB block, verified on read, RMW edges verified), for fast unit tests
//! of replication, repair and rebuild. `corrupt` flips a stored byte behind its back.
//! Dense (a vector per object): for tests with small objects only, never a server's
//! store; it refuses sizes past the largest object like the file store.

use super::{
    bad_blocks, check_range, ChunkStore, ObjectInfo, ReadOut, StoreError, StoreResult, BLOCK,
};
use cirrus_types::{ChainId, ObjectKey};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;

struct MemObj {
    chain: ChainId,
    data: Vec<u8>,
    crcs: Vec<u32>,
}

impl MemObj {
    /// Recomputes the crcs of blocks `[first, end)`. Blocks the object grew by without
    /// being written (the gap a write past the end leaves) hold zeros: a hole's crc.
    fn recrc(&mut self, first: u64, end: u64) {
        let n = self.data.len().div_ceil(BLOCK as usize);
        self.crcs.resize(n, super::zero_block_crc());
        for b in first..end.min(n as u64) {
            let s = (b * BLOCK) as usize;
            let mut blk = vec![0u8; BLOCK as usize];
            let e = (s + BLOCK as usize).min(self.data.len());
            blk[..e - s].copy_from_slice(&self.data[s..e]);
            self.crcs[b as usize] = cirrus_types::checksum::crc32c(&blk);
        }
    }
}

#[derive(Default)]
pub struct MemStore {
    objs: Mutex<HashMap<ObjectKey, MemObj>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Flips one byte of the stored data without updating its crc.
    pub fn corrupt(&self, key: ObjectKey, off: u64) -> bool {
        let mut g = cirrus_types::sync::lock(&self.objs);
        match g.get_mut(&key).and_then(|o| o.data.get_mut(off as usize)) {
            Some(b) => {
                *b ^= 0xff;
                true
            }
            None => false,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<ObjectKey, MemObj>) -> T) -> T {
        f(&mut cirrus_types::sync::lock(&self.objs))
    }

    fn obj(
        m: &mut HashMap<ObjectKey, MemObj>,
        chain: ChainId,
        key: ObjectKey,
    ) -> StoreResult<&mut MemObj> {
        let o = m.entry(key).or_insert_with(|| MemObj {
            chain,
            data: Vec::new(),
            crcs: Vec::new(),
        });
        owned_by(o, key, chain)?;
        Ok(o)
    }
}

/// Refuses an object of another chain.
fn owned_by(o: &MemObj, key: ObjectKey, chain: ChainId) -> StoreResult<()> {
    if o.chain != chain {
        return Err(StoreError::Invalid(format!(
            "object {key:?} belongs to chain {}, not {chain}",
            o.chain
        )));
    }
    Ok(())
}

fn verify(key: ObjectKey, o: &MemObj, a: u64, b: u64) -> StoreResult<()> {
    let end = (b as usize).min(o.data.len());
    let a = a as usize;
    if a >= end {
        return Ok(());
    }
    let first = a as u64 / BLOCK;
    let bad = bad_blocks(first, &o.data[a..end], &o.crcs);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Corrupt { key, blocks: bad })
    }
}

impl ChunkStore for MemStore {
    fn write<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &'a [u8],
    ) -> BoxFuture<'a, StoreResult<u64>> {
        let r = self.with(|m| {
            let end = check_range(off, data.len() as u64)?;
            let o = Self::obj(m, chain, key)?;
            let (a, b) = (off / BLOCK * BLOCK, end.div_ceil(BLOCK) * BLOCK);
            if off != a {
                verify(key, o, a, a + BLOCK)?;
            }
            if end != b {
                verify(key, o, b - BLOCK, b)?;
            }
            if o.data.len() < end as usize {
                o.data.resize(end as usize, 0);
            }
            o.data[off as usize..end as usize].copy_from_slice(data);
            o.recrc(a / BLOCK, b / BLOCK);
            Ok(o.data.len() as u64)
        });
        Box::pin(async move { r })
    }

    fn put_blocks<'a>(
        &'a self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        data: &'a [u8],
        logical_end: u64,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        let r = self.with(|m| {
            let end = check_range(off, data.len() as u64)?;
            let o = Self::obj(m, chain, key)?;
            let size = (o.data.len() as u64).max(logical_end.min(end));
            if o.data.len() < end as usize {
                o.data.resize(end as usize, 0);
            }
            o.data[off as usize..end as usize].copy_from_slice(data);
            o.data.truncate(size as usize);
            o.recrc(off / BLOCK, end.div_ceil(BLOCK));
            Ok(size)
        });
        Box::pin(async move { r })
    }

    fn put_lost_block(
        &self,
        chain: ChainId,
        key: ObjectKey,
        block: u64,
        logical_end: u64,
    ) -> BoxFuture<'_, StoreResult<u64>> {
        let r = self.with(|m| {
            let o = Self::obj(m, chain, key)?;
            let (off, end) = ((block * BLOCK) as usize, ((block + 1) * BLOCK) as usize);
            let size = o.data.len().max((logical_end as usize).min(end));
            if o.data.len() < end {
                o.data.resize(end, 0);
            }
            o.data[off..end].fill(0);
            o.data.truncate(size);
            o.recrc(block, block + 1);
            if let Some(c) = o.crcs.get_mut(block as usize) {
                *c = super::lost_block_crc();
            }
            Ok(size as u64)
        });
        Box::pin(async move { r })
    }

    fn read(&self, key: ObjectKey, off: u64, len: usize) -> BoxFuture<'_, StoreResult<ReadOut>> {
        let r = self.with(|m| {
            let Some(o) = m.get(&key) else {
                return Ok(ReadOut::default());
            };
            let size = o.data.len() as u64;
            let end = off.saturating_add(len as u64).min(size);
            if off >= end {
                return Ok(ReadOut {
                    size,
                    ..ReadOut::default()
                });
            }
            verify(key, o, off / BLOCK * BLOCK, end.div_ceil(BLOCK) * BLOCK)?;
            let data = o.data[off as usize..end as usize].to_vec();
            Ok(ReadOut {
                crcs: cirrus_types::checksum::piece_crcs(off, &data),
                data: data.into(),
                size,
            })
        });
        Box::pin(async move { r })
    }

    fn truncate(
        &self,
        chain: ChainId,
        key: ObjectKey,
        size: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let r = self.with(|m| {
            check_range(size, 0)?;
            let o = Self::obj(m, chain, key)?;
            if size < o.data.len() as u64 && !size.is_multiple_of(BLOCK) {
                let a = size / BLOCK * BLOCK;
                verify(key, o, a, a + BLOCK)?;
            }
            o.data.resize(size as usize, 0);
            let last = size / BLOCK;
            o.recrc(last, last + 1);
            let n = (size.div_ceil(BLOCK)) as usize;
            let old = o.crcs.len();
            o.crcs.resize(n, 0);
            if n > old {
                o.recrc(old as u64, n as u64);
            }
            Ok(())
        });
        Box::pin(async move { r })
    }

    fn punch(
        &self,
        chain: ChainId,
        key: ObjectKey,
        off: u64,
        len: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let r = self.with(|m| {
            let end = check_range(off, len)?;
            let Some(o) = m.get_mut(&key) else {
                return Ok(());
            };
            owned_by(o, key, chain)?;
            let end = (end as usize).min(o.data.len());
            if off as usize >= end {
                return Ok(());
            }
            let (a, b) = (off / BLOCK * BLOCK, (end as u64).div_ceil(BLOCK) * BLOCK);
            if off != a {
                verify(key, o, a, a + BLOCK)?;
            }
            if (end as u64) != b {
                verify(key, o, b - BLOCK, b)?;
            }
            o.data[off as usize..end].fill(0);
            o.recrc(a / BLOCK, b / BLOCK);
            Ok(())
        });
        Box::pin(async move { r })
    }

    fn sync(&self, _key: ObjectKey) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, StoreResult<()>> {
        self.with(|m| m.remove(&key));
        Box::pin(async { Ok(()) })
    }

    fn size(&self, key: ObjectKey) -> Option<u64> {
        self.with(|m| m.get(&key).map(|o| o.data.len() as u64))
    }

    fn list(&self) -> Vec<ObjectInfo> {
        self.with(|m| {
            m.iter()
                .map(|(k, o)| ObjectInfo {
                    chain: o.chain,
                    key: *k,
                    size: o.data.len() as u64,
                })
                .collect()
        })
    }

    fn data_ranges(&self, key: ObjectKey) -> BoxFuture<'_, Vec<(u64, u64)>> {
        let r = self.with(|m| {
            m.get(&key)
                .map(|o| vec![(0, o.data.len() as u64)])
                .filter(|v| v[0].1 > 0)
                .unwrap_or_default()
        });
        Box::pin(async move { r })
    }

    fn direct_io(&self) -> bool {
        false
    }

    fn space(&self) -> (u64, u64) {
        (1 << 40, 1 << 40)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirrus_types::InodeId;

    #[tokio::test]
    async fn the_gap_a_write_past_the_end_leaves_reads_as_zeros() {
        let s = MemStore::new();
        let key = ObjectKey {
            inode: InodeId(1),
            index: 0,
        };
        s.write(ChainId(1), key, 0, &[1u8; 100])
            .await
            .expect("write");
        let far = 3 * BLOCK + 5;
        s.write(ChainId(1), key, far, &[2u8; 10])
            .await
            .expect("far write");
        s.put_blocks(
            ChainId(1),
            key,
            6 * BLOCK,
            &[3u8; BLOCK as usize],
            7 * BLOCK,
        )
        .await
        .expect("far blocks");
        let r = s
            .read(key, 0, 7 * BLOCK as usize)
            .await
            .expect("holes read under a hole's crc");
        let mut want = vec![0u8; 7 * BLOCK as usize];
        want[..100].fill(1);
        want[far as usize..far as usize + 10].fill(2);
        want[6 * BLOCK as usize..].fill(3);
        assert!(r.data[..] == want[..]);
    }
}
