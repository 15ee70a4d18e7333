//! The kill and pause schedule: a pure function of the seed, the number of kills, the length
//! of the run and the slots' weights, so that the same arguments replay the same schedule (the
//! wall-clock interleaving of the processes is of course not replayed).

use shmbus_tests::Rng;

/// What happens to the process of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// SIGKILL, then start a replacement.
    Kill,
    /// SIGSTOP, then SIGCONT after `ms` milliseconds.
    Pause {
        /// How long the process stays stopped.
        ms: u64,
    },
}

/// One event of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event {
    /// Milliseconds after the start of the chaos phase.
    pub(crate) at_ms: u64,
    /// Index into the slot table.
    pub(crate) slot: usize,
    /// What to do.
    pub(crate) action: Action,
}

/// One pause per this many events, on average.
const PAUSE_ONE_IN: u64 = 5;
/// Pauses last this many milliseconds (uniform)...
pub(crate) const PAUSE_MS: (u64, u64) = (5, 400);
/// ... except one in five, which outlast the publish and lock timeouts (1 s and 2 s), so that
/// the others' bounded waits run out while a holder or a slow subscriber is stopped.
pub(crate) const LONG_PAUSE_MS: (u64, u64) = (400, 2500);

/// The schedule: exactly `kills` kills and about a quarter as many pauses, at uniformly
/// random moments of `0..duration_ms` (sorted), each on a slot drawn with probability
/// proportional to its weight. Slots of weight 0 are never drawn; with no positive weight the
/// schedule is empty.
pub(crate) fn schedule(seed: u64, kills: u64, duration_ms: u64, weights: &[u32]) -> Vec<Event> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 || kills == 0 {
        return Vec::new();
    }
    let mut rng = Rng::from_seed(seed);
    let mut events = Vec::new();
    let mut killed = 0;
    while killed < kills {
        let mut pick = rng.range(0, total);
        let slot = weights
            .iter()
            .position(|&w| {
                if pick < u64::from(w) {
                    true
                } else {
                    pick -= u64::from(w);
                    false
                }
            })
            .expect("pick < total");
        let action = if rng.range(0, PAUSE_ONE_IN) == 0 {
            let (lo, hi) = if rng.range(0, 5) == 0 {
                LONG_PAUSE_MS
            } else {
                PAUSE_MS
            };
            Action::Pause {
                ms: rng.range(lo, hi + 1),
            }
        } else {
            killed += 1;
            Action::Kill
        };
        let at_ms = rng.range(0, duration_ms.max(1));
        events.push(Event {
            at_ms,
            slot,
            action,
        });
    }
    // A stable sort keeps the drawing order among events of the same millisecond.
    events.sort_by_key(|e| e.at_ms);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_schedule() {
        let w = [1, 4, 0, 2];
        assert_eq!(schedule(7, 500, 60_000, &w), schedule(7, 500, 60_000, &w));
        assert_ne!(schedule(7, 500, 60_000, &w), schedule(8, 500, 60_000, &w));
    }

    #[test]
    fn exactly_the_kills_asked_for_and_some_pauses_sorted_within_the_run() {
        let s = schedule(42, 1000, 30_000, &[3, 1, 1]);
        let kills = s.iter().filter(|e| e.action == Action::Kill).count();
        let pauses = s.len() - kills;
        assert_eq!(kills, 1000);
        // One event in five is a pause: about 250 of them.
        assert!((150..350).contains(&pauses), "{pauses} pauses");
        assert!(s.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(s.iter().all(|e| e.at_ms < 30_000));
        let mut long = 0;
        for e in &s {
            if let Action::Pause { ms } = e.action {
                assert!((PAUSE_MS.0..=LONG_PAUSE_MS.1).contains(&ms));
                long += u32::from(ms > PAUSE_MS.1);
            }
        }
        assert!(long > 20, "{long} pauses longer than the timeouts");
    }

    #[test]
    fn slots_are_drawn_by_weight_and_weight_zero_never() {
        let s = schedule(1, 20_000, 1000, &[1, 0, 3]);
        let mut n = [0u32; 3];
        for e in &s {
            n[e.slot] += 1;
        }
        assert_eq!(n[1], 0);
        let ratio = f64::from(n[2]) / f64::from(n[0]);
        assert!((2.6..3.4).contains(&ratio), "{n:?}");
    }

    #[test]
    fn nothing_to_do_gives_an_empty_schedule() {
        assert!(schedule(1, 0, 1000, &[1]).is_empty());
        assert!(schedule(1, 10, 1000, &[0, 0]).is_empty());
        assert!(schedule(1, 10, 1000, &[]).is_empty());
    }
}
