//! Unit tests of `Client` on the in-memory fakes (`crate::testing`): the races the chaos
//! harness found, each set up by pausing one meta call while the test does the other
//! thing, and checked on what a reader or another mount sees.

use super::Client;
use crate::meta::SetAttr;
use crate::testing::{Cluster, When};
use cirrus_types::{FsError, InodeId};
use std::sync::Arc;

/// Lets every other task of this (current-thread) runtime run as far as it can: the fakes
/// never sleep, so a task that is not waiting on a lock or a pause finishes meanwhile.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

async fn create(m: &Arc<Client>, name: &[u8]) -> (u64, InodeId) {
    let (fh, a) = m
        .create(InodeId::ROOT, name, 0o644, 0, 0, true)
        .await
        .expect("create");
    (fh, a.ino)
}

fn truncate_to(size: u64) -> SetAttr {
    SetAttr {
        size: Some(size),
        ..SetAttr::default()
    }
}

// (a) A truncate racing the size commit of buffered writes.

#[tokio::test]
async fn a_truncate_racing_the_commit_of_earlier_writes_leaves_the_truncated_size() {
    let c = Cluster::new();
    let m = c.mount();
    let (fh, ino) = create(&m, b"f").await;
    m.write(fh, 0, &bytes(1, 8192)).await.expect("write");

    // A close (another process's FLUSH) has sent the bytes and read the size 8192; its
    // commit has not reached meta yet when this process truncates.
    let mut commit = c.meta.pause("commit_write", When::Before);
    let closing = tokio::spawn({
        let m = m.clone();
        async move { m.flush(fh).await }
    });
    commit.reached().await;
    let truncating = tokio::spawn({
        let m = m.clone();
        async move { m.setattr(ino, truncate_to(0), Some(fh)).await }
    });
    settle().await;
    commit.go();
    closing.await.expect("join").expect("close");
    let t = truncating.await.expect("join").expect("truncate");

    // POSIX: the truncate came after the write, so the file is empty. Meta keeps the
    // larger of its size and a commit's: a commit reaching meta after the truncate grew
    // the file back to 8192.
    assert_eq!(t.size, 0);
    assert_eq!(c.meta.size(ino), Some(0), "meta's size after both");
    assert_eq!(m.getattr(ino).await.expect("getattr").size, 0);
    assert!(m.read(fh, 0, 8192).await.expect("read").is_empty());
}

#[tokio::test]
async fn a_truncate_below_buffered_writes_cuts_them_and_the_next_close_commits_the_cut() {
    let c = Cluster::new();
    let m = c.mount();
    let (fh, ino) = create(&m, b"f").await;
    let data = bytes(3, 8192);
    m.write(fh, 0, &data).await.expect("write");
    // Nothing flushed yet: the truncate sends the buffer first, then cuts it.
    m.setattr(ino, truncate_to(4096), Some(fh))
        .await
        .expect("truncate");
    m.flush(fh).await.expect("close");

    assert_eq!(c.meta.size(ino), Some(4096));
    assert_eq!(
        c.data.object(ino, 0).len(),
        4096,
        "the data servers hold no byte past the cut"
    );
    assert_eq!(
        m.read(fh, 0, 8192).await.expect("read").as_ref(),
        &data[..4096]
    );
    let other = c.mount();
    let (fh2, a) = other.open(ino).await.expect("open on another mount");
    assert_eq!(a.size, 4096);
    assert_eq!(
        other.read(fh2, 0, 8192).await.expect("read").as_ref(),
        &data[..4096]
    );
}

// (b) Reopening a file after a close whose flush or commit failed.

/// Writes `first` and closes it cleanly, writes `more`, closes with `break_it` armed
/// (the close must fail), heals, reopens in the same mount and on another one: both see
/// every byte, and the reopened handle's close commits them.
async fn reopen_after_a_failed_close(break_it: impl Fn(&Cluster), heal: impl Fn(&Cluster)) {
    let c = Cluster::new();
    let m = c.mount();
    let (fh, ino) = create(&m, b"f").await;
    let first = bytes(1, 10_000);
    m.write(fh, 0, &first).await.expect("write");
    m.flush(fh).await.expect("first close");
    let more = bytes(2, 30_000);
    m.write(fh, 10_000, &more).await.expect("write");

    break_it(&c);
    let closed = m.release(fh).await;
    assert!(closed.is_err(), "the failed close is reported: {closed:?}");
    heal(&c);

    let want = [first, more].concat();
    let (fh2, a) = m.open(ino).await.expect("reopen");
    assert_eq!(a.size, want.len() as u64, "size at the reopen");
    assert_eq!(
        m.read(fh2, 0, want.len() as u32).await.expect("read"),
        want,
        "the reopen reads the bytes the failed close kept"
    );
    m.release(fh2).await.expect("close after healing");

    assert_eq!(c.meta.size(ino), Some(want.len() as u64));
    let other = c.mount();
    let (fh3, a) = other.open(ino).await.expect("open on another mount");
    assert_eq!(a.size, want.len() as u64);
    assert_eq!(
        other.read(fh3, 0, want.len() as u32).await.expect("read"),
        want
    );
}

