//! A seeded random POSIX exerciser: the same random sequence of system calls (create,
//! open, pwrite at random offsets and sizes, pread, truncate up and down by path and by
//! fd, fallocate PUNCH_HOLE and ZERO_RANGE, fsync, rename, link, unlink while open,
//! mkdir, rmdir, readdir, stat, the four xattr calls) runs on a Cirrus mount and on a local directory side by side; every
//! result (errno, byte count, bytes, sizes, link counts, directory listings, xattr
//! values) must be equal. A call on the mount that takes longer than the deadline is a
//! failure too. The seed is printed; the same seed replays the same sequence.
//!
//! Extreme sizes (`extremes`): now and then an offset or size is one of [`EXTREMES`]:
//! 2^40, around the data servers' 4 TiB segment boundary, 8 TiB, and at or past the
//! largest file (`cirrus_types::MAX_FILE_SIZE`). The local side is told that limit and
//! answers EFBIG for a range past it without calling the kernel (its own filesystem stops
//! elsewhere), which is what the mount must answer; sizes between 16 TiB and the limit are
//! not drawn, as the local ext4 cannot hold them (tests/it/fuse_limits.rs covers them). Files
//! that grow past [`WHOLE_READ_MAX`] are compared by windows, not read whole.
//!
//! Used by `cirrus-exercise` (the binary) and by the FUSE tests of the root package.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct ExerciseConfig {
    pub seed: u64,
    pub ops: usize,
    /// Any call on the mount that takes longer than this fails the run.
    pub deadline: Duration,
    /// Largest offset a write or truncate reaches (files stay below this plus one write).
    pub max_offset: u64,
    /// Largest single write or read.
    pub max_io: usize,
    /// Run the xattr calls (the local directory must support `user.` xattrs).
    pub xattrs: bool,
    /// Print every operation.
    pub verbose: bool,
    /// Now and then draw an offset or size from [`EXTREMES`].
    pub extremes: bool,
    /// Spawn short-lived child processes (`true`) from a second thread all through the
    /// run. Each child closes this process's close-on-exec descriptors at exec, and each
    /// such close of a file on the mount is a FUSE FLUSH (a flush and size commit) racing
    /// the calls of the run, as every program that forks while files are open causes.
    /// The chaos harness does it by spawning its faults; the CI chaos run found a size
    /// commit overtaken by a truncate that way (`tests/it/client_commit_truncate.rs`).
    pub spawn_children: bool,
}

impl ExerciseConfig {
    pub fn new(seed: u64) -> Self {
        ExerciseConfig {
            seed,
            ops: 300,
            deadline: Duration::from_secs(45),
            max_offset: 3 << 20,
            max_io: 300 << 10,
            xattrs: true,
            extremes: true,
            verbose: false,
            spawn_children: false,
        }
    }
}

/// What a finished run did.
#[derive(Clone, Debug, Default)]
pub struct ExerciseReport {
    pub ops: usize,
    /// Ops that succeeded (the rest returned the same errno on both sides).
    pub ok_ops: usize,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Slowest single call on the mount.
    pub slowest: Duration,
    pub slowest_op: String,
    /// Children spawned beside the calls (`spawn_children`).
    pub children: u64,
    /// Ops whose offset or size was one of [`EXTREMES`].
    pub extreme_ops: usize,
    /// fallocate PUNCH_HOLE/ZERO_RANGE calls that succeeded on both sides.
    pub punch_ops: usize,
    /// FIFOs, sockets and device nodes made.
    pub mknod_ops: usize,
    /// OFD lock calls that took or dropped a lock, and ones refused by another open
    /// file's lock (EAGAIN on both sides).
    pub lock_ops: usize,
    pub lock_conflicts: usize,
    /// copy_file_range calls that copied bytes on both sides.
    pub copy_ops: usize,
}

