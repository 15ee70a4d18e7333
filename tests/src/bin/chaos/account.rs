//! The accounting of the chaos harness, kept free of processes so that it can be unit-tested:
//! what a subscriber checks message by message ([`StreamCheck`]), what a subscriber that lived
//! to the end should have seen of each publisher ([`survivor_shortfall`]), a work queue's
//! sightings against its own counters ([`QueueAccount`]), counters against what their writers
//! reported ([`counter_verdict`]), and robust-lock recoveries ([`lock_verdict`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use shmbus::QueueStats;

/// A topic's overflow policy, as far as the checks are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// A slow subscriber lags; the lag is reported (`Lagged(n)`) and allowed.
    Overwrite,
    /// A slow subscriber holds the publishers back; nothing may be skipped.
    BackPressure,
}

impl Policy {
    pub(crate) fn parse(s: &str) -> Option<Policy> {
        match s {
            "ow" => Some(Policy::Overwrite),
            "bp" => Some(Policy::BackPressure),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Policy::Overwrite => "ow",
            Policy::BackPressure => "bp",
        }
    }
}

/// What a subscriber saw of one publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The first index received.
    pub(crate) first: u64,
    /// The last index received.
    pub(crate) last: u64,
    /// Messages received.
    pub(crate) count: u64,
    /// The subscriber's lag events when `last` was received.
    lag_mark: u64,
}

/// Something a check found, to be reported at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finding {
    /// Messages skipped beyond what the policy allows.
    Lost(u64),
    /// A message received again, or going back.
    Duplicated(u64),
    /// A message whose contents are not what its publisher wrote.
    Corrupted(u64),
    /// Sequence numbers skipped silently: messages lost with a publisher killed while
    /// publishing them (allowed up to the kills of the topic's publishers).
    Hole(u64),
    /// A lag reported to a back-pressure subscriber before its first message (the join window
    /// of decision 11; allowed).
    JoinLag(u64),
}

/// A subscriber's message-by-message check: sequence numbers increase by one (lags and holes
/// accounted for), each publisher's indices by one (a lag may explain a jump under overwrite),
/// every message intact.
#[derive(Debug)]
pub(crate) struct StreamCheck {
    policy: Policy,
    producers: BTreeMap<u64, Seen>,
    lag_events: u64,
    next_seq: Option<u64>,
    /// Messages received.
    pub(crate) received: u64,
    /// Messages reported as lag.
    pub(crate) lagged: u64,
}

impl StreamCheck {
    pub(crate) fn new(policy: Policy) -> StreamCheck {
        StreamCheck {
            policy,
            producers: BTreeMap::new(),
            lag_events: 0,
            next_seq: None,
            received: 0,
            lagged: 0,
        }
    }

    /// A `Lagged(n)`.
    pub(crate) fn lag(&mut self, n: u64) -> Option<Finding> {
        self.lagged = self.lagged.saturating_add(n);
        self.lag_events += 1;
        if let Some(e) = &mut self.next_seq {
            *e = e.saturating_add(n);
        }
        match self.policy {
            Policy::Overwrite => None,
            Policy::BackPressure if self.received == 0 => Some(Finding::JoinLag(n)),
            Policy::BackPressure => Some(Finding::Lost(n)),
        }
    }

    /// A message: its sequence number, its publisher and index, and whether its contents are
    /// what that publisher wrote for that index.
    pub(crate) fn message(
        &mut self,
        seq: u64,
        producer: u64,
        index: u64,
        intact: bool,
    ) -> Vec<Finding> {
        self.received += 1;
        let mut out = Vec::new();
        match self.next_seq {
            Some(e) if seq < e => out.push(Finding::Duplicated(1)),
            Some(e) => {
                if seq > e {
                    out.push(Finding::Hole(seq - e));
                }
                self.next_seq = Some(seq.saturating_add(1));
            }
            None => self.next_seq = Some(seq.saturating_add(1)),
        }
        if !intact {
            // Its producer and index cannot be trusted.
            out.push(Finding::Corrupted(1));
            return out;
        }
        let lag_events = self.lag_events;
        match self.producers.get_mut(&producer) {
            None => {
                self.producers.insert(
                    producer,
                    Seen {
                        first: index,
                        last: index,
                        count: 1,
                        lag_mark: lag_events,
                    },
                );
            }
            Some(s) if index <= s.last => out.push(Finding::Duplicated(1)),
            Some(s) => {
                let skipped = index - s.last - 1;
                if skipped > 0 && s.lag_mark == lag_events {
                    out.push(Finding::Lost(skipped));
                }
                s.last = index;
                s.count += 1;
                s.lag_mark = lag_events;
            }
        }
        out
    }

