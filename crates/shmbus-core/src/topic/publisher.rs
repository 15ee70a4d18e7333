//! A topic's publisher: its lease and row, loans, publish rights, publishing.

#[allow(unused_imports)]
use super::*;
use crate::sync::Holders;

/// Why a loan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoanError {
    /// Every slot is taken even after reclaiming dead participants (a live subscriber holds more
    /// than the topic was sized for; cannot happen through this API).
    #[error("no free slot in topic {0:?}")]
    PoolExhausted(Name),
    /// This publisher already has a slot on loan.
    #[error("this publisher already has a slot on loan; publish or cancel it first")]
    AlreadyLoaned,
    /// The publisher was made before a fork; this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The publish timeout passed: the slowest live subscriber did not make room in time
    /// (back-pressure), or another publisher held the multi-publisher lock that long.
    #[error("timed out waiting for room, or for the publish lock")]
    Timeout,
    /// The multi-publisher lock failed (not recoverable, or already held by this thread).
    #[error("the publish lock failed: {0}")]
    Lock(#[from] sync::LockError),
    /// The publisher was made before a fork; this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

/// Why [`RawPublisher::publish_many`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishManyError {
    /// Taking publish rights or waiting for room failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// No slot could be loaned for the next message.
    #[error(transparent)]
    Loan(#[from] LoanError),
}

/// The holders of a topic's publish mutex: publisher rows, holder id = row + 1, alive while the
/// row's lease is held.
struct PublisherRows<'a> {
    topic: &'a RawTopic,
    me: u32,
}

impl Holders for PublisherRows<'_> {
    fn me(&self) -> u32 {
        self.me
    }

    fn is_alive(&self, id: u32) -> bool {
        let rows = self.topic.ring.config().max_publishers;
        if id == 0 || id > rows {
            return false; // no such row: another process wrote the word
        }
        liveness::is_held(self.topic.segment.fd(), lease::topic_publisher(id - 1)).unwrap_or(true)
    }
}

/// Fenced publishes in a row that must find nobody asleep before a publisher goes light
/// (decision 47): a stream whose subscribers sleep between messages stays fenced, so their
/// sleeps cost no heavy barrier.
const QUIET_BEFORE_LIGHT: u32 = 64;

/// A publisher's membership of a topic.
pub struct RawPublisher {
    topic: Arc<RawTopic>,
    index: u32,
    hint: u32,
    loaned: bool,
    /// A slot loaned ahead, right after the last publish, for the next [`RawPublisher::loan`]
    /// to hand out without touching shared memory. It counts against the publisher's loans
    /// while the caller has none, as the reserve below does.
    spare: Option<u32>,
    /// More slots loaned ahead, for [`RawPublisher::publish_many`]: with `spare`, at most
    /// [`RingConfig::loans_per_publisher`] of them (the topic's slot budget counts them).
    reserve: Vec<u32>,
    /// The slots of the messages the current chunk overwrote, still to evict (at most
    /// `loans_per_publisher`: each was named by an entry a loan of ours now fills). A chunk of
    /// `publish_many` ends with its call; a light publisher's single publishes make chunks too,
    /// ended when the reserve runs out, when a publish finds a sleeper and when the publisher
    /// leaves light (or drops).
    retired: Vec<u32>,
    /// Publishes may go light: one publisher row, and this process registered for the
    /// sleepers' heavy barriers (decision 47).
    light_ok: bool,
    /// Publishes go light now (the ring's `light` flag is on): only a compiler fence before
    /// the look at the sleeper count, and evictions in chunks.
    light: bool,
    /// Publishes in a row that found nobody asleep, counted while not light.
    quiet: u32,
    /// Lower bound of the subscribers' cursors (back-pressure topics).
    room: RoomCache,
    id: u64,
    /// The process generation that made it: used in a forked child, it refuses to act.
    born: Born,
    _lease: Lease,
}