#[tokio::test]
async fn reopen_after_a_close_whose_flush_failed_sees_the_kept_bytes_and_commits_them() {
    reopen_after_a_failed_close(
        |c| {
            c.data
                .fail("write", FsError::Unavailable("chain down".into()))
        },
        |c| c.data.heal("write"),
    )
    .await;
}

#[tokio::test]
async fn reopen_after_a_close_whose_commit_failed_sees_the_written_size_and_commits_it() {
    reopen_after_a_failed_close(
        |c| {
            c.meta
                .fail("commit_write", FsError::Unavailable("no leader".into()))
        },
        |c| c.meta.heal("commit_write"),
    )
    .await;
}

// (c) A release trailing an unlink.

#[tokio::test]
async fn an_unlinked_file_stays_readable_until_its_last_close_and_its_release_frees_it() {
    let c = Cluster::new();
    let m = c.mount();
    let (fh, ino) = create(&m, b"f").await;
    let data = bytes(5, 5000);
    m.write(fh, 0, &data).await.expect("write");
    m.flush(fh).await.expect("flush");
    m.unlink(InodeId::ROOT, b"f").await.expect("unlink");

    assert_eq!(m.read(fh, 0, 5000).await.expect("read"), data);
    assert_eq!(m.getattr(ino).await.expect("getattr").nlink, 0);
    // A reopen through the open file (/proc/self/fd) goes on, as on a local disk.
    let (fh2, _) = m
        .open(ino)
        .await
        .expect("reopen of an unlinked file held open");
    assert_eq!(m.read(fh2, 0, 5000).await.expect("read"), data);
    m.close(fh2).await.expect("close");

    let releasing = c.meta.pause("release_many", When::Before);
    m.close(fh).await.expect("last close");
    settle().await;
    assert!(
        c.meta.size(ino).is_some(),
        "the release trails the close: meta still holds the inode"
    );
    releasing.go();
    m.drain_releases().await;
    assert_eq!(c.meta.size(ino), None, "released: meta forgot the inode");
    assert_eq!(c.meta.open_handles(), 0);
}

#[tokio::test]
async fn an_open_elsewhere_of_a_file_unlinked_while_its_release_trails_is_estale() {
    let c = Cluster::new();
    let (a, b) = (c.mount(), c.mount());
    let (fh, ino) = create(&a, b"f").await;
    a.write(fh, 0, &bytes(7, 100)).await.expect("write");
    let releasing = c.meta.pause("release_many", When::Before);
    a.close(fh).await.expect("close");
    // Mount b's kernel still holds the name's inode.
    assert_eq!(
        b.lookup(InodeId::ROOT, b"f").await.expect("lookup").ino,
        ino
    );
    a.unlink(InodeId::ROOT, b"f").await.expect("unlink");
    assert!(c.meta.size(ino).is_some(), "a's queued release keeps it");

    // The kernel walks the path again on ESTALE and finds no name.
    assert!(
        matches!(b.open(ino).await, Err(FsError::StaleHandle)),
        "an open of an inode no name reaches"
    );
    assert!(matches!(
        b.lookup(InodeId::ROOT, b"f").await,
        Err(FsError::NotFound)
    ));
    assert_eq!(c.meta.open_handles(), 1, "b's refused open left no handle");
    releasing.go();
    a.drain_releases().await;
    assert_eq!(c.meta.size(ino), None);
    assert!(matches!(b.open(ino).await, Err(FsError::StaleHandle)));
}

// (d) The per-inode size stamp: a meta reply fetched across a local size change.