    /// What was seen of each publisher.
    pub(crate) fn producers(&self) -> impl Iterator<Item = (u64, Seen)> + '_ {
        self.producers.iter().map(|(&p, &s)| (p, s))
    }
}

/// `id:first:last:count` for each publisher, comma-separated (`none` for none).
pub(crate) fn format_seen(seen: impl Iterator<Item = (u64, Seen)>) -> String {
    let parts: Vec<String> = seen
        .map(|(p, s)| format!("{p}:{}:{}:{}", s.first, s.last, s.count))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

/// The inverse of [`format_seen`]: publisher → (first, last).
pub(crate) fn parse_seen(s: &str) -> Option<HashMap<u64, (u64, u64)>> {
    let mut out = HashMap::new();
    if s == "none" {
        return Some(out);
    }
    for part in s.split(',') {
        let f: Vec<u64> = part
            .split(':')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [p, first, last, _count] = f[..] else {
            return None;
        };
        out.insert(p, (first, last));
    }
    Some(out)
}

/// A publisher's life as the conductor saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerLife {
    /// Messages it published for sure: indices `0..sent` (exact if it ended gracefully, else
    /// what it reported before it was killed).
    pub(crate) sent: u64,
    /// Whether it ended by being told to (its `sent` is exact).
    pub(crate) graceful: bool,
}

/// For a subscriber that lived to the end and drained its topic, and saw `seen` = (first,
/// last) of this publisher: the publisher's messages it should have received and did not
/// (back-pressure only: every message from index `from` on, the first one the publisher
/// published after the subscriber had joined), and the messages it received beyond what a
/// graceful publisher sent.
pub(crate) fn survivor_shortfall(
    policy: Policy,
    seen: Option<(u64, u64)>,
    from: u64,
    p: &ProducerLife,
) -> (u64, u64) {
    let beyond = match seen {
        Some((_, last)) if p.graceful && last >= p.sent => last + 1 - p.sent,
        _ => 0,
    };
    if policy == Policy::Overwrite || p.sent <= from {
        return (0, beyond);
    }
    let missing = match seen {
        None => p.sent - from,
        Some((first, last)) => first.saturating_sub(from) + (p.sent - 1).saturating_sub(last),
    };
    (missing, beyond)
}

/// The first index a publisher published after `joined_ns`, from its reports `(printed_ns,
/// sent)` in order (a report printed after the moment names a count reached after it, so every
/// index from that count on came later); `None` when no report came after it.
pub(crate) fn first_index_after(reports: &[(u64, u64)], joined_ns: u64) -> Option<u64> {
    reports
        .iter()
        .find(|&&(ns, _)| ns >= joined_ns)
        .map(|&(_, sent)| sent)
}

/// Findings of one account, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) corrupted: u64,
}

impl std::ops::AddAssign for Verdict {
    fn add_assign(&mut self, o: Verdict) {
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
    }
}

/// Sightings of one item.
#[derive(Debug, Default, Clone, Copy)]
struct Sight {
    count: u32,
    /// Bit `d` (capped at 63): delivery number `d` was seen.
    deliveries: u64,
    /// Sightings whose delivery number had been seen already.
    repeats: u32,
}

/// Items beyond this index are taken for corrupt (no producer puts that many in a run).
const MAX_INDEX: u64 = 1 << 26;

/// One work queue: every item consumers reported (`got`), every count producers reported, and
/// the consumer kills that may have swallowed an item unreported.
#[derive(Debug)]
pub(crate) struct QueueAccount {
    ack: bool,
    items: HashMap<u64, Vec<Sight>>,
    reported: HashMap<u64, (u64, bool)>,
    /// Kills of consumers that get by copy: each may have finished one item it never reported
    /// (the copy and the `done` happen in one lock hold, before the report).
    pub(crate) copy_kills: u64,
    corrupted: u64,
}

impl QueueAccount {
    pub(crate) fn new(ack: bool) -> QueueAccount {
        QueueAccount {
            ack,
            items: HashMap::new(),
            reported: HashMap::new(),
            copy_kills: 0,
            corrupted: 0,
        }
    }