/// A slot on loan to a [`RawPublisher`]: write it, then publish or cancel it. Cannot be forged
/// or copied. Dropping it without publishing or cancelling keeps the slot, and the publisher's
/// one loan, until the publisher drops (the typed `shmbus::Loan` cancels on drop).
#[derive(Debug)]
#[must_use = "a loan is only given back by publish or cancel"]
pub struct Loan {
    slot: u32,
    owner: u64,
}

impl Loan {
    /// The slot index.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl fmt::Debug for RawPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawPublisher")
            .field("topic", self.topic.name())
            .field("index", &self.index)
            .finish()
    }
}

impl RawPublisher {
    /// Joins `topic` as a publisher.
    pub fn new(topic: Arc<RawTopic>) -> Result<RawPublisher, TopicError> {
        let max = topic.ring.config().max_publishers;
        let depth = topic.ring.config().loans_per_publisher() as usize;
        let fd = topic.segment.fd();
        for p in 0..max {
            let lease = Lease::try_acquire(fd, lease::topic_publisher(p)).map_err(|source| {
                TopicError::Os {
                    op: "taking a publisher lease",
                    source,
                }
            })?;
            let Some(lease) = lease else { continue };
            if topic.ring.publisher_active(p) {
                topic.reclaim_publisher_row(p);
            }
            topic.ring.join_publisher(p, std::process::id());
            // With one loan per publisher (slots over 1 KiB) every chunk is one publish: no
            // fence saved, so no reason to make sleepers pay for heavy barriers.
            let light_ok = max == 1
                && topic.ring.config().loans_per_publisher() > 1
                && crate::barrier::register_light();
            if max == 1 {
                // A predecessor that died while light left the flag on.
                topic.ring.set_light(false);
            }
            tracing::debug!(topic = %topic.name(), publisher = p, light_ok, "publisher joined");
            return Ok(RawPublisher {
                topic,
                index: p,
                hint: 0,
                loaned: false,
                spare: None,
                reserve: Vec::with_capacity(depth),
                retired: Vec::with_capacity(depth),
                light_ok,
                light: false,
                quiet: 0,
                room: RoomCache::new(),
                id: next_id(),
                born: Born::now(),
                _lease: lease,
            });
        }
        Err(TopicError::TooManyPublishers {
            name: topic.name().clone(),
            max,
        })
    }

    /// The topic.
    pub fn topic(&self) -> &Arc<RawTopic> {
        &self.topic
    }

    /// `Err` in a forked child of the process that made this publisher.
    pub fn check_fork(&self) -> Result<(), UsedAfterFork> {
        self.born.check()
    }

    fn id(&self) -> u64 {
        self.id
    }

    /// Loans a free slot; write it through [`RawPublisher::slot_mut`], then
    /// [`RawPublisher::publish`] or [`RawPublisher::cancel`] it. A publisher has one loan at a
    /// time: a second call before the first is published or cancelled fails with
    /// [`LoanError::AlreadyLoaned`].
    pub fn loan(&mut self) -> Result<Loan, LoanError> {
        self.born.check()?;
        if self.loaned {
            return Err(LoanError::AlreadyLoaned);
        }
        if let Some(slot) = self.spare.take().or_else(|| self.reserve.pop()) {
            self.loaned = true;
            return Ok(Loan {
                slot,
                owner: self.id(),
            });
        }
        let slot = match self.topic.ring.loan(self.index, &mut self.hint) {
            Some(s) => s,
            None => {
                self.topic.reclaim_dead();
                self.topic
                    .ring
                    .loan(self.index, &mut self.hint)
                    .ok_or_else(|| LoanError::PoolExhausted(self.topic.name().clone()))?
            }
        };
        self.loaned = true;
        Ok(Loan {
            slot,
            owner: self.id(),
        })
    }

