//! The io_uring driver: one thread owns one ring and turns requests arriving on a channel
//! into SQEs, so many reads and writes are in flight at once while the async side only
//! awaits a oneshot. The thread sleeps in `io_uring_enter`; an eventfd that the ring
//! polls wakes it when a new request is queued, so a request never waits for an unrelated
//! completion.
//!
//! Buffers are owned by the request for the whole time the kernel may touch them: the
//! caller moves an [`AlignedBuf`] (or, for writes, an aligned `Bytes`) in and gets it
//! back with the result. A caller that stops waiting (its future dropped) leaves the
//! buffer with the driver, which frees it after the completion, so the kernel never
//! touches freed memory.

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Alignment of every buffer: the O_DIRECT requirement of 4 KiB-sector devices.
pub const ALIGN: usize = 4096;

/// A 4 KiB-aligned heap buffer whose length may be any value (capacity is at least the
/// length rounded up to `ALIGN`). Its first `len` bytes are always initialised: the
/// constructors either zero them or fill them, a read fills what the kernel left out with
/// zeros, and as a `BufMut` (a bulk write payload read from a socket) it grows only over
/// bytes just written.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zero-filled buffer of `len` bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let cap = len.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("aligned layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap }
    }

    /// Allocates without initialising; every caller initialises `[0, len)` before the
    /// buffer is handed out (a profile of 1 MiB writes showed 8 % of the data server in
    /// zeroing buffers that were overwritten right after).
    fn alloc_uninit(len: usize) -> AlignedBuf {
        let cap = len.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("aligned layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap }
    }

    /// An empty buffer with room for `cap` bytes, to be filled as a `BufMut`.
    pub fn with_capacity(cap: usize) -> AlignedBuf {
        let mut b = AlignedBuf::alloc_uninit(cap);
        b.len = 0;
        b
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        AlignedBuf::with_copy_at(data.len(), 0, data)
    }

    /// A `len`-byte buffer holding `data` at `at` and zeros elsewhere; only the bytes
    /// outside `data` are zeroed. Panics when `data` does not fit.
    pub fn with_copy_at(len: usize, at: usize, data: &[u8]) -> AlignedBuf {
        let end = at.checked_add(data.len()).expect("offset overflow");
        assert!(
            end <= len,
            "{} bytes at {at} do not fit in {len}",
            data.len()
        );
        let b = AlignedBuf::alloc_uninit(len);
        let p = b.ptr.as_ptr();
        // SAFETY: [0, len) is inside the allocation; each byte is written exactly once
        // (zeros before `at` and after `end`, `data` in between) before any read.
        unsafe {
            std::ptr::write_bytes(p, 0, at);
            std::ptr::copy_nonoverlapping(data.as_ptr(), p.add(at), data.len());
            std::ptr::write_bytes(p.add(end), 0, len - end);
        }
        b
    }

    /// Zeroes `[from, len)` of a buffer whose `[0, from)` is initialised.
    fn zero_from(&mut self, from: usize) {
        let from = from.min(self.len);
        // SAFETY: [from, len) is inside the allocation.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(from), 0, self.len - from) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: `chunk_mut` is exactly the allocation past the initialised prefix, and
// `advance_mut` only counts bytes the caller has written there.
unsafe impl bytes::BufMut for AlignedBuf {
    fn remaining_mut(&self) -> usize {
        self.cap - self.len
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(
            cnt <= self.cap - self.len,
            "advance past the buffer's capacity"
        );
        self.len += cnt;
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        // SAFETY: [len, cap) lies inside the allocation and is not aliased.
        unsafe {
            bytes::buf::UninitSlice::from_raw_parts_mut(
                self.ptr.as_ptr().add(self.len),
                self.cap - self.len,
            )
        }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("aligned layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// The memory a write comes from.
enum WriteBuf {
    Owned(AlignedBuf),
    /// Bytes at an `ALIGN`-aligned address (checked by `write_shared`).
    Shared(Bytes),
}

impl WriteBuf {
    fn ptr_len(&self) -> (*const u8, usize) {
        match self {
            WriteBuf::Owned(b) => (b.ptr.as_ptr() as *const u8, b.len),
            WriteBuf::Shared(b) => (b.as_ptr(), b.len()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            WriteBuf::Owned(b) => b.as_slice(),
            WriteBuf::Shared(b) => b,
        }
    }
}

enum Op {
    Read { off: u64, buf: AlignedBuf },
    Write { off: u64, buf: WriteBuf },
    Fsync { datasync: bool },
    Fallocate { off: u64, len: u64, mode: i32 },
}

struct Req {
    /// Keeps the descriptor open until the kernel is done with it.
    file: Arc<File>,
    op: Op,
    reply: oneshot::Sender<(io::Result<usize>, Option<Buffer>)>,
}

/// A buffer handed back with a completion.
enum Buffer {
    Read(AlignedBuf),
    Write(WriteBuf),
}

/// Handle to a ring driver thread. Cheap to share behind an `Arc`.
pub struct Ring {
    tx: Option<mpsc::Sender<Req>>,
    wake: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const WAKE_TOKEN: u64 = u64::MAX;

impl Ring {
    /// Starts a driver thread with `depth` requests in flight at most.
    pub fn new(depth: u32) -> io::Result<Ring> {
        let ring = IoUring::new(depth.next_power_of_two().max(8))?;
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor we own.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let (tx, rx) = mpsc::channel();
        let w = wake.clone();
        let thread = std::thread::Builder::new()
            .name("cirrus-uring".into())
            .spawn(move || drive(ring, rx, w, depth as usize))?;
        Ok(Ring {
            tx: Some(tx),
            wake,
            thread: Some(thread),
        })
    }

    fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }

    async fn submit(&self, file: &Arc<File>, op: Op) -> (io::Result<usize>, Option<Buffer>) {
        let (reply, rx) = oneshot::channel();
        let req = Req {
            file: file.clone(),
            op,
            reply,
        };
        let sent = match &self.tx {
            Some(tx) => tx.send(req).is_ok(),
            None => false,
        };
        if !sent {
            return (Err(io::Error::other("io_uring driver stopped")), None);
        }
        self.notify();
        match rx.await {
            Ok(r) => r,
            Err(_) => (Err(io::Error::other("io_uring driver stopped")), None),
        }
    }

    /// Reads into `buf` at `off` until it is full or the file ends; returns the byte
    /// count read (bytes past the end stay zero).
    pub async fn read_at(
        &self,
        file: &Arc<File>,
        off: u64,
        buf: AlignedBuf,
    ) -> (io::Result<usize>, AlignedBuf) {
        self.read_into(file, off, buf).await
    }

    /// Reads `len` bytes at `off` into a fresh buffer that is not zeroed first (the
    /// kernel fills it); bytes past the end of the file, or all of it on an error, read
    /// as zeros. Returns the byte count read.
    pub async fn read_new(
        &self,
        file: &Arc<File>,
        off: u64,
        len: usize,
    ) -> (io::Result<usize>, AlignedBuf) {
        self.read_into(file, off, AlignedBuf::alloc_uninit(len))
            .await
    }

    /// The read behind both: whatever the kernel did not fill is zeroed, so a buffer
    /// handed back is always initialised.
    async fn read_into(
        &self,
        file: &Arc<File>,
        off: u64,
        buf: AlignedBuf,
    ) -> (io::Result<usize>, AlignedBuf) {
        let want = buf.len();
        let (r, b) = self.submit(file, Op::Read { off, buf }).await;
        let Some(Buffer::Read(mut buf)) = b else {
            return (
                Err(r.err().unwrap_or_else(|| io::Error::other("lost buffer"))),
                AlignedBuf::zeroed(want),
            );
        };
        match r {
            // A short read means end of file for regular files; the rest reads as zero.
            Ok(n) => {
                let n = n.min(want);
                buf.zero_from(n);
                (Ok(n), buf)
            }
            Err(e) => {
                buf.zero_from(0);
                (Err(e), buf)
            }
        }
    }

    /// Writes all of `buf` at `off`.
    pub async fn write_at(&self, file: &Arc<File>, off: u64, buf: AlignedBuf) -> io::Result<()> {
        self.write_buf(file, off, WriteBuf::Owned(buf)).await
    }

    /// Writes all of `data` at `off` from where it lies (no copy). `data` must start at an
    /// `ALIGN`-aligned address (O_DIRECT); otherwise this is refused with EINVAL.
    pub async fn write_shared(&self, file: &Arc<File>, off: u64, data: Bytes) -> io::Result<()> {
        if !(data.as_ptr() as usize).is_multiple_of(ALIGN) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.write_buf(file, off, WriteBuf::Shared(data)).await
    }

    async fn write_buf(&self, file: &Arc<File>, off: u64, buf: WriteBuf) -> io::Result<()> {
        let total = buf.ptr_len().1;
        let (r, b) = self.submit(file, Op::Write { off, buf }).await;
        let n = r?;
        if n == total {
            return Ok(());
        }
        // Short writes are rare (signals, some filesystems); finish the rest, keeping
        // the remainder aligned by restarting from an aligned copy.
        let Some(Buffer::Write(buf)) = b else {
            return Err(io::Error::other("lost buffer"));
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
        }
        let rest = AlignedBuf::from_slice(&buf.as_slice()[n..]);
        Box::pin(self.write_at(file, off + n as u64, rest)).await
    }

    /// fdatasync (or fsync) of `file`.
    pub async fn sync(&self, file: &Arc<File>, datasync: bool) -> io::Result<()> {
        self.submit(file, Op::Fsync { datasync })
            .await
            .0
            .map(|_| ())
    }

    /// fallocate(2) of `file`.
    pub async fn fallocate(
        &self,
        file: &Arc<File>,
        off: u64,
        len: u64,
        mode: i32,
    ) -> io::Result<()> {
        self.submit(file, Op::Fallocate { off, len, mode })
            .await
            .0
            .map(|_| ())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closing the channel and waking the thread makes it finish in-flight requests
        // and exit.
        self.tx = None;
        self.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn drive(mut ring: IoUring, rx: mpsc::Receiver<Req>, wake: Arc<OwnedFd>, depth: usize) {
    let mut slots: Vec<Option<Req>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut inflight = 0usize;
    let mut closing = false;
    let mut poll_armed = false;
    loop {
        if !poll_armed && !closing {
            let e = opcode::PollAdd::new(types::Fd(wake.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(WAKE_TOKEN);
            // SAFETY: the eventfd outlives the ring (held by this thread's Arc).
            if unsafe { ring.submission().push(&e) }.is_ok() {
                poll_armed = true;
            }
        }
        while inflight < depth && !closing {
            match rx.try_recv() {
                Ok(req) => {
                    let idx = match free.pop() {
                        Some(i) => i,
                        None => {
                            slots.push(None);
                            slots.len() - 1
                        }
                    };
                    let entry = build_sqe(&req, idx as u64);
                    slots[idx] = Some(req);
                    // SAFETY: the buffer and descriptor live in `slots[idx]` until the
                    // completion for `idx` is reaped.
                    while unsafe { ring.submission().push(&entry) }.is_err() {
                        if let Err(e) = ring.submit() {
                            tracing::error!(err = %e, "io_uring submit");
                        }
                    }
                    inflight += 1;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => closing = true,
            }
        }
        if closing && inflight == 0 {
            return;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                tracing::error!(err = %e, "io_uring wait");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in done {
            if ud == WAKE_TOKEN {
                poll_armed = false;
                let mut v: u64 = 0;
                // SAFETY: reads 8 bytes into a valid u64 from our nonblocking eventfd.
                unsafe {
                    libc::read(wake.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8);
                }
                continue;
            }
            let idx = ud as usize;
            let Some(req) = slots.get_mut(idx).and_then(Option::take) else {
                continue;
            };
            free.push(idx);
            inflight -= 1;
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            };
            let Req { file, op, reply } = req;
            // The kernel is done with the descriptor: let go of it before the caller
            // wakes, so a caller that closes its file sees it closed when the call returns.
            drop(file);
            let buf = match op {
                Op::Read { buf, .. } => Some(Buffer::Read(buf)),
                Op::Write { buf, .. } => Some(Buffer::Write(buf)),
                _ => None,
            };
            let _ = reply.send((result, buf));
        }
    }
}

fn build_sqe(req: &Req, ud: u64) -> io_uring::squeue::Entry {
    let fd = types::Fd(req.file.as_raw_fd() as RawFd);
    match &req.op {
        Op::Read { off, buf } => opcode::Read::new(fd, buf.ptr.as_ptr(), buf.len() as u32)
            .offset(*off)
            .build(),
        Op::Write { off, buf } => {
            let (ptr, len) = buf.ptr_len();
            opcode::Write::new(fd, ptr, len as u32).offset(*off).build()
        }
        Op::Fsync { datasync } => {
            let flags = if *datasync {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            opcode::Fsync::new(fd).flags(flags).build()
        }
        Op::Fallocate { off, len, mode } => opcode::Fallocate::new(fd, *len)
            .offset(*off)
            .mode(*mode)
            .build(),
    }
    .user_data(ud)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_writes_in_flight_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(File::create_new(dir.path().join("x")).unwrap());
        let ring = Ring::new(32).unwrap();
        let mut futs = Vec::new();
        for i in 0..64u64 {
            let buf = AlignedBuf::from_slice(&vec![i as u8; 8192]);
            futs.push(ring.write_at(&f, i * 8192, buf));
        }
        for r in futures::future::join_all(futs).await {
            r.unwrap();
        }
        ring.sync(&f, true).await.unwrap();
        let f2 = Arc::new(File::open(dir.path().join("x")).unwrap());
        let (n, buf) = ring
            .read_at(&f2, 63 * 8192, AlignedBuf::zeroed(16384))
            .await;
        assert_eq!(n.unwrap(), 8192, "short read at end of file");
        assert!(buf.as_slice()[..8192].iter().all(|&b| b == 63));
        assert!(buf.as_slice()[8192..].iter().all(|&b| b == 0));
    }
}