    /// A consumer reported item `(producer, index)`, delivered for the `deliveries`-th time.
    pub(crate) fn sighting(&mut self, producer: u64, index: u64, deliveries: u32, intact: bool) {
        if !intact || index >= MAX_INDEX {
            self.corrupted += 1;
            return;
        }
        let v = self.items.entry(producer).or_default();
        let i = index as usize;
        if v.len() <= i {
            v.resize(i + 1, Sight::default());
        }
        let s = &mut v[i];
        let bit = 1u64 << deliveries.min(63);
        if s.deliveries & bit != 0 {
            s.repeats += 1;
        }
        s.deliveries |= bit;
        s.count += 1;
    }

    /// Producer `producer` reported `count` items put (indices `0..count`); `graceful`: it ended
    /// by being told to, so it put exactly these.
    pub(crate) fn reported_put(&mut self, producer: u64, count: u64, graceful: bool) {
        let e = self.reported.entry(producer).or_insert((0, false));
        e.0 = e.0.max(count);
        e.1 |= graceful;
    }

    /// The verdict once the queue is closed, drained and every participant gone, against its
    /// counters. Also returns (items seen, reported items never seen).
    pub(crate) fn finish(&self, st: &QueueStats) -> (Verdict, u64, u64) {
        let mut v = Verdict {
            corrupted: self.corrupted,
            ..Verdict::default()
        };
        let mut seen = 0u64;
        let mut extra = 0u64;
        let mut repeats = 0u64;
        for (producer, items) in &self.items {
            let known = self.reported.get(producer);
            for (index, s) in items.iter().enumerate() {
                if s.count == 0 {
                    continue;
                }
                seen += 1;
                extra += u64::from(s.count - 1);
                repeats += u64::from(s.repeats);
                match known {
                    None => v.corrupted += 1,
                    Some(&(n, true)) if index as u64 >= n => v.corrupted += 1,
                    _ => {}
                }
            }
        }
        v.duplicated += if self.ack {
            repeats.max(extra.saturating_sub(st.redelivered))
        } else {
            extra
        };
        // Items producers reported and no consumer reported.
        let mut unseen = 0u64;
        for (producer, &(n, _)) in &self.reported {
            let items = self.items.get(producer);
            unseen += (0..n)
                .filter(|&i| {
                    items
                        .and_then(|v| v.get(i as usize))
                        .is_none_or(|s| s.count == 0)
                })
                .count() as u64;
        }
        let allowed = st.lost + st.dead_lettered + self.copy_kills;
        let unexplained = unseen.saturating_sub(allowed);
        // Every item put ends exactly once: done, lost or dead-lettered.
        let ended = st.done + st.lost + st.dead_lettered;
        // Every delivery ends exactly once: done, lost, dead-lettered or redelivered.
        let deliveries_ended = ended + st.redelivered;
        v.lost += unexplained
            .max(st.put.saturating_sub(ended))
            .max(st.taken.saturating_sub(deliveries_ended));
        v.duplicated += ended
            .saturating_sub(st.put)
            .max(deliveries_ended.saturating_sub(st.taken));
        // Distinct items seen beyond the items put: never put.
        v.corrupted += seen.saturating_sub(st.put);
        (v, seen, unseen)
    }
}

/// A counter that only its writers change, against what they reported: `reported` for sure,
/// plus at most `unreported_max` that killed writers did without reporting. Returns (lost,
/// duplicated).
pub(crate) fn counter_verdict(value: u64, reported: u64, unreported_max: u64) -> (u64, u64) {
    (
        reported.saturating_sub(value),
        value.saturating_sub(reported.saturating_add(unreported_max)),
    )
}

/// A takeover of the robust lock after its holder died: the holder tag found (0: none was
/// written yet or any more) and the gap between the two counters the holders keep equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub(crate) dead: u64,
    pub(crate) gap: u64,
}

