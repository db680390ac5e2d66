//! The data workload: writers overwrite fixed slots of their own files through the client
//! library (the same code the FUSE mount runs), fsync, and remember which writes were
//! acknowledged; readers read slots back while faults run.
//!
//! Every 4 KiB block written carries a stamp (file, slot, write sequence number, block
//! index) followed by filler derived from the stamp, so any block read back can be
//! attributed to exactly one write, or recognised as zeros or garbage. That is what lets
//! the `data_*` checkers state their properties without trusting the system under test.

use anyhow::{Context, Result};
use cirrus_client::{Client, ClientConfig};
use cirrus_types::InodeId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BLOCK: usize = 4096;
/// One slot is the unit of a write: 64 blocks.
pub const SLOT: usize = 256 * 1024;
/// Slots per file: 4 MiB per file, so files span several 1 MiB stripe units and chains.
pub const SLOTS: u32 = 16;

/// Where a slot lives in its file. The last slot sits at the very end of the largest
/// file the cluster takes, so every file is sparse and as long as a file can be: each
/// write there, each rebuild of the object it lands in, each scrub and each read of the
/// slots between must cost what was written, not what the size says (the
/// `bounded_memory` check and the heal bound fail the run otherwise).
pub fn slot_offset(slot: u32) -> u64 {
    if slot + 1 == SLOTS {
        cirrus_types::MAX_FILE_SIZE - SLOT as u64
    } else {
        u64::from(slot) * SLOT as u64
    }
}
const MAGIC: u32 = 0xC1_44_05_00;

/// What a block says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Zero,
    Stamp {
        file: u32,
        slot: u32,
        seq: u64,
        index: u32,
    },
    /// Neither zeros nor a valid stamp: bytes nobody wrote.
    Garbage,
}

/// The content of block `index` of write `seq` to `slot` of `file`.
pub fn block_bytes(file: u32, slot: u32, seq: u64, index: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&file.to_le_bytes());
    b[8..12].copy_from_slice(&slot.to_le_bytes());
    b[12..20].copy_from_slice(&seq.to_le_bytes());
    b[20..24].copy_from_slice(&index.to_le_bytes());
    let mut x = (u64::from(file) << 40)
        ^ (u64::from(slot) << 32)
        ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(index);
    for chunk in b[24..].chunks_mut(8) {
        // xorshift: cheap and position-dependent, so shifted or mixed blocks are caught.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    b
}

/// Decodes one block read back.
pub fn decode_block(b: &[u8]) -> Block {
    if b.iter().all(|&x| x == 0) {
        return Block::Zero;
    }
    if b.len() != BLOCK {
        return Block::Garbage;
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if u32_at(0) != MAGIC {
        return Block::Garbage;
    }
    let (file, slot, index) = (u32_at(4), u32_at(8), u32_at(20));
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[12..20]);
    let seq = u64::from_le_bytes(s);
    if block_bytes(file, slot, seq, index) != b {
        return Block::Garbage;
    }
    Block::Stamp {
        file,
        slot,
        seq,
        index,
    }
}

/// The content of a whole slot for write `seq`.
pub fn slot_bytes(file: u32, slot: u32, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SLOT);
    for i in 0..(SLOT / BLOCK) as u32 {
        v.extend_from_slice(&block_bytes(file, slot, seq, i));
    }
    v
}

/// One data event, for the history JSON and the timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataEvent {
    pub file: u32,
    /// "write" (write + fsync), "read" or "verify".
    pub kind: String,
    pub slot: u32,
    pub seq: u64,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    /// "ok", "fail" (a definite error) or "info" (timeout / unknown).
    pub outcome: String,
    pub detail: String,
}

/// Per-file record: every write issued per slot, and the highest acknowledged one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FileLedger {
    pub ino: u64,
    /// slot -> every seq ever issued to it (acked or not).
    pub issued: BTreeMap<u32, Vec<u64>>,
    /// slot -> highest seq acknowledged by a successful fsync.
    pub acked: BTreeMap<u32, u64>,
}

/// A read observation: which blocks a read of `slot` returned, and what was acked at
/// its invocation (for the "no going back" part of the check).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadObs {
    pub file: u32,
    pub slot: u32,
    pub acked_at_invoke: Option<u64>,
    pub blocks: Vec<(u32, String)>,
    /// Decoded as (kind, seq): kind 0 zero, 1 stamp, 2 garbage. Stamps of another
    /// file/slot/index are recorded as garbage with a note in `blocks`.
    pub seqs: Vec<(u8, u64)>,
    pub at_ns: u64,
    /// True for the final verification after heal.
    pub after_heal: bool,
}