/// The `spawn_children` thread: spawns `true` until dropped, then reports how many ran.
struct Spawner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Spawner {
    fn start() -> Spawner {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            // At least one child, however short the run.
            loop {
                let ran = std::process::Command::new("true")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                if ran.is_ok() {
                    n += 1;
                }
                if s.load(Ordering::SeqCst) {
                    break;
                }
                // Paced, so the children race the calls rather than take the CPU.
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        });
        Spawner {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(&mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Shared with a watchdog thread: when the current call on the mount started (ms since
/// the run began, 0 = none in flight), and how many ops are done.
#[derive(Default, Debug)]
pub struct Progress {
    pub in_flight_since_ms: AtomicU64,
    pub done: AtomicU64,
    pub stop: AtomicBool,
}

/// One call's outcome, comparable across the two trees.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Ok,
    Errno(i32),
    Count(usize),
    Bytes(Vec<u8>),
    Stat {
        kind: u32,
        size: u64,
        nlink: u64,
        mode: u32,
        rdev: u64,
    },
    /// `F_OFD_GETLK`: the conflicting lock's type and range (`F_UNLCK`: none).
    Lock {
        typ: i16,
        start: i64,
        len: i64,
    },
    Names(Vec<String>),
    /// The open succeeded, but closing the file the slot held before failed: the error
    /// close(2) reported for the replaced descriptor.
    ReplacedCloseFailed(i32),
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::Bytes(b) => write!(f, "{} bytes (crc32-ish {:08x})", b.len(), fnv(b)),
            Out::Errno(e) => write!(f, "errno {e} ({})", std::io::Error::from_raw_os_error(*e)),
            Out::ReplacedCloseFailed(e) => write!(
                f,
                "opened, but closing the slot's previous file failed: errno {e} ({})",
                std::io::Error::from_raw_os_error(*e)
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

fn fnv(b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for x in b {
        h = (h ^ *x as u32).wrapping_mul(0x01000193);
    }
    h
}

fn errno_of(e: &std::io::Error) -> Out {
    Out::Errno(e.raw_os_error().unwrap_or(-1))
}

fn res<T>(r: std::io::Result<T>, f: impl FnOnce(T) -> Out) -> Out {
    match r {
        Ok(v) => f(v),
        Err(e) => errno_of(&e),
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("exerciser paths have no NUL")
}

/// close(2) with its result: it reports write-back errors, which File's Drop swallows.
fn close_checked(f: File) -> Out {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: fd was just released from the File, which no longer owns it.
    if unsafe { libc::close(fd) } == 0 {
        Out::Ok
    } else {
        last_err()
    }
}

fn last_err() -> Out {
    errno_of(&std::io::Error::last_os_error())
}

/// The operations. Names are relative to the tree root.
#[derive(Clone, Debug)]
enum Op {
    Create {
        slot: usize,
        path: String,
    },
    Open {
        slot: usize,
        path: String,
    },
    Close {
        slot: usize,
    },
    Write {
        slot: usize,
        off: u64,
        len: usize,
        fill: u64,
    },
    Read {
        slot: usize,
        off: u64,
        len: usize,
    },
    Ftruncate {
        slot: usize,
        size: u64,
    },
    /// fallocate `PUNCH_HOLE | KEEP_SIZE`, or `ZERO_RANGE` with or without `KEEP_SIZE`.
    Punch {
        slot: usize,
        off: u64,
        len: usize,
        zero: bool,
        keep_size: bool,
    },
    Truncate {
        path: String,
        size: u64,
    },
    /// copy_file_range from one slot's file to another's (or the same one's).
    CopyRange {
        from: usize,
        to: usize,
        off_in: u64,
        off_out: u64,
        len: usize,
    },
    Fsync {
        slot: usize,
    },
    Fstat {
        slot: usize,
    },
    Stat {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Readdir {
        path: String,
    },
    ReadWhole {
        path: String,
    },
    SetXattr {
        path: String,
        key: String,
        val: Vec<u8>,
    },
    GetXattr {
        path: String,
        key: String,
    },
    ListXattr {
        path: String,
    },
    RemoveXattr {
        path: String,
        key: String,
    },
    /// A FIFO (0) or a unix socket node (1). (Not a device node: the mount is `nodev`, so
    /// opening one there is EACCES where the local directory opens the driver.)
    Mknod {
        path: String,
        kind: u8,
    },
    /// `F_OFD_SETLK` (never the waiting form: one thread would wait on itself) on the
    /// slot's open file: `typ` 0 unlock, 1 shared, 2 exclusive. Two slots open on one file
    /// are two owners, so they conflict as two processes would.
    Lock {
        slot: usize,
        typ: u8,
        start: u64,
        len: u64,
    },
    /// Opens the file of slot `from` again into `slot` (through /proc/self/fd): a second
    /// open file of one inode, a second owner of OFD locks.
    Reopen {
        slot: usize,
        from: usize,
    },
    /// `F_OFD_GETLK` of an exclusive lock on the range.
    GetLock {
        slot: usize,
        start: u64,
        len: u64,
    },
}

/// Far offsets and sizes drawn when `extremes` is on: every one of them is either below
/// what ext4 holds locally (16 TiB) with room for a write, or past the largest file, where
/// both sides must answer EFBIG. (The largest file itself is a size the mount takes and ext4 refuses.)
pub const EXTREMES: [u64; 6] = [
    1 << 40,
    (1 << 42) - 4096 - 17,
    1 << 42,
    (1 << 43) - 1,
    cirrus_types::MAX_FILE_SIZE + 1,
    i64::MAX as u64 - 5,
];

/// Files longer than this are compared by windows (its head, its tail and around every
/// extreme offset below its size), not read whole: a sparse 8 TiB file is not read.
pub const WHOLE_READ_MAX: u64 = 64 << 20;
const WINDOW: u64 = 64 << 10;

const SLOTS: usize = 6;
const DIRS: [&str; 3] = ["", "d1", "d1/d2"];
const FILES: [&str; 5] = ["a", "b", "c", "long-file-name.dat", "e"];
const KEYS: [&str; 3] = ["user.k1", "user.k2", "user.cirrus-test"];

fn pick_dir(rng: &mut SmallRng) -> &'static str {
    DIRS[rng.gen_range(0..DIRS.len())]
}

fn pick_path(rng: &mut SmallRng) -> String {
    let d = pick_dir(rng);
    let f = FILES[rng.gen_range(0..FILES.len())];
    if d.is_empty() {
        f.to_string()
    } else {
        format!("{d}/{f}")
    }
}

/// A file or a directory name (renames and links of directories too).
fn pick_any(rng: &mut SmallRng) -> String {
    if rng.gen_bool(0.15) {
        ["d1", "d1/d2", "d3", "d1/d3"][rng.gen_range(0..4)].to_string()
    } else {
        pick_path(rng)
    }
}

/// `open`: the slots that hold a file now (the same on both sides while they agree);
/// fd operations mostly pick one of them, sometimes a closed one (EBADF both sides).
fn gen_op(rng: &mut SmallRng, cfg: &ExerciseConfig, open: &[usize]) -> Op {
    let slot = if !open.is_empty() && rng.gen_bool(0.9) {
        open[rng.gen_range(0..open.len())]
    } else {
        rng.gen_range(0..SLOTS)
    };
    let off = |rng: &mut SmallRng| -> u64 {
        if cfg.extremes && rng.gen_ratio(1, 25) {
            return EXTREMES[rng.gen_range(0..EXTREMES.len())];
        }
        // Bias toward stripe and page boundaries, where bugs live.
        match rng.gen_range(0..4) {
            0 => rng.gen_range(0..cfg.max_offset),
            1 => (rng.gen_range(0..=(cfg.max_offset >> 20))) << 20,
            2 => ((rng.gen_range(0..=(cfg.max_offset >> 20))) << 20)
                .saturating_sub(rng.gen_range(1..5000)),
            _ => rng.gen_range(0..64 << 10),
        }
    };
    let len = |rng: &mut SmallRng| -> usize {
        match rng.gen_range(0..3) {
            0 => rng.gen_range(1..4096),
            1 => rng.gen_range(1..=cfg.max_io),
            _ => rng.gen_range(1..64 << 10),
        }
    };
    let x = cfg.xattrs;
    loop {
        let lock_at = |rng: &mut SmallRng| -> (u64, u64) {
            // Few small ranges near the start (they collide), half of them to the end (0).
            (rng.gen_range(0..4) * 512, rng.gen_range(0..2) * 1024)
        };
        let op = match rng.gen_range(0..118) {
            0..=9 => Op::Create {
                slot,
                path: pick_path(rng),
            },
            10..=15 => Op::Open {
                slot,
                path: pick_path(rng),
            },
            16..=21 => Op::Close { slot },
            22..=36 => Op::Write {
                slot,
                off: off(rng),
                len: len(rng),
                fill: rng.gen(),
            },
            37..=39 => Op::Punch {
                slot,
                off: off(rng),
                len: len(rng),
                zero: rng.gen(),
                keep_size: rng.gen(),
            },
            40..=51 => Op::Read {
                slot,
                off: off(rng),
                len: len(rng),
            },
            52..=54 => Op::Ftruncate {
                slot,
                size: off(rng),
            },
            55..=57 => Op::Truncate {
                path: pick_path(rng),
                size: off(rng),
            },
            58..=59 => Op::Fsync { slot },
            60..=61 => Op::Fstat { slot },
            62..=64 => Op::Stat {
                path: pick_any(rng),
            },
            65..=69 => Op::Rename {
                from: pick_any(rng),
                to: pick_any(rng),
            },
            70..=72 => Op::Link {
                from: pick_path(rng),
                to: pick_path(rng),
            },
            73..=77 => Op::Unlink {
                path: pick_path(rng),
            },
            78..=80 => Op::Mkdir {
                path: pick_any(rng),
            },
            81..=82 => Op::Rmdir {
                path: pick_any(rng),
            },
            83..=86 => Op::Readdir {
                path: pick_dir(rng).to_string(),
            },
            87..=89 => Op::ReadWhole {
                path: pick_path(rng),
            },
            90..=92 if x => Op::SetXattr {
                path: pick_any(rng),
                key: KEYS[rng.gen_range(0..KEYS.len())].into(),
                val: (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
            },
            93..=95 if x => Op::GetXattr {
                path: pick_any(rng),
                key: KEYS[rng.gen_range(0..KEYS.len())].into(),
            },
            96..=97 if x => Op::ListXattr {
                path: pick_any(rng),
            },
            98..=99 if x => Op::RemoveXattr {
                path: pick_any(rng),
                key: KEYS[rng.gen_range(0..KEYS.len())].into(),
            },
            100..=102 => Op::Mknod {
                path: pick_path(rng),
                kind: rng.gen_range(0..2),
            },
            103..=107 => {
                let (start, len) = lock_at(rng);
                Op::Lock {
                    slot,
                    // Mostly taking locks (1 shared, 2 exclusive), sometimes dropping.
                    typ: [0, 1, 2, 2, 2][rng.gen_range(0..5)],
                    start,
                    len,
                }
            }
            108..=109 => {
                let (start, len) = lock_at(rng);
                Op::GetLock { slot, start, len }
            }
            110..=113 => Op::Reopen {
                slot: rng.gen_range(0..SLOTS),
                from: slot,
            },
            // Offsets within the tree's range only: the far ones are the writes' to test.
            114..=117 => Op::CopyRange {
                from: slot,
                to: if !open.is_empty() {
                    open[rng.gen_range(0..open.len())]
                } else {
                    rng.gen_range(0..SLOTS)
                },
                off_in: rng.gen_range(0..cfg.max_offset),
                off_out: rng.gen_range(0..cfg.max_offset),
                len: len(rng),
            },
            _ => continue,
        };
        return op;
    }
}

/// Whether `op` reaches one of [`EXTREMES`].
fn is_extreme(op: &Op) -> bool {
    match op {
        Op::Write { off, .. } | Op::Read { off, .. } | Op::Punch { off, .. } => {
            EXTREMES.contains(off)
        }
        Op::Ftruncate { size, .. } | Op::Truncate { size, .. } => EXTREMES.contains(size),
        _ => false,
    }
}

fn fill_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SmallRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    r.fill(&mut v[..]);
    v
}

/// One side: a root and its open files.
struct Side {
    root: PathBuf,
    slots: Vec<Option<File>>,
    /// The local side's stand-in for the mount's largest file: a write or size past it
    /// is EFBIG here without a call.
    limit: Option<u64>,
}

impl Side {
    fn new(root: &Path, limit: Option<u64>) -> Self {
        Side {
            root: root.to_path_buf(),
            slots: (0..SLOTS).map(|_| None).collect(),
            limit,
        }
    }

    /// EFBIG if `[off, off + len)` ends past this side's limit. A range that ends past
    /// `i64::MAX` is left to the syscall: the kernel refuses it with EINVAL before any
    /// filesystem sees it (`rw_verify_area`), on the mount as here.
    fn past_limit(&self, off: u64, len: u64) -> Option<Out> {
        let lim = self.limit?;
        let end = off.checked_add(len).filter(|e| *e <= i64::MAX as u64)?;
        (end > lim).then_some(Out::Errno(libc::EFBIG))
    }

    /// `past_limit` for a call on an open file: only a regular file has a size limit (a
    /// FIFO or socket answers the call itself, ESPIPE or EINVAL, on both sides).
    fn past_limit_of(&self, f: &File, off: u64, len: u64) -> Option<Out> {
        if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return None;
        }
        self.past_limit(off, len)
    }

    fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Puts a newly opened file in `slot`. A file the slot held is closed with a checked
    /// close(2), not dropped: its close is a FUSE FLUSH (write-back and size commit), and
    /// an error there must show up as a difference, not vanish in File's Drop.
    fn put(&mut self, slot: usize, f: File) -> Out {
        match self.slots[slot].replace(f).map(close_checked) {
            None | Some(Out::Ok) => Out::Ok,
            Some(Out::Errno(e)) => Out::ReplacedCloseFailed(e),
            Some(other) => other,
        }
    }

    fn fd(&self, slot: usize) -> Result<&File, Out> {
        self.slots[slot].as_ref().ok_or(Out::Errno(libc::EBADF))
    }

    fn apply(&mut self, op: &Op) -> Out {
        match op {
            Op::Create { slot, path } => {
                let r = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(self.p(path));
                match r {
                    Ok(f) => self.put(*slot, f),
                    Err(e) => errno_of(&e),
                }
            }
            Op::Open { slot, path } => {
                match OpenOptions::new().read(true).write(true).open(self.p(path)) {
                    Ok(f) => self.put(*slot, f),
                    Err(e) => errno_of(&e),
                }
            }
            Op::Close { slot } => match self.slots[*slot].take() {
                Some(f) => close_checked(f),
                None => Out::Errno(libc::EBADF),
            },
            Op::Write {
                slot,
                off,
                len,
                fill,
            } => match self.fd(*slot) {
                // An empty write is answered 0 by the kernel wherever it lands.
                Ok(f) => match self
                    .past_limit_of(f, *off, *len as u64)
                    .filter(|_| *len > 0)
                {
                    Some(e) => e,
                    None => res(f.write_at(&fill_bytes(*fill, *len), *off), Out::Count),
                },
                Err(e) => e,
            },
            Op::Punch {
                slot,
                off,
                len,
                zero,
                keep_size,
            } => match self.fd(*slot) {
                Ok(f) => match self.past_limit_of(f, *off, *len as u64) {
                    Some(e) => e,
                    None => {
                        use std::os::fd::AsRawFd;
                        let mode = match (zero, keep_size) {
                            (false, _) => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            (true, false) => libc::FALLOC_FL_ZERO_RANGE,
                            (true, true) => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                        };
                        // SAFETY: fallocate on a descriptor this slot owns; no memory is
                        // passed.
                        let r = unsafe {
                            libc::fallocate(f.as_raw_fd(), mode, *off as i64, *len as i64)
                        };
                        if r == 0 {
                            Out::Ok
                        } else {
                            last_err()
                        }
                    }
                },
                Err(e) => e,
            },
            Op::CopyRange {
                from,
                to,
                off_in,
                off_out,
                len,
            } => match (self.fd(*from), self.fd(*to)) {
                (Ok(a), Ok(b)) => {
                    use std::os::fd::AsRawFd;
                    let (mut i, mut o) = (*off_in as i64, *off_out as i64);
                    // SAFETY: both descriptors are owned by their slots; the offsets are
                    // locals that live across the call.
                    let n = unsafe {
                        libc::copy_file_range(a.as_raw_fd(), &mut i, b.as_raw_fd(), &mut o, *len, 0)
                    };
                    if n >= 0 {
                        Out::Count(n as usize)
                    } else {
                        last_err()
                    }
                }
                (Err(e), _) | (_, Err(e)) => e,
            },
            Op::Mknod { path, kind } => {
                let (fmt, rdev) = match kind {
                    0 => (libc::S_IFIFO, 0),
                    _ => (libc::S_IFSOCK, 0),
                };
                let c = cpath(&self.p(path));
                // SAFETY: c is a valid C string.
                if unsafe { libc::mknod(c.as_ptr(), fmt | 0o640, rdev) } == 0 {
                    Out::Ok
                } else {
                    last_err()
                }
            }
            Op::Lock {
                slot,
                typ,
                start,
                len,
            } => match self.fd(*slot) {
                Ok(f) => {
                    let typ = match typ {
                        0 => libc::F_UNLCK,
                        1 => libc::F_RDLCK,
                        _ => libc::F_WRLCK,
                    };
                    match ofd_lock(f, libc::F_OFD_SETLK, typ, *start, *len) {
                        Ok(_) => Out::Ok,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            },
            Op::Reopen { slot, from } => {
                use std::os::fd::AsRawFd;
                let path = match self.fd(*from) {
                    Ok(f) => format!("/proc/self/fd/{}", f.as_raw_fd()),
                    Err(e) => return e,
                };
                match OpenOptions::new().read(true).write(true).open(path) {
                    Ok(f) => self.put(*slot, f),
                    Err(e) => errno_of(&e),
                }
            }
            Op::GetLock { slot, start, len } => match self.fd(*slot) {
                Ok(f) => match ofd_lock(f, libc::F_OFD_GETLK, libc::F_WRLCK, *start, *len) {
                    Ok(fl) => Out::Lock {
                        typ: fl.l_type,
                        start: if fl.l_type == libc::F_UNLCK as i16 {
                            0
                        } else {
                            fl.l_start
                        },
                        len: if fl.l_type == libc::F_UNLCK as i16 {
                            0
                        } else {
                            fl.l_len
                        },
                    },
                    Err(e) => e,
                },
                Err(e) => e,
            },
            Op::Read { slot, off, len } => match self.fd(*slot) {
                Ok(f) => {
                    let mut buf = vec![0u8; *len];
                    let mut got = 0;
                    loop {
                        match f.read_at(&mut buf[got..], off + got as u64) {
                            Ok(0) => break,
                            Ok(n) => {
                                got += n;
                                if got == buf.len() {
                                    break;
                                }
                            }
                            Err(e) => return errno_of(&e),
                        }
                    }
                    buf.truncate(got);
                    Out::Bytes(buf)
                }
                Err(e) => e,
            },
            Op::Ftruncate { slot, size } => match self.fd(*slot) {
                Ok(f) => match self.past_limit_of(f, *size, 0) {
                    Some(e) => e,
                    None => res(f.set_len(*size), |_| Out::Ok),
                },
                Err(e) => e,
            },
            Op::Truncate { path, size } => {
                let c = cpath(&self.p(path));
                if let Some(e) = self.past_limit(*size, 0) {
                    // The path must resolve as it would on the mount: errors of the
                    // lookup (ENOENT, EISDIR...) come first there too.
                    return match std::fs::metadata(self.p(path)) {
                        Err(err) => errno_of(&err),
                        Ok(m) if m.is_dir() => Out::Errno(libc::EISDIR),
                        // vfs_truncate: only a regular file has a size to set.
                        Ok(m) if !m.is_file() => Out::Errno(libc::EINVAL),
                        Ok(_) => e,
                    };
                }
                // SAFETY: c is a valid C string.
                if unsafe { libc::truncate(c.as_ptr(), *size as libc::off_t) } == 0 {
                    Out::Ok
                } else {
                    last_err()
                }
            }
            Op::Fsync { slot } => match self.fd(*slot) {
                Ok(f) => res(f.sync_all(), |_| Out::Ok),
                Err(e) => e,
            },
            Op::Fstat { slot } => match self.fd(*slot) {
                Ok(f) => res(f.metadata(), stat_out),
                Err(e) => e,
            },
            Op::Stat { path } => res(std::fs::symlink_metadata(self.p(path)), stat_out),
            Op::Rename { from, to } => res(std::fs::rename(self.p(from), self.p(to)), |_| Out::Ok),
            Op::Link { from, to } => res(std::fs::hard_link(self.p(from), self.p(to)), |_| Out::Ok),
            Op::Unlink { path } => res(std::fs::remove_file(self.p(path)), |_| Out::Ok),
            Op::Mkdir { path } => res(std::fs::create_dir(self.p(path)), |_| Out::Ok),
            Op::Rmdir { path } => res(std::fs::remove_dir(self.p(path)), |_| Out::Ok),
            Op::Readdir { path } => res(list_dir(&self.p(path)), Out::Names),
            Op::ReadWhole { path } => res(read_sampled(&self.p(path)), Out::Bytes),
            Op::SetXattr { path, key, val } => {
                let (c, k) = (
                    cpath(&self.p(path)),
                    CString::new(key.as_str()).expect("key"),
                );
                // SAFETY: valid C strings and a buffer of val.len() bytes.
                let rc = unsafe {
                    libc::lsetxattr(c.as_ptr(), k.as_ptr(), val.as_ptr().cast(), val.len(), 0)
                };
                if rc == 0 {
                    Out::Ok
                } else {
                    last_err()
                }
            }
            Op::GetXattr { path, key } => {
                let (c, k) = (
                    cpath(&self.p(path)),
                    CString::new(key.as_str()).expect("key"),
                );
                let mut buf = vec![0u8; 4096];
                // SAFETY: valid C strings and a buffer of buf.len() bytes.
                let n = unsafe {
                    libc::lgetxattr(c.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0 {
                    return last_err();
                }
                buf.truncate(n as usize);
                Out::Bytes(buf)
            }
            Op::ListXattr { path } => {
                let c = cpath(&self.p(path));
                let mut buf = vec![0u8; 4096];
                // SAFETY: a valid C string and a buffer of buf.len() bytes.
                let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    return last_err();
                }
                buf.truncate(n as usize);
                let mut names: Vec<String> = buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    // Other namespaces (security., system.) differ between filesystems.
                    .filter(|s| s.starts_with("user."))
                    .collect();
                names.sort();
                Out::Names(names)
            }
            Op::RemoveXattr { path, key } => {
                let (c, k) = (
                    cpath(&self.p(path)),
                    CString::new(key.as_str()).expect("key"),
                );
                // SAFETY: valid C strings.
                if unsafe { libc::lremovexattr(c.as_ptr(), k.as_ptr()) } == 0 {
                    Out::Ok
                } else {
                    last_err()
                }
            }
        }
    }

    fn close_all(&mut self) -> Vec<(usize, Out)> {
        let open: Vec<usize> = (0..SLOTS).filter(|s| self.slots[*s].is_some()).collect();
        open.into_iter()
            .map(|s| (s, self.apply(&Op::Close { slot: s })))
            .collect()
    }
}

/// The bytes of a file as the comparisons read them: all of it up to [`WHOLE_READ_MAX`],
/// past that its head, its tail and a window around every extreme offset below its size.
/// Whether the mount answered a lock conflict where the local side found none (see the
/// retry in `run`).
fn lock_released_late(op: &Op, want: &Out, got: &Out) -> bool {
    let unlocked = libc::F_UNLCK as i16;
    match (op, want, got) {
        (Op::Lock { .. }, Out::Ok, Out::Errno(libc::EAGAIN)) => true,
        (Op::GetLock { .. }, Out::Lock { typ: w, .. }, Out::Lock { typ: g, .. }) => {
            *w == unlocked && *g != unlocked
        }
        _ => false,
    }
}

/// An OFD lock call on `f` (the answer's `flock` for `F_OFD_GETLK`).
fn ofd_lock(f: &File, cmd: i32, typ: i32, start: u64, len: u64) -> Result<libc::flock, Out> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid `flock` (plain integers).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start as i64;
    fl.l_len = len as i64;
    // SAFETY: fcntl on a descriptor this slot owns, with a valid `flock` to fill.
    if unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(fl)
    } else {
        Err(last_err())
    }
}

fn read_sampled(p: &Path) -> std::io::Result<Vec<u8>> {
    // Non-blocking: opening a FIFO to read would wait for a writer (it reads as empty).
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)?;
    let size = f.metadata()?.len();
    if size <= WHOLE_READ_MAX {
        let mut v = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut &f, &mut v)?;
        return Ok(v);
    }
    let mut at: Vec<u64> = vec![0, size - WINDOW];
    at.extend(
        EXTREMES
            .iter()
            .filter(|x| **x < size)
            .map(|x| x.saturating_sub(WINDOW / 2).min(size - WINDOW)),
    );
    at.sort();
    at.dedup();
    let mut out = Vec::new();
    for a in at {
        let mut buf = vec![0u8; WINDOW as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], a + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        out.extend_from_slice(&buf[..got]);
    }
    Ok(out)
}

fn stat_out(m: std::fs::Metadata) -> Out {
    let kind = m.mode() & libc::S_IFMT;
    Out::Stat {
        kind,
        // A directory's size is filesystem-specific.
        size: if kind == libc::S_IFDIR { 0 } else { m.size() },
        // So is a directory's link count (btrfs says 1, ext4 counts subdirectories).
        nlink: if kind == libc::S_IFDIR { 0 } else { m.nlink() },
        mode: m.mode() & 0o7777,
        rdev: m.rdev(),
    }
}

fn list_dir(p: &Path) -> std::io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let t = e.file_type()?;
        let tag = if t.is_dir() { "/" } else { "" };
        v.push(format!("{}{tag}", e.file_name().to_string_lossy()));
    }
    v.sort();
    Ok(v)
}

/// A difference between the two trees, or a call on the mount that took too long.
#[derive(Debug)]
pub struct ExerciseFailure {
    pub seed: u64,
    pub op_index: usize,
    pub message: String,
}

impl std::fmt::Display for ExerciseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} op #{}: {} (replay: cirrus-exercise --seed {} ...)",
            self.seed, self.op_index, self.message, self.seed
        )
    }
}

