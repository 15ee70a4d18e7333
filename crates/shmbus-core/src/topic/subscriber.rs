//! A topic's subscriber: its lease and row, receiving, holding and releasing slots.

#[allow(unused_imports)]
use super::*;

/// A slot held by a [`RawSubscriber`]: read it, then release it. Cannot be forged or copied.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a held slot is only given back by release"]
pub struct Held {
    seq: u64,
    slot: u32,
    owner: u64,
}

impl Held {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The slot index.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

/// What a receive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A message, held until [`RawSubscriber::release`].
    Message(Held),
    /// Nothing new.
    Empty,
    /// The subscriber missed `n` messages (overwritten); the next receive resumes at the
    /// oldest message still there.
    Lagged(u64),
    /// No publisher is alive and every message was read.
    Disconnected,
}

/// What a copying receive ([`RawSubscriber::try_copy`]) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// This many messages (at least one) were copied.
    Messages(usize),
    /// Nothing new.
    Empty,
    /// The subscriber missed `n` messages (overwritten); the next receive resumes at the
    /// oldest message still there.
    Lagged(u64),
    /// No publisher is alive and every message was read.
    Disconnected,
}

/// How a blocking wait of a subscriber ended.
enum Waited<R> {
    Got(R),
    TimedOut,
    Disconnected,
}

/// Why a receive failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The topic's memory is damaged.
    #[error("topic {name:?} is corrupt: {reason}")]
    Corrupt {
        /// The topic.
        name: Name,
        /// What is wrong.
        reason: String,
    },
    /// The subscriber already holds as many samples as the topic allows.
    #[error(
        "this subscriber already holds {0} samples, the most the topic allows; drop one first"
    )]
    TooManyHeld(u32),
    /// The subscriber was made before a fork; this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

/// A subscriber's membership of a topic.
pub struct RawSubscriber {
    topic: Arc<RawTopic>,
    index: u32,
    cursor: Cell<u64>,
    /// Where the next copied messages probably are (a prefetch hint).
    guess: Cell<SlotGuess>,
    held: Cell<u32>,
    saw_publisher: Cell<bool>,
    joins_at_start: u64,
    id: u64,
    /// The process generation that made it: used in a forked child, it refuses to act.
    born: Born,
    _lease: Lease,
}

impl fmt::Debug for RawSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSubscriber")
            .field("topic", self.topic.name())
            .field("index", &self.index)
            .field("cursor", &self.cursor.get())
            .finish()
    }
}

impl RawSubscriber {
    /// Joins `topic` as a subscriber that first reads up to `history` recent messages.
    pub fn new(topic: Arc<RawTopic>, history: u32) -> Result<RawSubscriber, TopicError> {
        let max = topic.ring.config().max_subscribers;
        let fd = topic.segment.fd();
        for k in 0..max {
            let lease = Lease::try_acquire(fd, lease::topic_subscriber(k)).map_err(|source| {
                TopicError::Os {
                    op: "taking a subscriber lease",
                    source,
                }
            })?;
            let Some(lease) = lease else { continue };
            if topic.ring.subscriber_active(k) {
                let held = topic.ring.reclaim_subscriber(k, &Futex);
                tracing::info!(topic = %topic.name(), subscriber = k, held, "reclaimed a dead subscriber");
            }
            let cursor = topic.ring.join_subscriber(k, std::process::id(), history);
            tracing::debug!(topic = %topic.name(), subscriber = k, cursor, "subscriber joined");
            let joins_at_start = topic.ring.publisher_joins();
            let saw = topic.has_publisher();
            return Ok(RawSubscriber {
                joins_at_start,
                topic,
                index: k,
                cursor: Cell::new(cursor),
                guess: Cell::new(SlotGuess::default()),
                held: Cell::new(0),
                saw_publisher: Cell::new(saw),
                id: next_id(),
                born: Born::now(),
                _lease: lease,
            });
        }
        Err(TopicError::TooManySubscribers {
            name: topic.name().clone(),
            max,
        })
    }

