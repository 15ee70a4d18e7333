//! The subscribing side of the ring protocol: joining, acquiring, releasing, waiting.

use std::time::Duration;

use super::*;

impl Ring {
    /// Marks subscriber row `k` active and returns its starting cursor: up to `history` of the
    /// most recent messages are still to be read. The caller holds row `k`'s lease; if the row
    /// was left active by a subscriber that died, call [`Ring::reclaim_subscriber`] first.
    pub(crate) fn join_subscriber(&self, k: u32, pid: u32, history: u32) -> u64 {
        let h = self.header();
        let e = self.subscriber(k);
        let history = u64::from(history.min(self.layout.config.capacity));
        let cursor = h.tail.load(Ordering::Acquire).saturating_sub(history);
        e.pid.store(pid, Ordering::Relaxed);
        e.lagged.store(0, Ordering::Relaxed);
        e.cursor.store(cursor, Ordering::Release);
        // A back-pressured publisher that computes its minimum after this fence sees us.
        e.state.store(ACTIVE, Ordering::Release);
        h.subscriber_joins.fetch_add(1, Ordering::Release);
        fence(Ordering::SeqCst);
        cursor
    }

    /// Marks subscriber row `k` free and wakes a publisher that may be waiting for it. The caller
    /// holds the lease and has released every slot it held.
    pub(crate) fn leave_subscriber<N: Notifier>(&self, k: u32, notifier: &N) {
        self.subscriber(k).state.store(FREE, Ordering::Release);
        self.wake_publisher(notifier);
    }

    /// Whether subscriber row `k` is marked active.
    pub fn subscriber_active(&self, k: u32) -> bool {
        self.subscriber(k).state.load(Ordering::Acquire) == ACTIVE
    }

