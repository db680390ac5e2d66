//! A one-line progress bar on stderr: steps done of the planned total, elapsed time, and
//! what runs now. Plain text (no terminal control beyond `\r`), so logs stay readable.

use std::io::Write;
use std::time::Instant;

pub struct Progress {
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Progress {
            total: total.max(1),
            done: 0,
            start: Instant::now(),
        }
    }

    /// Announces the next step.
    pub fn step(&mut self, what: &str) {
        self.done = (self.done + 1).min(self.total);
        eprintln!("{}", self.line(what));
        let _ = std::io::stderr().flush();
    }

    /// The bar for the current state, e.g. `[#####.....]  5/10  0:42  gluster R=1`.
    pub fn line(&self, what: &str) -> String {
        const WIDTH: usize = 24;
        let filled = WIDTH * self.done / self.total;
        let secs = self.start.elapsed().as_secs();
        format!(
            "[{}{}] {:>3}/{:<3} {:>3}:{:02}  {what}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.done,
            self.total,
            secs / 60,
            secs % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_in_proportion_and_never_overflows() {
        let mut p = Progress::new(4);
        p.step("a");
        p.step("b");
        assert!(p
            .line("x")
            .starts_with(&format!("[{}{}]", "#".repeat(12), ".".repeat(12))));
        for _ in 0..10 {
            p.step("c");
        }
        assert!(p.line("x").starts_with(&format!("[{}]", "#".repeat(24))));
        assert!(p.line("x").contains("4/4"));
    }
}
