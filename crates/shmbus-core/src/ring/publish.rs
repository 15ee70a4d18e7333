//! The publishing side of the ring protocol: joining, loaning, room, publishing, repair.

use std::time::Duration;

use super::*;

impl Ring {
    /// Marks publisher row `p` active. The caller holds row `p`'s lease; if the row was left
    /// active by a publisher that died, call [`Ring::reclaim_publisher`] first.
    pub(crate) fn join_publisher(&self, p: u32, pid: u32) {
        let e = self.publisher(p);
        e.pid.store(pid, Ordering::Relaxed);
        e.state.store(ACTIVE, Ordering::Release);
        self.header()
            .publisher_joins
            .fetch_add(1, Ordering::Release);
    }

    /// How many times a publisher joined the topic, ever.
    pub fn publisher_joins(&self) -> u64 {
        self.header().publisher_joins.load(Ordering::Acquire)
    }

    /// Whether publisher row `p` is marked active.
    pub fn publisher_active(&self, p: u32) -> bool {
        self.publisher(p).state.load(Ordering::Acquire) == ACTIVE
    }

    /// Loans a free slot to publisher `p`, looking first at `*hint` (the slot its last publish
    /// freed: cache-hot). `None`: the pool is empty (dead participants may hold slots).
    pub(crate) fn loan(&self, p: u32, hint: &mut u32) -> Option<u32> {
        let owner = u64::from(p + 1) << LOAN_SHIFT;
        let n = self.layout.slots;
        let mut s = if *hint < n { *hint } else { 0 };
        for _ in 0..n {
            // Acquire pairs with the Release of the last holder's release (or the eviction), so
            // their reads of the slot happen before our writes.
            if self
                .state(s)
                .compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // Release fence: the caller's writes of the slot come after it, so a reader that
                // copies the slot without holding it ([`Ring::try_read`]) and sees any of them
                // also sees, after its Acquire fence, the entry rewrite that freed the slot (our
                // Acquire CAS above made that rewrite happen before us), and drops its copy.
                fence(Ordering::Release);
                *hint = if s + 1 == n { 0 } else { s + 1 };
                return Some(s);
            }
            // No division per step (a `%` costs tens of cycles).
            s = if s + 1 == n { 0 } else { s + 1 };
        }
        None
    }

    /// Whether publishing the next message would overwrite one that a live subscriber has not
    /// read (back-pressure mode only; always `false` in overwrite mode).
    pub fn is_full(&self) -> bool {
        if self.layout.config.overflow != Overflow::BackPressure {
            return false;
        }
        let next = self.header().tail.load(Ordering::Relaxed);
        match self.min_cursor() {
            Some(min) => next >= min.saturating_add(u64::from(self.layout.config.capacity)),
            None => false,
        }
    }

    /// [`Ring::is_full`] through a publisher's `cache`: while no subscriber joined since the
    /// cache was filled, cursors only move forward, so the cached smallest cursor is a lower
    /// bound and the scan of every subscriber row is skipped until the ring catches up with it.
    /// Returns `true` when there is certainly room; `false` means "ask [`Ring::is_full`]".
    #[inline]
    pub(crate) fn has_room_cached(&self, cache: &mut RoomCache) -> bool {
        if self.layout.config.overflow != Overflow::BackPressure {
            return true;
        }
        let h = self.header();
        let next = h.tail.load(Ordering::Relaxed);
        let joins = h.subscriber_joins.load(Ordering::Acquire);
        let cap = u64::from(self.layout.config.capacity);
        if joins == cache.joins && next < cache.min_cursor.saturating_add(cap) {
            return true;
        }
        // Refill: read the joins count first, so a join that the scan misses changes it.
        let min = self.min_cursor();
        *cache = RoomCache {
            joins,
            min_cursor: min.unwrap_or(next),
        };
        match min {
            Some(m) => next < m.saturating_add(cap),
            None => true,
        }
    }

    /// The smallest cursor among active subscribers.
    /// The lowest cursor of the active subscribers: every message before it has been read by
    /// all of them (`None`: no subscriber).
    pub fn min_cursor(&self) -> Option<u64> {
        (0..self.layout.config.max_subscribers)
            .map(|k| self.subscriber(k))
            .filter(|e| e.state.load(Ordering::Acquire) == ACTIVE)
            .map(|e| e.cursor.load(Ordering::Acquire))
            .min()
    }

    /// Active subscribers whose cursor holds the publisher back (back-pressure mode).
    pub fn laggards(&self) -> Vec<u32> {
        let next = self.header().tail.load(Ordering::Relaxed);
        let cap = u64::from(self.layout.config.capacity);
        (0..self.layout.config.max_subscribers)
            .filter(|&k| {
                let e = self.subscriber(k);
                e.state.load(Ordering::Acquire) == ACTIVE
                    && next >= e.cursor.load(Ordering::Acquire).saturating_add(cap)
            })
            .collect()
    }

    /// Waits until [`Ring::is_full`] is false or the deadline passes, sleeping through
    /// `notifier` after a short spin. Every `check_every` it calls `on_slow`, which should
    /// reclaim dead subscribers. Returns whether there is space.
    pub(crate) fn wait_for_space<N: Notifier>(
        &self,
        notifier: &N,
        deadline: Deadline,
        check_every: Option<Duration>,
        mut on_slow: impl FnMut(),
    ) -> bool {
        if !self.is_full() {
            return true;
        }
        self.counter(counter::BACKPRESSURE_WAITS)
            .fetch_add(1, Ordering::Relaxed);
        for round in 0..SPINS {
            backoff(round);
            if !self.is_full() {
                return true;
            }
        }
        let h = self.header();
        loop {
            on_slow();
            // Dekker with `wake_publisher`: count ourselves in, SeqCst fence, then re-check.
            h.progress_sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let seen = h.progress_word.load(Ordering::Acquire);
            let full = self.is_full();
            if full && !deadline.expired() {
                notifier.wait(&h.progress_word, seen, sleep_for(&deadline, check_every));
            }
            h.progress_sleepers.fetch_sub(1, Ordering::Relaxed);
            if !full || !self.is_full() {
                return true;
            }
            if deadline.expired() {
                return false;
            }
        }
    }

    /// Publishes loaned `slot` as the next message and returns its sequence number and, if the
    /// message it overwrote left its slot free, that slot (a good hint for the next loan).
    ///
    /// # Safety
    ///
    /// - the caller has publish rights (no other `publish` or [`Ring::repair`] runs at the
    ///   same time on this topic, in any process);
    /// - `slot` is on loan to the caller and was written completely;
    /// - in back-pressure mode, the caller saw [`Ring::is_full`] return `false` after taking
    ///   publish rights (otherwise a subscriber may miss a message: no memory is at risk).
    #[cfg(any(test, loom))]
    pub(crate) unsafe fn publish<N: Notifier>(
        &self,
        slot: u32,
        notifier: &N,
    ) -> (u64, Option<u32>) {
        // SAFETY: the caller upholds `publish`'s contract.
        let (seq, evicted) = unsafe { self.publish_quietly(slot, None) };
        self.wake_subscribers(notifier);
        let freed = match evicted {
            Evicted::Free(s) => Some(s),
            Evicted::Nothing | Evicted::Loaned(_) => None,
        };
        (seq, freed)
    }

    /// [`Ring::publish`] without waking sleeping subscribers: for a batch of publishes that
    /// ends with one [`Ring::wake_subscribers`] (one fence and one look at the sleeper count
    /// for the batch, not one per message).
    ///
    /// # Safety
    ///
    /// As for [`Ring::publish`]; and the caller calls [`Ring::wake_subscribers`] after the last
    /// publish of the batch, before it waits for anything (a subscriber asleep on the batch's
    /// messages is woken only then).
    ///
    /// With `reloan` = `Some(p)`, the slot of the evicted message, if nobody holds it, goes
    /// straight to publisher `p`'s loan (one atomic operation for the eviction and the next
    /// loan, [`Evicted::Loaned`]); `p` must then have no other slot on loan once this slot's
    /// loan ends, as [`Ring::loan`] requires.
    #[inline]
    pub(crate) unsafe fn publish_quietly(&self, slot: u32, reloan: Option<u32>) -> (u64, Evicted) {
        // SAFETY: the caller upholds `publish`'s contract.
        unsafe { self.publish_steps(slot, u8::MAX, reloan) }.expect("a full publish completes")
    }

    /// Wakes the subscribers asleep on this topic, if any, with no system call when there are
    /// none: the last step of every publish (or of a batch of them).
    /// Returns whether anybody slept.
    #[inline]
    pub(crate) fn wake_subscribers<N: Notifier>(&self, notifier: &N) -> bool {
        let h = self.header();
        // Dekker pairing: the sleeper counts itself in, fences (SeqCst), then re-checks the
        // entry; we stored the entry, fence, then read `sleepers`. One of us must see the other.
        fence(Ordering::SeqCst);
        let asleep = h.notify_sleepers.load(Ordering::Relaxed) > 0;
        if asleep {
            h.notify_word.fetch_add(1, Ordering::SeqCst);
            notifier.wake_all(&h.notify_word);
        }
        asleep
    }

    /// Says whether the publisher publishes light ([`Ring::wake_subscribers_light`]). On: the
    /// flag, then a `fence(SeqCst)` before the first light publish, so a sleeper either sees
    /// the flag (and makes the heavy barrier) or is seen by that publish's look at the sleeper
    /// count. Off: a release store after the last light publish, so a sleeper that reads 0
    /// from it sees every entry that publish stored. The caller has publish rights on a
    /// one-publisher topic (decision 47).
    pub(crate) fn set_light(&self, on: bool) {
        let h = self.header();
        if on {
            h.light.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
        } else {
            h.light.store(0, Ordering::Release);
        }
    }

    /// [`Ring::wake_subscribers`] for a light publisher: no fence, only a compiler fence
    /// between the entry it stored and its look at the sleeper count. A sleeper counts itself
    /// in, fences, and makes the heavy barrier (`crate::barrier::heavy`) before it re-checks:
    /// either that barrier comes before our load, which then sees the count, or after it, and
    /// then our entry store was visible before the sleeper's re-check (decision 47).
    ///
    /// Only for a process that registered for the heavy barriers
    /// (`crate::barrier::register_light` returned `true`): elsewhere a sleeper may miss the
    /// wake-up (no memory depends on it, so this is a contract of liveness, not of safety).
    /// Returns whether anybody slept. The header's `light` flag must be on ([`Ring::set_light`]).
    #[inline]
    pub(crate) fn wake_subscribers_light<N: Notifier>(&self, notifier: &N) -> bool {
        let h = self.header();
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        let asleep = h.notify_sleepers.load(Ordering::Relaxed) > 0;
        if asleep {
            h.notify_word.fetch_add(1, Ordering::SeqCst);
            notifier.wake_all(&h.notify_word);
        }
        asleep
    }

    /// [`Ring::publish_quietly`] that stops after `stop_after` of its steps, as a publisher
    /// killed at that point would: for models of crashes. `None` when it stopped early.
    ///
    /// # Safety
    ///
    /// As for [`Ring::publish`].
    #[doc(hidden)]
    #[inline]
    pub(crate) unsafe fn publish_steps(
        &self,
        slot: u32,
        stop_after: u8,
        reloan: Option<u32>,
    ) -> Option<(u64, Evicted)> {
        // SAFETY: the caller upholds `publish`'s contract.
        let (n, old) = unsafe { self.write_entry(slot, stop_after) }?;
        Some((n, old.map_or(Evicted::Nothing, |o| self.evict(o, reloan))))
    }

    /// Steps 0 to 3 of a publish (architecture 6.1): `slot` becomes message `tail`, and the
    /// slot of the message its entry named before, if any, is returned: it is still marked
    /// `RING` but named by no entry, and the caller evicts it ([`Ring::evict`], or after a
    /// fence [`Ring::evict_after_fence`]). `None` when it stopped early (`stop_after`).
    ///
    /// # Safety
    ///
    /// As for [`Ring::publish`]; and the caller evicts the returned slot before it waits for
    /// anything or gives up publish rights (left unevicted, the slot is lost to the pool until a
    /// [`Ring::repair`]).
    #[inline(always)]
    pub(crate) unsafe fn write_entry(
        &self,
        slot: u32,
        stop_after: u8,
    ) -> Option<(u64, Option<u32>)> {
        let h = self.header();
        let n = h.tail.load(Ordering::Relaxed);
        // The loan bits go, RING comes: no subscriber can hold a loaned slot, so a store is
        // enough. Release: the message bytes are visible to whoever acquires the slot.
        self.state(slot).store(RING_BIT, Ordering::Release);
        if stop_after == 0 {
            return None;
        }
        let (e, inline) = self.entry_inline(n);
        let old_seq = e.seq.load(Ordering::Relaxed);
        let old_slot = e.slot.load(Ordering::Relaxed);
        e.seq.store(SEQ_INVALID, Ordering::Relaxed);
        if stop_after == 1 {
            return None;
        }
        // Orders the INVALID store before the slot and message-word stores for any reader that
        // loads one of the new values (seqlock writer).
        fence(Ordering::Release);
        e.slot.store(u64::from(slot), Ordering::Relaxed);
        self.fill_inline(slot, inline);
        // `tail` lives in shared memory: wrapping, never a panic, whatever another process
        // wrote there.
        let next = n.wrapping_add(1);
        e.seq.store(next, Ordering::Release);
        if stop_after == 2 {
            return None;
        }
        h.tail.store(next, Ordering::Release);
        self.counter(counter::PUBLISHED)
            .store(next, Ordering::Relaxed);
        let old =
            (old_seq != 0 && old_slot < u64::from(self.layout.slots)).then_some(old_slot as u32);
        Some((n, old))
    }

    /// Step 4 of a publish: clears `RING` on `old`, the slot of the message the entry just
    /// rewritten named ([`Ring::write_entry`]). With `reloan` = `Some(p)`, a slot nobody holds
    /// goes straight to publisher `p`'s loan, in the same atomic operation.
    ///
    /// AcqRel: pairs with holders' Release releases (as a loan's Acquire would), and its Release
    /// orders the entry rewrite before the change for readers that find `RING` cleared
    /// (ordering rows 5 and 6).
    #[inline]
    pub(crate) fn evict(&self, old: u32, reloan: Option<u32>) -> Evicted {
        let st = self.state(old);
        if let Some(p) = reloan {
            let owner = u64::from(p + 1) << LOAN_SHIFT;
            // Published and held by nobody: it becomes our next loan, in one operation.
            if st
                .compare_exchange(RING_BIT, owner, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // As after every loan (see `loan`): the new owner's writes come after it.
                fence(Ordering::Release);
                return Evicted::Loaned(old);
            }
        }
        if st.fetch_and(!RING_BIT, Ordering::AcqRel) == RING_BIT {
            Evicted::Free(old)
        } else {
            Evicted::Nothing
        }
    }

    /// [`Ring::evict`] without an atomic read-modify-write when nobody holds `old`: a load and
    /// a store, for a batch of publishes that evicts its slots after one `fence(SeqCst)`.
    ///
    /// Why a store cannot lose a hold: a subscriber takes a slot with a CAS that sets its bit,
    /// then makes a `fence(SeqCst)` and reads the entry again ([`Ring::try_acquire`]). Our entry
    /// rewrite, our fence, our load of the state word against its CAS, its fence, its entry load
    /// is the store-buffering pattern with a SeqCst fence on each side: if our load missed its
    /// bit, its entry load sees our rewrite, so it lets go of a slot it never used (its bit,
    /// which our store may wipe, means nothing; its `fetch_and` of it changes nothing). A CAS
    /// that fails on our store (Release) sees the rewrite too (ordering row 28).
    ///
    /// # Safety
    ///
    /// This thread made a `fence(SeqCst)` after the [`Ring::write_entry`] that returned `old`
    /// (and still has publish rights; `old` is evicted once). `p` is the caller's publisher row:
    /// a slot nobody holds becomes one of its loans (within its budget: it replaces the loan
    /// the overwriting message used).
    pub(crate) unsafe fn evict_after_fence(&self, old: u32, p: u32) -> Evicted {
        let st = self.state(old);
        // Acquire: the last holder's reads of the slot (Release) happen before our reuse.
        if st.load(Ordering::Acquire) == RING_BIT {
            st.store(u64::from(p + 1) << LOAN_SHIFT, Ordering::Release);
            // As after every loan (see `loan`): the new owner's writes come after it.
            fence(Ordering::Release);
            return Evicted::Loaned(old);
        }
        // Held (or a word another process scribbled on): leave it to its holders.
        self.evict(old, None)
    }

    /// Frees every slot on loan to publisher `p` and marks its row free. The caller holds row
    /// `p`'s lease, and `p`'s previous owner is dead. If that publisher may have died holding
    /// publish rights, also call [`Ring::repair`] while holding them.
    pub(crate) fn reclaim_publisher(&self, p: u32) -> u32 {
        let owner = u64::from(p + 1) << LOAN_SHIFT;
        let mut freed = 0;
        for s in 0..self.layout.slots {
            if self
                .state(s)
                .compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                freed += 1;
            }
        }
        self.publisher(p).state.store(FREE, Ordering::Release);
        freed
    }

    /// Completes or rolls forward a publish that a dead publisher left half done, and drops ring
    /// references no entry accounts for. Returns whether anything was repaired.
    ///
    /// # Safety
    ///
    /// The caller has publish rights (as for [`Ring::publish`]) and nobody else publishes.
    pub(crate) unsafe fn repair<N: Notifier>(&self, notifier: &N) -> bool {
        let h = self.header();
        let t = h.tail.load(Ordering::Relaxed);
        let e = self.entry(t);
        let mut repaired = false;
        match e.seq.load(Ordering::Relaxed) {
            s if s == t.wrapping_add(1) => {
                // Entry written, tail not advanced.
                h.tail.store(t.wrapping_add(1), Ordering::Release);
                repaired = true;
            }
            SEQ_INVALID => {
                // Died while rewriting the entry: the message is lost; say so. Same seqlock
                // writer steps as `publish`, so a reader never pairs a stale seq with HOLE.
                e.seq.store(SEQ_INVALID, Ordering::Relaxed);
                fence(Ordering::Release);
                e.slot.store(HOLE, Ordering::Relaxed);
                e.seq.store(t.wrapping_add(1), Ordering::Release);
                h.tail.store(t.wrapping_add(1), Ordering::Release);
                self.counter(counter::LOST).fetch_add(1, Ordering::Relaxed);
                repaired = true;
            }
            _ => {}
        }
        self.counter(counter::PUBLISHED)
            .store(h.tail.load(Ordering::Relaxed), Ordering::Relaxed);
        // RING bits that no entry accounts for: a slot published but not yet entered, or an
        // evicted one whose bit was not yet cleared.
        let mut named = vec![false; self.layout.slots as usize];
        let cap = u64::from(self.layout.config.capacity);
        for i in 0..cap {
            let e = self.entry(i);
            let s = e.slot.load(Ordering::Relaxed);
            if e.seq.load(Ordering::Relaxed) != 0 && s < u64::from(self.layout.slots) {
                named[s as usize] = true;
            }
        }
        for (s, named) in named.iter().enumerate() {
            if !named && self.state(s as u32).load(Ordering::Acquire) & RING_BIT != 0 {
                self.state(s as u32).fetch_and(!RING_BIT, Ordering::AcqRel);
                repaired = true;
            }
        }
        if repaired {
            fence(Ordering::SeqCst);
            h.notify_word.fetch_add(1, Ordering::SeqCst);
            notifier.wake_all(&h.notify_word);
        }
        repaired
    }
}
