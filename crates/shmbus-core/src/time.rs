//! Deadlines for bounded waits.
#![deny(unsafe_code)]

use std::time::{Duration, Instant};

/// A point in time after which a wait gives up, or no such point (`None`: wait forever).
///
/// # Examples
///
/// ```
/// use shmbus_core::time::Deadline;
/// use std::time::Duration;
///
/// let d = Deadline::after(Some(Duration::from_millis(5)));
/// assert!(!d.expired());
/// assert!(d.remaining().unwrap() <= Duration::from_millis(5));
/// assert!(Deadline::never().remaining().is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// A deadline `timeout` from now; `None` never expires. A timeout too large to represent
    /// is treated as never.
    pub fn after(timeout: Option<Duration>) -> Self {
        Deadline(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// A deadline that never expires.
    pub fn never() -> Self {
        Deadline(None)
    }

    /// Time left, `Some(ZERO)` once expired, `None` for a deadline that never expires.
    pub fn remaining(&self) -> Option<Duration> {
        self.0
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`: the clock every process of the machine shares, used for
/// message publish times.
///
/// # Examples
///
/// ```
/// let a = shmbus_core::time::monotonic_ns();
/// assert!(shmbus_core::time::monotonic_ns() >= a);
/// ```
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // A monotonic clock is never negative; the sum fits in u64 for 584 years of uptime.
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}