    /// Drops every hold of the dead subscriber `k` and marks its row free. The caller holds row
    /// `k`'s lease and `k`'s previous owner is dead.
    pub(crate) fn reclaim_subscriber<N: Notifier>(&self, k: u32, notifier: &N) -> u32 {
        let bit = 1u64 << k;
        let mut released = 0;
        for s in 0..self.layout.slots {
            if self.state(s).fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
                released += 1;
            }
        }
        self.leave_subscriber(k, notifier);
        released
    }

    fn wake_publisher<N: Notifier>(&self, notifier: &N) {
        let h = self.header();
        // Dekker pairing with `wait_for_space`: we moved our cursor (or left), then read
        // `progress_sleepers`; the publisher counts itself in, then re-reads our cursor.
        fence(Ordering::SeqCst);
        if h.progress_sleepers.load(Ordering::Relaxed) > 0 {
            h.progress_word.fetch_add(1, Ordering::SeqCst);
            notifier.wake_all(&h.progress_word);
        }
    }

    /// Tries to take the message at `*cursor` for subscriber `k`, moving the cursor past it (or
    /// past what was lost). Lost messages of dead publishers are skipped silently (they are
    /// counted in [`counter::LOST`]).
    ///
    /// # Errors
    ///
    /// [`CorruptRing`] if an entry names a slot that does not exist.
    pub(crate) fn try_acquire<N: Notifier>(
        &self,
        k: u32,
        cursor: &mut u64,
        notifier: &N,
    ) -> Result<Acquired, CorruptRing> {
        let bit = 1u64 << k;
        let cap = u64::from(self.layout.config.capacity);
        // Every round either moves the cursor or follows an entry that changed under us; a
        // writer that keeps changing them (or lies about a slot) is bounded here, not followed
        // forever.
        let mut rounds: u64 = cap.saturating_mul(4).saturating_add(ROUND_LIMIT);
        loop {
            rounds = match rounds.checked_sub(1) {
                Some(r) => r,
                None => {
                    return Err(CorruptRing(
                        "its entries keep changing under the reader".into(),
                    ))
                }
            };
            let n = *cursor;
            // The cursor started from the shared `tail`: wrapping arithmetic, never a panic.
            let next = n.wrapping_add(1);
            let e = self.entry(n);
            let s1 = e.seq.load(Ordering::Acquire);
            if s1 == next {
                // Acquire: if this is a newer slot value, the writer's INVALID store is visible
                // to the re-check below (pairs with the Release fence in `publish`).
                let slot = e.slot.load(Ordering::Acquire);
                if slot == HOLE {
                    if e.seq.load(Ordering::Acquire) == next {
                        *cursor = next;
                        self.store_cursor(k, next, notifier);
                    }
                    continue;
                }
                if slot == RETIRED {
                    if e.seq.load(Ordering::Acquire) != next {
                        continue;
                    }
                    *cursor = next;
                    self.store_cursor(k, next, notifier);
                    self.count_lag(k, 1);
                    return Ok(Acquired::Lagged { skipped: 1 });
                }
                if slot >= u64::from(self.layout.slots) {
                    if e.seq.load(Ordering::Acquire) != next {
                        continue; // torn read of an entry being rewritten
                    }
                    // Skip the message: the next receive goes on with the one after it.
                    *cursor = next;
                    self.store_cursor(k, next, notifier);
                    return Err(CorruptRing(format!(
                        "entry {n} names slot {slot} of {}; message skipped",
                        self.layout.slots
                    )));
                }
                let slot = slot as u32;
                // Start fetching the message while the CAS below takes the state word: the two
                // cache misses overlap instead of following each other.
                prefetch(self.slot_ptr(slot));
                let st = self.state(slot);
                // First guess: published and held by nobody, the common case; a CAS straight
                // away takes the line once, where a load first would fetch it twice (shared,
                // then exclusive). A wrong guess costs one more round of the loop. Acquire on
                // CAS failure: seeing RING cleared means seeing the eviction, which came after
                // the entry was rewritten, so the retry below reads the new entry rather than
                // spinning on a stale one.
                let mut cur = RING_BIT;
                let mut tries = ROUND_LIMIT;
                let held = loop {
                    if cur & RING_BIT == 0 {
                        break false; // evicted meanwhile
                    }
                    tries = match tries.checked_sub(1) {
                        Some(t) => t,
                        // Subscribers that take the slot at once succeed in turn; endless
                        // failure is a process rewriting the word.
                        None => {
                            return Err(CorruptRing(format!("slot {slot}'s state keeps changing")))
                        }
                    };
                    // Acquire: pairs with the publisher's Release store of RING, so the message
                    // bytes are visible once we hold the slot.
                    match st.compare_exchange_weak(
                        cur,
                        cur | bit,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break true,
                        Err(now) => cur = now,
                    }
                };
                if held {
                    // SeqCst fence between our bit and the re-check: a batch publisher that
                    // evicts with a plain load and store after its own SeqCst fence
                    // (`evict_after_fence`) either sees our bit, or we see its entry rewrite
                    // below (store buffering, ordering row 28). On x86 the CAS above already
                    // drained our stores, so the fence finds nothing to wait for.
                    fence(Ordering::SeqCst);
                    // The entry must still name this message *and* this slot: `retire` rewrites
                    // an entry's slot while keeping its sequence number.
                    if e.seq.load(Ordering::Acquire) == next
                        && e.slot.load(Ordering::Acquire) == u64::from(slot)
                    {
                        *cursor = next;
                        self.store_cursor(k, next, notifier);
                        return Ok(Acquired::Message { seq: n, slot });
                    }
                    st.fetch_and(!bit, Ordering::Release);
                } else if e.seq.load(Ordering::Acquire) == next
                    && e.slot.load(Ordering::Acquire) == u64::from(slot)
                {
                    // RING is cleared only after the entry was rewritten (eviction, retire), and
                    // seeing it cleared (Acquire) shows that rewrite: an entry that still names
                    // the slot means its state word was written by another process.
                    *cursor = next;
                    self.store_cursor(k, next, notifier);
                    return Err(CorruptRing(format!(
                        "entry {n} names slot {slot}, which is not in the ring; message skipped"
                    )));
                }
                continue; // the entry moved on: the next round reports the lag
            }
            let resume = match self.behind(n, s1) {
                Behind::Empty => return Ok(Acquired::Empty),
                Behind::Retry => continue,
                Behind::Resume(resume) => resume,
            };
            let skipped = resume.saturating_sub(n);
            *cursor = resume;
            self.store_cursor(k, resume, notifier);
            self.count_lag(k, skipped);
            return Ok(Acquired::Lagged { skipped });
        }
    }

    /// Where a reader at message `n` stands when entry `n`'s sequence word reads `s1`, which is
    /// not `n + 1`: nothing new yet, a stale view to read again, or messages lost to overwrite
    /// and the first one still readable.
    fn behind(&self, n: u64, s1: u64) -> Behind {
        let next = n.wrapping_add(1);
        let cap = u64::from(self.layout.config.capacity);
        if s1 == SEQ_INVALID {
            // The entry is being rewritten, or this is a stale view of it being written for
            // message n itself. Acquire `tail`: if message n was published, its entry write
            // happened before, so a re-read shows it (or something newer).
            let tail = self.header().tail.load(Ordering::Acquire);
            if tail <= n {
                return Behind::Empty;
            }
            if self.entry(n).seq.load(Ordering::Acquire) != SEQ_INVALID {
                return Behind::Retry;
            }
            // Still invalid after message n was published: it is being overwritten by a
            // message m >= n + capacity. Entries from tail - capacity on may be intact.
            Behind::Resume(tail.saturating_sub(cap).max(next))
        } else if s1 <= n {
            // The entry holds an older message: n is not published yet (or we saw a stale
            // value, which a retry will fix).
            Behind::Empty
        } else {
            // s1 > next: the entry holds m = s1 - 1 >= n + capacity, so every message
            // before m + 1 - capacity is gone.
            Behind::Resume(s1.saturating_sub(cap).max(next))
        }
    }

    /// Counts `skipped` lost messages against subscriber `k` and the topic.
    fn count_lag(&self, k: u32, skipped: u64) {
        self.subscriber(k)
            .lagged
            .fetch_add(skipped, Ordering::Relaxed);
        self.counter(counter::LAGGED)
            .fetch_add(skipped, Ordering::Relaxed);
    }

    /// Reads the message at `*cursor` for subscriber `k` without holding its slot: `read` is
    /// called with the slot index and the message words the entry carries (empty without
    /// [`RingConfig::inline`]) and copies what it needs with atomic loads (see
    /// [`Ring::copy_slot`], [`Ring::copy_inline`]), then the entry is checked again. The copy
    /// is kept only if the entry still names this message and this slot: a slot is loaned again
    /// only after its entry was rewritten, and a loan is followed by a `Release` fence, so a
    /// copy that saw any byte of a later message sees the rewrite too; the entry's own words
    /// are rewritten after its `INVALID` store and a `Release` fence, as `slot` is (seqlock
    /// reader; `read` may run several times, and what a failed check read is dropped).
    ///
    /// Unlike [`Ring::try_acquire`], the shared cursor is not written: the caller stores it once
    /// for a batch with [`Ring::commit_cursor`]. With `keep_going` false a lag or a corrupt entry
    /// is reported as [`Read::Stop`] with the cursor left where it was (a batch that already
    /// has messages ends before it, and the next call reports it).
    ///
    /// # Errors
    ///
    /// [`CorruptRing`] if an entry names a slot that does not exist, or keeps changing.
    #[inline]
    ///
    /// `guess` (`None` when `read` reads only the entry's words) carries, from one call to the
    /// next, the slot the message at the cursor is
    /// probably in: a publish hands the slot it evicts to its next loan, so while a reader waits
    /// at message n, the slot its entry still names (message n − capacity's) is where message
    /// n + 1 will most likely be written. Each poll prefetches the guessed slot together with the
    /// entry, so that when the message comes its two cache lines travel at once rather than one
    /// after the other. A wrong guess costs a prefetch; it never changes what is read.
    pub(crate) fn try_read<R>(
        &self,
        k: u32,
        cursor: &mut u64,
        keep_going: bool,
        guess: Option<&mut SlotGuess>,
        mut read: impl FnMut(u32, &[AtomicU64]) -> R,
    ) -> Result<Read<R>, CorruptRing> {
        let cap = u64::from(self.layout.config.capacity);
        let mut rounds: u64 = cap.saturating_mul(4).saturating_add(ROUND_LIMIT);
        loop {
            rounds = match rounds.checked_sub(1) {
                Some(r) => r,
                None => {
                    return Err(CorruptRing(
                        "its entries keep changing under the reader".into(),
                    ))
                }
            };
            let n = *cursor;
            let next = n.wrapping_add(1);
            if let Some(g) = guess.as_deref() {
                if g.now < self.layout.slots {
                    prefetch(self.slot_ptr(g.now));
                }
            }
            let (e, inline) = self.entry_inline(n);
            let s1 = e.seq.load(Ordering::Acquire);
            if s1 != next {
                let resume = match self.behind(n, s1) {
                    Behind::Empty => {
                        // The entry names an older message, whose slot publish n will hand to
                        // the loan of message n + 1 (a hint: checked before any use).
                        if let Some(g) = guess {
                            g.next =
                                u32::try_from(e.slot.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
                        }
                        return Ok(Read::Empty);
                    }
                    Behind::Retry => continue,
                    Behind::Resume(resume) => resume,
                };
                if !keep_going {
                    return Ok(Read::Stop);
                }
                let skipped = resume.saturating_sub(n);
                *cursor = resume;
                self.count_lag(k, skipped);
                return Ok(Read::Lagged { skipped });
            }
            // Acquire: a newer slot value comes with the writer's INVALID store (pairs with the
            // Release fence in `publish`), which the check below then sees.
            let slot = e.slot.load(Ordering::Acquire);
            if slot == HOLE {
                if e.seq.load(Ordering::Acquire) == next {
                    *cursor = next;
                }
                continue;
            }
            if slot == RETIRED || slot >= u64::from(self.layout.slots) {
                if e.seq.load(Ordering::Acquire) != next {
                    continue; // torn read of an entry being rewritten
                }
                if !keep_going {
                    return Ok(Read::Stop);
                }
                *cursor = next;
                if slot == RETIRED {
                    self.count_lag(k, 1);
                    return Ok(Read::Lagged { skipped: 1 });
                }
                return Err(CorruptRing(format!(
                    "entry {n} names slot {slot} of {}; message skipped",
                    self.layout.slots
                )));
            }
            let slot = slot as u32;
            let value = read(slot, inline);
            // Acquire fence: pairs with the Release fence after a loan of this slot, so if
            // `read` saw any byte written under a later loan, the loads below see the entry
            // rewrite that came before that loan (and `retire`'s RETIRED store, which comes
            // before it clears RING); and with the Release fence after the entry's INVALID
            // store, so if it saw a later message's words in the entry, they see INVALID.
            fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) == next
                && e.slot.load(Ordering::Relaxed) == u64::from(slot)
            {
                *cursor = next;
                if let Some(g) = guess {
                    *g = SlotGuess {
                        now: g.next,
                        next: u32::MAX,
                    };
                }
                return Ok(Read::Message { seq: n, value });
            }
            // The entry moved on while we read: the next round reports the lag.
        }
    }

    /// Reads a run of up to `max` (at most [`RUN`]) consecutive messages from `*cursor` on without
    /// holding their slots, for a batch that copies them out: `read(i, slot, words)` copies
    /// message `cursor + i` (as [`Ring::try_read`]'s read function does) and the first `n`
    /// copies, `n` returned, are intact; the cursor moves past them (the shared one is not
    /// written: [`Ring::commit_cursor`]). What a copy at `i >= n` read is to be dropped.
    ///
    /// The lean path of a batch: per message the loads of the entry's two words, the copy, an
    /// `Acquire` fence and the re-check of the two words (`try_read`'s seqlock check, which
    /// finds the entry's line still in this core's cache), and nothing else. Anything out of
    /// the ordinary ends the run before it: a message not yet published, a lag, a hole, a
    /// retired or damaged entry, an entry that changed while it was copied. `try_read` then
    /// tells what it is.
    #[inline]
    pub(crate) fn read_run(
        &self,
        cursor: &mut u64,
        max: usize,
        mut read: impl FnMut(usize, u32, &[AtomicU64]),
    ) -> usize {
        let max = max.min(RUN);
        let slots = u64::from(self.layout.slots);
        let start = *cursor;
        let mut n = 0;
        while n < max {
            let seq = start.wrapping_add(n as u64);
            let next = seq.wrapping_add(1);
            let (e, inline) = self.entry_inline(seq);
            // Acquire, both: as in `try_read` (the slot value comes with its INVALID store).
            if e.seq.load(Ordering::Acquire) != next {
                break;
            }
            let slot = e.slot.load(Ordering::Acquire);
            if slot >= slots {
                break; // HOLE, RETIRED or damaged: `try_read` handles it
            }
            read(n, slot as u32, inline);
            // As in `try_read`: the copy before the fence, the re-check after it. (A fence per
            // message rather than one for the run: on x86 it is no instruction, and a re-check
            // made at once finds the entry still here, where one made at the end of the run
            // would take back lines the publisher has written meanwhile.)
            fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) != next || e.slot.load(Ordering::Relaxed) != slot {
                break;
            }
            n += 1;
        }
        *cursor = start.wrapping_add(n as u64);
        n
    }

    /// Stores subscriber `k`'s cursor in its row, once for a batch of [`Ring::try_read`]s, and
    /// wakes a publisher held back by it (back-pressure).
    pub(crate) fn commit_cursor<N: Notifier>(&self, k: u32, cursor: u64, notifier: &N) {
        if self.subscriber(k).cursor.load(Ordering::Relaxed) != cursor {
            self.store_cursor(k, cursor, notifier);
        }
    }

    fn store_cursor<N: Notifier>(&self, k: u32, cursor: u64, notifier: &N) {
        self.subscriber(k).cursor.store(cursor, Ordering::Release);
        if self.layout.config.overflow == Overflow::BackPressure {
            self.wake_publisher(notifier);
        }
    }

    /// Whether a call to [`Ring::try_acquire`] at `cursor` would find something (a message, a
    /// lag, or a lost message) rather than [`Acquired::Empty`].
    pub fn ready(&self, cursor: u64) -> bool {
        let s1 = self.entry(cursor).seq.load(Ordering::Acquire);
        if s1 == SEQ_INVALID {
            self.header().tail.load(Ordering::Acquire) > cursor
        } else {
            s1 > cursor
        }
    }

    /// Whether `slot` is free: out of the ring, held by nobody, on loan to nobody.
    ///
    /// A publisher that is the only one to loan from this ring may conclude that whatever it
    /// attached to the slot's last message (an array block) is no longer referenced.
    pub(crate) fn slot_is_free(&self, slot: u32) -> bool {
        // Acquire: the holders' reads of the slot (and of what it references) happen before
        // whatever the caller does next with it.
        self.state(slot).load(Ordering::Acquire) == 0
    }

    /// Withdraws message `seq`, published in `slot` and not yet evicted, so that its slot is
    /// freed early: readers that have not taken it yet see it as lost (lag of one); readers that
    /// hold it keep it until they release it. Returns whether the slot is free now (`false`:
    /// someone holds it, or `seq` is no longer in the ring at `slot`).
    ///
    /// # Safety
    ///
    /// The caller has publish rights, as for [`Ring::publish`].
    pub(crate) unsafe fn retire(&self, seq: u64, slot: u32) -> bool {
        let h = self.header();
        let tail = h.tail.load(Ordering::Relaxed);
        let cap = u64::from(self.layout.config.capacity);
        if seq >= tail || seq.saturating_add(cap) < tail {
            return false;
        }
        let e = self.entry(seq);
        if e.seq.load(Ordering::Relaxed) != seq.wrapping_add(1)
            || e.slot.load(Ordering::Relaxed) != u64::from(slot)
            || self.state(slot).load(Ordering::Relaxed) != RING_BIT
        {
            // Gone from the ring, or held: a held message is left alone (a reader that takes
            // it between this check and the rewrite below keeps it, see the module docs).
            return false;
        }
        // Rewrite the entry as in `publish` (seqlock), keeping its sequence number: a reader that
        // sets its bit after this sees `RETIRED` in the slot word and lets go.
        e.seq.store(SEQ_INVALID, Ordering::Relaxed);
        fence(Ordering::Release);
        e.slot.store(RETIRED, Ordering::Relaxed);
        e.seq.store(seq.wrapping_add(1), Ordering::Release);
        let prev = self.state(slot).fetch_and(!RING_BIT, Ordering::AcqRel);
        prev == RING_BIT
    }

    /// Releases subscriber `k`'s hold of `slot`.
    pub(crate) fn release(&self, k: u32, slot: u32) {
        // Release: our reads of the slot happen before a publisher's next loan of it.
        self.state(slot).fetch_and(!(1u64 << k), Ordering::Release);
    }

    /// Waits until [`Ring::ready`] at `cursor` or the deadline. Spins briefly, then sleeps on the
    /// notification word; after every sleep (every `check_every` at most, and when the deadline
    /// passes) it calls `on_slow`, which returns `false` to stop waiting (e.g. no publisher is
    /// alive). Returns whether something is ready.
    pub(crate) fn wait_for_message<N: Notifier>(
        &self,
        cursor: u64,
        notifier: &N,
        deadline: Deadline,
        check_every: Option<Duration>,
        mut on_slow: impl FnMut() -> bool,
    ) -> bool {
        for round in 0..SPINS {
            if self.ready(cursor) {
                return true;
            }
            backoff(round);
        }
        let h = self.header();
        loop {
            // Dekker with `publish`: count ourselves in, SeqCst fence, then re-check. (A fence
            // rather than SeqCst accesses: it is what the proof needs, and what loom models.) A
            // light publisher has no fence of its own: the heavy barrier stands in for it
            // (decision 47); without one we must not sleep long.
            h.notify_sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let heavy = h.light.load(Ordering::Acquire) == 0 || crate::barrier::heavy();
            let seen = h.notify_word.load(Ordering::Acquire);
            let ready = self.ready(cursor);
            if !ready && !deadline.expired() {
                let slice = crate::barrier::cap(sleep_for(&deadline, check_every), heavy);
                notifier.wait(&h.notify_word, seen, slice);
            }
            h.notify_sleepers.fetch_sub(1, Ordering::Relaxed);
            if ready || self.ready(cursor) {
                return true;
            }
            // `on_slow` runs on expiry too: a caller that waits in slices no longer than
            // `check_every` (the Python binding, between signal checks) must still learn that
            // nobody will publish again.
            if !on_slow() || deadline.expired() {
                return false;
            }
        }
    }

    /// The word subscribers sleep on and their sleeper count, for a wait set that sleeps on
    /// many topics (see [`crate::waitset`]).
    pub(crate) fn notify_words(&self) -> crate::waitset::Words<'_> {
        let h = self.header();
        crate::waitset::Words {
            word: &h.notify_word,
            sleepers: &h.notify_sleepers,
            light: Some(&h.light),
        }
    }

    /// Wakes every sleeping subscriber, for them to re-check the topic.
    pub(crate) fn notify_all<N: Notifier>(&self, notifier: &N) {
        let h = self.header();
        h.notify_word.fetch_add(1, Ordering::SeqCst);
        notifier.wake_all(&h.notify_word);
    }
}