    /// The bytes of the slot on `loan`.
    ///
    /// # Panics
    ///
    /// If `loan` came from another publisher.
    pub fn slot_mut(&mut self, loan: &Loan) -> &mut [u8] {
        assert_eq!(
            loan.owner,
            self.id(),
            "a loan used with a publisher that did not make it"
        );
        let ring = &self.topic.ring;
        let p = ring.slot_ptr(loan.slot);
        // SAFETY: the slot is on loan to this publisher (the `Loan` token cannot be forged or
        // copied, and is consumed by publish/cancel), so nobody else reads or writes it; it
        // spans `slot_size` bytes inside the mapping, which lives as long as `self.topic`; the
        // `&mut self` borrow keeps a second slice from existing at the same time.
        unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), ring.config().slot_size as usize) }
    }

    /// The bytes of the slot on `loan`, for reading back what was written.
    ///
    /// # Panics
    ///
    /// If `loan` came from another publisher.
    pub fn slot(&self, loan: &Loan) -> &[u8] {
        assert_eq!(
            loan.owner,
            self.id(),
            "a loan used with a publisher that did not make it"
        );
        let ring = &self.topic.ring;
        // SAFETY: as in `slot_mut`: the slot is ours alone; the shared borrow of `self` keeps
        // `slot_mut` from being called while this slice lives.
        unsafe {
            std::slice::from_raw_parts(
                ring.slot_ptr(loan.slot).as_ptr(),
                ring.config().slot_size as usize,
            )
        }
    }

    /// Whether `slot` is free (see [`Ring::slot_is_free`]). On a topic with one publisher, that
    /// publisher may reuse whatever its last message in `slot` referenced. A light publisher
    /// (decision 47) evicts overwritten slots in chunks: call
    /// [`RawPublisher::flush_evictions`] first to have them reported free.
    pub fn slot_is_free(&self, slot: u32) -> bool {
        slot < self.topic.ring.layout().slots && self.topic.ring.slot_is_free(slot)
    }

    /// Withdraws this publisher's message `seq` in `slot` if nobody has taken it yet (see
    /// [`Ring::retire`]); returns whether the slot is free now. Only on a topic with a single
    /// publisher (elsewhere it does nothing and returns `false`).
    pub fn retire(&mut self, seq: u64, slot: u32) -> bool {
        let ring = &self.topic.ring;
        if !self.born.is_current()
            || ring.config().max_publishers != 1
            || slot >= ring.layout().slots
        {
            return false;
        }
        // SAFETY: on a single-publisher topic the holder of its only publisher lease (this
        // publisher) has publish rights, and `&mut self` keeps it from publishing meanwhile.
        unsafe { ring.retire(seq, slot) }
    }

    /// The slot this publisher loaned ahead for its next loan, if any. Whatever an older
    /// message in that slot referenced is unreferenced: the slot was free when it was loaned.
    pub fn spare_slot(&self) -> Option<u32> {
        self.spare
    }

    /// Gives an unpublished loan back (it stays reserved for this publisher's next loan).
    pub fn cancel(&mut self, loan: Loan) {
        assert_eq!(
            loan.owner,
            self.id(),
            "a loan used with a publisher that did not make it"
        );
        debug_assert!(self.spare.is_none());
        self.spare = Some(loan.slot);
        self.loaned = false;
    }

    /// Publishes `loan`, waiting up to `timeout` for room in back-pressure mode.
    /// On error the loan is handed back.
    pub fn publish(
        &mut self,
        loan: Loan,
        timeout: Option<Duration>,
    ) -> Result<u64, (PublishError, Loan)> {
        assert_eq!(
            loan.owner,
            self.id(),
            "a loan used with a publisher that did not make it"
        );
        if let Err(e) = self.born.check() {
            return Err((e.into(), loan));
        }
        let slot = loan.slot;
        let topic = &*self.topic;
        let ring = &topic.ring;
        let multi = match take_publish_rights(topic, self.index, timeout) {
            Ok(m) => m,
            Err(e) => return Err((e, loan)),
        };
        // The deadline (a clock read) only when there is a wait: not on the common path.
        let room = ring.has_room_cached(&mut self.room)
            || ring.wait_for_space(&Futex, Deadline::after(timeout), CHECK_EVERY, || {
                topic.reclaim_dead();
            });
        let result = if room {
            if ring.config().timestamps {
                ring.set_stamp(slot, monotonic_ns());
            }
            if self.light {
                debug_assert!(!multi, "a light publisher is its topic's only one");
                // SAFETY: publish rights: one publisher row, whose lease we hold (`light` needs
                // one row). `slot` is our loan, written by the caller; in back-pressure mode we
                // just saw room. The slot it returns joins `retired`, evicted by `end_chunk`.
                let Some((seq, old)) = (unsafe { ring.write_entry(slot, u8::MAX) }) else {
                    unreachable!("a full write_entry completes")
                };
                self.loaned = false;
                if let Some(old) = old {
                    self.retired.push(old);
                }
                // `light` is set only once this process registered for the heavy barriers, and
                // the ring's flag is on.
                let asleep = ring.wake_subscribers_light(&Futex);
                if asleep {
                    // Somebody sleeps between messages: each sleep would cost it a heavy
                    // barrier, which is dearer than our fence. Fence again (ending the chunk
                    // below) until publishes find nobody asleep for a while.
                    fence_again(ring, &mut self.light, &mut self.quiet);
                }
                let next = if asleep { None } else { self.reserve.pop() };
                self.spare = match next {
                    Some(s) => Some(s),
                    None => {
                        end_chunk(
                            ring,
                            self.index,
                            &mut self.retired,
                            &mut self.reserve,
                            &mut self.hint,
                        );
                        // Loans for the next chunk, as `publish_many` takes them.
                        let depth = ring.config().loans_per_publisher() as usize;
                        loan_up_to(
                            ring,
                            self.index,
                            &mut self.hint,
                            &mut self.reserve,
                            depth.saturating_sub(1),
                        );
                        self.reserve.pop()
                    }
                };
                return Ok(seq);
            }
            // SAFETY: publish rights: with one publisher row we hold its lease; with several we
            // hold the robust publish mutex. `slot` is our loan, written by the caller. In
            // back-pressure mode we just saw room while holding the rights. Our one loan ends
            // with this publish, so the evicted slot may become the next one; the wake follows.
            let (seq, evicted) = unsafe { ring.publish_quietly(slot, Some(self.index)) };
            let asleep = ring.wake_subscribers(&Futex);
            self.loaned = false;
            if self.light_ok {
                self.quiet = if asleep {
                    0
                } else {
                    self.quiet.saturating_add(1)
                };
                if self.quiet >= QUIET_BEFORE_LIGHT {
                    // Publish rights held, one publisher row (`light_ok`).
                    ring.set_light(true);
                    self.light = true;
                }
            }
            // The next loan is ready now, while the subscribers read this message: the next
            // `loan` then costs nothing on the path to them. Mostly it is the evicted slot,
            // taken in the same atomic operation as the eviction; else a free one (no reclaim
            // if none is: the next `loan` does that).
            self.spare = match evicted {
                Evicted::Loaned(s) => Some(s),
                Evicted::Free(f) => {
                    self.hint = f;
                    ring.loan(self.index, &mut self.hint)
                }
                Evicted::Nothing => ring.loan(self.index, &mut self.hint),
            };
            Ok(seq)
        } else {
            Err((PublishError::Timeout, loan))
        };
        if multi {
            give_back_publish_rights(topic, self.index);
        }
        result
    }

    /// Publishes `count` messages in a row, each written by `write(i, slot)` into a slot loaned
    /// for it, and returns the sequence number of the first (consecutive: publish rights are
    /// held for the whole batch). The shared stores are batched: the messages go out in chunks
    /// of up to [`RingConfig::loans_per_publisher`] (8 with slots of at most 1 KiB), each
    /// written into a slot loaned ahead, and then one fence for the chunk serves the look at
    /// the sleeping subscribers and the eviction of the messages the chunk overwrote, which
    /// takes no atomic read-modify-write for a slot nobody holds ([`Ring::evict_after_fence`]).
    /// Waits up to `timeout` in all for room (back-pressure) and for the publish lock.
    ///
    /// On error, the number of messages published before it comes with it; the rest were not
    /// written (`write` is not called for them).
    pub fn publish_many(
        &mut self,
        count: usize,
        timeout: Option<Duration>,
        mut write: impl FnMut(usize, &mut [u8]),
    ) -> Result<u64, (PublishManyError, usize)> {
        let size = self.topic.ring.config().slot_size as usize;
        self.publish_many_at(count, timeout, |i, slot| {
            // SAFETY: `publish_many_at` hands over a slot on loan to this publisher, `size`
            // bytes inside the mapping `self.topic` keeps alive, for this call only; the
            // `&mut self` it runs under keeps any other reference to it away.
            write(i, unsafe {
                std::slice::from_raw_parts_mut(slot.as_ptr(), size)
            });
        })
    }

    /// [`publish_many`](Self::publish_many) of plain-old-data messages of type `T`, each written
    /// by `write(i, message)` in place: its slot's first `size_of::<T>()` bytes as a `T` (what
    /// they held before is any bytes, a valid `T`).
    ///
    /// # Panics
    ///
    /// If a `T` does not fit a slot, or needs an alignment above 64 (slots are 64-byte aligned).
    pub fn publish_many_pod<T: bytemuck::Pod>(
        &mut self,
        count: usize,
        timeout: Option<Duration>,
        mut write: impl FnMut(usize, &mut T),
    ) -> Result<u64, (PublishManyError, usize)> {
        assert!(
            std::mem::size_of::<T>() <= self.topic.ring.config().slot_size as usize
                && std::mem::align_of::<T>() <= 64,
            "a message type that does not fit the topic's slots"
        );
        self.publish_many_at(count, timeout, |i, slot| {
            // SAFETY: as in `publish_many`, for `size_of::<T>()` bytes, which the slot holds
            // (checked above); the slot starts 64-byte aligned, enough for `T` (checked above);
            // any bytes are a valid `T: Pod`.
            write(i, unsafe { &mut *slot.as_ptr().cast::<T>() });
        })
    }

    /// The loop of [`publish_many`](Self::publish_many): `write(i, slot)` gets the start of a
    /// slot on loan to this publisher for message `i`, to write before it returns.
    fn publish_many_at(
        &mut self,
        count: usize,
        timeout: Option<Duration>,
        mut write: impl FnMut(usize, NonNull<u8>),
    ) -> Result<u64, (PublishManyError, usize)> {
        if let Err(e) = self.born.check() {
            return Err((PublishError::from(e).into(), 0));
        }
        if self.loaned {
            return Err((LoanError::AlreadyLoaned.into(), 0));
        }
        let topic = Arc::clone(&self.topic);
        let ring = &topic.ring;
        let mut deadline = None;
        let multi = take_publish_rights(&topic, self.index, timeout).map_err(|e| (e.into(), 0))?;
        let stamps = ring.config().timestamps;
        let depth = ring.config().loans_per_publisher() as usize;
        // Loans in hand: the spare first, then the reserve (all of them this publisher's).
        if let Some(s) = self.spare.take() {
            self.reserve.push(s);
        }
        let mut first = ring.published();
        // Whether a chunk's end found a subscriber asleep (a light publisher then fences again).
        let mut asleep = false;
        let mut done = 0;
        let mut failed = None;
        while done < count {
            let room = ring.has_room_cached(&mut self.room) || {
                // Evict and wake before waiting: the subscribers we wait for may be asleep on
                // what this batch published.
                asleep |= self.end_chunk();
                ring.wait_for_space(
                    &Futex,
                    *deadline.get_or_insert_with(|| Deadline::after(timeout)),
                    CHECK_EVERY,
                    || {
                        topic.reclaim_dead();
                    },
                )
            };
            if !room {
                failed = Some(PublishError::Timeout.into());
                break;
            }
            if self.reserve.is_empty() {
                if !self.retired.is_empty() {
                    asleep |= self.end_chunk();
                }
                // Loans for a whole chunk: what the chunk then evicts comes back as the next
                // chunk's loans without an atomic read-modify-write; loaning the rest costs a
                // CAS each, and only until the reserve is full (or when a holder kept a slot).
                let want = depth.min(count - done);
                loan_up_to(ring, self.index, &mut self.hint, &mut self.reserve, want);
                if self.reserve.is_empty() {
                    topic.reclaim_dead();
                    match ring.loan(self.index, &mut self.hint) {
                        Some(s) => self.reserve.push(s),
                        None => {
                            failed = Some(LoanError::PoolExhausted(topic.name().clone()).into());
                            break;
                        }
                    }
                }
            }
            let slot = self.reserve.pop().expect("a loan in hand (just checked)");
            // The slot is on loan to this publisher (just taken, not handed out).
            write(done, ring.slot_ptr(slot));
            if stamps {
                ring.set_stamp(slot, monotonic_ns());
            }
            // SAFETY: publish rights as in `publish`; `slot` is our loan, written above; room
            // was seen above while holding the rights. The slot it returns is evicted by
            // `end_chunk` before any wait, before the rights are given back, and at the end.
            let Some((seq, old)) = (unsafe { ring.write_entry(slot, u8::MAX) }) else {
                unreachable!("a full write_entry completes")
            };
            if done == 0 {
                first = seq;
            }
            if let Some(old) = old {
                self.retired.push(old);
            }
            done += 1;
        }
        if done > 0 || !self.retired.is_empty() {
            asleep |= self.end_chunk();
        }
        if asleep && self.light {
            // As a light single publish that finds a sleeper (publish rights still held).
            fence_again(ring, &mut self.light, &mut self.quiet);
        }
        // Back to the one spare the next `loan` takes; the reserve stays for the next batch.
        self.spare = self
            .reserve
            .pop()
            .or_else(|| ring.loan(self.index, &mut self.hint));
        if multi {
            give_back_publish_rights(&topic, self.index);
        }
        match failed {
            Some(e) => Err((e, done)),
            None => Ok(first),
        }
    }

    /// Ends the current chunk (see [`end_chunk`]); returns whether anybody slept.
    fn end_chunk(&mut self) -> bool {
        end_chunk(
            &self.topic.ring,
            self.index,
            &mut self.retired,
            &mut self.reserve,
            &mut self.hint,
        )
    }

    /// Makes every publish fence and evict at once, as on a topic with several publishers: for
    /// a caller that watches its messages' slots come free after each publish (an array pool).
    pub(crate) fn keep_fence(&mut self) {
        self.leave_light();
        self.light_ok = false;
    }

    /// Back to fenced publishes, evicting what is pending.
    fn leave_light(&mut self) {
        if self.light && self.born.is_current() {
            // Publish rights: a light publisher is its topic's only one.
            fence_again(&self.topic.ring, &mut self.light, &mut self.quiet);
        }
        self.flush_evictions();
    }

    /// Evicts the slots of the messages this publisher's latest publishes overwrote, if it still
    /// has any to evict (a light publisher evicts in chunks, decision 47): after it,
    /// [`RawPublisher::slot_is_free`] tells of them too. One `fence(SeqCst)` when there are.
    pub fn flush_evictions(&mut self) {
        if !self.retired.is_empty() && self.born.is_current() {
            self.end_chunk();
        }
    }
}