    /// The topic.
    pub fn topic(&self) -> &Arc<RawTopic> {
        &self.topic
    }

    /// `Err` in a forked child of the process that made this subscriber.
    pub fn check_fork(&self) -> Result<(), UsedAfterFork> {
        self.born.check()
    }

    /// The sequence number of the next message to read.
    pub fn cursor(&self) -> u64 {
        self.cursor.get()
    }

    /// Takes the next message without waiting.
    pub fn try_receive(&self) -> Result<Received, ReceiveError> {
        self.born.check()?;
        let max = self.topic.ring.config().max_held;
        if self.held.get() >= max {
            return Err(ReceiveError::TooManyHeld(max));
        }
        let mut cursor = self.cursor.get();
        let r = self.topic.ring.try_acquire(self.index, &mut cursor, &Futex);
        self.cursor.set(cursor);
        match r {
            Ok(Acquired::Message { seq, slot }) => {
                self.held.set(self.held.get() + 1);
                self.saw_publisher.set(true);
                Ok(Received::Message(Held {
                    seq,
                    slot,
                    owner: self.id(),
                }))
            }
            Ok(Acquired::Empty) => Ok(Received::Empty),
            Ok(Acquired::Lagged { skipped }) => Ok(Received::Lagged(skipped)),
            Err(e) => Err(ReceiveError::Corrupt {
                name: self.topic.name().clone(),
                reason: e.0,
            }),
        }
    }

    /// Takes the next message, waiting up to `timeout` (`None`: no limit). Returns
    /// [`Received::Empty`] on timeout and [`Received::Disconnected`] when every publisher this
    /// subscriber saw is gone (left or died) and nothing is left to read.
    pub fn receive(&self, timeout: Option<Duration>) -> Result<Received, ReceiveError> {
        let r = self.wait_for(timeout, || match self.try_receive()? {
            Received::Empty => Ok(None),
            r => Ok(Some(r)),
        })?;
        Ok(match r {
            Waited::Got(r) => r,
            Waited::TimedOut => Received::Empty,
            Waited::Disconnected => Received::Disconnected,
        })
    }

