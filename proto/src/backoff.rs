//! The one backoff of every retry loop (the meta group's leader following, the data
//! path's chain retries): 20 ms doubling up to a ceiling, plus up to 20 ms of jitter so
//! that clients retrying the same failure do not all arrive at once, and never past the
//! time the caller has left.

use std::time::Duration;

/// The first pause.
pub const FIRST: Duration = Duration::from_millis(20);
/// The most jitter added to a pause.
const JITTER_MS: u64 = 20;

#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Pauses from [`FIRST`], doubling up to `max`.
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: FIRST.min(max),
            max,
        }
    }

    /// The pause before the next attempt (at most `remaining`); the one after doubles.
    pub fn pause(&mut self, remaining: Duration) -> Duration {
        let jitter = Duration::from_millis(rand::random::<u64>() % JITTER_MS);
        let p = (self.next + jitter).min(remaining);
        self.next = (self.next * 2).min(self.max);
        p
    }

    /// Sleeps for [`Backoff::pause`].
    pub async fn sleep(&mut self, remaining: Duration) {
        tokio::time::sleep(self.pause(remaining)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_ceiling_with_bounded_jitter_and_never_pass_the_time_left() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let long = Duration::from_secs(60);
        let mut base = FIRST;
        for _ in 0..10 {
            let p = b.pause(long);
            assert!(
                p >= base && p < base + Duration::from_millis(JITTER_MS),
                "{p:?} for {base:?}"
            );
            base = (base * 2).min(Duration::from_millis(500));
        }
        assert_eq!(b.pause(Duration::from_millis(3)), Duration::from_millis(3));
        assert_eq!(b.pause(Duration::ZERO), Duration::ZERO);
    }
}
