//! `--timeout`: how long one command waits, in all, for objects that do not open.
//!
//! Opening a segment waits (boundedly) for a header that is not ready, or retries while the
//! segment is being closed by its last user. A hostile or broken segment (its state word set to
//! closed while processes use it, a header stuck in its initial state) makes every such wait run
//! to its end. One [`Budget`] per command bounds the sum: each open may wait for what is left of
//! it, and once it is spent, an open still gets one short try, so a healthy object opens and a
//! stuck one is reported with its reason at once. `ls` over many broken objects takes about
//! `--timeout` in all, not `--timeout` for each.

use std::time::{Duration, Instant};

/// `--timeout` when none is given.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What an open gets once the budget is spent: enough for one attempt and a racing leaver's
/// moment of exclusive lock, not enough to add up over many objects.
const LAST_TRY: Duration = Duration::from_millis(20);

/// The time a command may spend waiting for objects to open.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    limit: Duration,
    /// `None`: too far in the future to represent (never reached).
    deadline: Option<Instant>,
}

impl Budget {
    /// A budget of `limit`, from now.
    pub(crate) fn new(limit: Duration) -> Budget {
        Budget {
            limit,
            deadline: Instant::now().checked_add(limit),
        }
    }

    /// The timeout for the next open: what is left of the budget, but at least a short try
    /// (and never more than the whole `--timeout`).
    pub(crate) fn open_timeout(&self) -> Duration {
        let left = self
            .deadline
            .map_or(self.limit, |d| d.saturating_duration_since(Instant::now()));
        left.max(LAST_TRY).min(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_share_one_budget() {
        let b = Budget::new(Duration::from_millis(300));
        assert!(b.open_timeout() <= Duration::from_millis(300));
        assert!(b.open_timeout() > Duration::from_millis(200));
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(b.open_timeout(), LAST_TRY, "spent: one short try");
        assert_eq!(Budget::new(Duration::ZERO).open_timeout(), Duration::ZERO);
        let huge = Budget::new(Duration::MAX);
        assert_eq!(huge.open_timeout(), Duration::MAX);
    }
}