impl std::error::Error for ExerciseFailure {}

/// Runs `cfg.ops` random operations on `mount` and `local` (both existing, empty
/// directories), comparing every result, then compares the whole trees.
pub fn run(
    mount: &Path,
    local: &Path,
    cfg: &ExerciseConfig,
    progress: Option<Arc<Progress>>,
) -> Result<ExerciseReport, ExerciseFailure> {
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let mut m = Side::new(mount, None);
    let mut l = Side::new(local, Some(cirrus_types::MAX_FILE_SIZE));
    let mut rep = ExerciseReport::default();
    let mut spawner = cfg.spawn_children.then(Spawner::start);
    let begun = Instant::now();
    let fail = |i: usize, message: String| ExerciseFailure {
        seed: cfg.seed,
        op_index: i,
        message,
    };
    let timed = |i: usize,
                 what: &str,
                 rep: &mut ExerciseReport,
                 f: &mut dyn FnMut() -> Out|
     -> Result<Out, ExerciseFailure> {
        if let Some(p) = &progress {
            p.in_flight_since_ms
                .store(begun.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        }
        let t = Instant::now();
        let out = f();
        let took = t.elapsed();
        if let Some(p) = &progress {
            p.in_flight_since_ms.store(0, Ordering::SeqCst);
        }
        if took > rep.slowest {
            rep.slowest = took;
            rep.slowest_op = what.to_string();
        }
        if took > cfg.deadline {
            return Err(fail(
                i,
                format!(
                    "{what} on the mount took {took:?}, over the {:?} deadline",
                    cfg.deadline
                ),
            ));
        }
        Ok(out)
    };
    for i in 0..cfg.ops {
        if progress
            .as_ref()
            .is_some_and(|p| p.stop.load(Ordering::SeqCst))
        {
            break;
        }
        let open: Vec<usize> = (0..SLOTS).filter(|s| l.slots[*s].is_some()).collect();
        let op = if i < 2 {
            // Start with the directories in place, so most paths resolve.
            Op::Mkdir {
                path: DIRS[i + 1].to_string(),
            }
        } else {
            gen_op(&mut rng, cfg, &open)
        };
        let what = format!("{op:?}").chars().take(160).collect::<String>();
        if cfg.verbose {
            eprintln!("#{i} {what}");
        }
        let want = l.apply(&op);
        let mut got = timed(i, &what, &mut rep, &mut || m.apply(&op))?;
        // Meta keeps a FIFO or socket only while a name reaches it (its opens never reach
        // the filesystem, so no handle keeps it): an fstat of an open FIFO whose last name
        // is gone is ENOENT on the mount (README, Not supported yet).
        let fifo_gone = matches!(
            (&op, &want, &got),
            (
                Op::Fstat { .. },
                Out::Stat {
                    kind: libc::S_IFIFO,
                    nlink: 0,
                    ..
                },
                Out::Errno(libc::ENOENT)
            )
        );
        // A lock owned by an open file (OFD, flock) is dropped when the kernel sends that
        // file's RELEASE, which it does after the last close has returned; a local disk
        // drops it inside the close. So a conflict the local side no longer has may be a
        // release still on its way: asked again for up to 2 s (README, Semantics).
        let mut tries = 0;
        while want != got && lock_released_late(&op, &want, &got) && tries < 40 {
            std::thread::sleep(Duration::from_millis(50));
            got = timed(i, &what, &mut rep, &mut || m.apply(&op))?;
            tries += 1;
        }
        if cfg.verbose {
            eprintln!("   -> {got}");
        }
        if want != got && !fifo_gone {
            return Err(fail(
                i,
                format!("{what}: local gave {want}, mount gave {got}"),
            ));
        }
        match (&op, &got) {
            (Op::Write { .. }, Out::Count(n)) => rep.bytes_written += *n as u64,
            (Op::Punch { .. }, Out::Ok) => rep.punch_ops += 1,
            (Op::CopyRange { .. }, Out::Count(n)) if *n > 0 => rep.copy_ops += 1,
            (Op::Mknod { .. }, Out::Ok) => rep.mknod_ops += 1,
            (Op::Lock { .. }, Out::Ok) => rep.lock_ops += 1,
            (Op::Lock { .. }, Out::Errno(libc::EAGAIN)) => rep.lock_conflicts += 1,
            (Op::Read { .. } | Op::ReadWhole { .. }, Out::Bytes(b)) => {
                rep.bytes_read += b.len() as u64
            }
            _ => {}
        }
        rep.ops += 1;
        rep.extreme_ops += usize::from(is_extreme(&op));
        if !matches!(got, Out::Errno(_)) {
            rep.ok_ops += 1;
        }
        if let Some(p) = &progress {
            p.done.fetch_add(1, Ordering::SeqCst);
        }
    }
    // Close everything (flush on the mount), then compare the whole trees.
    let want = l.close_all();
    let got = timed(cfg.ops, "close all", &mut rep, &mut || {
        let v = m.close_all();
        Out::Names(v.iter().map(|(s, o)| format!("{s}:{o}")).collect())
    })?;
    let want = Out::Names(want.iter().map(|(s, o)| format!("{s}:{o}")).collect());
    if want != got {
        return Err(fail(
            cfg.ops,
            format!("final close: local {want}, mount {got}"),
        ));
    }
    // The last child is gone before the trees are compared: its FLUSHes are done.
    rep.children = spawner.as_mut().map_or(0, Spawner::finish);
    compare_trees(mount, local).map_err(|e| fail(cfg.ops, format!("final tree: {e}")))?;
    Ok(rep)
}

/// Compares two trees: names, kinds, sizes, bytes, modes. Returns the number of entries.
pub fn compare_trees(a: &Path, b: &Path) -> Result<usize, String> {
    let la = list_dir(a).map_err(|e| format!("list {}: {e}", a.display()))?;
    let lb = list_dir(b).map_err(|e| format!("list {}: {e}", b.display()))?;
    if la != lb {
        return Err(format!(
            "{} lists {la:?}, {} lists {lb:?}",
            a.display(),
            b.display()
        ));
    }
    let mut n = 0;
    for name in la {
        n += 1;
        let (pa, pb) = (
            a.join(name.trim_end_matches('/')),
            b.join(name.trim_end_matches('/')),
        );
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).map_err(|e| format!("stat {}: {e}", pa.display()))?,
            std::fs::symlink_metadata(&pb).map_err(|e| format!("stat {}: {e}", pb.display()))?,
        );
        let (sa, sb) = (stat_out(ma.clone()), stat_out(mb));
        if sa != sb {
            return Err(format!("{}: {sa} vs {}: {sb}", pa.display(), pb.display()));
        }
        if ma.is_dir() {
            n += compare_trees(&pa, &pb)?;
        } else if ma.is_file() {
            let da = read_sampled(&pa).map_err(|e| format!("read {}: {e}", pa.display()))?;
            let db = read_sampled(&pb).map_err(|e| format!("read {}: {e}", pb.display()))?;
            if da != db {
                let first = da.iter().zip(&db).position(|(x, y)| x != y);
                return Err(format!(
                    "{} and {} differ ({} vs {} bytes, first difference at {first:?})",
                    pa.display(),
                    pb.display(),
                    da.len(),
                    db.len()
                ));
            }
        } else if ma.file_type().is_symlink() {
            let (ta, tb) = (std::fs::read_link(&pa), std::fs::read_link(&pb));
            if ta.as_ref().ok() != tb.as_ref().ok() {
                return Err(format!("symlink {}: {ta:?} vs {tb:?}", pa.display()));
            }
        }
    }
    Ok(n)
}