    /// Calls `attempt` until it returns something, sleeping on the topic between calls, up to
    /// `timeout` (`None`: no limit) or until every publisher this subscriber saw is gone and
    /// nothing is left to read.
    fn wait_for<R>(
        &self,
        timeout: Option<Duration>,
        mut attempt: impl FnMut() -> Result<Option<R>, ReceiveError>,
    ) -> Result<Waited<R>, ReceiveError> {
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(r) = attempt()? {
                return Ok(Waited::Got(r));
            }
            let topic = &*self.topic;
            let mut gone = None;
            let ready = topic.ring.wait_for_message(
                self.cursor.get(),
                &Futex,
                deadline,
                CHECK_EVERY,
                || {
                    let g = self.publishers_gone();
                    gone = Some(g);
                    !g
                },
            );
            if !ready {
                // A wait that ended at its deadline before its first check (timeouts shorter than
                // the check period, as callers that wait in slices use) still looks once: else
                // such a caller would never learn that the publishers left.
                let gone = gone.unwrap_or_else(|| self.publishers_gone());
                if gone && !topic.ring.ready(self.cursor.get()) {
                    return Ok(Waited::Disconnected);
                }
                if deadline.expired() {
                    return Ok(Waited::TimedOut);
                }
            }
        }
    }

    /// Copies the next messages out of the topic without holding their slots, up to `max` of
    /// them: each in turn into `buf` (its first `buf.len()` bytes, at most the slot size), then
    /// `each(buf, seq, published_at)`. The cursor is stored once for the whole batch, and no
    /// slot state word is touched: no atomic read-modify-write per message (see
    /// [`Ring::try_read`]). A batch ends before a lag, which the next call reports. Held
    /// samples do not count against it.
    ///
    /// Meant for small messages (a copy is made of each); large ones are read in place with
    /// [`try_receive`](Self::try_receive).
    #[inline]
    pub fn try_copy(
        &self,
        buf: &mut [u8],
        max: usize,
        mut each: impl FnMut(&[u8], u64, Option<u64>),
    ) -> Result<Copied, ReceiveError> {
        self.born.check()?;
        let ring = &self.topic.ring;
        let stamps = ring.config().timestamps;
        let mut cursor = self.cursor.get();
        let mut guess = self.guess.get();
        // A message that fits in its entry's words is read from the entry's line alone: no
        // slot to fetch, so no slot to guess and prefetch either.
        let from_entry = buf.len() <= ring.config().inline as usize;
        let mut got = 0;
        let mut outcome = Ok(Copied::Empty);
        while got < max {
            let g = (!from_entry).then_some(&mut guess);
            let read = ring.try_read(self.index, &mut cursor, got == 0, g, |slot, inline| {
                if from_entry {
                    Ring::copy_inline(inline, buf);
                } else {
                    ring.copy_slot(slot, buf);
                }
                stamps.then(|| ring.stamp_of(slot)).flatten()
            });
            match read {
                Ok(Read::Message { seq, value }) => {
                    each(buf, seq, value);
                    got += 1;
                }
                Ok(Read::Empty | Read::Stop) => break,
                Ok(Read::Lagged { skipped }) => {
                    outcome = Ok(Copied::Lagged(skipped));
                    break;
                }
                Err(e) => {
                    outcome = Err(ReceiveError::Corrupt {
                        name: self.topic.name().clone(),
                        reason: e.0,
                    });
                    break;
                }
            }
        }
        self.cursor.set(cursor);
        self.guess.set(guess);
        ring.commit_cursor(self.index, cursor, &Futex);
        if got > 0 {
            self.saw_publisher.set(true);
            return Ok(Copied::Messages(got));
        }
        outcome
    }

    /// Copies the next messages out as values of `T`, appended to `out`, up to `max` of them,
    /// without holding their slots, as [`try_copy`](Self::try_copy) does but with less work per
    /// message: each is copied straight into `out`'s spare room (no staging buffer), and runs of
    /// up to 32 are checked intact with one fence ([`Ring::read_run`]); whatever ends a run
    /// (nothing more yet, a lag, a hole, a damaged entry) goes through the careful path of
    /// `try_copy`. The message's first `size_of::<T>()` bytes make the value; publish times are
    /// not read. A batch ends before a lag, which the next call reports. `runs(seq, values)` is
    /// called for each run of consecutive messages appended, with the first one's sequence
    /// number and the values just appended (a hole a dead publisher left splits a run).
    pub fn try_copy_into<T: bytemuck::Pod>(
        &self,
        out: &mut Vec<T>,
        max: usize,
        mut runs: impl FnMut(u64, &[T]),
    ) -> Result<Copied, ReceiveError> {
        self.born.check()?;
        let ring = &self.topic.ring;
        let size = std::mem::size_of::<T>();
        let from_entry = size <= ring.config().inline as usize;
        if size == 0 || size > ring.config().slot_size as usize {
            // Values the slots cannot fill whole: the careful path, into zeroed values.
            let mut value = T::zeroed();
            return self.try_copy(bytemuck::bytes_of_mut(&mut value), max, |bytes, seq, _| {
                out.push(bytemuck::pod_read_unaligned(bytes));
                runs(seq, &out[out.len() - 1..]);
            });
        }
        let mut cursor = self.cursor.get();
        let mut guess = self.guess.get();
        let mut got = 0;
        let mut outcome = Ok(Copied::Empty);
        while got < max {
            let want = (max - got).min(crate::ring::RUN);
            out.reserve(want);
            let spare = &mut out.spare_capacity_mut()[..want];
            // SAFETY: `MaybeUninit<T>` to `MaybeUninit<u8>` over the same `want * size` bytes
            // (no alignment or validity to keep), borrowed from `out` as `spare` was.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(
                    spare.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
                    want * size,
                )
            };
            let (first, len) = (cursor, out.len());
            let n = ring.read_run(&mut cursor, want, |i, slot, words| {
                let dst = &mut bytes[i * size..(i + 1) * size];
                if from_entry {
                    Ring::copy_inline_uninit(words, dst);
                } else {
                    ring.copy_slot_uninit(slot, dst);
                }
            });
            // SAFETY: the first `n` of the `want` values were written whole: `size` bytes each,
            // as `size <= inline` fills them from the entry's words and `size <= slot_size`
            // from the slot; they were reserved above, and any bytes make a `T: Pod`.
            unsafe { out.set_len(len + n) };
            if n > 0 {
                runs(first, &out[len..]);
            }
            got += n;
            if n == want {
                continue;
            }
            if n > 0 {
                // The guess is of the messages the run just took.
                guess = SlotGuess::default();
            }
            // What ended the run, through the careful path: one message, or why there is none.
            let mut value = T::zeroed();
            let buf = bytemuck::bytes_of_mut(&mut value);
            let g = (!from_entry).then_some(&mut guess);
            let read = ring.try_read(self.index, &mut cursor, got == 0, g, |slot, inline| {
                if from_entry {
                    Ring::copy_inline(inline, buf);
                } else {
                    ring.copy_slot(slot, buf);
                }
            });
            match read {
                Ok(Read::Message { seq, .. }) => {
                    out.push(value);
                    runs(seq, &out[out.len() - 1..]);
                    got += 1;
                }
                Ok(Read::Empty | Read::Stop) => break,
                Ok(Read::Lagged { skipped }) => {
                    outcome = Ok(Copied::Lagged(skipped));
                    break;
                }
                Err(e) => {
                    outcome = Err(ReceiveError::Corrupt {
                        name: self.topic.name().clone(),
                        reason: e.0,
                    });
                    break;
                }
            }
        }
        self.cursor.set(cursor);
        self.guess.set(guess);
        ring.commit_cursor(self.index, cursor, &Futex);
        if got > 0 {
            self.saw_publisher.set(true);
            return Ok(Copied::Messages(got));
        }
        outcome
    }

    /// [`try_copy_into`](Self::try_copy_into), waiting up to `timeout` (`None`: no limit) for at
    /// least one message, as [`copy`](Self::copy) does.
    pub fn copy_into<T: bytemuck::Pod>(
        &self,
        out: &mut Vec<T>,
        max: usize,
        timeout: Option<Duration>,
        mut runs: impl FnMut(u64, &[T]),
    ) -> Result<Copied, ReceiveError> {
        let r = self.wait_for(timeout, || {
            match self.try_copy_into(out, max, &mut runs)? {
                Copied::Empty => Ok(None),
                r => Ok(Some(r)),
            }
        })?;
        Ok(match r {
            Waited::Got(r) => r,
            Waited::TimedOut => Copied::Empty,
            Waited::Disconnected => Copied::Disconnected,
        })
    }

    /// [`try_copy`](Self::try_copy), waiting up to `timeout` (`None`: no limit) for at least one
    /// message. Returns [`Copied::Empty`] on timeout and [`Copied::Disconnected`] when every
    /// publisher this subscriber saw is gone and nothing is left to read.
    pub fn copy(
        &self,
        buf: &mut [u8],
        max: usize,
        timeout: Option<Duration>,
        mut each: impl FnMut(&[u8], u64, Option<u64>),
    ) -> Result<Copied, ReceiveError> {
        let r = self.wait_for(timeout, || match self.try_copy(buf, max, &mut each)? {
            Copied::Empty => Ok(None),
            r => Ok(Some(r)),
        })?;
        Ok(match r {
            Waited::Got(r) => r,
            Waited::TimedOut => Copied::Empty,
            Waited::Disconnected => Copied::Disconnected,
        })
    }

    /// Takes the next message without waiting, as [`try_receive`](Self::try_receive), and when
    /// there is none tells whether one can still come: [`Received::Disconnected`] when every
    /// publisher this subscriber saw has left or was reclaimed. Dead publishers are not looked
    /// for here (that costs a system call per publisher): whoever waits reclaims them now and
    /// then ([`RawTopic::reclaim_dead`]), as the async waiter thread does every 50 ms.
    pub fn poll_receive(&self) -> Result<Received, ReceiveError> {
        match self.try_receive()? {
            Received::Empty => {}
            r => return Ok(r),
        }
        let topic = &*self.topic;
        if topic.has_publisher() || topic.ring.publisher_joins() != self.joins_at_start {
            self.saw_publisher.set(true);
        }
        if self.saw_publisher.get()
            && !topic.has_publisher()
            && !topic.ring.ready(self.cursor.get())
        {
            return Ok(Received::Disconnected);
        }
        Ok(Received::Empty)
    }

    /// Whether every publisher this subscriber saw is gone (reclaiming dead participants first).
    pub(crate) fn publishers_gone(&self) -> bool {
        self.publishers_gone_with(RawTopic::reclaim_dead)
    }

    /// As [`publishers_gone`](Self::publishers_gone), reclaiming only dead publishers: what a
    /// wait set needs, at half the lease tests for a topic with as many subscribers.
    pub(crate) fn publishers_gone_cheaply(&self) -> bool {
        self.publishers_gone_with(RawTopic::reclaim_dead_publishers)
    }

    fn publishers_gone_with(&self, reclaim: fn(&RawTopic) -> u32) -> bool {
        let topic = &*self.topic;
        // A publisher existed if we saw one, or if one joined since we did (it may have died and
        // been reclaimed by someone else before we looked).
        if topic.has_publisher() || topic.ring.publisher_joins() != self.joins_at_start {
            self.saw_publisher.set(true);
        }
        reclaim(topic);
        self.saw_publisher.get() && !topic.has_publisher()
    }

    fn id(&self) -> u64 {
        self.id
    }

    /// The bytes of the slot `held` names.
    ///
    /// # Panics
    ///
    /// If `held` came from another subscriber.
    pub fn slot<'a>(&'a self, held: &'a Held) -> &'a [u8] {
        assert_eq!(
            held.owner,
            self.id(),
            "a held slot used with a subscriber that did not take it"
        );
        let ring = &self.topic.ring;
        let p = ring.slot_ptr(held.slot);
        // SAFETY: this subscriber holds the slot (the `Held` token cannot be forged or copied
        // and is consumed by `release`); a held slot is never loaned, so nobody writes it while
        // the token lives. It spans `slot_size` bytes inside the mapping that lives as long as
        // `self.topic`, and the returned slice borrows both `self` and the token.
        unsafe { std::slice::from_raw_parts(p.as_ptr(), ring.config().slot_size as usize) }
    }

    /// When the message in `held` was published ([`monotonic_ns`](crate::time::monotonic_ns)
    /// of the publisher), if the topic records publish times.
    ///
    /// # Panics
    ///
    /// If `held` came from another subscriber.
    pub fn published_at(&self, held: &Held) -> Option<u64> {
        assert_eq!(
            held.owner,
            self.id(),
            "a held slot used with a subscriber that did not take it"
        );
        self.topic.ring.stamp_of(held.slot)
    }

    /// Releases `held`.
    pub fn release(&self, held: Held) {
        assert_eq!(
            held.owner,
            self.id(),
            "a held slot used with a subscriber that did not take it"
        );
        if self.born.is_current() {
            self.topic.ring.release(self.index, held.slot);
        }
        self.held.set(self.held.get().saturating_sub(1));
    }
}

impl Drop for RawSubscriber {
    fn drop(&mut self) {
        if !self.born.is_current() {
            // A forked child's copy: the row, its holds and the lease are the parent's.
            return;
        }
        // Drops any hold still out (a `Held` forgotten by its user) and marks the row free.
        self.topic.ring.reclaim_subscriber(self.index, &Futex);
        tracing::debug!(topic = %self.topic.name(), subscriber = self.index, "subscriber left");
    }
}
