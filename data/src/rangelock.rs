//! An async lock over byte ranges of one object: holders of overlapping ranges run one
//! at a time, holders of disjoint ranges run in parallel. Used twice with different
//! meanings: by the chain head to order overlapping writes identically on every member,
//! and by the store so a read-modify-write of an edge block never races another write
//! of that block (or a read that would see a torn block against its checksum).

use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
pub struct RangeLock {
    held: Mutex<Vec<(u64, u64, u64)>>,
    next_id: std::sync::atomic::AtomicU64,
    changed: Notify,
}

pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

impl RangeLock {
    /// Waits until `[start, end)` overlaps no held range, then holds it.
    pub async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let end = end.max(start + 1);
        loop {
            // Register interest before checking, so a release between the check and the
            // await still wakes us.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut held = cirrus_types::sync::lock(&self.held);
                if !held.iter().any(|&(s, e, _)| s < end && start < e) {
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    held.push((start, end, id));
                    return RangeGuard { lock: self, id };
                }
            }
            notified.await;
        }
    }

    /// True when no range is held (an idle object may be closed).
    pub fn is_idle(&self) -> bool {
        self.held.lock().map(|h| h.is_empty()).unwrap_or(false)
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = cirrus_types::sync::lock(&self.lock.held);
        held.retain(|&(_, _, id)| id != self.id);
        drop(held);
        self.lock.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_ranges_wait_disjoint_ones_do_not() {
        let l = Arc::new(RangeLock::default());
        let g = l.lock(0, 4096).await;
        // Disjoint: must be granted while g is held.
        let d = tokio::time::timeout(Duration::from_secs(10), l.lock(4096, 8192))
            .await
            .expect("disjoint range granted");
        drop(d);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(100, 200).await;
        });
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "overlapping range granted while held"
        );
        drop(g);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("overlapping range granted after release")
            .unwrap();
        assert!(l.is_idle());
    }
}