/// Back to fenced publishes: the ring's `light` flag off (the caller has publish rights on a
/// one-publisher topic), and the run of quiet publishes counted again from 0.
fn fence_again(ring: &Ring, light: &mut bool, quiet: &mut u32) {
    ring.set_light(false);
    *light = false;
    *quiet = 0;
}

/// Loans slots for publisher row `index` into `reserve` until it holds `want` (or none is
/// free): a CAS each.
fn loan_up_to(ring: &Ring, index: u32, hint: &mut u32, reserve: &mut Vec<u32>, want: usize) {
    while reserve.len() < want {
        match ring.loan(index, hint) {
            Some(s) => reserve.push(s),
            None => break,
        }
    }
}

/// Ends a chunk of publishes of publisher row `index` (of [`RawPublisher::publish_many`], or a
/// light publisher's single ones): one `fence(SeqCst)`, then the look at sleeping subscribers
/// (woken if any) and the eviction of every slot in `retired`, which become loans of ours
/// (joining `reserve`) when nobody holds them.
fn end_chunk(
    ring: &Ring,
    index: u32,
    retired: &mut Vec<u32>,
    reserve: &mut Vec<u32>,
    hint: &mut u32,
) -> bool {
    let asleep = ring.wake_subscribers(&Futex);
    // The slots that become loans are kept in place, then join the reserve (mostly empty
    // here: a swap, no copy).
    let mut loaned = 0;
    for i in 0..retired.len() {
        let old = retired[i];
        // SAFETY: `wake_subscribers` made a `fence(SeqCst)` after the `write_entry` that
        // returned `old`; we hold publish rights (the batch does, and a light publisher is its
        // topic's only one); each slot is evicted once (the list is emptied below). The loans it
        // makes are ours, within the budget: they replace the loans the chunk used up.
        match unsafe { ring.evict_after_fence(old, index) } {
            Evicted::Loaned(s) => {
                retired[loaned] = s;
                loaned += 1;
            }
            Evicted::Free(f) => *hint = f,
            Evicted::Nothing => {}
        }
    }
    retired.truncate(loaned);
    if reserve.is_empty() {
        std::mem::swap(reserve, retired);
    } else {
        reserve.append(retired);
    }
    asleep
}