/// Recoveries that break the lock's contract: a gap other than 0 or 1 (a holder updates one
/// counter, then the other), a takeover from a holder that was never killed, or more takeovers
/// than holders killed.
pub(crate) fn lock_verdict(recoveries: &[Recovery], killed: &HashSet<u64>, kills: u64) -> u64 {
    let bad = recoveries
        .iter()
        .filter(|r| r.gap > 1 || (r.dead != 0 && !killed.contains(&r.dead)))
        .count() as u64;
    bad + (recoveries.len() as u64).saturating_sub(kills)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orderly_stream_has_no_findings() {
        let mut c = StreamCheck::new(Policy::BackPressure);
        for (seq, (p, i)) in [(1, 0), (2, 0), (1, 1), (2, 1), (1, 2)].iter().enumerate() {
            assert!(c.message(10 + seq as u64, *p, *i, true).is_empty());
        }
        let seen: Vec<_> = c.producers().collect();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].1.first, seen[0].1.last, seen[0].1.count),
            (0, 2, 3)
        );
        assert_eq!(format_seen(c.producers()), "1:0:2:3,2:0:1:2");
        let parsed = parse_seen(&format_seen(c.producers())).unwrap();
        assert_eq!(parsed[&1], (0, 2));
        assert_eq!(parse_seen("none").unwrap().len(), 0);
        assert!(parse_seen("1:2").is_none());
    }

    #[test]
    fn gaps_repeats_and_damage_are_found() {
        let mut c = StreamCheck::new(Policy::Overwrite);
        assert!(c.message(0, 7, 0, true).is_empty());
        // Index 1 of producer 7 skipped without a lag: lost.
        assert_eq!(c.message(1, 7, 2, true), vec![Finding::Lost(1)]);
        // The same message again: a sequence number going back and an index repeated.
        assert_eq!(
            c.message(1, 7, 2, true),
            vec![Finding::Duplicated(1), Finding::Duplicated(1)]
        );
        // Sequence numbers skipped silently: a hole.
        assert_eq!(c.message(5, 7, 3, true), vec![Finding::Hole(3)]);
        assert_eq!(c.message(6, 7, 4, false), vec![Finding::Corrupted(1)]);
    }

    #[test]
    fn a_lag_explains_a_jump_under_overwrite_only() {
        let mut ow = StreamCheck::new(Policy::Overwrite);
        ow.message(0, 1, 0, true);
        assert_eq!(ow.lag(5), None);
        assert!(
            ow.message(6, 1, 6, true).is_empty(),
            "the lag covers seq and index"
        );
        let mut bp = StreamCheck::new(Policy::BackPressure);
        assert_eq!(
            bp.lag(2),
            Some(Finding::JoinLag(2)),
            "before the first message"
        );
        bp.message(2, 1, 0, true);
        assert_eq!(bp.lag(3), Some(Finding::Lost(3)));
        // The jump the lag made is not counted a second time.
        assert!(bp.message(6, 1, 4, true).is_empty());
        assert_eq!((bp.received, bp.lagged), (2, 5));
    }

    #[test]
    fn a_survivor_must_have_seen_every_message_under_back_pressure() {
        let graceful = ProducerLife {
            sent: 10,
            graceful: true,
        };
        let bp = Policy::BackPressure;
        // There before the publisher started (from 0): everything.
        assert_eq!(survivor_shortfall(bp, Some((0, 9)), 0, &graceful), (0, 0));
        assert_eq!(survivor_shortfall(bp, Some((2, 9)), 0, &graceful), (2, 0));
        assert_eq!(survivor_shortfall(bp, None, 0, &graceful), (10, 0));
        assert_eq!(survivor_shortfall(bp, Some((0, 6)), 0, &graceful), (3, 0));
        // Joined when 4 were out: from index 4 to the last one published.
        assert_eq!(survivor_shortfall(bp, Some((4, 9)), 4, &graceful), (0, 0));
        assert_eq!(survivor_shortfall(bp, Some((3, 9)), 4, &graceful), (0, 0));
        assert_eq!(survivor_shortfall(bp, None, 4, &graceful), (6, 0));
        assert_eq!(survivor_shortfall(bp, Some((5, 8)), 4, &graceful), (2, 0));
        assert_eq!(survivor_shortfall(bp, None, 10, &graceful), (0, 0));
        // More than was sent.
        assert_eq!(survivor_shortfall(bp, Some((0, 11)), 0, &graceful), (0, 2));
        // A killed publisher: its count is a lower bound, so more is fine.
        let killed = ProducerLife {
            graceful: false,
            ..graceful
        };
        assert_eq!(survivor_shortfall(bp, Some((0, 14)), 0, &killed), (0, 0));
        assert_eq!(survivor_shortfall(bp, Some((0, 7)), 0, &killed), (2, 0));
        // Overwrite allows lag: only "more than was sent" counts.
        let ow = Policy::Overwrite;
        assert_eq!(survivor_shortfall(ow, None, 0, &graceful), (0, 0));
        assert_eq!(survivor_shortfall(ow, Some((3, 10)), 0, &graceful), (0, 1));
    }

    #[test]
    fn the_first_index_after_a_join_comes_from_the_first_later_report() {
        let reports = [(0, 0), (100, 5), (200, 9)];
        assert_eq!(first_index_after(&reports, 0), Some(0));
        assert_eq!(first_index_after(&reports, 50), Some(5));
        assert_eq!(first_index_after(&reports, 100), Some(5));
        assert_eq!(first_index_after(&reports, 201), None);
    }

    fn stats(put: u64, taken: u64, done: u64, lost: u64, redelivered: u64) -> QueueStats {
        QueueStats {
            put,
            taken,
            done,
            lost,
            redelivered,
            dead_lettered: 0,
            abandoned: 0,
            repairs: 0,
        }
    }

    #[test]
    fn a_queue_whose_every_item_was_seen_once_balances() {
        let mut q = QueueAccount::new(false);
        q.reported_put(1, 3, true);
        for i in 0..3 {
            q.sighting(1, i, 1, true);
        }
        assert_eq!(q.finish(&stats(3, 3, 3, 0, 0)), (Verdict::default(), 3, 0));
    }

    #[test]
    fn unseen_items_are_lost_unless_counted_lost_or_swallowed_by_a_kill() {
        let mut q = QueueAccount::new(false);
        q.reported_put(1, 4, true);
        q.sighting(1, 0, 1, true);
        q.sighting(1, 1, 1, true);
        // Two unseen, one counted lost by the queue: one lost beyond the policy.
        let (v, seen, unseen) = q.finish(&stats(4, 4, 3, 1, 0));
        assert_eq!((v.lost, seen, unseen), (1, 2, 2));
        // A consumer getting by copy was killed: it may have swallowed the other one.
        q.copy_kills = 1;
        assert_eq!(q.finish(&stats(4, 4, 3, 1, 0)).0, Verdict::default());
        // Counters that do not balance: an item put and never ended.
        assert_eq!(q.finish(&stats(5, 4, 3, 1, 0)).0.lost, 1);
    }

    #[test]
    fn repeats_are_duplicates_unless_redelivered() {
        let mut amo = QueueAccount::new(false);
        amo.reported_put(1, 1, true);
        amo.sighting(1, 0, 1, true);
        amo.sighting(1, 0, 1, true);
        assert_eq!(amo.finish(&stats(1, 1, 1, 0, 0)).0.duplicated, 1);
        let mut ack = QueueAccount::new(true);
        ack.reported_put(1, 2, true);
        ack.sighting(1, 0, 1, true);
        ack.sighting(1, 0, 2, true);
        ack.sighting(1, 1, 1, true);
        assert_eq!(ack.finish(&stats(2, 3, 2, 0, 1)).0, Verdict::default());
        // The same delivery seen twice, or more repeats than redeliveries.
        ack.sighting(1, 1, 1, true);
        assert_eq!(ack.finish(&stats(2, 3, 2, 0, 1)).0.duplicated, 1);
    }

    #[test]
    fn items_nobody_put_are_corrupt() {
        let mut q = QueueAccount::new(false);
        q.reported_put(1, 1, true);
        q.sighting(1, 0, 1, true);
        q.sighting(1, 5, 1, true); // beyond what a graceful producer put
        q.sighting(9, 0, 1, true); // an unknown producer
        q.sighting(1, 0, 1, false); // damaged
        let (v, _, _) = q.finish(&stats(3, 3, 3, 0, 0));
        assert_eq!(v.corrupted, 3);
    }

    #[test]
    fn counters_are_bounded_by_what_writers_reported() {
        assert_eq!(counter_verdict(100, 100, 0), (0, 0));
        assert_eq!(counter_verdict(95, 100, 10), (5, 0));
        assert_eq!(counter_verdict(108, 100, 10), (0, 0));
        assert_eq!(counter_verdict(111, 100, 10), (0, 1));
    }

    #[test]
    fn lock_recoveries_must_follow_kills() {
        let killed: HashSet<u64> = [3, 4].into();
        let ok = [Recovery { dead: 3, gap: 1 }, Recovery { dead: 0, gap: 0 }];
        assert_eq!(lock_verdict(&ok, &killed, 2), 0);
        assert_eq!(
            lock_verdict(&ok, &killed, 1),
            1,
            "more takeovers than kills"
        );
        let live = [Recovery { dead: 5, gap: 0 }];
        assert_eq!(
            lock_verdict(&live, &killed, 2),
            1,
            "a live holder taken over"
        );
        let torn = [Recovery { dead: 4, gap: 2 }];
        assert_eq!(lock_verdict(&torn, &killed, 2), 1);
    }
}