/// Whether `dir`'s filesystem supports `user.` xattrs (tmpfs before 6.6 does not).
pub fn supports_user_xattrs(dir: &Path) -> bool {
    let p = dir.join(".xattr-probe");
    if std::fs::write(&p, b"").is_err() {
        return false;
    }
    let c = cpath(&p);
    let k = CString::new("user.probe").expect("key");
    // SAFETY: valid C strings and a 1-byte buffer.
    let rc = unsafe { libc::setxattr(c.as_ptr(), k.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
    let _ = std::fs::remove_file(&p);
    rc == 0
}

/// Parses `30s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ops_and_two_local_dirs_agree() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut cfg = ExerciseConfig::new(7);
        cfg.ops = 400;
        cfg.xattrs = supports_user_xattrs(a.path());
        cfg.spawn_children = true;
        let r = run(a.path(), b.path(), &cfg, None).unwrap();
        assert_eq!(r.ops, 400);
        assert!(r.children > 0, "no child was spawned beside the calls");
        let mut r1 = SmallRng::seed_from_u64(9);
        let mut r2 = SmallRng::seed_from_u64(9);
        for _ in 0..50 {
            assert_eq!(
                format!("{:?}", gen_op(&mut r1, &cfg, &[1, 3])),
                format!("{:?}", gen_op(&mut r2, &cfg, &[1, 3]))
            );
        }
    }

    #[test]
    fn extreme_offsets_are_drawn_and_a_range_past_the_largest_file_is_efbig_locally() {
        let cfg = ExerciseConfig::new(3);
        let mut r = SmallRng::seed_from_u64(3);
        let far: Vec<String> = (0..3000)
            .map(|_| gen_op(&mut r, &cfg, &[0, 1]))
            .filter(is_extreme)
            .map(|op| format!("{op:?}"))
            .collect();
        assert!(far.len() >= 10, "only {} extreme ops: {far:?}", far.len());
        let d = tempfile::tempdir().unwrap();
        let mut l = Side::new(d.path(), Some(cirrus_types::MAX_FILE_SIZE));
        let create = Op::Create {
            slot: 0,
            path: "a".into(),
        };
        assert_eq!(l.apply(&create), Out::Ok);
        let write_at = |off| Op::Write {
            slot: 0,
            off,
            len: 2,
            fill: 1,
        };
        let efbig = Out::Errno(libc::EFBIG);
        assert_eq!(l.apply(&write_at(cirrus_types::MAX_FILE_SIZE - 1)), efbig);
        // Past i64::MAX the kernel answers EINVAL before any filesystem (the mount too).
        let einval = Out::Errno(libc::EINVAL);
        assert_eq!(l.apply(&write_at(u64::MAX - 1)), einval);
        let across = Op::Write {
            slot: 0,
            off: i64::MAX as u64 - 5,
            len: 171_128,
            fill: 1,
        };
        assert_eq!(l.apply(&across), einval);
        assert_eq!(l.apply(&write_at(i64::MAX as u64 - 5)), efbig);
        let past = cirrus_types::MAX_FILE_SIZE + 1;
        assert_eq!(
            l.apply(&Op::Ftruncate {
                slot: 0,
                size: past
            }),
            efbig
        );
        let trunc = |path: &str| Op::Truncate {
            path: path.into(),
            size: past,
        };
        assert_eq!(l.apply(&trunc("a")), efbig);
        assert_eq!(l.apply(&trunc("none")), Out::Errno(libc::ENOENT));
        assert_eq!(l.apply(&write_at(1 << 40)), Out::Count(2));
        // A file past the whole-read size is compared by windows, not read whole.
        let sampled = read_sampled(&d.path().join("a")).unwrap();
        assert!(
            sampled.len() as u64 <= 8 * WINDOW,
            "{} bytes",
            sampled.len()
        );
        assert!(sampled.windows(2).any(|w| w[0] != 0 || w[1] != 0));
    }

    #[test]
    fn a_wrong_byte_is_caught() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("x"), b"hello").unwrap();
        std::fs::write(b.path().join("x"), b"hellO").unwrap();
        assert!(compare_trees(a.path(), b.path()).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
    }
}