pub struct DataWorkload {
    pub t0: Instant,
    pub ledgers: Mutex<BTreeMap<u32, FileLedger>>,
    pub events: Mutex<Vec<DataEvent>>,
    pub reads: Mutex<Vec<ReadObs>>,
}

fn client_config() -> ClientConfig {
    ClientConfig {
        deadline: Duration::from_secs(10),
        meta_per_try: Duration::from_secs(3),
        data_per_try: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

/// Decodes the blocks of a slot read into an observation.
pub fn observe(
    file: u32,
    slot: u32,
    data: &[u8],
    acked: Option<u64>,
    at_ns: u64,
    after_heal: bool,
) -> ReadObs {
    let mut seqs = Vec::new();
    let mut blocks = Vec::new();
    let nblocks = SLOT / BLOCK;
    for i in 0..nblocks {
        let b = data.get(i * BLOCK..(i + 1) * BLOCK);
        let d = match b {
            // Short read: past the end of the file reads as zeros (a hole).
            None => Block::Zero,
            Some(b) => decode_block(b),
        };
        let entry = match d {
            Block::Zero => (0u8, 0u64),
            Block::Stamp {
                file: f,
                slot: s,
                seq,
                index,
            } if f == file && s == slot && index == i as u32 => (1, seq),
            Block::Stamp {
                file: f,
                slot: s,
                seq,
                index,
            } => {
                blocks.push((
                    i as u32,
                    format!("stamp of file {f} slot {s} seq {seq} block {index}"),
                ));
                (2, seq)
            }
            Block::Garbage => {
                blocks.push((i as u32, "garbage".into()));
                (2, 0)
            }
        };
        seqs.push(entry);
    }
    ReadObs {
        file,
        slot,
        acked_at_invoke: acked,
        blocks,
        seqs,
        at_ns,
        after_heal,
    }
}

impl DataWorkload {
    pub fn new(t0: Instant) -> Arc<Self> {
        Arc::new(DataWorkload {
            t0,
            ledgers: Mutex::new(BTreeMap::new()),
            events: Mutex::new(Vec::new()),
            reads: Mutex::new(Vec::new()),
        })
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn event(&self, e: DataEvent) {
        if let Ok(mut v) = self.events.lock() {
            v.push(e);
        }
    }

    fn acked(&self, file: u32, slot: u32) -> Option<u64> {
        self.ledgers
            .lock()
            .ok()?
            .get(&file)?
            .acked
            .get(&slot)
            .copied()
    }

    /// One writer: creates file `file` in directory `dir`, then until `stop` writes a
    /// random slot, fsyncs, and every few writes reads a random slot back.
    pub async fn writer(
        self: Arc<Self>,
        seed: u64,
        meta_addrs: String,
        dir: u64,
        file: u32,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut seq: u64 = 0;
        let mut client: Option<Arc<Client>> = None;
        let mut handle: Option<u64> = None;
        while !*stop.borrow() {
            let c = match &client {
                Some(c) => c.clone(),
                None => match Client::connect(&meta_addrs, client_config()).await {
                    Ok(c) => {
                        client = Some(c.clone());
                        c
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let fh = match handle {
                Some(h) => h,
                None => {
                    let name = format!("f{file}");
                    let t = self.now_ns();
                    let r = match c
                        .create(InodeId(dir), name.as_bytes(), 0o644, 0, 0, false)
                        .await
                    {
                        Ok((fh, attr)) => Ok((fh, attr.ino.0)),
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok((fh, ino)) => {
                            if let Ok(mut l) = self.ledgers.lock() {
                                l.entry(file).or_default().ino = ino;
                            }
                            handle = Some(fh);
                            fh
                        }
                        Err(e) => {
                            self.event(DataEvent {
                                file,
                                kind: "open".into(),
                                slot: 0,
                                seq: 0,
                                invoke_ns: t,
                                complete_ns: self.now_ns(),
                                outcome: "fail".into(),
                                detail: e.to_string(),
                            });
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
            };
            if rng.gen_range(0..4) == 0 {
                self.read_slot(&c, fh, file, rng.gen_range(0..SLOTS), false)
                    .await;
                continue;
            }
            let slot = rng.gen_range(0..SLOTS);
            seq += 1;
            if let Ok(mut l) = self.ledgers.lock() {
                l.entry(file)
                    .or_default()
                    .issued
                    .entry(slot)
                    .or_default()
                    .push(seq);
            }
            let t = self.now_ns();
            let buf = slot_bytes(file, slot, seq);
            let r = async {
                c.write(fh, slot_offset(slot), &buf).await?;
                c.fsync(fh).await
            }
            .await;
            let outcome = match &r {
                Ok(()) => {
                    if let Ok(mut l) = self.ledgers.lock() {
                        let a = l.entry(file).or_default().acked.entry(slot).or_insert(0);
                        *a = (*a).max(seq);
                    }
                    "ok"
                }
                Err(cirrus_types::FsError::Timeout(_)) => "info",
                Err(_) => "fail",
            };
            self.event(DataEvent {
                file,
                kind: "write".into(),
                slot,
                seq,
                invoke_ns: t,
                complete_ns: self.now_ns(),
                outcome: outcome.into(),
                detail: r.err().map(|e| e.to_string()).unwrap_or_default(),
            });
            if outcome != "ok" {
                // A failed flush may leave the handle's buffer in any state: start over
                // with a fresh client and handle rather than reason about it.
                if let Some(h) = handle.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), c.release(h)).await;
                }
                client = None;
            }
        }
        if let (Some(c), Some(h)) = (client, handle) {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.release(h)).await;
        }
    }

    async fn read_slot(
        &self,
        c: &Arc<Client>,
        fh: u64,
        file: u32,
        slot: u32,
        after_heal: bool,
    ) -> bool {
        let acked = self.acked(file, slot);
        let t = self.now_ns();
        let r = c.read(fh, slot_offset(slot), SLOT as u32).await;
        let (outcome, detail) = match &r {
            Ok(data) => {
                let obs = observe(file, slot, data, acked, t, after_heal);
                if let Ok(mut v) = self.reads.lock() {
                    v.push(obs);
                }
                ("ok", String::new())
            }
            Err(cirrus_types::FsError::Timeout(e)) => ("info", e.clone()),
            Err(e) => ("fail", e.to_string()),
        };
        self.event(DataEvent {
            file,
            kind: if after_heal { "verify" } else { "read" }.into(),
            slot,
            seq: acked.unwrap_or(0),
            invoke_ns: t,
            complete_ns: self.now_ns(),
            outcome: outcome.into(),
            detail,
        });
        outcome == "ok"
    }

    /// After heal: a fresh client opens every file and reads every slot. Returns the
    /// number of slots that could not be read (each is also an event).
    pub async fn verify_all(&self, meta_addrs: &str) -> Result<usize> {
        let c = Client::connect(meta_addrs, client_config())
            .await
            .context("connect a fresh client for verification")?;
        let files: Vec<(u32, u64)> = self
            .ledgers
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, f)| f.ino != 0)
                    .map(|(k, f)| (*k, f.ino))
                    .collect()
            })
            .unwrap_or_default();
        let mut unreadable = 0;
        for (file, ino) in files {
            let (fh, _) = match c.open(InodeId(ino)).await {
                Ok(x) => x,
                Err(e) => {
                    self.event(DataEvent {
                        file,
                        kind: "verify".into(),
                        slot: 0,
                        seq: 0,
                        invoke_ns: self.now_ns(),
                        complete_ns: self.now_ns(),
                        outcome: "fail".into(),
                        detail: format!("open: {e}"),
                    });
                    unreadable += SLOTS as usize;
                    continue;
                }
            };
            for slot in 0..SLOTS {
                if !self.read_slot(&c, fh, file, slot, true).await {
                    unreadable += 1;
                }
            }
            let _ = c.release(fh).await;
        }
        Ok(unreadable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_do_not_overlap_and_the_last_ends_at_the_largest_file_size() {
        let offs: Vec<u64> = (0..SLOTS).map(slot_offset).collect();
        for w in offs.windows(2) {
            assert!(w[0] + SLOT as u64 <= w[1], "{offs:?}");
        }
        assert_eq!(
            slot_offset(SLOTS - 1) + SLOT as u64,
            cirrus_types::MAX_FILE_SIZE
        );
        assert_eq!(slot_offset(0), 0);
    }

    #[test]
    fn blocks_decode_to_their_stamp_and_damage_is_garbage() {
        let b = block_bytes(3, 5, 42, 7);
        assert_eq!(
            decode_block(&b),
            Block::Stamp {
                file: 3,
                slot: 5,
                seq: 42,
                index: 7
            }
        );
        assert_eq!(decode_block(&[0u8; BLOCK]), Block::Zero);
        let mut bad = b.clone();
        bad[1000] ^= 1;
        assert_eq!(decode_block(&bad), Block::Garbage);
    }

    #[test]
    fn observation_flags_misplaced_blocks() {
        let mut data = slot_bytes(1, 2, 9);
        // Block 3 replaced by block 3 of another slot: misdirected write.
        data[3 * BLOCK..4 * BLOCK].copy_from_slice(&block_bytes(1, 4, 9, 3));
        let o = observe(1, 2, &data, Some(9), 0, true);
        assert_eq!(o.seqs[0], (1, 9));
        assert_eq!(o.seqs[3].0, 2);
        assert_eq!(o.blocks.len(), 1);
    }
}