/// Takes publish rights on `topic` for publisher row `me`: with one publisher row its lease is
/// them (returns `false`); with several, the robust publish mutex is locked (returns `true`),
/// and the ring repaired if its last holder died.
#[inline]
fn take_publish_rights(
    topic: &RawTopic,
    me: u32,
    timeout: Option<Duration>,
) -> Result<bool, PublishError> {
    if topic.ring.config().max_publishers <= 1 {
        return Ok(false);
    }
    let holders = PublisherRows { topic, me: me + 1 };
    let lock = topic.publish_lock();
    match lock.lock(&holders, timeout) {
        Ok(sync::Acquired::Clean) => {}
        Ok(sync::Acquired::OwnerDied) => {
            // SAFETY: we hold the publish mutex, so we have publish rights.
            unsafe { topic.ring.repair(&Futex) };
            // SAFETY: we hold the mutex after OwnerDied and repaired what it guards.
            let _ = unsafe { lock.make_consistent() };
            tracing::warn!(topic = %topic.name(), "a publisher died while publishing; repaired the ring");
        }
        // The publish timeout ran out while another publisher held the lock (it may itself be
        // waiting for room): the same timeout as a wait for room.
        Err(sync::LockError::Timeout) => return Err(PublishError::Timeout),
        Err(e) => return Err(e.into()),
    }
    Ok(true)
}

/// Unlocks the publish mutex that [`take_publish_rights`] locked for row `me`.
fn give_back_publish_rights(topic: &RawTopic, me: u32) {
    let holders = PublisherRows { topic, me: me + 1 };
    // SAFETY: this thread locked it in `take_publish_rights`.
    unsafe { topic.publish_lock().unlock(&holders) };
}

impl Drop for RawPublisher {
    fn drop(&mut self) {
        if !self.born.is_current() {
            // A forked child's copy: the row, the loan and the lease are the parent's.
            return;
        }
        // The slots its last publishes overwrote go back first (they are not loans); then a
        // loan that was dropped unpublished, and the row is marked free.
        self.leave_light();
        self.topic.ring.reclaim_publisher(self.index);
        self.topic.wake_subscribers();
        tracing::debug!(topic = %self.topic.name(), publisher = self.index, "publisher left");
    }
}