#[tokio::test]
async fn a_lookup_answered_before_a_local_write_and_commit_keeps_the_local_size() {
    let c = Cluster::new();
    let m = c.mount();
    let (fh, ino) = create(&m, b"f").await;
    let mut answer = c.meta.pause("lookup", When::After);
    let looking = tokio::spawn({
        let m = m.clone();
        async move { m.lookup(InodeId::ROOT, b"f").await }
    });
    // Meta answered with size 0; the reply is on its way while this mount writes and
    // commits 100 bytes.
    answer.reached().await;
    let data = bytes(9, 100);
    m.write(fh, 0, &data).await.expect("write");
    m.flush(fh).await.expect("flush");
    answer.go();
    let a = looking.await.expect("join").expect("lookup");

    assert_eq!(a.ino, ino);
    assert_eq!(a.size, 100, "the kernel is told the local size");
    assert_eq!(m.read(fh, 0, 200).await.expect("read"), data);
}

#[tokio::test]
async fn a_lookup_answered_across_a_change_of_another_inode_takes_meta_size() {
    let c = Cluster::new();
    let (a, b) = (c.mount(), c.mount());
    let (fh, ino) = create(&a, b"f").await;
    let (gh, _) = create(&a, b"g").await;
    // Another mount extends f.
    let (bfh, _) = b.open(ino).await.expect("open on b");
    let data = bytes(11, 50);
    b.write(bfh, 0, &data).await.expect("write on b");
    b.flush(bfh).await.expect("close on b");

    let mut answer = c.meta.pause("lookup", When::After);
    let looking = tokio::spawn({
        let a = a.clone();
        async move { a.lookup(InodeId::ROOT, b"f").await }
    });
    answer.reached().await;
    // A change of g while f's reply is in flight says nothing about f.
    a.write(gh, 0, &bytes(1, 10)).await.expect("write g");
    a.flush(gh).await.expect("flush g");
    answer.go();
    let got = looking.await.expect("join").expect("lookup");

    assert_eq!(got.size, 50);
    assert_eq!(a.read(fh, 0, 100).await.expect("read"), data);
}

#[tokio::test]
async fn a_lock_whose_size_check_crossed_a_local_commit_asks_meta_again() {
    let c = Cluster::new();
    let m = c.mount();
    let (fh, ino) = create(&m, b"f").await;
    let mut answer = c.meta.pause("getattr", When::After);
    let locking = tokio::spawn({
        let m = m.clone();
        async move {
            m.setlk(
                fh,
                1,
                Some(cirrus_types::LockKind::Write),
                0,
                u64::MAX,
                1,
                None,
            )
            .await
        }
    });
    // The lock is granted and meta's size (0) is on its way back while another process
    // of this mount writes and commits 100 bytes (a write needs no lock).
    answer.reached().await;
    let data = bytes(13, 100);
    m.write(fh, 0, &data).await.expect("write");
    m.flush(fh).await.expect("flush");
    answer.go();
    locking.await.expect("join").expect("lock");

    assert_eq!(
        c.meta.calls("getattr"),
        2,
        "the crossed answer is asked again"
    );
    assert_eq!(m.getattr(ino).await.expect("getattr").size, 100);
    assert_eq!(m.read(fh, 0, 200).await.expect("read"), data);
}

#[tokio::test]
async fn an_open_answered_before_this_mounts_commit_landed_keeps_the_extended_size() {
    let c = Cluster::new();
    let m = c.mount();
    let (fh, ino) = create(&m, b"f").await;
    let data = bytes(5, 300);
    m.write(fh, 0, &data).await.expect("write");

    // A close of fh is committing the size 300; meta has not applied it when it answers
    // another open of the file (size 0), and that answer arrives after the commit.
    let mut commit = c.meta.pause("commit_write", When::Before);
    let closing = tokio::spawn({
        let m = m.clone();
        async move { m.flush(fh).await }
    });
    commit.reached().await;
    let mut answer = c.meta.pause("open", When::After);
    let opening = tokio::spawn({
        let m = m.clone();
        async move { m.open(ino).await }
    });
    answer.reached().await;
    commit.go();
    closing.await.expect("join").expect("close");
    answer.go();
    let (gh, a) = opening.await.expect("join").expect("open");

    assert_eq!(a.size, 300, "the kernel is told the committed size");
    assert_eq!(m.getattr(ino).await.expect("getattr").size, 300);
    assert_eq!(m.read(gh, 0, 400).await.expect("read"), data);
    assert_eq!(c.meta.size(ino), Some(300), "meta's size");
}
